"""Shared inputs and per-format error bounds for the quantization tests."""

from __future__ import annotations

import torch

from llmref.quant import FORMATS, QuantizedTensor, format_values
from llmref.quant.formats import _absmax, e8m0_to_float

# Options that make every format work on a (rows, 256) tensor.
SHAPE = (8, 256)


def randn(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def half_gap(fmt: str) -> float:
    """Half the largest gap between neighbouring grid values of a format."""
    v = format_values(fmt)
    return float((v[1:] - v[:-1]).max()) / 2


def error_bound(qt: QuantizedTensor) -> torch.Tensor | None:
    """Largest allowed |x - dequantize(qt)| per element (None: no elementwise bound)."""
    kind = FORMATS[qt.fmt].meta["kind"]
    g = int(qt.options.get("group_size") or qt.shape[-1])
    slack = 1 + 1e-5

    def per_group(s: torch.Tensor) -> torch.Tensor:
        return s.reshape(-1, 1).expand(-1, g).reshape(qt.shape).to(torch.float64) * slack

    if kind == "int":
        scale = qt["scale"]
        if "zero_point" in qt.tensors:  # the zero point's rounding can shift the range by s/2
            return per_group(scale)
        return per_group(scale / 2)
    if kind == "codebook":
        return per_group(_absmax(qt) * half_gap(qt.fmt))
    if qt.fmt == "fp4_e2m1":
        return per_group(qt["scale"] * half_gap(qt.fmt))
    if qt.fmt.startswith("fp8"):
        return None  # relative bound, checked separately
    if kind == "mx":
        if qt.fmt == "nvfp4":
            s = qt["block_scale"].float()
            if "tensor_scale" in qt.tensors:
                s = s * qt["tensor_scale"]
            return per_group(s * half_gap("nvfp4"))
        emax = {"mxfp8_e4m3": 8, "mxfp8_e5m2": 15, "mxfp6_e2m3": 2, "mxfp6_e3m2": 4, "mxfp4": 2}
        vmax = float(format_values(qt.fmt).max())
        clip = 2.0 ** (emax[qt.fmt] + 1) - vmax  # FLOOR scale: block max can exceed vmax * 2^e
        return per_group(e8m0_to_float(qt["scale"]) * max(half_gap(qt.fmt), clip))
    if qt.fmt == "q8_0":
        # q = round(x / d) uses the float32 d; the stored float16 d is off by <= 2^-11 d
        return per_group(qt["d"].float().abs() * (0.5 + 128 * 2**-11))
    if qt.fmt == "q4_0":
        return per_group(qt["d"].float().abs() * (1 + 2**-7))
    if qt.fmt == "q4_1":
        d, m = qt["d"].float(), qt["m"].float()
        return per_group(d * 0.5 + m.abs() * 2**-10 + d * 16 * 2**-10)
    return None  # q4_k: SQNR check only
