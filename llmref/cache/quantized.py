"""KIVI: a KV cache that stores keys per-channel and values per-token quantized."""

from __future__ import annotations

import torch

from .._checks import check_int
from ..quant.methods.kivi import QuantizedKV, kivi, kivi_dequantize
from ._registry import CACHES
from .base import KVCache, check_same_layout

__all__ = ["QuantizedCache"]


@CACHES.register("quantized", paper="liu2024kivi")
class QuantizedCache(KVCache):
    """KIVI: keys quantized per channel, values per token, recent tokens in full precision.

    Key activations have a few channels of large magnitude (outlier channels)
    while values do not; so KIVI gives each key *channel* its own scale across
    a group of tokens, and each value *token* its own scale across channels.
    The newest tokens stay in full precision in a residual window; whenever it
    holds ``residual_length + group_size`` tokens, the oldest ``group_size``
    are quantized by :func:`llmref.quant.kivi` (asymmetric min-max, codes
    packed ``bits`` per number).

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
        self._chunks: list[QuantizedKV] = []
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
            self._chunks.append(
                kivi(self._k[:, :, :G], self._v[:, :, :G], bits=self.bits, group_size=G)
            )
            self._k, self._v = self._k[:, :, G:], self._v[:, :, G:]
            self.n_quantized += G
        self.seen_tokens += k.shape[2]
        self.key_positions = torch.arange(self.seen_tokens, device=k.device)
        return k_all, v_all

    def _dequantized(self, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pairs = [kivi_dequantize(chunk, dtype=dtype) for chunk in self._chunks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def __len__(self) -> int:
        return self.n_quantized + (0 if self._k is None else self._k.shape[2])

    def reset(self) -> None:
        self._chunks = []
        self._k = self._v = None
        self.n_quantized = self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
        return total + sum(c.keys.nbytes + c.values.nbytes for c in self._chunks)
