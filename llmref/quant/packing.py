"""Packing of sub-byte codes into bytes, and the layouts other libraries use.

llmref's own layout (used inside every :class:`~llmref.quant.QuantizedTensor`)
is a little-endian bit stream: the codes are taken in row-major order and
code ``i`` occupies bits ``i*b .. i*b + b - 1`` of the stream, byte ``k``
holding stream bits ``8k .. 8k + 7``. For 4-bit codes this means **element
``2j`` in the low nibble and element ``2j + 1`` in the high nibble of byte
``j``** — the order of torchao's ``pack_uint4``, OCP MX FP4 and PyTorch's
``float4_e2m1fn_x2``. Other libraries differ:

* bitsandbytes (``quantize_4bit``): element ``2j`` in the **high** nibble;
  the packed tensor has shape ``(n // 2, 1)``. See :func:`~llmref.quant.to_bnb_4bit`.
* ggml/GGUF (``q4_0``, ``q4_1``): within a block of 32, byte ``j`` holds
  element ``j`` (low nibble) and element ``j + 16`` (high nibble); ``q4_k``
  does the same per 64 elements (``j`` and ``j + 32``). See
  :func:`~llmref.quant.to_ggml_blocks`.
* GPTQ / AutoGPTQ: eight 4-bit codes per ``int32`` along the input
  dimension, element ``i`` at bits ``4i``; AWQ packs along the output
  dimension with the interleaved order ``0, 2, 4, 6, 1, 3, 5, 7``.
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_tensor

__all__ = ["pack_codes", "packed_nbytes", "unpack_codes"]


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``.

    Parameters
    ----------
    n : int
        Number of codes.
    bits : int
        Bits per code, 1 to 8.

    Returns
    -------
    int

    Examples
    --------
    >>> from llmref.quant.packing import packed_nbytes
    >>> packed_nbytes(32, 4), packed_nbytes(32, 6), packed_nbytes(3, 4)
    (16, 24, 2)
    """
    return -(-n * bits // 8)


def _check_bits(bits: object) -> int:
    bits = check_int("bits", bits)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}")
    return bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``0 .. 2^bits - 1`` into a little-endian bit stream.

    Parameters
    ----------
    codes : torch.Tensor
        Integer codes of any shape; flattened in row-major order.
    bits : int
        Bits per code, 1 to 8.

    Returns
    -------
    torch.Tensor
        uint8 of shape ``(ceil(n * bits / 8),)``; unused high bits of the last
        byte are zero.

    Raises
    ------
    TypeError
        If ``codes`` is not an integer tensor.
    ValueError
        If ``bits`` is out of range or a code does not fit in ``bits`` bits.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.packing import pack_codes
    >>> pack_codes(torch.tensor([0x1, 0x2, 0x3, 0xF]), 4)  # low nibble first
    tensor([ 33, 243], dtype=torch.uint8)
    >>> [hex(b) for b in pack_codes(torch.tensor([1, 2, 3, 0]), 2).tolist()]
    ['0x39']
    """
    check_tensor("codes", codes)
    bits = _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    if bits == 8:
        return flat.to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte, fast path
        per = 8 // bits
        pad = (-flat.numel()) % per
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        shifts = torch.arange(per, device=flat.device, dtype=torch.int32) * bits
        return (flat.reshape(-1, per) << shifts).sum(dim=1).to(torch.uint8)
    # general widths (3, 5, 6, 7): explode to bits, regroup by 8
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int32)
    stream = ((flat.reshape(-1, 1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.arange(8, device=flat.device, dtype=torch.int32)
    return (stream.reshape(-1, 8) << weights).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`~llmref.quant.pack_codes`: the first ``n`` codes of a bit stream.

    Parameters
    ----------
    packed : torch.Tensor
        uint8 bytes.
    bits : int
        Bits per code, 1 to 8.
    n : int
        Number of codes to read.

    Returns
    -------
    torch.Tensor
        uint8 of shape ``(n,)``.

    Raises
    ------
    TypeError
        If ``packed`` is not uint8.
    ValueError
        If ``packed`` holds fewer than ``n`` codes.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.packing import unpack_codes
    >>> unpack_codes(torch.tensor([33, 243], dtype=torch.uint8), 4, 4).tolist()
    [1, 2, 3, 15]
    """
    check_tensor("packed", packed)
    bits = _check_bits(bits)
    n = check_int("n", n, minimum=0)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a torch.uint8 tensor, got {packed.dtype}")
    if packed.numel() < packed_nbytes(n, bits):
        raise ValueError(
            f"packed holds {packed.numel()} bytes, fewer than the {packed_nbytes(n, bits)} "
            f"needed for {n} codes of {bits} bits"
        )
    flat = packed.reshape(-1)
    if bits == 8:
        return flat[:n].clone()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, device=flat.device, dtype=torch.uint8) * bits
        out = (flat.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
        return out.reshape(-1)[:n].contiguous()
    weights = torch.arange(8, device=flat.device, dtype=torch.uint8)
    stream = ((flat.reshape(-1, 1) >> weights) & 1).reshape(-1)[: n * bits].to(torch.int32)
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int32)
    return (stream.reshape(n, bits) << shifts).sum(dim=1).to(torch.uint8)
