"""ggml's block formats (``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``) and GGUF block bytes.

ggml quantizes each row in blocks of 32 (256 for the k-quants) with a float16
scale per block. llmref stores the same numbers as named tensors (``d``,
``m``, ``dmin``, ``scales`` and packed ``codes``) and converts to and from
the exact GGUF byte layout with :func:`~llmref.quant.to_ggml_blocks` /
:func:`~llmref.quant.from_ggml_blocks`:

============ ====== ===================================================== =====
format       block  bytes per block                                       bpw
============ ====== ===================================================== =====
``q8_0``     32     ``d`` f16, 32 × int8                                   8.5
``q4_0``     32     ``d`` f16, 16 bytes: byte j = q[j] | q[j+16] << 4      4.5
``q4_1``     32     ``d`` f16, ``m`` f16, 16 bytes as ``q4_0``             5.0
``q4_k``     256    ``d``, ``dmin`` f16, 12 bytes of 6-bit sub-block       4.5
                    scales/mins, 128 bytes: per 64, byte l = q[l] |
                    q[l+32] << 4
============ ====== ===================================================== =====
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..packing import pack_codes, unpack_codes
from ..primitives import check_float_input, round_values
from ..registry import register_format
from ..tensor import QuantizedTensor
from .integer import int_tensor_from_codes
from .options import GGMLOptions

__all__ = ["GGML_INT_BITS", "GGUF_BLOCKS", "from_ggml_blocks", "ggml_to_int", "to_ggml_blocks"]

GGUF_BLOCKS: dict[str, tuple[int, int]] = {
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q4_k": (256, 144),
}
"""Format name -> (elements per block, bytes per block), as ``gguf.GGML_QUANT_SIZES``."""


def _blocks(x: torch.Tensor, fmt: str, group_size: int | None) -> torch.Tensor:
    check_float_input("x", x)
    block = GGUF_BLOCKS[fmt][0]
    if group_size is not None and group_size != block:
        raise ValueError(f"{fmt} has a fixed group_size of {block}, got group_size={group_size}")
    if x.shape[-1] % block != 0:
        raise ValueError(
            f"{fmt} needs the last dimension to be a multiple of its block "
            f"(group_size={block}), got shape {tuple(x.shape)}"
        )
    return x.detach().to(torch.float32).reshape(-1, block)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _qt(fmt: str, x: torch.Tensor, tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
    return QuantizedTensor(fmt, x.shape, x.dtype, tensors, {"group_size": GGUF_BLOCKS[fmt][0]})


# ------------------------------------------------------------------ q8_0
def _dequantize_q8_0(qt: QuantizedTensor) -> torch.Tensor:
    return qt["codes"].to(torch.float32).reshape(-1, 32) * qt["d"].to(torch.float32).reshape(-1, 1)


@register_format(
    "q8_0",
    paper="gerganov2023ggml",
    reference="llmref.quant.to_ggml_blocks",
    third_party="gguf.quants.quantize",
    dequantize=_dequantize_q8_0,
    values=lambda: torch.arange(-127, 128, dtype=torch.float32),
    bits=8,
    granularity="block",
    group_size=32,
    kind="ggml",
    options=GGMLOptions,
)
def quantize_q8_0(x: torch.Tensor, *, group_size: int | None = None) -> QuantizedTensor:
    """ggml ``q8_0``: int8 codes with a float16 scale ``amax/127`` per block of 32.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor; the last dimension must be a multiple of 32.
    group_size : int, optional
        Fixed at 32 (accepted for uniformity; any other value is an error).

    Returns
    -------
    QuantizedTensor
        ``d`` (float16 per block) and ``codes`` (int8, ``x``'s shape).

    Notes
    -----
    :math:`d = \\max|x| / 127`, :math:`q = \\operatorname{roundf}(x \\cdot (1/d))`
    with ties away from zero, computed with the float32 ``d`` before it is
    stored as float16. Bit-exact to ``gguf.quants.quantize(..., Q8_0)``.

    References
    ----------
    :cite:t:`gerganov2023ggml`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(2, 64), "q8_0").bits_per_weight
    8.5
    """
    xb = _blocks(x, "q8_0", group_size)
    d = xb.abs().amax(dim=1) / 127
    q = round_values(xb * _inverse(d).reshape(-1, 1), "half_away")
    return _qt("q8_0", x, {"d": d.to(torch.float16), "codes": q.to(torch.int8).reshape(x.shape)})


# ------------------------------------------------------------------ q4_0
def _dequantize_q4_0(qt: QuantizedTensor) -> torch.Tensor:
    q = unpack_codes(qt["codes"], 4, qt.numel).to(torch.float32) - 8
    return q.reshape(-1, 32) * qt["d"].to(torch.float32).reshape(-1, 1)


@register_format(
    "q4_0",
    paper="gerganov2023ggml",
    reference="llmref.quant.to_ggml_blocks",
    third_party="gguf.quants.quantize",
    dequantize=_dequantize_q4_0,
    values=lambda: torch.arange(-8, 8, dtype=torch.float32),
    bits=4,
    granularity="block",
    group_size=32,
    kind="ggml",
    options=GGMLOptions,
)
def quantize_q4_0(x: torch.Tensor, *, group_size: int | None = None) -> QuantizedTensor:
    """ggml ``q4_0``: 4-bit codes ``q - 8`` with a float16 scale per block of 32.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor; the last dimension must be a multiple of 32.
    group_size : int, optional
        Fixed at 32.

    Returns
    -------
    QuantizedTensor
        ``d`` (float16) and ``codes`` (4-bit ``q`` in 0..15, packed in llmref's
        low-nibble-first order; :func:`~llmref.quant.to_ggml_blocks` gives ggml's byte order).

    Notes
    -----
    The signed value ``m`` of largest magnitude sets :math:`d = m / -8`, so
    that ``m`` itself maps to code 0 (value ``-8 d = m``) and the full
    range ``-8 .. 7`` is used; :math:`q = \\min(15, \\lfloor x/d + 8.5 \\rfloor)`.

    References
    ----------
    :cite:t:`gerganov2023ggml`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize
    >>> x = torch.linspace(-1, 0.5, 32).reshape(1, 32)
    >>> float(dequantize(quantize(x, "q4_0"))[0, 0])
    -1.0
    """
    xb = _blocks(x, "q4_0", group_size)
    imax = xb.abs().argmax(dim=1, keepdim=True)
    d = torch.gather(xb, 1, imax).reshape(-1) / -8
    q = torch.trunc(xb * _inverse(d).reshape(-1, 1) + 8.5).clamp(0, 15)
    return _qt("q4_0", x, {"d": d.to(torch.float16), "codes": pack_codes(q.to(torch.int32), 4)})


# ------------------------------------------------------------------ q4_1
def _dequantize_q4_1(qt: QuantizedTensor) -> torch.Tensor:
    q = unpack_codes(qt["codes"], 4, qt.numel).to(torch.float32).reshape(-1, 32)
    return qt["d"].to(torch.float32).reshape(-1, 1) * q + qt["m"].to(torch.float32).reshape(-1, 1)


@register_format(
    "q4_1",
    paper="gerganov2023ggml",
    reference="llmref.quant.to_ggml_blocks",
    third_party="gguf.quants.quantize",
    dequantize=_dequantize_q4_1,
    values=lambda: torch.arange(0, 16, dtype=torch.float32),
    bits=4,
    granularity="block",
    group_size=32,
    kind="ggml",
    options=GGMLOptions,
)
def quantize_q4_1(x: torch.Tensor, *, group_size: int | None = None) -> QuantizedTensor:
    """ggml ``q4_1``: 4-bit codes with a float16 scale and float16 minimum per 32.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor; the last dimension must be a multiple of 32.
    group_size : int, optional
        Fixed at 32.

    Returns
    -------
    QuantizedTensor
        ``d``, ``m`` (float16) and packed 4-bit ``codes``.

    Notes
    -----
    :math:`d = (x_{\\max} - x_{\\min}) / 15`, :math:`m = x_{\\min}`,
    :math:`q = \\min(15, \\lfloor (x - m)/d + 0.5 \\rfloor)`, value
    :math:`d q + m` — asymmetric with a float offset.

    References
    ----------
    :cite:t:`gerganov2023ggml`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(2, 64), "q4_1").bits_per_weight
    5.0
    """
    xb = _blocks(x, "q4_1", group_size)
    hi, lo = xb.amax(dim=1), xb.amin(dim=1)
    d = (hi - lo) / 15
    q = torch.trunc((xb - lo.reshape(-1, 1)) * _inverse(d).reshape(-1, 1) + 0.5).clamp(0, 15)
    codes = pack_codes(q.to(torch.int32), 4)
    return _qt("q4_1", x, {"d": d.to(torch.float16), "m": lo.to(torch.float16), "codes": codes})


# ------------------------------------------------------------------ q4_k
def _seqsum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim left to right in float32, as a C loop does."""
    cols = terms.movedim(-1, 0).contiguous()  # contiguous rows: fast sequential adds
    acc = cols[0].clone()
    for i in range(1, cols.shape[0]):
        acc += cols[i]
    return acc


def _make_qkx2_quants(
    x: torch.Tensor, w: torch.Tensor, nmax: int = 15, nstep: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ggml's ``make_qkx2_quants`` batched over rows: weighted min/scale search.

    Returns ``(scale, the_min, L)``: value ``≈ scale * L - the_min``.
    """
    f32 = torch.float32
    lo = x.amin(dim=1).clamp(max=0)
    hi = x.amax(dim=1)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    rng = hi - lo
    degenerate = hi == lo
    safe = torch.where(degenerate, torch.ones_like(rng), rng)
    iscale = nmax / safe
    scale = 1 / iscale
    L = torch.round(iscale.unsqueeze(1) * (x - lo.unsqueeze(1))).clamp(0, nmax)
    best = _seqsum(w * (scale.unsqueeze(1) * L + lo.unsqueeze(1) - x) ** 2)
    steps = torch.tensor(-1.0, dtype=f32) + torch.tensor(0.1, dtype=f32) * torch.arange(
        nstep + 1, dtype=f32
    )
    for step in steps:
        # ggml reuses the best minimum found so far in the next candidates
        span = hi - lo
        span = torch.where(span == 0, torch.ones_like(span), span)
        isc = (step + nmax) / span
        La = torch.round(isc.unsqueeze(1) * (x - lo.unsqueeze(1))).clamp(0, nmax)
        wl = w * La
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * La), _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = torch.where(ok, D, torch.ones_like(D))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        l2 = torch.where(sum_l2 == 0, torch.ones_like(sum_l2), sum_l2)
        this_scale = torch.where(pos, sum_xl / l2, this_scale)
        mad = _seqsum(w * (this_scale.unsqueeze(1) * La + this_min.unsqueeze(1) - x) ** 2)
        better = ok & (mad < best) & ~degenerate
        L = torch.where(better.unsqueeze(1), La, L)
        best = torch.where(better, mad, best)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)
    scale = torch.where(degenerate, torch.zeros_like(scale), scale)
    L = torch.where(degenerate.unsqueeze(1), torch.zeros_like(L), L)
    return scale, -lo, L


def _pack_k_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Pack 8 six-bit scales and 8 six-bit mins into ggml's 12 bytes."""
    out = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=ls.device)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out.to(torch.uint8)


def _unpack_k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = packed.to(torch.int32)
    d, m, md = p[:, 0:4], p[:, 4:8], p[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _dequantize_q4_k(qt: QuantizedTensor) -> torch.Tensor:
    sc, mn = _unpack_k_scales(qt["scales"])
    d = (qt["d"].to(torch.float32).reshape(-1, 1) * sc.to(torch.float32)).unsqueeze(2)
    dm = (qt["dmin"].to(torch.float32).reshape(-1, 1) * mn.to(torch.float32)).unsqueeze(2)
    q = unpack_codes(qt["codes"], 4, qt.numel).to(torch.float32).reshape(-1, 8, 32)
    return (d * q - dm).reshape(-1, 256)


@register_format(
    "q4_k",
    paper="kawrakow2023kquants",
    reference="llmref.quant.to_ggml_blocks",
    third_party="gguf.quants.dequantize",
    dequantize=_dequantize_q4_k,
    values=lambda: torch.arange(0, 16, dtype=torch.float32),
    bits=4,
    granularity="block",
    group_size=256,
    kind="ggml",
    options=GGMLOptions,
)
def quantize_q4_k(x: torch.Tensor, *, group_size: int | None = None) -> QuantizedTensor:
    """ggml ``q4_K``: super-blocks of 256 = 8 sub-blocks of 32 with 6-bit scales and mins.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor; the last dimension must be a multiple of 256.
    group_size : int, optional
        Fixed at 256 (the super-block).

    Returns
    -------
    QuantizedTensor
        ``d``, ``dmin`` (float16 per super-block), ``scales`` (the 12 bytes
        of 6-bit sub-block scales and mins, ggml's packing) and packed 4-bit
        ``codes``.

    Notes
    -----
    Value :math:`d\\,s_j\\,q - d_{\\min} m_j` for sub-block ``j``. Each
    sub-block's scale and minimum come from ggml's ``make_qkx2_quants``: a
    weighted least-squares search over 21 candidate scales (weights
    :math:`\\sqrt{\\overline{x^2}} + |x|`); the eight scales and minima are
    then quantized to 6 bits against the super-block's float16 ``d`` and
    ``dmin``. This follows ggml's ``quantize_row_q4_K_ref`` operation by
    operation in float32 (sums accumulated left to right); the ``gguf``
    Python package has no Q4_K quantizer, so llmref checks its bytes through
    ``gguf``'s dequantizer.

    References
    ----------
    :cite:t:`kawrakow2023kquants`, :cite:t:`gerganov2023ggml`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.randn(2, 256), "q4_k").bits_per_weight
    4.5
    """
    xb = _blocks(x, "q4_k", group_size)
    n = xb.shape[0]
    sub = xb.reshape(n * 8, 32)
    av_x = torch.sqrt(_seqsum(sub * sub) / 32)
    w = av_x.unsqueeze(1) + sub.abs()
    scales, mins, L = _make_qkx2_quants(sub, w)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = scales.amax(dim=1).clamp(min=0)
    max_min = mins.amax(dim=1).clamp(min=0)
    inv_scale = torch.where(max_scale > 0, 63 / max_scale, torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, 63 / max_min, torch.zeros_like(max_min))
    ls = torch.round(inv_scale.unsqueeze(1) * scales).clamp(max=63).to(torch.int32)
    lm = torch.round(inv_min.unsqueeze(1) * mins).clamp(max=63).to(torch.int32)
    d = (max_scale / 63).to(torch.float16)
    dmin = (max_min / 63).to(torch.float16)
    dj = d.to(torch.float32).unsqueeze(1) * ls.to(torch.float32)
    dmj = dmin.to(torch.float32).unsqueeze(1) * lm.to(torch.float32)
    safe = torch.where(dj == 0, torch.ones_like(dj), dj)
    Lr = torch.round((sub.reshape(n, 8, 32) + dmj.unsqueeze(2)) / safe.unsqueeze(2)).clamp(0, 15)
    L = torch.where((dj == 0).unsqueeze(2), L.reshape(n, 8, 32), Lr)
    tensors = {
        "d": d,
        "dmin": dmin,
        "scales": _pack_k_scales(ls, lm),
        "codes": pack_codes(L.to(torch.int32), 4),
    }
    return _qt("q4_k", x, tensors)


# ------------------------------------------------------------- GGUF bytes
def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def _split_halves(q: torch.Tensor, span: int) -> torch.Tensor:
    """ggml nibble order: within each ``2*span`` chunk, byte l = q[l] | q[l+span] << 4."""
    q = q.reshape(-1, 2, span)
    return (q[:, 0] | (q[:, 1] << 4)).to(torch.uint8)


def _join_halves(b: torch.Tensor, span: int) -> torch.Tensor:
    b = b.reshape(-1, span)
    return torch.stack([b & 0x0F, b >> 4], dim=1).reshape(-1)


def to_ggml_blocks(qt: QuantizedTensor) -> torch.Tensor:
    """The GGUF block bytes of a ``q8_0``/``q4_0``/``q4_1``/``q4_k`` tensor.

    Parameters
    ----------
    qt : QuantizedTensor
        Of one of the ggml formats.

    Returns
    -------
    torch.Tensor
        uint8 of shape ``(*shape[:-1], shape[-1] // block * bytes_per_block)``,
        the layout ``gguf.quants.quantize`` returns and GGUF files store.

    Raises
    ------
    ValueError
        If ``qt`` is not in a ggml format.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant import to_ggml_blocks
    >>> to_ggml_blocks(quantize(torch.randn(3, 64), "q4_0")).shape
    torch.Size([3, 36])
    """
    if qt.fmt not in GGUF_BLOCKS:
        raise ValueError(f"qt must be in a ggml format {sorted(GGUF_BLOCKS)}, got {qt.fmt!r}")
    block, size = GGUF_BLOCKS[qt.fmt]
    n_blocks = qt.numel // block
    parts: list[torch.Tensor]
    if qt.fmt == "q8_0":
        parts = [_f16_bytes(qt["d"]), qt["codes"].reshape(n_blocks, 32).view(torch.uint8)]
    else:
        q = unpack_codes(qt["codes"], 4, qt.numel)
        if qt.fmt == "q4_0":
            parts = [_f16_bytes(qt["d"]), _split_halves(q, 16).reshape(n_blocks, 16)]
        elif qt.fmt == "q4_1":
            parts = [
                _f16_bytes(qt["d"]),
                _f16_bytes(qt["m"]),
                _split_halves(q, 16).reshape(n_blocks, 16),
            ]
        else:
            parts = [
                _f16_bytes(qt["d"]),
                _f16_bytes(qt["dmin"]),
                qt["scales"].reshape(n_blocks, 12),
                _split_halves(q, 32).reshape(n_blocks, 128),
            ]
    raw = torch.cat(parts, dim=1)
    assert raw.shape[1] == size
    return raw.reshape(*qt.shape[:-1], qt.shape[-1] // block * size)


def from_ggml_blocks(data: Any, fmt: str, *, dtype: torch.dtype = torch.float32) -> QuantizedTensor:
    """Wrap GGUF block bytes as a :class:`~llmref.quant.QuantizedTensor` (no copy of the values).

    Parameters
    ----------
    data : torch.Tensor or numpy.ndarray
        uint8 block bytes of shape ``(*rows, n_bytes)``, as read from a GGUF
        file or returned by ``gguf.quants.quantize``.
    fmt : {"q8_0", "q4_0", "q4_1", "q4_k"}
        The block format.
    dtype : torch.dtype, default torch.float32
        dtype that :func:`~llmref.quant.dequantize` will return.

    Returns
    -------
    QuantizedTensor
        With shape ``(*rows, n_bytes // bytes_per_block * block)``.

    Raises
    ------
    ValueError
        If ``fmt`` is not a ggml format or the byte count is not a whole
        number of blocks.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant import from_ggml_blocks, to_ggml_blocks
    >>> qt = quantize(torch.randn(2, 256), "q4_k")
    >>> from_ggml_blocks(to_ggml_blocks(qt), "q4_k").equal(qt)
    True
    """
    if fmt not in GGUF_BLOCKS:
        raise ValueError(f"fmt must be one of {sorted(GGUF_BLOCKS)}, got {fmt!r}")
    raw = data if isinstance(data, torch.Tensor) else torch.from_numpy(data)
    raw = raw.contiguous().view(torch.uint8)
    block, size = GGUF_BLOCKS[fmt]
    if raw.ndim == 0 or raw.shape[-1] % size != 0:
        raise ValueError(
            f"{fmt} data must have a last dimension that is a multiple of {size} bytes, "
            f"got shape {tuple(raw.shape)}"
        )
    shape = (*raw.shape[:-1], raw.shape[-1] // size * block)
    b = raw.reshape(-1, size)

    def f16(lo: int) -> torch.Tensor:
        return b[:, lo : lo + 2].contiguous().view(torch.float16).reshape(-1)

    if fmt == "q8_0":
        tensors = {"d": f16(0), "codes": b[:, 2:].contiguous().view(torch.int8).reshape(shape)}
    elif fmt == "q4_0":
        tensors = {"d": f16(0), "codes": pack_codes(_join_halves(b[:, 2:], 16), 4)}
    elif fmt == "q4_1":
        tensors = {"d": f16(0), "m": f16(2), "codes": pack_codes(_join_halves(b[:, 4:], 16), 4)}
    else:
        tensors = {
            "d": f16(0),
            "dmin": f16(2),
            "scales": b[:, 4:16].contiguous(),
            "codes": pack_codes(_join_halves(b[:, 16:], 32), 4),
        }
    return QuantizedTensor(fmt, shape, dtype, tensors, {"group_size": block})


GGML_INT_BITS: dict[str, int] = {"q4_0": 4, "q4_1": 4, "q8_0": 8}
"""ggml formats that are exactly one of llmref's integer formats -> its code width.

``q4_1`` (value ``d q + m``, ``q`` in ``0..15``) is ``int4`` with group size 32 and
a float offset; ``q4_0`` (``d (q - 8)``) the same with offset ``-8 d``; ``q8_0``
(``d q``) symmetric ``int8`` with group size 32."""


def ggml_to_int(
    blocks: Sequence[QuantizedTensor],
    *,
    row_order: Sequence[torch.Tensor | None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> QuantizedTensor:
    """Stack 2-D ggml tensors by rows into one llmref ``int4``/``int8`` tensor, exactly.

    Parameters
    ----------
    blocks : sequence of QuantizedTensor
        2-D tensors in formats of :data:`GGML_INT_BITS`, all of one code width
        (``q4_0`` and ``q4_1`` mix; ``q8_0`` stands alone), with equal columns.
    row_order : sequence of (torch.Tensor or None), optional
        Per tensor, int64 row indices to take its rows in (for example GGUF's
        interleaved RoPE rows to rotate-half); None keeps the order.
    dtype : torch.dtype, default torch.float32
        dtype :func:`~llmref.quant.dequantize` will return.

    Returns
    -------
    QuantizedTensor
        ``int4`` (asymmetric, float offsets) or ``int8`` (symmetric) with
        group size 32. Nothing is rounded: it dequantizes to the same float32
        values as the ggml blocks, bit for bit (``d q`` and ``-8 d`` are exact
        in float32 for a float16 ``d`` and ``|q| <= 255``).

    Raises
    ------
    ValueError
        If ``blocks`` is empty, a format is not in :data:`GGML_INT_BITS`, the
        code widths differ, a tensor is not 2-D, the columns differ, or
        ``row_order`` has another length or a wrong permutation length.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import dequantize, ggml_to_int, quantize
    >>> a, b = quantize(torch.randn(2, 64), "q4_0"), quantize(torch.randn(3, 64), "q4_1")
    >>> both = ggml_to_int([a, b])
    >>> both.fmt, tuple(both.shape)
    ('int4', (5, 64))
    >>> bool(torch.equal(dequantize(both), torch.cat([dequantize(a), dequantize(b)])))
    True
    """
    if not blocks:
        raise ValueError("blocks must hold at least one ggml tensor, got none")
    orders = list(row_order) if row_order is not None else [None] * len(blocks)
    if len(orders) != len(blocks):
        raise ValueError(f"row_order must have {len(blocks)} entries, got {len(orders)}")
    widths = set()
    for qt in blocks:
        if qt.fmt not in GGML_INT_BITS:
            raise ValueError(
                f"blocks must be in {sorted(GGML_INT_BITS)} (ggml formats that are llmref "
                f"integer formats), got {qt.fmt!r}"
            )
        if len(qt.shape) != 2 or qt.shape[1] != blocks[0].shape[1]:
            raise ValueError(
                "blocks must be 2-D with equal columns, got shapes "
                f"{[tuple(b.shape) for b in blocks]}"
            )
        widths.add(GGML_INT_BITS[qt.fmt])
    if len(widths) != 1:
        raise ValueError(f"blocks must share one code width, got {sorted(widths)} bits")
    bits = widths.pop()
    codes, scales, offsets = [], [], []
    for qt, order in zip(blocks, orders, strict=True):
        n, k = qt.shape
        d = qt["d"].to(torch.float32).reshape(n, k // 32)
        if qt.fmt == "q8_0":
            q, m = qt["codes"].to(torch.int32).reshape(n, k), None
        else:
            q = unpack_codes(qt["codes"], 4, n * k).to(torch.int32).reshape(n, k)
            m = qt["m"].to(torch.float32).reshape(n, k // 32) if qt.fmt == "q4_1" else -8 * d
        if order is not None:
            if order.shape != (n,):
                raise ValueError(
                    f"row_order entries must have shape ({n},), got {tuple(order.shape)}"
                )
            q, d = q[order], d[order]
            m = None if m is None else m[order]
        codes.append(q)
        scales.append(d)
        offsets.append(m)
    zero = None if bits == 8 else torch.cat(offsets)  # type: ignore[arg-type]
    return int_tensor_from_codes(torch.cat(codes), torch.cat(scales), zero, bits=bits, dtype=dtype)
