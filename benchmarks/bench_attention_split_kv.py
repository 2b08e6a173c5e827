"""Split-KV decoding (Flash-Decoding) against unsplit attention: one query, a long cache.

Groups ``"split-kv-hkv<H_kv>"`` (``H_kv`` = 1 and 2 key/value heads), float32,
inputs drawn with a fixed seed: one decoding step, ``q`` of shape ``(1, 8, 1, 64)``
against keys and values of shape ``(1, H_kv, S, 64)``:

* ``"sdpa"`` (the baseline): :func:`llmref.attention.sdpa_attention`;
* ``"chunked"``: :func:`llmref.attention.chunked_attention`, unsplit, with its
  default ``block_size=256`` (``S / 256`` key tiles, one after the other);
* ``"chunked-one-tile"``: the same with ``block_size=S``: a single tile, the
  fewest PyTorch calls the unsplit kernel can make;
* ``"split_kv-<n>"``: :func:`llmref.attention.split_kv_attention` with
  ``num_splits=n`` (n = 4, 16, 64), the splits run as extra key/value heads of one
  chunked call and merged by log-sum-exp.

Sweeps (``--sweep``): ``quick`` S = 16384; ``default`` S = 4096, 16384; ``full``
S = 4096, 16384, 65536. The declaration (:data:`SPLIT_KV_LAYOUT`) plots time per
call against the cache length ``S``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from llmref.bench.cases import Case, resolve_device, sweep_name, synchronizer
from llmref.bench.layout import TIME_PER_CALL, Axis, Layout

SEED = 0
HEADS, HEAD_DIM = 8, 64
SPLITS = (4, 16, 64)
SWEEPS = {"quick": (16384,), "default": (4096, 16384), "full": (4096, 16384, 65536)}
"""Cache lengths per ``--sweep``."""

SPLIT_KV_LAYOUT = Layout(
    Axis("cache_len", "cache length S", "tokens", symbol="S"),
    TIME_PER_CALL,
    guide="linear",
    description="One decoding step: q (1, 8, 1, 64) against a float32 cache of S keys "
    "and values with the group's number of key/value heads.",
)


def _build(implementation: str, kv_heads: int, cache_len: int, device: Any) -> Callable[[], Any]:
    from llmref.attention import chunked_attention, sdpa_attention, split_kv_attention

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(1, HEADS, 1, HEAD_DIM, generator=gen).to(dev)
    k, v = (torch.randn(1, kv_heads, cache_len, HEAD_DIM, generator=gen).to(dev) for _ in "kv")
    sync = synchronizer(dev)
    fn: Callable[[], torch.Tensor]
    if implementation == "sdpa":
        fn = functools.partial(sdpa_attention, q, k, v)
    elif implementation == "chunked":
        fn = functools.partial(chunked_attention, q, k, v)
    elif implementation == "chunked-one-tile":
        fn = functools.partial(chunked_attention, q, k, v, block_size=cache_len)
    else:
        n = int(implementation.removeprefix("split_kv-"))
        fn = functools.partial(split_kv_attention, q, k, v, num_splits=n)

    def run() -> Any:
        with torch.no_grad():
            out = fn()
        sync()
        return out

    return run


def split_kv_cases(name: str | None = None) -> list[Case]:
    """The cases of the named sweep, baseline (``sdpa``) first in each group."""
    impls = ("sdpa", "chunked", "chunked-one-tile", *(f"split_kv-{n}" for n in SPLITS))
    return [
        Case(f"split-kv-hkv{h}", impl, s, "sdpa", functools.partial(_build, impl, h))
        for h in (1, 2)
        for impl in impls
        for s in SWEEPS[sweep_name(name)]
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "split_case" in metafunc.fixturenames:
        cases = split_kv_cases(metafunc.config.getoption("sweep"))
        ids = [f"{c.group}-{c.implementation}-S{c.seq_len:05d}" for c in cases]
        metafunc.parametrize("split_case", cases, ids=ids)


@pytest.mark.bench(SPLIT_KV_LAYOUT)
def test_split_kv_decode(
    benchmark: Any, split_case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    fn = split_case.make(bench_device)
    benchmark.group = split_case.group
    info = split_case.extra_info(bench_device)
    del info["seq_len"]
    info.update(
        batch=1,
        heads=HEADS,
        head_dim=HEAD_DIM,
        kv_heads=int(split_case.group.removeprefix("split-kv-hkv")),
        cache_len=split_case.seq_len,
    )
    benchmark.extra_info.update(info)
    assert bench_time(fn) is not None
