"""Quantized linear layers with their weights streamed from memory, as in a model.

Group ``"quant-stream-<N>"`` times ``y = layer(x)`` for a square ``N x N`` layer (no
bias, float32 activations ``x`` of shape ``(M, N)``, :func:`torch.inference_mode`), each
call on the next of a rotating set of distinct copies of the layer that together hold
at least four times the last-level cache (:func:`llmref.bench.stream.rotating_layers`):
every call reads its weight from DRAM, as the layers of a model do, instead of finding
an 8-16 MB quantized weight still in a 32 MiB cache (``bench_quant.py`` times one
weight over and over: its numbers are cache-resident). Beside the time the summary
lists the weight bytes per call, the achieved GB/s and its share of the machine's read
bandwidth, measured once per run with :func:`llmref.bench.stream.read_bandwidth`.

Implementations: ``fp32-linear`` (the baseline, :class:`torch.nn.Linear`) and
:class:`llmref.quant.QuantLinear` with ``backend="auto"`` (the exact kernels
``int4_w4a32``/``int8_w8a32`` where they build) for int4 with groups of 128 and 32,
ggml ``q4_1``, int8 per channel and ggml ``q8_0``, plus the bfloat16-activation
kernels ``int4_tinygemm_bf16`` and ``int8_weight_bf16`` for comparison.
``LLMREF_CPU_ISA=avx2`` forces the exact kernels' AVX2 path.

Sweeps: ``quick`` (N = 2048, M = 1), ``default`` (N = 4096, M in 1, 16, 128) and
``full`` (adds M = 512).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from llmref.bench.layout import TIME_PER_CALL, Axis, Extra, Layout
from llmref.bench.stream import layer_bytes, read_bandwidth, rotating_layers
from llmref.quant import QuantLinear, quantize

SIZES = {"quick": (2048,), "default": (4096,), "full": (4096,)}
TOKENS = {"quick": (1,), "default": (1, 16, 128), "full": (1, 16, 128, 512)}
BASELINE = "fp32-linear"

LAYOUT = Layout(
    Axis("tokens", "tokens M (rows of x)", "tokens", symbol="M"),
    TIME_PER_CALL,
    extras=(
        Extra("weight_bytes", "weight bytes per call", "MB", 1e-6),
        Extra("layers", "layers in the rotating set"),
        Extra("gbps", "achieved weight bandwidth", "GB/s"),
        Extra("bandwidth_share", "share of the read bandwidth", "%", 100.0),
    ),
    description="y = layer(x) for a square N x N layer, float32 x of shape (M, N), each "
    "call on the next of distinct copies holding >= 4x the last-level cache (weights "
    "streamed from DRAM).",
)
pytestmark = pytest.mark.bench(LAYOUT)


def _float(n: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(n, n, bias=False).requires_grad_(False)


def _quant(fmt: str, backend: str, **options: Any) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        w = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
        return QuantLinear(quantize(w, fmt, **options), backend=backend)

    return build


IMPLEMENTATIONS: dict[str, Callable[[int], nn.Module]] = {
    BASELINE: _float,
    "llmref-int4-g128": _quant("int4", "auto", group_size=128),
    "llmref-int4-g32": _quant("int4", "auto", group_size=32),
    "llmref-q4_1": _quant("q4_1", "auto"),
    "llmref-int8": _quant("int8", "auto"),
    "llmref-q8_0": _quant("q8_0", "auto"),
    "llmref-int4-g128-int4_tinygemm_bf16": _quant("int4", "int4_tinygemm_bf16", group_size=128),
    "llmref-int8-int8_weight_bf16": _quant("int8", "int8_weight_bf16"),
}


def _sweep(config: pytest.Config) -> str:
    from llmref.bench.cases import sweep_name

    return sweep_name(config.getoption("sweep"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stream_case" in metafunc.fixturenames:
        name = _sweep(metafunc.config)
        cases = [
            (impl, n, m) for n in SIZES[name] for impl in IMPLEMENTATIONS for m in TOKENS[name]
        ]
        ids = [f"{impl}-N{n}-T{m:04d}" for impl, n, m in cases]
        metafunc.parametrize("stream_case", cases, ids=ids)


@functools.lru_cache(maxsize=1)
def _layers(implementation: str, size: int) -> list[nn.Module]:
    return rotating_layers(lambda: IMPLEMENTATIONS[implementation](size))


@functools.lru_cache(maxsize=1)
def _bandwidth() -> float:
    return read_bandwidth()


def test_quant_stream(
    benchmark: Any,
    bench_time: Callable[[Callable[[], Any]], Any],
    bench_device: torch.device,
    stream_case: tuple[str, int, int],
) -> None:
    implementation, size, tokens = stream_case
    if bench_device.type != "cpu":
        pytest.skip("the rotating set is sized by the CPU's last-level cache")
    layers = _layers(implementation, size)
    bandwidth = _bandwidth()
    x = torch.randn(tokens, size, generator=torch.Generator().manual_seed(1))
    turn = itertools.cycle(layers)
    benchmark.group = f"quant-stream-{size}"
    nbytes = layer_bytes(layers[0])
    benchmark.extra_info.update(
        implementation=implementation,
        tokens=tokens,
        baseline=BASELINE,
        weight_bytes=nbytes,
        layers=len(layers),
        read_bandwidth_gbps=bandwidth / 1e9,
    )
    if isinstance(layers[0], QuantLinear):
        benchmark.extra_info["kernel"] = layers[0].kernel.name

    def call() -> torch.Tensor:
        return next(turn)(x)

    with torch.inference_mode():
        for layer in layers:  # kernels repack on first use: not part of the timing
            layer(x)
        bench_time(call)
    median = benchmark.stats.stats.median if not benchmark.disabled else None
    if median:
        benchmark.extra_info["gbps"] = nbytes / median / 1e9
        benchmark.extra_info["bandwidth_share"] = nbytes / median / bandwidth
