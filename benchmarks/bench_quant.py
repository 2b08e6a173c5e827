"""Quantization benchmarks: quantized linear layers and quantize throughput.

Group ``"quant-linear-<N>"`` times ``y = layer(x)`` for a square ``N x N``
layer (no bias) on float32 activations ``x`` of shape ``(M, N)`` under
:func:`torch.inference_mode`, against the number of tokens ``M``
(:data:`LINEAR_LAYOUT`). Implementations:

* ``fp32-linear`` (the baseline): :class:`torch.nn.Linear`.
* ``llmref-int8`` / ``llmref-int4``: :class:`llmref.quant.QuantLinear` with
  ``backend="auto"`` (int8 per channel; int4 symmetric, ``group_size=128``).
* ``llmref-<kernel>``: the same layers pinned to one kernel of
  :mod:`llmref.quant.kernels` (``int8_weight``, ``int8_dynamic``,
  ``int4_tinygemm``, ``int4_w4a8`` ...) and ``llmref-nf4-reference``
  (dequantize + matmul). ``int4_w4a8`` quantizes the activations to int8 per
  group of 128 inside the kernel; it is skipped where it cannot be built (no C
  compiler, no AVX512-VNNI).
* ``torchao-int8wo`` / ``torchao-int4wo``: torchao's ``Int8WeightOnlyConfig``
  and ``IntxWeightOnlyConfig(int4, PerGroup(128))`` (torchao's own int4
  weight-only config needs CUDA or the ``mslk`` package on CPU).
* ``bnb-int8`` / ``bnb-nf4``: bitsandbytes' ``Linear8bitLt`` (LLM.int8
  without outliers, ``threshold=0``) and ``Linear4bit`` (NF4, float32 compute).

Group ``"quant-quantize"`` measures the throughput of
:func:`llmref.quant.quantize` on a float32 ``(256, 4096)`` weight for every
registered format, in millions of weights per second (:data:`QUANTIZE_LAYOUT`).

A few pinned kernels are slow beyond a few tokens and are capped
(:data:`MAX_TOKENS`, with the reason the summary prints): ``int4_tinygemm``
with float32 activations, the ``int8_weight`` kernel, the NF4 reference and
torchao's unpacked int4.

Third-party implementations are skipped when their package is missing.
Sweeps: ``quick`` (N = 2048, M = 1), ``default`` (N in 2048, 4096; M in 1, 16,
256; about two minutes on 2 CPU cores) and ``full`` (adds M = 1024).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from llmref.bench.layout import STOP_KEY, TIME_PER_CALL, Axis, Extra, Layout, Metric
from llmref.quant import FORMATS, QuantLinear, _w4a8, quantize

SIZES = {"quick": (2048,), "default": (2048, 4096), "full": (2048, 4096)}
TOKENS = {"quick": (1,), "default": (1, 16, 256), "full": (1, 16, 256, 1024)}
BASELINE = "fp32-linear"
QUANTIZE_SHAPE = (256, 4096)
# Pinned kernels that are slow beyond a few tokens (float32 activations through
# kernels tuned for bfloat16; dequantize-per-call references) only run up to:
MAX_TOKENS = {
    "llmref-int8_weight": 16,
    "llmref-int4_tinygemm": 1,
    "llmref-nf4-reference": 16,
    "torchao-int4wo": 16,
}
STOP_REASONS = {
    "llmref-int8_weight": "torch's int8 weight-only kernel is slow on CPU beyond a few tokens",
    "llmref-int4_tinygemm": "the tinygemm kernel rounds float32 activations through bfloat16 "
    "and is slow beyond one token",
    "llmref-nf4-reference": "it dequantizes the whole weight on every call",
    "torchao-int4wo": "torchao's CPU int4 weight-only layer unpacks the weight on every call",
}

LINEAR_LAYOUT = Layout(
    Axis("tokens", "tokens M (rows of x)", "tokens", symbol="M"),
    TIME_PER_CALL,
    extras=(Extra("bits_per_weight", "bits per weight"),),
    description="y = layer(x) for a square N x N layer without bias, float32 activations "
    "x of shape (M, N).",
)
QUANTIZE_LAYOUT = Layout(
    Axis("rows", "weight rows", symbol="rows"),
    Metric("quantize throughput", "Mweights/s", per="elements", scale=1e-6, higher_is_better=True),
    series="format",
    extras=(Extra("bits_per_weight", "bits per weight"),),
    description="llmref.quant.quantize of a float32 (256, 4096) weight, per format.",
)


@functools.lru_cache(maxsize=2)
def _weight(n: int) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(n, n, bias=False)
    return lin.eval().requires_grad_(False)


def _llmref(fmt: str, backend: str, **options: Any) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        if backend == "int4_w4a8" and _w4a8.library() is None:
            pytest.skip(f"the W4A8 kernel is unavailable: {_w4a8.unavailable_reason()}")
        return QuantLinear.from_linear(_weight(n), fmt, backend=backend, **options)

    return build


def _torchao(kind: str) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        tq = pytest.importorskip("torchao.quantization")
        model = nn.Sequential(nn.Linear(n, n, bias=False))
        model[0].weight.data.copy_(_weight(n).weight)
        if kind == "int8":
            config = tq.Int8WeightOnlyConfig()
        else:
            config = tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=tq.PerGroup(128))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq.quantize_(model, config)
        return model

    return build


def _bnb(kind: str) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        bnb = pytest.importorskip("bitsandbytes")
        w = _weight(n).weight.data.clone()
        if kind == "int8":
            layer = bnb.nn.Linear8bitLt(n, n, bias=False, has_fp16_weights=False, threshold=0.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                n, n, bias=False, quant_type="nf4", compute_dtype=torch.float32
            )
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
        return layer.to("cpu")

    return build


IMPLEMENTATIONS: dict[str, Callable[[int], nn.Module]] = {
    BASELINE: _weight,
    "llmref-int8": _llmref("int8", "auto"),
    "llmref-int8_weight": _llmref("int8", "int8_weight"),
    "llmref-int8_dynamic": _llmref("int8", "int8_dynamic"),
    "llmref-int4": _llmref("int4", "auto", group_size=128),
    "llmref-int4_tinygemm": _llmref("int4", "int4_tinygemm", group_size=128),
    "llmref-int4_w4a8": _llmref("int4", "int4_w4a8", group_size=128),
    "llmref-nf4-reference": _llmref("nf4", "reference"),
    "torchao-int8wo": _torchao("int8"),
    "torchao-int4wo": _torchao("int4"),
    "bnb-int8": _bnb("int8"),
    "bnb-nf4": _bnb("nf4"),
}


@dataclass(frozen=True)
class LinearCase:
    """One quantized-linear measurement: implementation x layer size x tokens."""

    implementation: str
    size: int
    tokens: int

    @property
    def group(self) -> str:
        return f"quant-linear-{self.size}"

    @property
    def id(self) -> str:
        return f"{self.implementation}-N{self.size}-T{self.tokens:04d}"


def _sweep(config: pytest.Config) -> str:
    from llmref.bench.cases import sweep_name

    return sweep_name(config.getoption("sweep"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "linear_case" in metafunc.fixturenames:
        name = _sweep(metafunc.config)
        cases = [
            LinearCase(impl, n, m)
            for n in SIZES[name]
            for impl in IMPLEMENTATIONS
            for m in TOKENS[name]
            if m <= MAX_TOKENS.get(impl, m)
        ]
        metafunc.parametrize("linear_case", cases, ids=[c.id for c in cases])
    if "fmt" in metafunc.fixturenames:
        metafunc.parametrize("fmt", list(FORMATS))


@functools.lru_cache(maxsize=16)
def _module(implementation: str, size: int, device: str) -> nn.Module:
    return IMPLEMENTATIONS[implementation](size).to(device)


def _stop_reason(implementation: str, tokens: int, sweep: str) -> str:
    """Why a capped implementation has no case beyond ``tokens`` (empty if it has)."""
    cap = MAX_TOKENS.get(implementation)
    kept = [m for m in TOKENS[sweep] if cap is None or m <= cap]
    if cap is None or tokens != max(kept) or tokens == max(TOKENS[sweep]):
        return ""
    return f"capped at M = {cap}: {STOP_REASONS[implementation]}"


@pytest.mark.bench(LINEAR_LAYOUT)
def test_quant_linear(
    benchmark: Any,
    linear_case: LinearCase,
    bench_device: Any,
    bench_time: Callable[..., Any],
    pytestconfig: pytest.Config,
) -> None:
    from llmref.bench.cases import synchronizer

    if linear_case.implementation.startswith(("bnb", "torchao")) and bench_device.type != "cpu":
        pytest.skip("third-party layers are benchmarked on the CPU only")
    module = _module(linear_case.implementation, linear_case.size, str(bench_device))
    x = torch.randn(linear_case.tokens, linear_case.size, device=bench_device)
    sync = synchronizer(bench_device)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            y = module(x)
        sync()
        return y

    benchmark.group = linear_case.group
    info: dict[str, Any] = {
        "implementation": linear_case.implementation,
        "tokens": linear_case.tokens,
        "in_features": linear_case.size,
        "out_features": linear_case.size,
        "dtype": "float32",
        "device": str(bench_device),
        "baseline": BASELINE,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    stop = _stop_reason(linear_case.implementation, linear_case.tokens, _sweep(pytestconfig))
    if stop:
        info[STOP_KEY] = stop
    if isinstance(module, QuantLinear):
        info.update(
            fmt=module.fmt,
            kernel=module.kernel.name,
            bits_per_weight=module.qweight.bits_per_weight,
        )
    benchmark.extra_info.update(info)
    out = bench_time(run)
    assert out.shape == (linear_case.tokens, linear_case.size)


@pytest.mark.bench(QUANTIZE_LAYOUT)
def test_quantize_throughput(
    benchmark: Any,
    fmt: str,
    bench_device: Any,
    bench_time: Callable[..., Any],
    bench_log: Callable[[str], None],
) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*QUANTIZE_SHAPE, generator=g).to(bench_device)
    benchmark.group = "quant-quantize"
    benchmark.extra_info.update(
        {
            "format": fmt,
            "rows": QUANTIZE_SHAPE[0],
            "elements": w.numel(),
            "shape": list(QUANTIZE_SHAPE),
            "dtype": "float32",
            "device": str(bench_device),
            "baseline": "int8",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    qt = bench_time(lambda: quantize(w, fmt))
    benchmark.extra_info["bits_per_weight"] = qt.bits_per_weight
    if not benchmark.disabled:
        bench_log(f"{w.numel() / benchmark.stats.stats.median / 1e6:.1f} Mweights/s")
