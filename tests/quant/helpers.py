"""Shared inputs, per-format error bounds and linear-layer references for the quantization tests.

Every comparison goes through :mod:`llmref.testing` (the one equality policy); the
helpers below only build the float64 references and the magnitudes its bounds need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmref.quant import FORMATS, QuantizedTensor, format_values
from llmref.quant.formats import e8m0_to_float
from llmref.quant.formats.bnb import _absmax
from llmref.testing import (
    LOW_PRECISION_FLOOR_ULPS,
    assert_low_precision,
    assert_within,
    eps,
    matmul_scale,
)

# Options that make every format work on a (rows, 256) tensor.
SHAPE = (8, 256)


def randn(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def db(value: float) -> float:
    """``10 log10(value)``: error ratios compared in decibels, as SQNR is."""
    return 10 * math.log10(value)


def linear_reference(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x W^T + b`` in float64 from the same inputs, and the magnitude it sums.

    The scale is ``|x| |W|^T + |b|`` (:func:`~llmref.testing.matmul_scale`): the
    rounding of any summation order of the products and the bias is a few
    ``eps`` of it.
    """
    ref = x.detach().double() @ w.detach().double().T
    scale = matmul_scale(x, w.T)
    if b is not None:
        ref = ref + b.detach().double()
        scale = scale + b.detach().double().abs()
    return ref, scale


def assert_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    what: str = "x W^T + b",
) -> None:
    """A float32/float64 ``x W^T + b`` against the float64 one, within ``c eps |x||W|^T``."""
    ref, scale = linear_reference(x, w, b)
    assert_within(y, ref, scale=scale, dtype=y.dtype, what=what)


def assert_linear_low_precision(
    y: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    what: str = "x W^T + b",
) -> None:
    """A product computed in ``dtype`` (returned in float32) by FlashAttention's rule.

    The naive reference is ``F.linear`` with ``x``, ``W`` and ``b`` rounded to
    ``dtype``; the floor is that of :func:`~llmref.testing.assert_low_precision`
    for ``dtype`` (not for the float32 the kernel hands back).
    """
    ref, _ = linear_reference(x, w, b)
    naive = F.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))
    floor = LOW_PRECISION_FLOOR_ULPS * eps(dtype) * float(ref.abs().max())
    assert_low_precision(y, ref, naive, floor=floor, what=what)


def assert_error_within(
    approx: torch.Tensor,
    exact: torch.Tensor,
    bound: torch.Tensor | float,
    *,
    scale: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
    what: str = "quantization error",
) -> None:
    """``|approx - exact| <= bound`` up to the rounding of computing ``approx``.

    ``bound`` is the format's (or method's) exact error bound; what the
    dequantization's own float arithmetic adds is at most ``c eps(dtype)
    scale`` (:func:`~llmref.testing.assert_within` on the excess), with
    ``scale`` the magnitude the dequantization computes with.
    """
    err = (approx.detach().double() - exact.detach().double()).abs()
    excess = (err - torch.as_tensor(bound, dtype=torch.float64)).clamp(min=0)
    assert_within(excess, torch.zeros_like(excess), scale=scale, dtype=dtype, what=what)


def int_weight_magnitude(qt: QuantizedTensor) -> torch.Tensor:
    """Per weight, the magnitude an integer kernel computes with: ``|w| + 2 (2^bits - 1) s``.

    The int4 kernels keep the codes unsigned (``0 .. 2^bits - 1``) and apply the zero
    point (or the float offset) separately, so each term of their sums is ``|x|`` times
    up to ``|c s| + |z s| <= |w| + 2 (2^bits - 1) s``, not ``|x| |w|``: a weight near zero
    in a group with a large scale rounds like one of ``(2^bits - 1) s``.
    """
    w = qt.dequantize(dtype=torch.float64).abs()
    g = int(qt.options["group_size"])
    s = qt["scale"].double().abs().reshape(-1, 1).expand(-1, g).reshape(qt.shape)
    return w + 2 * (2 ** int(qt.options["bits"]) - 1) * s


def half_gap(fmt: str) -> float:
    """Half the largest gap between neighbouring grid values of a format."""
    v = format_values(fmt)
    return float((v[1:] - v[:-1]).max()) / 2


def group_size(qt: QuantizedTensor) -> int:
    return int(qt.options.get("group_size") or qt.shape[-1])


def group_absmax(x: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    """``max |x|`` of each element's group, float64, shape of ``x``.

    The magnitude a group's quantize-dequantize arithmetic works at (its scale,
    codes times scale, plus an offset): the scale of its float rounding.
    """
    g = group_size(qt)
    a = x.detach().double().abs().reshape(-1, g).amax(dim=1, keepdim=True)
    return a.expand(-1, g).reshape(x.shape)


def error_bound(qt: QuantizedTensor) -> torch.Tensor | None:
    """Largest |x - dequantize(qt)| per element in exact arithmetic (None: no elementwise bound).

    The float rounding of computing ``dequantize(qt)`` comes on top: compare with
    :func:`assert_error_within` and ``scale=group_absmax(x, qt)``.
    """
    kind = FORMATS[qt.fmt].kind
    g = group_size(qt)

    def per_group(s: torch.Tensor) -> torch.Tensor:
        return s.reshape(-1, 1).expand(-1, g).reshape(qt.shape).to(torch.float64)

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
