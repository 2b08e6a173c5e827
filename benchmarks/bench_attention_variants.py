"""Attention variants: the backends against sequence length, causal and windowed; decode steps.

Groups (float32, inputs drawn with a fixed seed):

* ``"variants-causal"``: causal self-attention on ``q, k, v`` of shape
  ``(1, 8, T, 64)`` (the shapes of ``bench_attention.py``). ``"sdpa"`` is
  :func:`torch.nn.functional.scaled_dot_product_attention` with
  ``is_causal=True`` (the baseline); ``"naive"``, ``"chunked"`` and
  ``"flex-compiled"`` are :func:`llmref.attention.naive_attention`,
  :func:`llmref.attention.chunked_attention` (default ``block_size=256``) and
  :func:`llmref.attention.flex_attention` with ``compiled=True``;
  ``"linear"`` is :func:`llmref.attention.linear_attention` (causal,
  ``elu + 1`` features): not the same function, but the one a linear-time
  model would run instead.
* ``"variants-sliding_window"``: the same with a causal sliding window of
  :data:`llmref.bench.memory.WINDOW` = 256 keys. SDPA and naive get the
  dense boolean ``(T, T)`` mask; chunked gets it with ``is_causal=True`` (so it
  skips the tiles above the diagonal, but not those left of the window);
  flex gets it as a ``mask_mod``, from which it builds a block mask *inside
  each call* and skips every block outside the band.
* ``"decode-step"``: one decoding step -- one new token attending to a cache of
  ``S`` tokens (``S`` is stored as ``seq_len``) -- through a whole attention
  layer with ``d_model = 2048`` and 16 query heads, DeepSeek-V2-Lite's
  attention sizes: ``"mha"``, ``"gqa"`` (4 key/value heads, the baseline) and
  ``"mqa"`` (1) are :class:`llmref.attention.MultiHeadAttention` with
  ``head_dim = 128`` and RoPE; ``"mla"`` is
  :class:`llmref.attention.MultiHeadLatentAttention` (``kv_lora_rank = 512``,
  ``qk_rope_head_dim = 64``, ``qk_nope_head_dim = v_head_dim = 128``) decoding
  from its latent cache on the weight-absorbed path. Per token and layer the
  caches hold 4096, 1024, 256 and 576 numbers. The cache is filled with random
  entries once; each timed step writes the new token into its last slot, so
  every step attends to exactly ``S`` keys.

The callables of the first two groups are built by
:func:`llmref.bench.memory.attention_call`, the same ones whose peak memory
``python -m llmref.bench.memory`` measures (into
``results/attention_memory.json``). ``"flex-compiled"`` is compiled once per
shape when the case is built, outside the timed region (tens of seconds per
shape on a CPU). Each case is then timed like the other suites: one warmup and
one probe call size the run, as many rounds as fit in
``--benchmark-max-time``, at least ``--benchmark-min-rounds``.

Sweeps (``--sweep``, see :data:`VARIANT_SWEEPS`): ``quick`` (T = 256 without
``flex-compiled``, whose compilation takes tens of seconds; decode at S = 1024);
``default`` (T = 256, 1024, 4096 with naive stopping at 1024; decode at S = 1024,
4096, 16384; most of its time goes to compiling FlexAttention and running chunked
at 4096); ``full``, the long sweep (T up to 16384 for every backend but naive,
which stops at 8192 where its scores take 2 GiB; decode up to S = 65536; tens of
minutes).

Declarations: the variant groups plot time per call against ``T`` with a ``T**2``
guide (:data:`VARIANT_LAYOUT`); the decode group against the cache length ``S``
(:data:`DECODE_LAYOUT`), with the cache's size per token as an extra column.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from llmref.bench.cases import SEQ_LEN, Case, resolve_device, sweep_name, synchronizer
from llmref.bench.layout import TIME_PER_CALL, Axis, Extra, Layout
from llmref.bench.memory import WINDOW, attention_call
from llmref.cache import KVCache

SEED = 0
VARIANT_SWEEPS: dict[str, dict[str, Any]] = {
    "quick": {
        "seq_lens": (256,),
        "decode": (1024,),
        "max_seq_len": {},
        "skip": ("flex-compiled",),
    },
    "default": {
        "seq_lens": (256, 1024, 4096),
        "decode": (1024, 4096, 16384),
        "max_seq_len": {"naive": 1024},
        "skip": (),
    },
    "full": {
        "seq_lens": (256, 512, 1024, 2048, 4096, 8192, 16384),
        "decode": (1024, 4096, 16384, 65536),
        "max_seq_len": {"naive": 8192},
        "skip": (),
    },
}
"""Per ``--sweep``: sequence lengths of the variant groups, cache lengths of the decode
group, caps per implementation and implementations left out."""
STOP_REASONS = {
    "naive": "it materialises the (B, H, T, T) float32 scores, several times over "
    "(at T = 4096 a call takes tens of seconds on 2 cores: the full sweep runs it)",
}

VARIANT_LAYOUT = Layout(
    SEQ_LEN,
    TIME_PER_CALL,
    guide="quadratic",
    description="Attention on q, k, v of shape (1, 8, T, 64), float32, with the mask "
    "named by the group; the dashed guide grows like T².",
)
DECODE_LAYOUT = Layout(
    Axis("cache_len", "cache length S", "tokens", symbol="S"),
    TIME_PER_CALL,
    guide="linear",
    extras=(Extra("cache_numbers_per_token", "cache numbers per token and layer"),),
    description="One decoding step through a whole attention layer (d_model = 2048, "
    "16 query heads): one new token attends to a cache of S tokens.",
)

MASK_IMPLEMENTATIONS = {
    "causal": ("sdpa", "naive", "chunked", "flex-compiled", "linear"),
    "sliding_window": ("sdpa", "naive", "chunked", "flex-compiled"),
}
DECODE = {"d_model": 2048, "n_heads": 16, "head_dim": 128}
MLA = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
KV_HEADS = {"mha": 16, "gqa": 4, "mqa": 1}


# -- decode steps ------------------------------------------------------------------------


class _FixedCache(KVCache):
    """A cache of ``S - 1`` given tokens plus one slot that every update overwrites.

    So a decoding step can be timed many times at the same cache length:
    :meth:`rewind` before each step puts the cache back to ``S - 1`` tokens.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, stores: str) -> None:
        super().__init__()
        self.stores = stores
        self._k = torch.cat([k, k[:, :, :1]], dim=2)
        self._v = torch.cat([v, v[:, :, :1]], dim=2)
        self.key_positions = torch.arange(self._k.shape[2], device=k.device)
        self.rewind()

    def rewind(self) -> None:
        self.seen_tokens = self._k.shape[2] - 1

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._k[:, :, -1:] = k
        self._v[:, :, -1:] = v
        self.seen_tokens = self._k.shape[2]
        return self._k, self._v

    def __len__(self) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        self.rewind()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v))


def cache_numbers(implementation: str) -> int:
    """Numbers one token stores per layer in the decode case's cache."""
    if implementation == "mla":
        return MLA["kv_lora_rank"] + MLA["qk_rope_head_dim"]
    return 2 * KV_HEADS[implementation] * DECODE["head_dim"]


def _decode_step(implementation: str) -> Callable[[int, Any], Callable[[], Any]]:
    def build(seq_len: int, device: Any) -> Callable[[], Any]:
        from llmref.attention import MultiHeadAttention, MultiHeadLatentAttention
        from llmref.position import RotaryEmbedding

        dev = resolve_device(device)
        gen = torch.Generator().manual_seed(SEED)
        d_model, heads, head_dim = DECODE["d_model"], DECODE["n_heads"], DECODE["head_dim"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            module: torch.nn.Module
            if implementation == "mla":
                module = MultiHeadLatentAttention(d_model, heads, **MLA)
                k = torch.randn(1, 1, seq_len - 1, MLA["kv_lora_rank"], generator=gen)
                v = torch.randn(1, 1, seq_len - 1, MLA["qk_rope_head_dim"], generator=gen)
                stores = "latent"
            else:
                kv_heads = KV_HEADS[implementation]
                module = MultiHeadAttention(
                    d_model,
                    heads,
                    n_kv_heads=kv_heads,
                    head_dim=head_dim,
                    rope=RotaryEmbedding(head_dim),
                )
                k, v = (
                    torch.randn(1, kv_heads, seq_len - 1, head_dim, generator=gen) for _ in range(2)
                )
                stores = "kv"
        module = module.to(dev).eval()
        cache = _FixedCache(k.to(dev), v.to(dev), stores)
        x = torch.randn(1, 1, d_model, generator=gen).to(dev)
        sync = synchronizer(dev)

        def run() -> Any:
            cache.rewind()
            with torch.no_grad():
                out = module(x, is_causal=True, cache=cache)
            sync()
            return out

        return run

    return build


# -- the sweep ---------------------------------------------------------------------------


def _variant(implementation: str, mask: str) -> Callable[[int, Any], Callable[[], Any]]:
    return functools.partial(_build_variant, implementation, mask)


def _build_variant(implementation: str, mask: str, seq_len: int, device: Any) -> Any:
    return attention_call(implementation, seq_len, mask=mask, device=device)


def variant_cases(name: str | None = None) -> list[Case]:
    """The variant cases of the named sweep, baseline first within each group."""
    spec = VARIANT_SWEEPS[sweep_name(name)]
    caps = spec["max_seq_len"]
    lens = spec["seq_lens"]
    cases = []
    for mask, impls in MASK_IMPLEMENTATIONS.items():
        group = f"variants-{mask}"
        for impl in impls:
            if impl in spec["skip"]:
                continue
            kept = [t for t in lens if t <= caps.get(impl, t)]
            for t in kept:
                stop = ""
                if t == max(kept) and t < max(lens):
                    stop = f"capped at T = {caps[impl]} in this sweep: {STOP_REASONS[impl]}"
                build = _variant(impl, mask)
                cases.append(Case(group, impl, t, "sdpa", build, stop_reason=stop))
    return cases


def decode_cases(name: str | None = None) -> list[Case]:
    """The decode-step cases of the named sweep, baseline (``gqa``) first."""
    spec = VARIANT_SWEEPS[sweep_name(name)]
    return [
        Case("decode-step", impl, s, "gqa", _decode_step(impl))
        for impl in ("gqa", "mha", "mqa", "mla")
        for s in spec["decode"]
    ]


def _extra_info(case: Case, device: Any) -> dict[str, Any]:
    info = case.extra_info(device)
    if case.group == "decode-step":
        info.update(
            batch=1,
            heads=DECODE["n_heads"],
            head_dim=DECODE["head_dim"],
            d_model=DECODE["d_model"],
            cache_len=case.seq_len,
            cache_numbers_per_token=cache_numbers(case.implementation),
            cache_bytes=4 * case.seq_len * cache_numbers(case.implementation),
        )
        del info["seq_len"]
        if case.implementation == "mla":
            info.update(MLA)
        else:
            info["kv_heads"] = KV_HEADS[case.implementation]
    else:
        info["mask"] = case.group.removeprefix("variants-")
        if info["mask"] == "sliding_window":
            info["window"] = WINDOW
    return info


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kinds = (("variant_case", variant_cases, "T"), ("decode_case", decode_cases, "S"))
    for fixture, make, symbol in kinds:
        if fixture in metafunc.fixturenames:
            cases = make(metafunc.config.getoption("sweep"))
            metafunc.parametrize(
                fixture,
                cases,
                ids=[f"{c.group}-{c.implementation}-{symbol}{c.seq_len:05d}" for c in cases],
            )


@pytest.mark.bench(VARIANT_LAYOUT)
def test_attention_variant(
    benchmark: Any, variant_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    fn = variant_case.make(bench_device)  # flex-compiled compiles here, untimed
    benchmark.group = variant_case.group
    benchmark.extra_info.update(_extra_info(variant_case, bench_device))
    assert bench_time(fn) is not None


@pytest.mark.bench(DECODE_LAYOUT)
def test_decode_step(
    benchmark: Any, decode_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    fn = decode_case.make(bench_device)
    benchmark.group = decode_case.group
    benchmark.extra_info.update(_extra_info(decode_case, bench_device))
    assert bench_time(fn) is not None
