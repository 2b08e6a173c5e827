"""Number formats: ``quantize(x, fmt, **options)`` and ``dequantize(qt)``.

Every format registers its quantize function in :data:`~llmref.quant.FORMATS`; the entry's
``meta`` holds its ``dequantize`` function, its nominal code ``bits`` and its
default ``group_size``. All formats scale groups of consecutive elements along
the last dimension (see :mod:`llmref.quant.primitives`); the block/group size
option is called ``group_size`` everywhere.

The ggml formats (``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``) live in
:mod:`llmref.quant.ggml` and register here too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .._registry import Registry
from .packing import pack_codes, unpack_codes
from .primitives import (
    _EPS,
    MiniFloat,
    check_bits,
    check_float_input,
    choose_qparams,
    dequantize_affine,
    group_length,
    minifloat_decode,
    minifloat_encode,
    qrange,
    quantize_affine,
)
from .tensor import QuantizedTensor

__all__ = [
    "BNB_FP4_VALUES",
    "FORMATS",
    "FP4_E2M1_VALUES",
    "NF4_VALUES",
    "dequantize",
    "format_values",
    "quantize",
]

FORMATS = Registry("quantization format")
"""Registry of number formats, name -> :class:`~llmref.RegistryEntry`.

``FORMATS[name](x, **options)`` returns a :class:`~llmref.quant.QuantizedTensor`;
``FORMATS[name].meta`` has ``dequantize`` (the inverse), ``bits`` (bits per
code), ``group_size`` (default block size, ``None`` = per channel or per
tensor) and ``kind`` (``"int"``, ``"codebook"``, ``"float"``, ``"mx"``,
``"ggml"``).
"""

NF4_VALUES = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)
"""The 16 NormalFloat4 levels (bitsandbytes' table, float32, ascending; code = index).

Quantiles of N(0, 1) normalised to [-1, 1], with 8 negative levels, 0 and 7
positive ones plus 1.0, so that 0 is exact (QLoRA, :cite:t:`dettmers2023qlora`)."""

BNB_FP4_VALUES = (
    torch.tensor(
        [
            0,
            0.0625,
            8.0,
            12.0,
            4.0,
            6.0,
            2.0,
            3.0,
            -0.0,
            -0.0625,
            -8.0,
            -12.0,
            -4.0,
            -6.0,
            -2.0,
            -3.0,
        ],
        dtype=torch.float32,
    )
    / 12.0
)
"""bitsandbytes' FP4 levels in code order (sign in bit 3), normalised to [-1, 1].

Not OCP E2M1: the exponent-0 code is ``0.0625`` (``1/192`` after
normalisation) instead of OCP's subnormal ``0.5`` (``1/12``), and the codes map
to magnitudes in the order 0, 1/192, 8, 12, 4, 6, 2, 3 (÷12)."""

E2M1 = MiniFloat(2, 1)
E2M3 = MiniFloat(2, 3)
E3M2 = MiniFloat(3, 2)

FP4_E2M1_VALUES = E2M1.values()
"""The 16 OCP FP4 (E2M1) values in code order: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""


# ---------------------------------------------------------------- dispatch
def quantize(x: torch.Tensor, fmt: str, **options: Any) -> QuantizedTensor:
    """Quantize a tensor to a registered number format.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor (float32, float16, bfloat16 or float64), at least
        1-D, finite. Computation is in float32.
    fmt : str
        A name in :data:`~llmref.quant.FORMATS`: ``int8``, ``int4``, ``int2``, ``int``,
        ``nf4``, ``fp4``, ``fp4_e2m1``, ``fp8_e4m3``, ``fp8_e5m2``,
        ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``,
        ``mxfp4``, ``nvfp4``, ``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``.
    **options
        The format's options, e.g. ``group_size`` (the block size, one name
        for every format), ``bits``, ``symmetric``, ``rounding``,
        ``double_quant``; see each format's entry (``FORMATS[fmt].fn``).

    Returns
    -------
    QuantizedTensor

    Raises
    ------
    KeyError
        If ``fmt`` is not registered.
    TypeError
        If ``x`` is not a floating tensor or an option is not accepted by ``fmt``.
    ValueError
        If ``x`` has NaN/Inf, is 0-D or empty, or an option value is invalid
        (for example a ``group_size`` that does not divide the last dimension).

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize, sqnr
    >>> w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    >>> qt = quantize(w, "int4", group_size=64)
    >>> qt.bits_per_weight
    4.5
    >>> round(sqnr(w, dequantize(qt)), 1)
    19.3
    """
    entry = FORMATS[fmt]
    accepted = [
        p.name
        for p in inspect.signature(entry.fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"format {fmt!r} does not accept option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    qt: QuantizedTensor = entry.fn(x, **options)
    return qt


def dequantize(qt: QuantizedTensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reconstruct the values of a :class:`~llmref.quant.QuantizedTensor`.

    Parameters
    ----------
    qt : QuantizedTensor
        From :func:`~llmref.quant.quantize`.
    dtype : torch.dtype, optional
        Output dtype; defaults to the dtype of the tensor that was quantized.

    Returns
    -------
    torch.Tensor
        Of ``qt.shape``, on ``qt.device``. When ``qt`` has an
        ``input_scale`` ``s`` (AWQ, SmoothQuant: the codes store
        :math:`W \\operatorname{diag}(s)`), the effective weight
        :math:`\\operatorname{dequant}(\\text{codes}) \\operatorname{diag}(1/s)`,
        for every format; ``qt.without_input_scale()`` dequantizes to the
        stored :math:`W \\operatorname{diag}(s)`.

    Raises
    ------
    TypeError
        If ``qt`` is not a QuantizedTensor.
    KeyError
        If its format is not registered.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize
    >>> x = torch.tensor([[0.5, -1.0, 0.3, 6.0]])  # scale 1: the E2M1 grid itself
    >>> dequantize(quantize(x, "fp4_e2m1", group_size=4))
    tensor([[ 0.5000, -1.0000,  0.5000,  6.0000]])
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    fn: Callable[[QuantizedTensor], torch.Tensor] = FORMATS[qt.fmt].meta["dequantize"]
    out = fn(qt).reshape(qt.shape)
    s = qt.input_scale
    if s is not None:  # codes store W diag(s): the weight is dequant(codes) diag(1/s)
        out = out.to(torch.float32) / s.to(device=out.device, dtype=torch.float32)
    return out.to(dtype or qt.dtype)


def format_values(fmt: str) -> torch.Tensor:
    """The representable values of a format's element grid (before scaling).

    Parameters
    ----------
    fmt : str
        A registered format name.

    Returns
    -------
    torch.Tensor
        float32, sorted ascending, duplicates (``±0``) removed. Integer
        formats give their codes ``-qmax .. qmax``; codebook and float
        formats their code values; ggml formats their integer levels.

    Examples
    --------
    >>> from llmref.quant import format_values
    >>> format_values("fp4_e2m1").tolist()
    [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    >>> len(format_values("nf4")), len(format_values("int4"))
    (16, 15)
    """
    grid: Callable[[], torch.Tensor] = FORMATS[fmt].meta["values"]
    v = grid().to(torch.float32)
    return torch.unique(v[torch.isfinite(v)])


def _flat_groups(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.detach().to(torch.float32).reshape(-1, g)


# -------------------------------------------------------------- integers
def _quantize_int(
    x: torch.Tensor,
    fmt: str,
    bits: int,
    group_size: int | None,
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
    scale, zp = choose_qparams(
        x,
        bits=bits,
        symmetric=symmetric,
        scale_convention=scale_convention,
        zero_point=zero_point,
        granularity=granularity,
        group_size=group_size,
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
        group_size: int | None = None,
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
    FORMATS.register(
        name,
        paper="jacob2018quantization",
        reference="llmref.quant.primitives.quantize_affine",
        third_party="torchao.quantization.quant_primitives.quantize_affine",
        dequantize=_dequantize_int,
        values=_int_values(bits),
        bits=bits,
        group_size=None,
        kind="int",
    )(quantize_intn)


_INT_DOC = """{bits}-bit affine integer quantization (``{name}``).

Parameters
----------
x : torch.Tensor
    Floating tensor to quantize.
group_size : int, optional
    Elements per scale along the last dimension (must divide it).
    Default: per channel (one scale per row).
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


@FORMATS.register(
    "int",
    paper="jacob2018quantization",
    reference="llmref.quant.primitives.quantize_affine",
    third_party="torchao.quantization.quant_primitives.quantize_affine",
    dequantize=_dequantize_int,
    values=_int_values(3),
    bits=None,
    group_size=None,
    kind="int",
)
def quantize_int(
    x: torch.Tensor,
    *,
    bits: int = 8,
    group_size: int | None = None,
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


# --------------------------------------------------- bitsandbytes 4-bit codebooks
def _sorted_codebook(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision midpoints between sorted levels and the sort order (as bitsandbytes)."""
    order = torch.argsort(values)
    midpoints = (values[order[:-1]] + values[order[1:]]) / 2
    return midpoints, order


def _dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" map (``create_dynamic_map()``), float32."""
    data: list[float] = []
    max_exponent_bits, non_sign_bits = 7, 7
    for i in range(max_exponent_bits):
        n_fraction = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        bounds = torch.linspace(0.1, 1, n_fraction, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        level = 10 ** (-(max_exponent_bits - 1) + i)
        data += (level * means).tolist()
        data += (-level * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def _codebook_quantize(xg: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax scaling then nearest level (bitsandbytes' arithmetic)."""
    absmax = xg.abs().amax(dim=1)
    scaled = torch.clamp(xg * (1.0 / absmax.clamp(min=1e-38)).reshape(-1, 1), -1, 1)
    midpoints, order = _sorted_codebook(values.to(xg.device))
    idx = torch.bucketize(scaled, midpoints)
    return order[idx], absmax


def _double_quantize(absmax: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """QLoRA double quantization: 8-bit dynamic codes of ``absmax - mean`` per 256 block."""
    offset = absmax.mean()
    centered = absmax - offset
    n = centered.numel()
    pad = (-n) % block
    padded = torch.cat([centered, centered.new_zeros(pad)]) if pad else centered
    codes, absmax2 = _codebook_quantize(padded.reshape(-1, block), _dynamic_map())
    if pad:  # the last block's absmax ignores the padding
        absmax2[-1] = centered[(n // block) * block :].abs().max()
        last = centered[(n // block) * block :].reshape(1, -1)
        codes_last, _ = _codebook_quantize(last, _dynamic_map())
        codes = torch.cat([codes.reshape(-1)[: (n // block) * block], codes_last.reshape(-1)])
    return {
        "absmax_codes": codes.reshape(-1)[:n].to(torch.uint8),
        "absmax_scale": absmax2,
        "absmax_offset": offset.reshape(1),
    }


def _absmax(qt: QuantizedTensor) -> torch.Tensor:
    if "absmax" in qt.tensors:
        return qt["absmax"]
    codes = qt["absmax_codes"].to(torch.int64)
    block = int(qt.options["double_quant_group_size"])
    table = _dynamic_map().to(codes.device)
    vals = table[codes]
    scale = qt["absmax_scale"].repeat_interleave(block)[: vals.numel()]
    return vals * scale + qt["absmax_offset"]


def _quantize_codebook4(
    x: torch.Tensor, fmt: str, values: torch.Tensor, group_size: int, double_quant: bool
) -> QuantizedTensor:
    check_float_input("x", x)
    g = group_length(x.shape, group_size=group_size)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    codes, absmax = _codebook_quantize(_flat_groups(x, g), values)
    tensors = {"codes": pack_codes(codes, 4)}
    options: dict[str, Any] = {"group_size": g, "double_quant": double_quant}
    if double_quant:
        tensors.update(_double_quantize(absmax, 256))
        options["double_quant_group_size"] = 256
    else:
        tensors["absmax"] = absmax
    return QuantizedTensor(fmt, x.shape, x.dtype, tensors, options)


def _dequantize_codebook4(values: torch.Tensor) -> Callable[[QuantizedTensor], torch.Tensor]:
    def dequant(qt: QuantizedTensor) -> torch.Tensor:
        codes = unpack_codes(qt["codes"], 4, qt.numel).to(torch.int64)
        g = int(qt.options["group_size"])
        lv = values.to(codes.device)[codes].reshape(-1, g)
        return lv * _absmax(qt).reshape(-1, 1)

    return dequant


@FORMATS.register(
    "nf4",
    paper="dettmers2023qlora",
    reference="llmref.quant.formats.NF4_VALUES",
    third_party="bitsandbytes.functional.quantize_4bit",
    dequantize=_dequantize_codebook4(NF4_VALUES),
    values=lambda: NF4_VALUES,
    bits=4,
    group_size=64,
    kind="codebook",
)
def quantize_nf4(
    x: torch.Tensor, *, group_size: int = 64, double_quant: bool = False
) -> QuantizedTensor:
    """NormalFloat4 (QLoRA): block absmax scaling onto :data:`NF4_VALUES`.

    Bit-exact to ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")``
    for tensors whose last dimension is a multiple of ``group_size``
    (bitsandbytes blocks the flattened tensor; so does llmref, row-major).

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor to quantize.
    group_size : int, default 64
        Block size (bitsandbytes' ``blocksize``); must divide the last dimension.
    double_quant : bool, default False
        Quantize the float32 block absmax values too (QLoRA's double
        quantization, bitsandbytes' ``compress_statistics``): subtract their
        mean, then 8-bit "dynamic" codes with one float32 scale per 256
        absmax values. Cuts the scale overhead from 32/64 = 0.5 to about
        0.127 bits per weight.

    Returns
    -------
    QuantizedTensor
        ``codes`` (4-bit, packed low nibble first) and ``absmax`` (float32
        per block), or ``absmax_codes``/``absmax_scale``/``absmax_offset``
        with ``double_quant``.

    Notes
    -----
    Each block is scaled by :math:`1/\\max|x|` into ``[-1, 1]`` and every value
    goes to the nearest NF4 level (ties to the lower level, as
    bitsandbytes' ``bucketize``). An all-zero block has absmax 0 and
    dequantizes to zeros.

    References
    ----------
    :cite:t:`dettmers2023qlora`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(4, 128), "nf4").bits_per_weight
    4.5
    >>> round(quantize(torch.randn(64, 1024), "nf4", double_quant=True).bits_per_weight, 3)
    4.127
    """
    return _quantize_codebook4(x, "nf4", NF4_VALUES, group_size, double_quant)


@FORMATS.register(
    "fp4",
    paper="dettmers2023qlora",
    reference="llmref.quant.formats.BNB_FP4_VALUES",
    third_party="bitsandbytes.functional.quantize_4bit",
    dequantize=_dequantize_codebook4(BNB_FP4_VALUES),
    values=lambda: BNB_FP4_VALUES,
    bits=4,
    group_size=64,
    kind="codebook",
)
def quantize_fp4(
    x: torch.Tensor, *, group_size: int = 64, double_quant: bool = False
) -> QuantizedTensor:
    """bitsandbytes' FP4: block absmax scaling onto :data:`BNB_FP4_VALUES`.

    Bit-exact to ``bitsandbytes.functional.quantize_4bit(..., quant_type="fp4")``.
    This is *not* the OCP E2M1 format (see ``fp4_e2m1``): bitsandbytes' table
    has a tiny subnormal (0.0625/12) where OCP has 0.5/6.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor to quantize.
    group_size : int, default 64
        Block size; must divide the last dimension.
    double_quant : bool, default False
        Quantize the absmax values as for ``nf4``.

    Returns
    -------
    QuantizedTensor
        As ``nf4``; codes are bitsandbytes' FP4 bit patterns.

    References
    ----------
    :cite:t:`dettmers2023qlora`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize
    >>> dequantize(quantize(torch.tensor([[1.0, -0.5, 0.24, 0.0]]), "fp4", group_size=4))
    tensor([[ 1.0000, -0.5000,  0.2500,  0.0000]])
    """
    return _quantize_codebook4(x, "fp4", BNB_FP4_VALUES, group_size, double_quant)


# ---------------------------------------------------------- OCP FP4 (E2M1)
def _scaled_minifloat(xg: torch.Tensor, fmt: MiniFloat) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (xg.abs().amax(dim=1) / fmt.max).clamp(min=_EPS)
    codes = minifloat_encode(xg * (1.0 / scale).reshape(-1, 1), fmt)
    return codes, scale


@FORMATS.register(
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
    group_size=32,
    kind="float",
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
    FORMATS.register(
        name,
        paper="micikevicius2022fp8",
        reference=f"torch.Tensor.to({dtype})",
        third_party=f"torch.Tensor.to({dtype})",
        dequantize=dequant,
        values=values,
        bits=8,
        group_size=None,
        kind="float",
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
    FORMATS.register(
        name,
        paper="ocp2023mx",
        reference="llmref.quant.primitives.minifloat_encode",
        third_party="torchao.prototype.mx_formats.mx_tensor.to_mx",
        dequantize=dequant,
        values=values,
        bits=bits,
        group_size=32,
        kind="mx",
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


@FORMATS.register(
    "nvfp4",
    paper="nvidia2025nvfp4",
    reference="llmref.quant.primitives.minifloat_encode",
    third_party="torchao.prototype.mx_formats.nvfp4_tensor.nvfp4_quantize",
    dequantize=_dequantize_nvfp4,
    values=lambda: FP4_E2M1_VALUES,
    bits=4,
    group_size=16,
    kind="mx",
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
