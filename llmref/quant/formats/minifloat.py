"""Floating-point element formats: OCP FP4 (E2M1), FP8 (E4M3, E5M2), OCP MX and NVFP4.

Each element is a :class:`~llmref.quant.primitives.MiniFloat`; the families differ
in their scales: float32 per group (``fp4_e2m1``), per tensor (FP8), a power of two
per 32 (MX, E8M0) or an FP8 E4M3 number per 16 under a float32 tensor scale (NVFP4).
"""

from __future__ import annotations

from typing import Any

import torch

from ..packing import pack_codes, unpack_codes
from ..primitives import (
    _EPS,
    MiniFloat,
    check_float_input,
    group_length,
    minifloat_decode,
    minifloat_encode,
)
from ..registry import register_format
from ..tensor import QuantizedTensor
from ._groups import _flat_groups
from .options import FP4Options, FP8Options, MXOptions, NVFP4Options

__all__ = ["FP4_E2M1_VALUES", "e8m0_to_float"]


E2M1 = MiniFloat(2, 1)
E2M3 = MiniFloat(2, 3)
E3M2 = MiniFloat(3, 2)

FP4_E2M1_VALUES = E2M1.values()
"""The 16 OCP FP4 (E2M1) values in code order: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""


def _scaled_minifloat(xg: torch.Tensor, fmt: MiniFloat) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (xg.abs().amax(dim=1) / fmt.max).clamp(min=_EPS)
    codes = minifloat_encode(xg * (1.0 / scale).reshape(-1, 1), fmt)
    return codes, scale


@register_format(
    "fp4_e2m1",
    paper="ocp2023mx",
    reference="llmref.quant.primitives.minifloat_encode",
    third_party="torchao.prototype.mx_formats.kernels.f32_to_f4_unpacked",
    dequantize=lambda qt: (
        minifloat_decode(unpack_codes(qt["codes"], 4, qt.numel), E2M1).reshape(
            -1, int(qt.options["group_size"])
        )
        * qt["scale"].reshape(-1, 1)
    ),
    values=lambda: FP4_E2M1_VALUES,
    bits=4,
    granularity="group",
    group_size=32,
    kind="float",
    options=FP4Options,
)
def quantize_fp4_e2m1(x: torch.Tensor, *, group_size: int = 32) -> QuantizedTensor:
    """OCP FP4 (E2M1) elements with a float32 absmax scale per group.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor to quantize.
    group_size : int, default 32
        Elements per scale; must divide the last dimension.

    Returns
    -------
    QuantizedTensor
        ``codes`` (E2M1 bit patterns: sign, 2 exponent bits with bias 1,
        1 mantissa bit; packed low nibble first) and ``scale`` (float32,
        ``amax / 6``).

    Notes
    -----
    The E2M1 values are ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}. Scaled values are
    rounded to the nearest (ties to even mantissa). With a float32 scale
    this is the "ideal" FP4 block format; ``mxfp4`` restricts the scale to
    a power of two and ``nvfp4`` to an FP8 E4M3 number.

    References
    ----------
    :cite:t:`ocp2023mx`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(2, 64), "fp4_e2m1").bits_per_weight
    5.0
    """
    check_float_input("x", x)
    g = group_length(x.shape, group_size=group_size)
    codes, scale = _scaled_minifloat(_flat_groups(x, g), E2M1)
    return QuantizedTensor(
        "fp4_e2m1",
        x.shape,
        x.dtype,
        {"codes": pack_codes(codes, 4), "scale": scale},
        {"group_size": g},
    )


# ------------------------------------------------------------------- FP8
_FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _make_fp8_format(name: str, dtype: torch.dtype) -> None:
    fmax = float(torch.finfo(dtype).max)

    def quantize_fp8(
        x: torch.Tensor,
        *,
        group_size: int | None = None,
        granularity: str | None = "tensor",
        scaled: bool = True,
    ) -> QuantizedTensor:
        check_float_input("x", x)
        if group_size is not None and granularity == "tensor":
            granularity = "group"
        g = group_length(x.shape, granularity=granularity, group_size=group_size)
        xg = _flat_groups(x, g)
        if scaled:
            scale = (xg.abs().amax(dim=1) / fmax).clamp(min=_EPS)
            xs = xg / scale.reshape(-1, 1)
        else:
            scale, xs = torch.ones(xg.shape[0], device=x.device), xg
        codes = xs.clamp(-fmax, fmax).to(dtype).reshape(x.shape)
        tensors = {"codes": codes}
        if scaled:
            tensors["scale"] = scale
        return QuantizedTensor(
            name, x.shape, x.dtype, tensors, {"group_size": g, "scaled": bool(scaled)}
        )

    def dequant(qt: QuantizedTensor) -> torch.Tensor:
        v = qt["codes"].to(torch.float32)
        if "scale" not in qt.tensors:
            return v
        return v.reshape(-1, int(qt.options["group_size"])) * qt["scale"].reshape(-1, 1)

    def values() -> torch.Tensor:
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()

    quantize_fp8.__name__ = quantize_fp8.__qualname__ = f"quantize_{name}"
    quantize_fp8.__doc__ = _FP8_DOC.format(name=name, dtype=str(dtype), fmax=fmax)
    register_format(
        name,
        paper="micikevicius2022fp8",
        reference=f"torch.Tensor.to({dtype})",
        third_party=f"torch.Tensor.to({dtype})",
        dequantize=dequant,
        values=values,
        bits=8,
        granularity="tensor",
        group_size=None,
        kind="float",
        options=FP8Options,
    )(quantize_fp8)


_FP8_DOC = """FP8 ({name}): saturating cast to ``{dtype}``, optionally scaled.

Parameters
----------
x : torch.Tensor
    Floating tensor to quantize.
group_size : int, optional
    Elements per scale along the last dimension (implies
    ``granularity="group"``).
granularity : {{"tensor", "channel", "group"}}, default "tensor"
    One float32 scale ``amax / {fmax:g}`` per tensor, row or group.
scaled : bool, default True
    With ``False`` there is no scale: values are cast directly (and
    saturate at ±{fmax:g}), exactly ``x.clamp(-max, max).to({dtype})``.

Returns
-------
QuantizedTensor
    ``codes`` (a ``{dtype}`` tensor of ``x``'s shape) and ``scale``.

Notes
-----
The cast rounds to nearest even. Out-of-range values saturate to the
largest finite value instead of becoming Inf/NaN (``x / scale`` never
exceeds it when scaled).

References
----------
:cite:t:`micikevicius2022fp8`

Examples
--------
>>> import torch
>>> from llmref.quant import quantize, dequantize
>>> x = torch.tensor([[1000.0, 0.3, -2.0]])
>>> dequantize(quantize(x, "{name}", scaled=False)).tolist()[0][0] == {fmax}
True
"""

for _name, _dt in _FP8.items():
    _make_fp8_format(_name, _dt)


# --------------------------------------------------------------------- MX
_MX_ELEMENTS: dict[str, tuple[Any, int]] = {
    # name: (torch float8 dtype or MiniFloat, emax of the element format)
    "mxfp8_e4m3": (torch.float8_e4m3fn, 8),
    "mxfp8_e5m2": (torch.float8_e5m2, 15),
    "mxfp6_e2m3": (E2M3, 2),
    "mxfp6_e3m2": (E3M2, 4),
    "mxfp4": (E2M1, 2),
}


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """Value of E8M0 (biased power-of-two) scales: ``2^(s - 127)``; 255 is NaN.

    Parameters
    ----------
    scale : torch.Tensor
        uint8 biased exponents.

    Returns
    -------
    torch.Tensor
        float32.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.formats import e8m0_to_float
    >>> e8m0_to_float(torch.tensor([127, 128, 120, 255], dtype=torch.uint8))
    tensor([1.0000, 2.0000, 0.0078,    nan])
    """
    e = scale.to(torch.int32)
    v = torch.ldexp(torch.ones(e.shape, device=e.device), (e - 127).to(torch.float32))
    return torch.where(e == 255, torch.full_like(v, float("nan")), v)


def _make_mx_format(name: str, elem: Any, emax: int) -> None:
    is_fp8 = isinstance(elem, torch.dtype)
    bits = 8 if is_fp8 else elem.bits
    fmax = float(torch.finfo(elem).max) if is_fp8 else elem.max

    def quantize_mx(x: torch.Tensor, *, group_size: int = 32) -> QuantizedTensor:
        check_float_input("x", x)
        g = group_length(x.shape, group_size=group_size)
        xg = _flat_groups(x, g)
        amax = xg.abs().amax(dim=1)
        # floor(log2(amax)) from the float32 exponent field (OCP "minimally supported" rule)
        pow2 = ((amax.view(torch.int32) >> 23) & 0xFF) - 127
        biased = ((pow2 - emax).clamp(-127, 127) + 127).to(torch.uint8)
        scale = (biased.to(torch.int32) << 23).view(torch.float32).clamp(min=_EPS)
        xs = xg / scale.reshape(-1, 1)
        if is_fp8:
            codes = xs.clamp(-fmax, fmax).to(elem).reshape(x.shape)
        else:
            codes = pack_codes(minifloat_encode(xs, elem), bits)
        return QuantizedTensor(
            name, x.shape, x.dtype, {"codes": codes, "scale": biased}, {"group_size": g}
        )

    def dequant(qt: QuantizedTensor) -> torch.Tensor:
        if is_fp8:
            v = qt["codes"].to(torch.float32)
        else:
            v = minifloat_decode(unpack_codes(qt["codes"], bits, qt.numel), elem)
        return v.reshape(-1, int(qt.options["group_size"])) * e8m0_to_float(qt["scale"]).reshape(
            -1, 1
        )

    def values() -> torch.Tensor:
        if is_fp8:
            return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(elem).float()
        return elem.values()

    elem_name = str(elem) if is_fp8 else f"FP{bits} E{elem.ebits}M{elem.mbits}"
    quantize_mx.__name__ = quantize_mx.__qualname__ = f"quantize_{name}"
    quantize_mx.__doc__ = _MX_DOC.format(name=name, elem=elem_name, emax=emax, bits=bits)
    register_format(
        name,
        paper="ocp2023mx",
        reference="llmref.quant.primitives.minifloat_encode",
        third_party="torchao.prototype.mx_formats.mx_tensor.to_mx",
        dequantize=dequant,
        values=values,
        bits=bits,
        granularity="group",
        group_size=32,
        kind="mx",
        options=MXOptions,
    )(quantize_mx)


_MX_DOC = """OCP microscaling ``{name}``: {elem} elements, one E8M0 scale per 32.

Parameters
----------
x : torch.Tensor
    Floating tensor to quantize.
group_size : int, default 32
    Block size (the OCP MX v1.0 value is 32); must divide the last dimension.

Returns
-------
QuantizedTensor
    ``codes`` ({bits}-bit elements) and ``scale`` (uint8 biased exponent,
    E8M0: value ``2^(scale - 127)``).

Notes
-----
The shared exponent is :math:`\\lfloor\\log_2 \\max|x|\\rfloor - {emax}`,
where {emax} is the exponent of the element format's largest normal, clamped
to ``[-127, 127]`` (OCP's rule, torchao's ``ScaleCalculationMode.FLOOR``).
Elements are ``x / 2^e`` rounded to nearest even and saturated to the
element format's maximum: the block maximum can round past it, which the
saturation absorbs. Bit-exact to ``torchao.prototype.mx_formats.to_mx``.

References
----------
:cite:t:`ocp2023mx`, :cite:t:`rouhani2023microscaling`

Examples
--------
>>> import torch
>>> from llmref.quant import quantize
>>> qt = quantize(torch.randn(4, 64), "{name}")
>>> qt["scale"].shape, qt["scale"].dtype
(torch.Size([8]), torch.uint8)
"""

for _name, (_elem, _emax) in _MX_ELEMENTS.items():
    _make_mx_format(_name, _elem, _emax)


# ------------------------------------------------------------------ NVFP4
_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
_E4M3_TINY = float(torch.finfo(torch.float8_e4m3fn).tiny)


def _dequantize_nvfp4(qt: QuantizedTensor) -> torch.Tensor:
    v = minifloat_decode(unpack_codes(qt["codes"], 4, qt.numel), E2M1)
    scale = qt["block_scale"].to(torch.float32)
    if "tensor_scale" in qt.tensors:
        scale = qt["tensor_scale"] * scale
    return v.reshape(-1, int(qt.options["group_size"])) * scale.reshape(-1, 1)


@register_format(
    "nvfp4",
    paper="nvidia2025nvfp4",
    reference="llmref.quant.primitives.minifloat_encode",
    third_party="torchao.prototype.mx_formats.nvfp4_tensor.nvfp4_quantize",
    dequantize=_dequantize_nvfp4,
    values=lambda: FP4_E2M1_VALUES,
    bits=4,
    granularity="group",
    group_size=16,
    kind="mx",
    options=NVFP4Options,
)
def quantize_nvfp4(
    x: torch.Tensor, *, group_size: int = 16, tensor_scale: bool = True
) -> QuantizedTensor:
    """NVIDIA NVFP4: E2M1 elements, an FP8 E4M3 scale per 16, a float32 tensor scale.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor to quantize.
    group_size : int, default 16
        Block size (NVFP4 fixes 16); must divide the last dimension.
    tensor_scale : bool, default True
        Two-level scaling: a float32 per-tensor scale ``amax / (448 * 6)``
        lets the E4M3 block scales use their whole range. With ``False`` the
        block scales are ``block_amax / 6`` cast to E4M3 directly.

    Returns
    -------
    QuantizedTensor
        ``codes`` (E2M1, packed low nibble first), ``block_scale``
        (``torch.float8_e4m3fn``) and, with ``tensor_scale``, ``tensor_scale``
        (float32, shape ``(1,)``).

    Notes
    -----
    Block scale :math:`s_b = \\operatorname{e4m3}((\\max_b|x| / 6) / s_t)`,
    elements :math:`\\operatorname{e2m1}(x \\cdot (1/s_t) / s_b)`, value
    :math:`s_t s_b q`. Bit-exact to torchao's ``nvfp4_quantize`` (given
    ``per_tensor_scale = amax / 2688``). A tensor of zeros gets
    ``tensor_scale = 1``.

    References
    ----------
    :cite:t:`nvidia2025nvfp4`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(4, 64), "nvfp4").bits_per_weight  # 4 + 8/16 + 32/256
    4.625
    """
    check_float_input("x", x)
    g = group_length(x.shape, group_size=group_size)
    xg = _flat_groups(x, g)
    block_scale = xg.abs().amax(dim=1) / 6.0
    tensors: dict[str, torch.Tensor] = {}
    if tensor_scale:
        amax = xg.abs().max()
        ts = torch.where(amax > 0, amax / (_E4M3_MAX * 6.0), torch.ones_like(amax))
        ts = ts.clamp(min=_EPS).reshape(1)
        bs = (block_scale / ts).clamp(_E4M3_TINY, _E4M3_MAX).to(torch.float8_e4m3fn)
        recip = (1.0 / ts) / bs.to(torch.float32)
        tensors["tensor_scale"] = ts
    else:
        bs = block_scale.clamp(_E4M3_TINY, _E4M3_MAX).to(torch.float8_e4m3fn)
        recip = 1.0 / bs.to(torch.float32)
    xs = torch.clamp(xg * recip.reshape(-1, 1), -6.0, 6.0)
    tensors = {"codes": pack_codes(minifloat_encode(xs, E2M1), 4), "block_scale": bs, **tensors}
    return QuantizedTensor(
        "nvfp4", x.shape, x.dtype, tensors, {"group_size": g, "tensor_scale": bool(tensor_scale)}
    )
