"""Affine integer formats: ``int2`` .. ``int8`` and the general ``int`` (any bit width).

Codes are stored packed (:mod:`llmref.quant.packing`) with one scale, and a zero
point or float offset when asymmetric, per group (see :mod:`llmref.quant.primitives`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..packing import pack_codes, unpack_codes
from ..primitives import (
    check_bits,
    check_float_input,
    choose_qparams,
    dequantize_affine,
    qrange,
    quantize_affine,
)
from ..registry import DEFAULT_GROUP_SIZE, register_format, resolve_group_size
from ..tensor import QuantizedTensor
from .options import IntBitsOptions, IntOptions

__all__ = ["int_codes", "int_tensor_from_codes"]


def _quantize_int(
    x: torch.Tensor,
    fmt: str,
    bits: int,
    group_size: int | str | None,
    granularity: str | None,
    symmetric: bool,
    scale_convention: str,
    zero_point: str,
    rounding: str,
    generator: torch.Generator | None,
) -> QuantizedTensor:
    check_float_input("x", x)
    bits = check_bits(bits)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if group_size == "default":  # per channel at 8 bits, groups of 128 below
        last = int(x.shape[-1])
        group_size = None
        if granularity == "group":
            group_size = min(DEFAULT_GROUP_SIZE, last)
        elif granularity is None:
            group_size = resolve_group_size("default", bits, last)
    scale, zp = choose_qparams(
        x,
        bits=bits,
        symmetric=symmetric,
        scale_convention=scale_convention,
        zero_point=zero_point,
        granularity=granularity,
        group_size=group_size,  # type: ignore[arg-type]  # "default" resolved above
    )
    q = quantize_affine(
        x,
        scale,
        zp,
        bits=bits,
        scale_convention=scale_convention,
        rounding=rounding,
        generator=generator,
    )
    return int_tensor_from_codes(
        q,
        scale,
        zp,
        bits=bits,
        dtype=x.dtype,
        fmt=fmt,
        scale_convention=scale_convention,
        rounding=rounding,
    )


def int_tensor_from_codes(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    bits: int,
    dtype: torch.dtype = torch.float32,
    fmt: str | None = None,
    scale_convention: str = "qmax",
    rounding: str = "nearest_even",
) -> QuantizedTensor:
    """Pack integer codes chosen elsewhere into an ``int*`` QuantizedTensor.

    Quantization methods that pick their own codes and parameters (GPTQ,
    AWQ, HQQ ...) use this to produce the same storage as
    :func:`~llmref.quant.quantize` does for the integer formats.

    Parameters
    ----------
    codes : torch.Tensor
        Integer codes, shape of the original tensor: signed in
        ``[-(2^(b-1)), 2^(b-1) - 1]`` when ``zero_point`` is None
        (symmetric), else unsigned in ``[0, 2^b - 1]``.
    scale : torch.Tensor
        One scale per group of consecutive elements in row-major order (a
        group divides the last dimension or spans whole rows); any shape
        with ``codes.numel() / group_size`` elements.
    zero_point : torch.Tensor, optional
        Per group: an integer zero point (integer dtype, ``x = s (q - z)``) or
        a float offset (floating dtype, ``x = s q + m``). ``None``: symmetric.
    bits : int
        Code width, 2 to 8.
    dtype : torch.dtype, default torch.float32
        Dtype of the tensor the codes stand for (what dequantize returns).
    fmt : str, optional
        Format name; default ``"int8"``, ``"int4"`` or ``"int2"`` for those
        widths, else ``"int"``.
    scale_convention, rounding : str
        Recorded in the options (how the scale and codes were chosen).

    Returns
    -------
    QuantizedTensor
        Storage identical to what :func:`~llmref.quant.quantize` builds for
        the same codes and parameters.

    Raises
    ------
    TypeError
        If ``codes`` is not an integer tensor.
    ValueError
        If a code is out of range or the number of scales does not divide the
        number of codes into equal groups along the last dimension.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant.formats import int_codes, int_tensor_from_codes
    >>> qt = quantize(torch.randn(4, 64), "int4", group_size=32)
    >>> again = int_tensor_from_codes(int_codes(qt), qt["scale"], bits=4)
    >>> again.equal(qt)
    True
    """
    bits = check_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', codes)}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one dimension")
    n_groups, last = scale.numel(), codes.shape[-1]
    g = codes.numel() // n_groups if n_groups and codes.numel() % n_groups == 0 else 0
    if not g or (last % g and g % last):
        raise ValueError(
            f"scale must hold one value per group of consecutive codes (groups dividing the "
            f"last dimension, or whole rows), codes shape {tuple(codes.shape)}, got "
            f"{n_groups} scales"
        )
    symmetric = zero_point is None
    lo, hi = qrange(bits, signed=symmetric)
    cmin, cmax = int(codes.min()), int(codes.max())
    if cmin < lo or cmax > hi:
        raise ValueError(
            f"codes must lie in [{lo}, {hi}] for bits={bits} "
            f"({'symmetric' if symmetric else 'with a zero point'}), got [{cmin}, {cmax}]"
        )
    tensors: dict[str, torch.Tensor] = {}
    if bits == 8:
        tensors["codes"] = codes.to(torch.int8 if symmetric else torch.uint8)
    else:
        offset = 1 << (bits - 1) if symmetric else 0
        tensors["codes"] = pack_codes(codes.to(torch.int32) + offset, bits)
    tensors["scale"] = scale.reshape(-1).to(torch.float32)
    zp_kind = "int"
    if zero_point is not None:
        if zero_point.numel() != n_groups:
            raise ValueError(
                f"zero_point must have one value per group ({n_groups}), got {zero_point.numel()}"
            )
        if zero_point.is_floating_point():
            zp_kind = "float"
            tensors["offset"] = zero_point.reshape(-1).to(torch.float32)
        else:
            tensors["zero_point"] = zero_point.reshape(-1).to(torch.uint8)
    options = {
        "bits": bits,
        "group_size": g,
        "symmetric": symmetric,
        "scale_convention": scale_convention,
        "zero_point": zp_kind,
        "rounding": rounding,
    }
    if fmt is None:
        fmt = f"int{bits}" if bits in (2, 4, 8) else "int"
    return QuantizedTensor(fmt, tuple(codes.shape), dtype, tensors, options)


def int_codes(qt: QuantizedTensor) -> torch.Tensor:
    """The integer codes of an ``int*`` QuantizedTensor, int32, original shape.

    Symmetric formats give signed codes; asymmetric ones unsigned codes.

    Parameters
    ----------
    qt : QuantizedTensor
        Of format ``int8``, ``int4``, ``int2`` or ``int``.

    Returns
    -------
    torch.Tensor
        int32 of shape ``qt.shape``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant.formats import int_codes
    >>> int_codes(quantize(torch.tensor([[-1.0, 0.25, 1.0]]), "int4")).tolist()
    [[-7, 2, 7]]
    """
    bits = int(qt.options["bits"])
    codes = qt["codes"]
    if bits == 8:
        return codes.to(torch.int32).reshape(qt.shape)
    q = unpack_codes(codes, bits, qt.numel).to(torch.int32)
    if qt.options["symmetric"]:
        q = q - (1 << (bits - 1))
    return q.reshape(qt.shape)


def _dequantize_int(qt: QuantizedTensor) -> torch.Tensor:
    zp = qt.tensors.get("zero_point", qt.tensors.get("offset"))
    return dequantize_affine(int_codes(qt), qt["scale"], zp)


def _int_values(bits: int) -> Callable[[], torch.Tensor]:
    def values() -> torch.Tensor:
        qmax = qrange(bits)[1]
        return torch.arange(-qmax, qmax + 1, dtype=torch.float32)

    return values


def _make_int_format(name: str, bits: int) -> None:
    def quantize_intn(
        x: torch.Tensor,
        *,
        group_size: int | str | None = "default",
        granularity: str | None = None,
        symmetric: bool = True,
        scale_convention: str = "qmax",
        zero_point: str = "int",
        rounding: str = "nearest_even",
        generator: torch.Generator | None = None,
    ) -> QuantizedTensor:
        return _quantize_int(
            x,
            name,
            bits,
            group_size,
            granularity,
            symmetric,
            scale_convention,
            zero_point,
            rounding,
            generator,
        )

    quantize_intn.__name__ = quantize_intn.__qualname__ = f"quantize_{name}"
    quantize_intn.__doc__ = _INT_DOC.format(name=name, bits=bits)
    register_format(
        name,
        paper="jacob2018quantization",
        reference="llmref.quant.primitives.quantize_affine",
        third_party="torchao.quantization.quant_primitives.quantize_affine",
        dequantize=_dequantize_int,
        values=_int_values(bits),
        bits=bits,
        granularity="channel" if bits == 8 else "group",
        group_size=None if bits == 8 else DEFAULT_GROUP_SIZE,
        kind="int",
        options=IntOptions,
    )(quantize_intn)


_INT_DOC = """{bits}-bit affine integer quantization (``{name}``).

Parameters
----------
x : torch.Tensor
    Floating tensor to quantize.
group_size : int, None or "default", default "default"
    Elements per scale along the last dimension (must divide it); ``None``:
    per channel (one scale per row). ``"default"``: per channel at 8 bits,
    groups of 128 below (the convention of AutoGPTQ, AWQ and torchao; a row
    of at most 128 elements is one group).
granularity : {{"tensor", "channel", "group"}}, optional
    See :func:`llmref.quant.primitives.group_length`.
symmetric : bool, default True
    Signed codes and no zero point, or unsigned codes with a zero point.
scale_convention : {{"qmax", "half_range"}}, default "qmax"
    Symmetric scale ``amax/qmax`` (llmref's default, bitsandbytes, ggml) or
    ``amax/((qmax-qmin)/2)`` (torchao ``MappingType.SYMMETRIC``).
zero_point : {{"int", "float"}}, default "int"
    Asymmetric only: integer zero point (torchao ``ASYMMETRIC``) or float
    offset (ggml ``q4_1``, GPTQ).
rounding : {{"nearest_even", "half_away", "stochastic"}}, default "nearest_even"
    See :func:`llmref.quant.round_values`.
generator : torch.Generator, optional
    Random source for stochastic rounding.

Returns
-------
QuantizedTensor
    ``codes`` ({bits}-bit; 8-bit codes unpacked as int8/uint8, narrower ones
    offset-binary and packed low bits first), ``scale`` (float32 per
    group) and ``zero_point`` (uint8) or ``offset`` (float32).

Notes
-----
:math:`\\hat x = s (q - z)` with :math:`q = \\operatorname{{clamp}}(
\\operatorname{{round}}(x/s) + z)`; see
:func:`llmref.quant.choose_qparams` for how ``s`` and ``z`` are
chosen. The round-trip error is at most ``s/2`` per element (no clipping in
the ``"qmax"`` convention).

References
----------
:cite:t:`jacob2018quantization`, :cite:t:`nagel2021white`

Examples
--------
>>> import torch
>>> from llmref.quant import quantize
>>> qt = quantize(torch.randn(16, 64), "{name}", group_size=32)
>>> qt.options["bits"], qt["scale"].shape
({bits}, torch.Size([32]))
"""

for _name, _bits in (("int8", 8), ("int4", 4), ("int2", 2)):
    _make_int_format(_name, _bits)


@register_format(
    "int",
    paper="jacob2018quantization",
    reference="llmref.quant.primitives.quantize_affine",
    third_party="torchao.quantization.quant_primitives.quantize_affine",
    dequantize=_dequantize_int,
    values=_int_values(3),
    bits=None,
    granularity="channel",  # at the default 8 bits; groups of 128 below
    group_size=None,
    kind="int",
    options=IntBitsOptions,
)
def quantize_int(
    x: torch.Tensor,
    *,
    bits: int = 8,
    group_size: int | str | None = "default",
    granularity: str | None = None,
    symmetric: bool = True,
    scale_convention: str = "qmax",
    zero_point: str = "int",
    rounding: str = "nearest_even",
    generator: torch.Generator | None = None,
) -> QuantizedTensor:
    """Affine integer quantization with any bit width from 2 to 8 (``int``).

    Same as ``int8``/``int4``/``int2`` with the width as an option; the
    QuantizedTensor's format is ``"int"``.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor to quantize.
    bits : int, default 8
        Bit width, 2 to 8.
    group_size, granularity, symmetric, scale_convention, zero_point, rounding, generator
        As for ``int8`` (see :data:`~llmref.quant.FORMATS` ``["int8"].fn``).

    Returns
    -------
    QuantizedTensor

    Raises
    ------
    ValueError
        If ``bits`` is outside 2..8 or another option is invalid.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(4, 30), "int", bits=3).bits_per_weight
    4.066666666666666
    """
    return _quantize_int(
        x,
        "int",
        bits,
        group_size,
        granularity,
        symmetric,
        scale_convention,
        zero_point,
        rounding,
        generator,
    )
