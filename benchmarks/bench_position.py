"""Position-encoding benchmarks: llmref's RoPE, ALiBi and T5 code beside transformers'.

Groups (all float32; ``B = 1``, ``H = 8`` heads of ``D = 64``, inputs drawn
with a fixed seed, the same shapes as the attention benchmarks):

* ``"rope-apply"``: rotating queries *and* keys of shape ``(1, 8, T, 64)``
  with precomputed ``(1, T, 64)`` cos/sin tables. ``"transformers"`` is
  transformers' Llama ``apply_rotary_pos_emb(q, k, cos, sin)`` (the baseline);
  ``"llmref-half"`` and ``"llmref-interleaved"`` call
  :func:`llmref.position.apply_rope` on ``q`` and on ``k`` with the tables of
  their layout.
* ``"rope-cache-<rope_type>"``, one group per ``rope_type`` that transformers'
  ``LlamaRotaryEmbedding`` supports: building the rotary module and the cos/sin
  tables of ``T`` positions from scratch. ``"transformers"`` constructs
  ``LlamaRotaryEmbedding(config)`` and calls it on ``position_ids =
  arange(T)`` (the baseline); ``"llmref"`` constructs
  :class:`llmref.position.RotaryEmbedding` and calls ``cos_sin(arange(T))``,
  which fills its cache.
* ``"alibi-bias"``: ``"bloom"`` is BLOOM's ``build_alibi_tensor`` for an
  all-ones mask of length ``T`` (the baseline; it returns a ``(H, 1, T)`` row
  per head and relies on the softmax ignoring a per-row constant);
  ``"llmref"`` is :func:`llmref.position.alibi_bias`, the full ``(H, T, T)``
  bias. The ratio therefore compares a different amount of work, which is the
  point: it is what each library hands to attention.
* ``"t5-bias"``: the ``(H, T, T)`` T5 bias of a decoder layer (32 buckets,
  distance 128). ``"transformers"`` is ``T5Attention.compute_bias`` (the
  baseline), ``"llmref"`` is :class:`llmref.position.T5RelativeBias` with the
  same weights.

Cases that need transformers are left out when it is not installed. Each case
is timed like the attention cases (the ``bench_time`` fixture of
``conftest.py``). The sequence lengths depend on ``--sweep``
(:data:`POSITION_SWEEPS`); the default sweep has 45 cases and runs in under two
minutes on 2 idle CPU cores (the T5 and ALiBi cases at ``T = 2048`` dominate).
Each kind of case declares its own layout: applying RoPE and building its tables
grow like ``T`` (a linear guide), the ``(H, T, T)`` biases like ``T**2``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

from llmref.bench.cases import SEQ_LEN, Case, resolve_device, sweep_name, synchronizer
from llmref.bench.layout import TIME_PER_CALL, Axis, Layout

B, H, D = 1, 8, 64
SEED = 0
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None

POSITION_SWEEPS: dict[str, dict[str, tuple[int, ...]]] = {
    "quick": {"apply": (256,), "cache": (1024,), "bias": (256,)},
    "default": {"apply": (256, 1024, 4096), "cache": (1024, 16384), "bias": (256, 1024, 2048)},
    "full": {
        "apply": (128, 256, 512, 1024, 2048, 4096, 8192),
        "cache": (1024, 16384, 131072),
        "bias": (128, 256, 512, 1024, 2048, 4096),
    },
}
"""Sequence lengths per sweep and kind of case (bias construction is ``O(H T^2)``
memory, so it stops earlier)."""

ROPE_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 4096},
    "longrope": {
        "short_factor": [1.0 + 0.01 * i for i in range(D // 2)],
        "long_factor": [1.0 + 0.5 * i for i in range(D // 2)],
        "original_max_position_embeddings": 4096,
        "factor": 4.0,
    },
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4096,
    },
}
"""The rope_parameters timed in the ``rope-cache-*`` groups (trained length 4096, so the
longer cases exercise dynamic NTK's recomputation and LongRoPE's long factors)."""

MAX_POSITION_EMBEDDINGS = 4096

APPLY_LAYOUT = Layout(
    SEQ_LEN,
    TIME_PER_CALL,
    guide="linear",
    description="Rotating q and k of shape (1, 8, T, 64) with precomputed cos/sin tables.",
)
CACHE_LAYOUT = Layout(
    Axis("seq_len", "positions T", "tokens", symbol="T"),
    TIME_PER_CALL,
    guide="linear",
    description="Building the rotary module and the cos/sin tables of T positions "
    "(trained length 4096).",
)
BIAS_LAYOUT = Layout(
    SEQ_LEN,
    TIME_PER_CALL,
    guide="quadratic",
    description="Building the attention bias of T positions for 8 heads; the dashed "
    "guide grows like T².",
)


def _tensors(shape: tuple[int, ...], n: int, device: Any) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(SEED)
    return [torch.randn(shape, generator=gen).to(device) for _ in range(n)]


def _timed(fn: Callable[[], Any], device: Any) -> Callable[[], Any]:
    sync = synchronizer(device)

    def run() -> Any:
        out = fn()
        sync()
        return out

    return run


# -- rope-apply --------------------------------------------------------------------------


def _tables(seq_len: int, layout: str, device: Any) -> tuple[Any, Any]:
    import torch

    from llmref.position import rope_cos_sin, rope_frequencies

    inv_freq, _ = rope_frequencies(D, device=device)
    positions = torch.arange(seq_len, device=device)[None]  # (1, T): transformers' layout
    return rope_cos_sin(inv_freq, positions, layout=layout)


def _apply_transformers(seq_len: int, device: Any) -> Callable[[], Any]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = _tensors((B, H, seq_len, D), 2, device)
    cos, sin = _tables(seq_len, "half", device)
    return _timed(lambda: apply_rotary_pos_emb(q, k, cos, sin), device)


def _apply_llmref(layout: str) -> Callable[[int, Any], Callable[[], Any]]:
    def build(seq_len: int, device: Any) -> Callable[[], Any]:
        from llmref.position import apply_rope

        q, k = _tensors((B, H, seq_len, D), 2, device)
        cos, sin = _tables(seq_len, layout, device)

        def run() -> Any:
            return apply_rope(q, cos, sin, layout=layout), apply_rope(k, cos, sin, layout=layout)

        return _timed(run, device)

    return build


# -- rope-cache-* ------------------------------------------------------------------------


def _cache_transformers(rope_type: str) -> Callable[[int, Any], Callable[[], Any]]:
    def build(seq_len: int, device: Any) -> Callable[[], Any]:
        import torch
        from transformers import LlamaConfig
        from transformers import logging as hf_logging
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        hf_logging.set_verbosity_error()
        config = LlamaConfig(
            hidden_size=H * D,
            num_attention_heads=H,
            head_dim=D,
            max_position_embeddings=MAX_POSITION_EMBEDDINGS,
            rope_parameters={
                "rope_type": rope_type,
                "rope_theta": 10000.0,
                **ROPE_CONFIGS[rope_type],
            },
        )
        x = torch.zeros(1, device=device)
        position_ids = torch.arange(seq_len, device=device)[None]

        def run() -> Any:
            return LlamaRotaryEmbedding(config).to(device)(x, position_ids)

        return _timed(run, device)

    return build


def _cache_llmref(rope_type: str) -> Callable[[int, Any], Callable[[], Any]]:
    def build(seq_len: int, device: Any) -> Callable[[], Any]:
        import torch

        from llmref.position import RotaryEmbedding

        position_ids = torch.arange(seq_len, device=device)

        def run() -> Any:
            rope = RotaryEmbedding(
                D,
                rope_type=rope_type,
                max_position_embeddings=MAX_POSITION_EMBEDDINGS,
                device=device,
                **ROPE_CONFIGS[rope_type],
            )
            return rope.cos_sin(position_ids)

        return _timed(run, device)

    return build


# -- alibi-bias, t5-bias -----------------------------------------------------------------


def _alibi_bloom(seq_len: int, device: Any) -> Callable[[], Any]:
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(B, seq_len, dtype=torch.long, device=device)
    return _timed(lambda: build_alibi_tensor(mask, H, torch.float32), device)


def _alibi_llmref(seq_len: int, device: Any) -> Callable[[], Any]:
    from llmref.position import alibi_bias

    return _timed(lambda: alibi_bias(H, seq_len, device=device), device)


def _t5_modules(device: Any) -> tuple[Any, Any]:
    import torch
    from transformers import T5Config
    from transformers import logging as hf_logging
    from transformers.models.t5.modeling_t5 import T5Attention

    from llmref.position import T5RelativeBias

    hf_logging.set_verbosity_error()
    config = T5Config(d_model=H * D, d_kv=D, num_heads=H, is_decoder=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        hf = T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    mine = T5RelativeBias(H, bidirectional=False)
    mine.load_state_dict({"relative_attention_bias.weight": hf.relative_attention_bias.weight})
    return hf.to(device), mine.to(device)


def _t5_transformers(seq_len: int, device: Any) -> Callable[[], Any]:
    import torch

    hf, _ = _t5_modules(device)

    def run() -> Any:
        with torch.no_grad():
            return hf.compute_bias(seq_len, seq_len, device=device)

    return _timed(run, device)


def _t5_llmref(seq_len: int, device: Any) -> Callable[[], Any]:
    import torch

    _, mine = _t5_modules(device)

    def run() -> Any:
        with torch.no_grad():
            return mine(seq_len, seq_len)

    return _timed(run, device)


# -- the sweep ---------------------------------------------------------------------------

Builder = Callable[[int, Any], Callable[[], Any]]


def position_cases(name: str | None = None) -> list[Case]:
    """Every position case of the named sweep (transformers' ones only if it is installed)."""
    lengths = POSITION_SWEEPS[sweep_name(name)]
    table: list[tuple[str, str, dict[str, Builder], tuple[int, ...]]] = []
    apply: dict[str, Builder] = {}
    if HAS_TRANSFORMERS:
        apply["transformers"] = _apply_transformers
    apply["llmref-half"] = _apply_llmref("half")
    apply["llmref-interleaved"] = _apply_llmref("interleaved")
    table.append(("rope-apply", "transformers", apply, lengths["apply"]))
    for rope_type in ROPE_CONFIGS:
        impls: dict[str, Builder] = {}
        if HAS_TRANSFORMERS:
            impls["transformers"] = _cache_transformers(rope_type)
        impls["llmref"] = _cache_llmref(rope_type)
        table.append((f"rope-cache-{rope_type}", "transformers", impls, lengths["cache"]))
    alibi: dict[str, Builder] = {"bloom": _alibi_bloom} if HAS_TRANSFORMERS else {}
    alibi["llmref"] = _alibi_llmref
    table.append(("alibi-bias", "bloom", alibi, lengths["bias"]))
    if HAS_TRANSFORMERS:  # T5RelativeBias needs transformers' weights to be comparable
        t5 = {"transformers": _t5_transformers, "llmref": _t5_llmref}
        table.append(("t5-bias", "transformers", t5, lengths["bias"]))
    return [
        Case(group, impl, seq_len, baseline, builder)
        for group, baseline, impls, seq_lens in table
        for impl, builder in impls.items()
        for seq_len in seq_lens
    ]


KINDS = {
    "apply_case": ("rope-apply",),
    "cache_case": ("rope-cache-",),
    "bias_case": ("alibi-", "t5-"),
}
"""Fixture name -> group prefixes of the cases it runs (one test, one layout per kind)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, prefixes in KINDS.items():
        if fixture in metafunc.fixturenames:
            cases = [
                c
                for c in position_cases(metafunc.config.getoption("sweep"))
                if c.group.startswith(prefixes)
            ]
            metafunc.parametrize(
                fixture,
                cases,
                ids=[f"{c.group}-{c.implementation}-T{c.seq_len:06d}" for c in cases],
            )


def _run(benchmark: Any, case: Case, device: Any, bench_time: Callable[..., Any]) -> None:
    device = resolve_device(device)
    fn = case.make(device)
    benchmark.group = case.group
    benchmark.extra_info.update(case.extra_info(device))
    assert bench_time(fn) is not None


@pytest.mark.bench(APPLY_LAYOUT)
def test_rope_apply(
    benchmark: Any, apply_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    _run(benchmark, apply_case, bench_device, bench_time)


@pytest.mark.bench(CACHE_LAYOUT)
def test_rope_cache(
    benchmark: Any, cache_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    _run(benchmark, cache_case, bench_device, bench_time)


@pytest.mark.bench(BIAS_LAYOUT)
def test_position_bias(
    benchmark: Any, bias_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    _run(benchmark, bias_case, bench_device, bench_time)
