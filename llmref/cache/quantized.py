"""KIVI: a KV cache that stores keys per-channel and values per-token quantized."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_int
from ._registry import CACHES
from .base import KVCache, check_same_layout

__all__ = ["QuantizedCache"]


class _Chunk(NamedTuple):
    """One quantized chunk of ``group_size`` tokens: packed codes, scales and offsets."""

    packed: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor


def kivi_quantize(x: torch.Tensor, bits: int, *, per: str) -> _Chunk:
    """Asymmetric min-max quantization of a ``(B, H, G, D)`` chunk, KIVI's way.

    ``per="channel"`` (keys) gives each channel one scale over the chunk's
    ``G`` tokens; ``per="token"`` (values) gives each token one scale over its
    ``D`` channels. Codes are packed ``bits`` to a byte stream.
    """
    from ..quant.packing import pack_codes
    from ..quant.primitives import choose_qparams, quantize_affine

    grouped = x.transpose(-1, -2).contiguous() if per == "channel" else x.contiguous()
    group = grouped.shape[-1]
    params = choose_qparams(
        grouped.float(), bits=bits, symmetric=False, zero_point="float", group_size=group
    )
    codes = quantize_affine(grouped.float(), params.scale, params.zero_point, bits=bits)
    assert params.zero_point is not None
    return _Chunk(pack_codes(codes, bits), params.scale, params.zero_point)


def kivi_dequantize(
    chunk: _Chunk, shape: tuple[int, ...], bits: int, *, per: str, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`kivi_quantize` for a chunk of ``shape`` ``(B, H, G, D)``."""
    from ..quant.packing import unpack_codes
    from ..quant.primitives import dequantize_affine

    B, H, G, D = shape
    grouped_shape = (B, H, D, G) if per == "channel" else (B, H, G, D)
    n = B * H * G * D
    codes = unpack_codes(chunk.packed, bits, n).reshape(grouped_shape)
    x = dequantize_affine(codes, chunk.scale, chunk.offset).reshape(grouped_shape)
    return (x.transpose(-1, -2) if per == "channel" else x).to(dtype)


@CACHES.register("quantized", paper="liu2024kivi")
class QuantizedCache(KVCache):
    """KIVI: keys quantized per channel, values per token, recent tokens in full precision.

    Key activations have a few channels of large magnitude (outlier channels)
    while values do not; so KIVI gives each key *channel* its own scale across
    a group of tokens, and each value *token* its own scale across channels.
    The newest tokens stay in full precision in a residual window; whenever it
    holds ``residual_length + group_size`` tokens, the oldest ``group_size``
    are quantized (asymmetric min-max, codes packed ``bits`` per number).

    Parameters
    ----------
    bits : int, default 2
        Bits per number: 2, 4 or 8.
    group_size : int, default 32
        Tokens per key quantization group (and per quantized chunk).
    residual_length : int, default 128
        Recent tokens kept in full precision (>= 0).

    Raises
    ------
    TypeError, ValueError
        For values that are not ints in range.

    Notes
    -----
    Per group with range :math:`[m, M]`, the step is
    :math:`\\Delta = (M - m) / (2^b - 1)` and each number is stored as
    :math:`\\operatorname{round}((x - m) / \\Delta)`, so the reconstruction error
    is at most :math:`\\Delta / 2`. :meth:`update` dequantizes everything it
    returns (a fused kernel would not); :attr:`nbytes` counts the packed codes,
    the float32 scales and offsets, and the full-precision residual.

    References
    ----------
    :cite:t:`liu2024kivi`

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import QuantizedCache
    >>> cache = QuantizedCache(bits=2, group_size=4, residual_length=4)
    >>> for _ in range(3):
    ...     k, v = cache.update(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    >>> k.shape, cache.n_quantized  # 12 tokens: 8 quantized, 4 in full precision
    (torch.Size([1, 2, 12, 8]), 8)
    """

    def __init__(self, bits: int = 2, *, group_size: int = 32, residual_length: int = 128):
        super().__init__()
        self.bits = check_int("bits", bits, minimum=2)
        if self.bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8, got {bits}")
        self.group_size = check_int("group_size", group_size, minimum=1)
        self.residual_length = check_int("residual_length", residual_length, minimum=0)
        self._chunks: list[tuple[_Chunk, _Chunk]] = []
        self._shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._k: torch.Tensor | None = None  # full-precision residual
        self._v: torch.Tensor | None = None
        self.n_quantized = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        self._k = k if self._k is None else torch.cat([self._k, k], dim=2)
        self._v = v if self._v is None else torch.cat([self._v, v], dim=2)
        k_parts, v_parts = self._dequantized(k.dtype)
        k_all = torch.cat([*k_parts, self._k], dim=2)
        v_all = torch.cat([*v_parts, self._v], dim=2)
        G = self.group_size
        while self._k.shape[2] >= self.residual_length + G:
            k_old, v_old = self._k[:, :, :G], self._v[:, :, :G]
            chunk = (
                kivi_quantize(k_old, self.bits, per="channel"),
                kivi_quantize(v_old, self.bits, per="token"),
            )
            self._chunks.append(chunk)
            self._shapes.append((tuple(k_old.shape), tuple(v_old.shape)))
            self._k, self._v = self._k[:, :, G:], self._v[:, :, G:]
            self.n_quantized += G
        self.seen_tokens += k.shape[2]
        self.key_positions = torch.arange(self.seen_tokens, device=k.device)
        return k_all, v_all

    def _dequantized(self, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ks, vs = [], []
        for (kc, vc), (k_shape, v_shape) in zip(self._chunks, self._shapes, strict=True):
            ks.append(kivi_dequantize(kc, k_shape, self.bits, per="channel", dtype=dtype))
            vs.append(kivi_dequantize(vc, v_shape, self.bits, per="token", dtype=dtype))
        return ks, vs

    def __len__(self) -> int:
        return self.n_quantized + (0 if self._k is None else self._k.shape[2])

    def reset(self) -> None:
        self._chunks, self._shapes = [], []
        self._k = self._v = None
        self.n_quantized = self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
        for pair in self._chunks:
            for chunk in pair:
                total += sum(t.numel() * t.element_size() for t in chunk)
        return total
