"""Quantization primitives: rounding, affine (integer) quantization, minifloat grids.

Every format in :mod:`llmref.quant.formats` is built from these functions.
They work on *flat groups*: a tensor of ``n`` elements quantized with
``n_groups`` scales is viewed, in row-major order, as ``(n_groups, n // n_groups)``
and group ``i`` uses ``scale[i]``. With ``group_size`` dividing the last
dimension this is exactly "groups of ``group_size`` consecutive elements along
the last dimension"; per-channel means one group per row (the whole last
dimension, i.e. one scale per output channel of an ``nn.Linear`` weight) and
per-tensor means a single group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .._checks import FLOAT_DTYPES, check_int, check_tensor

__all__ = [
    "GRANULARITIES",
    "ROUNDING_MODES",
    "SCALE_CONVENTIONS",
    "AffineParams",
    "MiniFloat",
    "choose_qparams",
    "dequantize_affine",
    "group_length",
    "minifloat_decode",
    "minifloat_encode",
    "qrange",
    "quantize_affine",
    "round_values",
]

ROUNDING_MODES = ("nearest_even", "half_away", "stochastic")
"""Rounding modes: ``"nearest_even"`` (IEEE/``torch.round``), ``"half_away"``
(ties away from zero, C's ``roundf`` as used by ggml) and ``"stochastic"``
(round up with probability equal to the fractional part; unbiased)."""

SCALE_CONVENTIONS = ("qmax", "half_range")
"""Symmetric scale conventions: ``"qmax"`` (``scale = amax / qmax``, codes in
``[-qmax, qmax]``; bitsandbytes' LLM.int8, ggml's ``q8_0``) and ``"half_range"``
(``scale = amax / ((qmax - qmin) / 2)``, codes in ``[qmin, qmax]``; torchao's
``MappingType.SYMMETRIC``)."""

GRANULARITIES = ("tensor", "channel", "group")
"""Granularities of a scale: one per tensor, one per row (channel), one per group."""

_EPS = torch.finfo(torch.float32).tiny  # smallest normal float32; the floor of every scale


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_float_input(name: str, x: object, *, finite: bool = True) -> torch.Tensor:
    """Validate a tensor to quantize: floating dtype, at least 1-D, non-empty, finite."""
    check_tensor(name, x)
    assert isinstance(x, torch.Tensor)
    if x.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {x.dtype}")
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"{name} must be at least 1-D and non-empty, got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} must be finite to be quantized, got {n_nan} NaN and {n_inf} Inf values; "
            "clean or clamp the tensor first"
        )
    return x


def check_bits(bits: object, *, minimum: int = 2, maximum: int = 8) -> int:
    """Check a bit width is an int in ``[minimum, maximum]``."""
    bits = check_int("bits", bits)
    if not minimum <= bits <= maximum:
        raise ValueError(f"bits must be between {minimum} and {maximum}, got {bits}")
    return bits


def group_length(
    shape: torch.Size | tuple[int, ...],
    *,
    granularity: str | None = None,
    group_size: int | None = None,
) -> int:
    """Number of consecutive (row-major) elements that share one scale.

    Parameters
    ----------
    shape : tuple of int
        Shape of the tensor to quantize (at least 1-D).
    granularity : {"tensor", "channel", "group"}, optional
        ``"tensor"``: one group; ``"channel"``: one group per row, i.e. the
        whole last dimension; ``"group"``: groups of ``group_size`` along the
        last dimension. Defaults to ``"group"`` when ``group_size`` is given,
        else ``"channel"``.
    group_size : int, optional
        Group length for ``granularity="group"``; must divide ``shape[-1]``.

    Returns
    -------
    int
        The group length ``g``; the tensor is viewed as ``(numel // g, g)``.

    Raises
    ------
    ValueError
        If ``group_size`` does not divide the last dimension, is < 1, or
        conflicts with ``granularity``.

    Examples
    --------
    >>> from llmref.quant.primitives import group_length
    >>> group_length((4, 256), group_size=64), group_length((4, 256)), group_length(
    ...     (4, 256), granularity="tensor")
    (64, 256, 1024)
    """
    if granularity is None:
        granularity = "group" if group_size is not None else "channel"
    _check_choice("granularity", granularity, GRANULARITIES)
    last = int(shape[-1])
    if granularity == "group":
        if group_size is None:
            raise ValueError('granularity="group" needs a group_size')
        g = check_int("group_size", group_size, minimum=1)
        if last % g != 0:
            raise ValueError(
                f"group_size must divide the last dimension, got group_size={g} for a "
                f"tensor of shape {tuple(shape)} (last dimension {last})"
            )
        return g
    if group_size is not None:
        raise ValueError(
            f"group_size={group_size} conflicts with granularity={granularity!r}; "
            'pass granularity="group" or leave group_size out'
        )
    if granularity == "channel":
        return last
    return math.prod(int(s) for s in shape)


def round_values(
    x: torch.Tensor, mode: str = "nearest_even", *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Round to integers (the result stays floating point).

    Parameters
    ----------
    x : torch.Tensor
        Values to round.
    mode : {"nearest_even", "half_away", "stochastic"}, default "nearest_even"
        ``"nearest_even"``: ties to even (``torch.round``); ``"half_away"``:
        ties away from zero (C ``roundf``, ggml); ``"stochastic"``: ``floor(x)``
        plus 1 with probability ``x - floor(x)``, so that ``E[round(x)] = x``.
    generator : torch.Generator, optional
        Random source for ``"stochastic"``.

    Returns
    -------
    torch.Tensor
        Rounded values, same shape and dtype as ``x``.

    Raises
    ------
    ValueError
        If ``mode`` is unknown.

    Notes
    -----
    ``"half_away"`` is computed exactly as ``t + trunc(2 (x - t))`` with
    ``t = trunc(x)``; the common ``sign(x) floor(|x| + 0.5)`` is wrong for
    ``0.49999997`` in float32, where ``|x| + 0.5`` rounds up to 1.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import round_values
    >>> x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    >>> round_values(x).tolist()
    [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0]
    >>> round_values(x, "half_away").tolist()
    [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
    """
    _check_choice("mode", mode, ROUNDING_MODES)
    if mode == "nearest_even":
        return torch.round(x)
    if mode == "half_away":
        t = torch.trunc(x)
        return t + torch.trunc(2 * (x - t))
    f = torch.floor(x)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return f + (u < (x - f)).to(x.dtype)


def qrange(bits: int, *, signed: bool = True) -> tuple[int, int]:
    """The integer code range ``(qmin, qmax)`` of a ``bits``-bit integer.

    Parameters
    ----------
    bits : int
        Bit width, 1 to 16.
    signed : bool, default True
        Two's-complement range ``[-2^(b-1), 2^(b-1) - 1]`` or unsigned
        ``[0, 2^b - 1]``.

    Returns
    -------
    (int, int)
        ``qmin`` and ``qmax``.

    Examples
    --------
    >>> from llmref.quant.primitives import qrange
    >>> qrange(8), qrange(4), qrange(4, signed=False)
    ((-128, 127), (-8, 7), (0, 15))
    """
    bits = check_bits(bits, minimum=1, maximum=16)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


class AffineParams(NamedTuple):
    """Scales and zero points of an affine quantization, one per group.

    Parameters
    ----------
    scale : torch.Tensor
        float32 of shape ``(n_groups,)``.
    zero_point : torch.Tensor or None
        ``None`` (symmetric), integer codes of shape ``(n_groups,)``
        (``zero_point="int"``) or float32 offsets (``zero_point="float"``).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor | None


def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.reshape(-1, g)


def choose_qparams(
    x: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = True,
    scale_convention: str = "qmax",
    zero_point: str = "int",
    granularity: str | None = None,
    group_size: int | None = None,
) -> AffineParams:
    """Choose the scale (and zero point) of each group from its range.

    Parameters
    ----------
    x : torch.Tensor
        Tensor to quantize (floating point, finite).
    bits : int, default 8
        Bit width ``b``, 2 to 8.
    symmetric : bool, default True
        Symmetric (zero maps to code 0, no zero point) or asymmetric.
    scale_convention : {"qmax", "half_range"}, default "qmax"
        Symmetric only. ``"qmax"``: ``scale = amax / (2^(b-1) - 1)`` (the
        negative code ``-2^(b-1)`` is never used); ``"half_range"``:
        ``scale = amax / (2^(b-1) - 1/2)`` (torchao's ``MappingType.SYMMETRIC``,
        ``amax/127.5`` for int8): all ``2^b`` codes are used and ``+amax`` is
        clipped by half a step.
    zero_point : {"int", "float"}, default "int"
        Asymmetric only. ``"int"``: an integer zero point with the range
        widened to include 0, so 0 is exact (torchao's ``MappingType.ASYMMETRIC``);
        ``"float"``: a float offset equal to the group minimum,
        ``x ≈ q * scale + offset`` (ggml's ``q4_1``, GPTQ/tinygemm style).
    granularity : {"tensor", "channel", "group"}, optional
        See :func:`~llmref.quant.primitives.group_length`.
    group_size : int, optional
        See :func:`~llmref.quant.primitives.group_length`.

    Returns
    -------
    AffineParams
        ``scale`` (float32, ``(n_groups,)``, at least the smallest normal
        float32 so that all-zero groups stay finite) and ``zero_point``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` is not finite, ``bits`` is out of range, an option is
        unknown or ``group_size`` does not divide the last dimension.

    Notes
    -----
    Symmetric: :math:`s = \\max|x| / q_{\\max}` (or ``/(q_max - q_min)/2``).
    Asymmetric with integer zero point: :math:`s = (\\max(x_{\\max}, 0) -
    \\min(x_{\\min}, 0)) / (2^b - 1)`, :math:`z = \\operatorname{clamp}(
    -\\operatorname{round}(\\min(x_{\\min}, 0) / s), 0, 2^b - 1)`.

    References
    ----------
    :cite:t:`jacob2018quantization`, :cite:t:`nagel2021white`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import choose_qparams
    >>> x = torch.tensor([[-1.0, 0.5, 2.54, 0.0]])
    >>> choose_qparams(x).scale
    tensor([0.0200])
    >>> p = choose_qparams(x, bits=4, symmetric=False)
    >>> p.scale, p.zero_point
    (tensor([0.2360]), tensor([4], dtype=torch.uint8))
    """
    check_float_input("x", x)
    bits = check_bits(bits)
    _check_choice("scale_convention", scale_convention, SCALE_CONVENTIONS)
    _check_choice("zero_point", zero_point, ("int", "float"))
    g = group_length(x.shape, granularity=granularity, group_size=group_size)
    xg = _groups(x.detach().to(torch.float32), g)
    if symmetric:
        qmin, qmax = qrange(bits, signed=True)
        amax = xg.abs().amax(dim=1)
        denom = float(qmax) if scale_convention == "qmax" else (qmax - qmin) / 2
        return AffineParams((amax / denom).clamp(min=_EPS), None)
    qmin, qmax = qrange(bits, signed=False)
    lo, hi = xg.amin(dim=1), xg.amax(dim=1)
    if zero_point == "float":
        scale = ((hi - lo) / float(qmax - qmin)).clamp(min=_EPS)
        return AffineParams(scale, lo)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=_EPS)
    zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return AffineParams(scale, zp.to(torch.uint8))


def _code_range(bits: int, zero_point: torch.Tensor | None, scale_convention: str) -> tuple:
    if zero_point is not None:
        return qrange(bits, signed=False)
    qmin, qmax = qrange(bits, signed=True)
    return (-qmax, qmax) if scale_convention == "qmax" else (qmin, qmax)


def quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    bits: int = 8,
    scale_convention: str = "qmax",
    rounding: str = "nearest_even",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Map ``x`` to integer codes with per-group ``scale`` (and ``zero_point``).

    Parameters
    ----------
    x : torch.Tensor
        Tensor to quantize; its ``numel`` must be a multiple of
        ``scale.numel()``; group ``i`` is the ``i``-th run of
        ``numel // n_groups`` consecutive elements (row-major).
    scale : torch.Tensor
        Scales, ``(n_groups,)``, > 0.
    zero_point : torch.Tensor, optional
        ``None`` for symmetric (signed codes); an integer tensor for an
        integer zero point or a floating tensor for a float offset (unsigned
        codes ``0 .. 2^b - 1`` in both cases), as from :func:`~llmref.quant.choose_qparams`.
    bits : int, default 8
        Bit width, 2 to 8.
    scale_convention : {"qmax", "half_range"}, default "qmax"
        Symmetric only: clamp the codes to ``[-qmax, qmax]`` or ``[qmin, qmax]``.
    rounding : {"nearest_even", "half_away", "stochastic"}, default "nearest_even"
        See :func:`~llmref.quant.round_values`.
    generator : torch.Generator, optional
        Random source for stochastic rounding.

    Returns
    -------
    torch.Tensor
        Codes, int32, same shape as ``x``.

    Raises
    ------
    ValueError
        If the sizes of ``x`` and ``scale`` do not match or an option is invalid.

    Notes
    -----
    :math:`q = \\operatorname{clamp}(\\operatorname{round}(x \\cdot (1/s)) + z,
    q_{\\min}, q_{\\max})` with integer zero point ``z`` (``z = 0`` when
    symmetric), or :math:`q = \\operatorname{clamp}(\\operatorname{round}((x - m)
    \\cdot (1/s)), 0, 2^b - 1)` with float offset ``m``. Multiplying by the
    reciprocal (rather than dividing) is what torchao and bitsandbytes do; the
    two differ in the last bit for a few inputs, which changes ties.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import choose_qparams, quantize_affine
    >>> x = torch.tensor([[-1.0, 0.5, 2.54, 0.0]])
    >>> scale, _ = choose_qparams(x)
    >>> quantize_affine(x, scale)
    tensor([[-50,  25, 127,   0]], dtype=torch.int32)
    """
    bits = check_bits(bits)
    _check_choice("scale_convention", scale_convention, SCALE_CONVENTIONS)
    n, n_groups = x.numel(), scale.numel()
    if n_groups == 0 or n % n_groups != 0:
        raise ValueError(f"x has {n} elements, which do not split into scale's {n_groups} groups")
    xg = _groups(x.detach().to(torch.float32), n // n_groups)
    inv = (1.0 / scale.to(torch.float32)).reshape(-1, 1)
    qmin, qmax = _code_range(bits, zero_point, scale_convention)
    if zero_point is not None and zero_point.is_floating_point():
        q = round_values(
            (xg - zero_point.reshape(-1, 1).float()) * inv, rounding, generator=generator
        )
    else:
        q = round_values(xg * inv, rounding, generator=generator)
        if zero_point is not None:
            q = q + zero_point.reshape(-1, 1).to(torch.float32)
    return q.clamp(qmin, qmax).to(torch.int32).reshape(x.shape)


def dequantize_affine(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
) -> torch.Tensor:
    """Map integer codes back to float32: ``(q - z) * s`` or ``q * s + m``.

    Parameters
    ----------
    codes : torch.Tensor
        Integer codes from :func:`~llmref.quant.quantize_affine`.
    scale : torch.Tensor
        Scales, ``(n_groups,)``.
    zero_point : torch.Tensor, optional
        Integer zero points or float offsets, ``(n_groups,)``.

    Returns
    -------
    torch.Tensor
        float32, same shape as ``codes``.

    Raises
    ------
    ValueError
        If the sizes of ``codes`` and ``scale`` do not match.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import dequantize_affine
    >>> dequantize_affine(torch.tensor([[-50, 25, 127, 0]]), torch.tensor([0.02]))
    tensor([[-1.0000,  0.5000,  2.5400,  0.0000]])
    """
    n, n_groups = codes.numel(), scale.numel()
    if n_groups == 0 or n % n_groups != 0:
        raise ValueError(
            f"codes has {n} elements, which do not split into scale's {n_groups} groups"
        )
    q = _groups(codes.to(torch.float32), n // n_groups)
    s = scale.to(torch.float32).reshape(-1, 1)
    if zero_point is None:
        out = q * s
    elif zero_point.is_floating_point():
        out = q * s + zero_point.to(torch.float32).reshape(-1, 1)
    else:
        out = (q - zero_point.to(torch.float32).reshape(-1, 1)) * s
    return out.reshape(codes.shape)


@dataclass(frozen=True)
class MiniFloat:
    """A small floating-point element format without infinities (OCP FP4/FP6 style).

    Parameters
    ----------
    ebits : int
        Exponent bits.
    mbits : int
        Mantissa bits.

    Attributes
    ----------
    bias : int
        Exponent bias ``2^(ebits-1) - 1``.
    max : float
        Largest finite value ``(2 - 2^-mbits) * 2^(2^ebits - 1 - bias)``; every
        code is a finite number (no Inf/NaN encodings).

    Examples
    --------
    >>> from llmref.quant.primitives import MiniFloat
    >>> e2m1 = MiniFloat(2, 1)
    >>> e2m1.max, e2m1.values()[:8].tolist()
    (6.0, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    """

    ebits: int
    mbits: int

    def __post_init__(self) -> None:
        check_int("ebits", self.ebits, minimum=1)
        check_int("mbits", self.mbits, minimum=0)
        if 1 + self.ebits + self.mbits > 8:
            raise ValueError(f"1 + ebits + mbits must be <= 8, got {1 + self.ebits + self.mbits}")

    @property
    def bits(self) -> int:
        """Total bits, sign included."""
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        """Exponent bias."""
        return (1 << (self.ebits - 1)) - 1

    @property
    def max(self) -> float:
        """Largest finite magnitude."""
        return (2 - 2.0**-self.mbits) * 2.0 ** ((1 << self.ebits) - 1 - self.bias)

    def values(self) -> torch.Tensor:
        """All ``2^bits`` values in code order (sign bit is the top bit).

        Returns
        -------
        torch.Tensor
            float32 of shape ``(2^bits,)``.
        """
        codes = torch.arange(1 << self.bits, dtype=torch.int32)
        return minifloat_decode(codes, self)


def minifloat_encode(x: torch.Tensor, fmt: MiniFloat) -> torch.Tensor:
    """Round float32 values to a minifloat grid, nearest-even and saturating.

    Parameters
    ----------
    x : torch.Tensor
        Finite values (any floating dtype; computed in float32).
    fmt : MiniFloat
        Target element format.

    Returns
    -------
    torch.Tensor
        uint8 codes (sign in bit ``ebits + mbits``), same shape as ``x``.
        Values beyond ``fmt.max`` saturate to ``±max``; negative values that
        round to zero keep the sign bit (``-0``), as in torchao.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import MiniFloat, minifloat_encode
    >>> minifloat_encode(torch.tensor([0.25, 0.75, 1.25, 5.0, 100.0, -3.0]), MiniFloat(2, 1))
    tensor([ 0,  2,  2,  6,  7, 13], dtype=torch.uint8)
    """
    x = x.to(torch.float32)
    emin = 1 - fmt.bias
    a = x.abs().clamp(max=fmt.max)
    e = torch.frexp(a).exponent.to(torch.int32) - 1  # floor(log2 a) for a > 0
    e = e.clamp(min=emin)
    quantum = torch.ldexp(torch.ones_like(a), (e - fmt.mbits).to(torch.float32))
    y = (torch.round(a / quantum) * quantum).clamp(max=fmt.max)
    # encode y exactly on the grid
    ey = (torch.frexp(y).exponent.to(torch.int32) - 1).clamp(min=emin)
    normal = y >= 2.0**emin
    unit = torch.ldexp(torch.ones_like(y), (ey - fmt.mbits).to(torch.float32))
    mant = (y / unit).to(torch.int32)
    exp_field = torch.where(normal, ey + fmt.bias, torch.zeros_like(ey))
    mant = torch.where(normal, mant - (1 << fmt.mbits), mant)
    sign = torch.signbit(x).to(torch.int32) << (fmt.ebits + fmt.mbits)
    return (sign | (exp_field << fmt.mbits) | mant).to(torch.uint8)


def minifloat_decode(codes: torch.Tensor, fmt: MiniFloat) -> torch.Tensor:
    """Values of :class:`~llmref.quant.primitives.MiniFloat` codes, float32.

    Parameters
    ----------
    codes : torch.Tensor
        Integer codes ``0 .. 2^bits - 1``.
    fmt : MiniFloat
        Element format.

    Returns
    -------
    torch.Tensor
        float32, same shape as ``codes``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.primitives import MiniFloat, minifloat_decode
    >>> minifloat_decode(torch.tensor([1, 7, 15]), MiniFloat(2, 1))
    tensor([ 0.5000,  6.0000, -6.0000])
    """
    c = codes.to(torch.int32)
    sign = (c >> (fmt.ebits + fmt.mbits)) & 1
    exp_field = (c >> fmt.mbits) & ((1 << fmt.ebits) - 1)
    mant = (c & ((1 << fmt.mbits) - 1)).to(torch.float32)
    emin = 1 - fmt.bias
    normal = exp_field > 0
    sig = torch.where(normal, mant + (1 << fmt.mbits), mant)
    e = torch.where(normal, exp_field - fmt.bias, torch.full_like(exp_field, emin))
    mag = torch.ldexp(sig, (e - fmt.mbits).to(torch.float32))
    return torch.where(sign.bool(), -mag, mag)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return grad, None


def describe_options(options: Mapping[str, Any]) -> str:
    """Render options as ``k=v, ...`` for messages and reprs."""
    return ", ".join(f"{k}={v!r}" for k, v in options.items())
