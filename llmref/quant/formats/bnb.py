"""bitsandbytes' 4-bit codebook formats (``nf4``, ``fp4``) and their storage converters.

Blockwise absmax scaling onto a 16-level table, optionally with QLoRA's double
quantization of the absmax values; :func:`to_bnb_4bit` and :func:`from_bnb_4bit`
convert to and from ``bitsandbytes.functional.quantize_4bit``'s packed layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..._checks import check_int
from ..packing import pack_codes, packed_nbytes, unpack_codes
from ..primitives import (
    check_float_input,
    group_length,
)
from ..registry import register_format
from ..tensor import QuantizedTensor
from ._groups import _flat_groups
from .options import CodebookOptions

__all__ = ["BNB_FP4_VALUES", "NF4_VALUES", "from_bnb_4bit", "to_bnb_4bit"]


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


@register_format(
    "nf4",
    paper="dettmers2023qlora",
    reference="llmref.quant.NF4_VALUES",
    third_party="bitsandbytes.functional.quantize_4bit",
    dequantize=_dequantize_codebook4(NF4_VALUES),
    values=lambda: NF4_VALUES,
    bits=4,
    granularity="group",
    group_size=64,
    kind="codebook",
    options=CodebookOptions,
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


@register_format(
    "fp4",
    paper="dettmers2023qlora",
    reference="llmref.quant.BNB_FP4_VALUES",
    third_party="bitsandbytes.functional.quantize_4bit",
    dequantize=_dequantize_codebook4(BNB_FP4_VALUES),
    values=lambda: BNB_FP4_VALUES,
    bits=4,
    granularity="group",
    group_size=64,
    kind="codebook",
    options=CodebookOptions,
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


def _swap_nibbles(b: torch.Tensor) -> torch.Tensor:
    return ((b & 0x0F) << 4) | (b >> 4)


def to_bnb_4bit(qt: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert an ``nf4``/``fp4`` QuantizedTensor to bitsandbytes' 4-bit layout.

    Parameters
    ----------
    qt : QuantizedTensor
        Of format ``nf4`` or ``fp4``.

    Returns
    -------
    packed : torch.Tensor
        uint8 of shape ``(ceil(n / 2), 1)``: element ``2j`` in the high
        nibble of byte ``j`` — what ``bitsandbytes.functional.quantize_4bit``
        returns with ``quant_storage=torch.uint8``.
    absmax : torch.Tensor
        float32 block absmax values (reconstructed from the 8-bit codes when
        the tensor was double-quantized).

    Raises
    ------
    ValueError
        If ``qt`` is not ``nf4`` or ``fp4``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, to_bnb_4bit
    >>> packed, absmax = to_bnb_4bit(quantize(torch.randn(4, 64), "nf4"))
    >>> packed.shape, absmax.shape
    (torch.Size([128, 1]), torch.Size([4]))
    """
    if not isinstance(qt, QuantizedTensor) or qt.fmt not in ("nf4", "fp4"):
        got = qt.fmt if isinstance(qt, QuantizedTensor) else type(qt).__name__
        raise ValueError(f"qt must be an 'nf4' or 'fp4' QuantizedTensor, got {got!r}")
    return _swap_nibbles(qt["codes"]).reshape(-1, 1), _absmax(qt).to(torch.float32)


def from_bnb_4bit(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    *,
    quant_type: str = "nf4",
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> object:
    """Wrap bitsandbytes' packed 4-bit data and absmax as a QuantizedTensor.

    Parameters
    ----------
    packed : torch.Tensor
        uint8 from ``quantize_4bit`` (any shape; ``(n/2, 1)`` usually).
    absmax : torch.Tensor
        float32 block absmax (``quant_state.absmax`` of a non-nested state).
    shape : tuple of int
        Shape of the original tensor (``quant_state.shape``); its last
        dimension must be a multiple of ``blocksize``.
    quant_type : {"nf4", "fp4"}, default "nf4"
        bitsandbytes' quant type, which is also the llmref format name.
    blocksize : int, default 64
        bitsandbytes' block size (llmref's ``group_size``).
    dtype : torch.dtype, default torch.float32
        dtype that dequantize returns.

    Returns
    -------
    QuantizedTensor

    Raises
    ------
    ValueError
        If ``quant_type`` is unknown or the sizes do not agree.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, to_bnb_4bit, from_bnb_4bit
    >>> qt = quantize(torch.randn(4, 64), "nf4")
    >>> from_bnb_4bit(*to_bnb_4bit(qt), (4, 64)).equal(qt)
    True
    """
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    blocksize = check_int("blocksize", blocksize, minimum=1)
    n = 1
    for s in shape:
        n *= int(s)
    if int(shape[-1]) % blocksize != 0:
        raise ValueError(
            f"the last dimension of shape {tuple(shape)} must be a multiple of "
            f"blocksize={blocksize}"
        )
    if packed.numel() != packed_nbytes(n, 4) or absmax.numel() != n // blocksize:
        raise ValueError(
            f"for shape {tuple(shape)} and blocksize {blocksize} expected {packed_nbytes(n, 4)} "
            f"packed bytes and {n // blocksize} absmax values, got {packed.numel()} and "
            f"{absmax.numel()}"
        )
    codes = _swap_nibbles(packed.reshape(-1).view(torch.uint8))
    return QuantizedTensor(
        quant_type,
        tuple(shape),
        dtype,
        {"codes": codes, "absmax": absmax.reshape(-1).to(torch.float32)},
        {"group_size": blocksize, "double_quant": False},
    )
