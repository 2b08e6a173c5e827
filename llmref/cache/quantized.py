"""KIVI: a KV cache that stores keys per-channel and values per-token quantized."""

from __future__ import annotations

import torch

from .._checks import check_int
from ..quant.methods.kivi import QuantizedKV, kivi, kivi_dequantize
from ._registry import CACHES, CacheSpec
from .base import KVCache, compact_positions, right_padded

__all__ = ["QuantizedCache"]


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

    Each row keeps its own chunks, grouped from its first *real* token: left
    padding (``update(..., lengths=...)``) is not stored, so it cannot shift a
    row's quantization groups, and a padded row stores and returns exactly what
    it would alone. :meth:`update` returns the rows right-padded to the longest
    (position ``-1``).

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
        self._rows: list[_Row] = []

    @property
    def n_quantized(self) -> int:
        """Tokens stored quantized (the longest row's count)."""
        return max((row.n_quantized for row in self._rows), default=0)

    @property
    def next_positions(self) -> torch.Tensor:
        if not self._rows:
            return super().next_positions
        return torch.tensor([len(row) for row in self._rows], dtype=torch.long)

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        return compact_positions([len(row) for row in self._rows], T, batch_size, lengths)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        stored = [self._rows[0].k, self._rows[0].v] if self._rows else []
        B, T, new = self._check_rows(k, v, stored, lengths)
        if not self._rows:
            self._rows = [_Row(k[:1, :, :0], v[:1, :, :0]) for _ in range(B)]
        keys, values = [], []
        for b, (row, n) in enumerate(zip(self._rows, new, strict=True)):
            row.k = torch.cat([row.k, k[b : b + 1, :, T - n :]], dim=2)
            row.v = torch.cat([row.v, v[b : b + 1, :, T - n :]], dim=2)
            k_parts, v_parts = row.dequantized(k.dtype)
            keys.append(torch.cat([*k_parts, row.k], dim=2))
            values.append(torch.cat([*v_parts, row.v], dim=2))
            row.compress(self.bits, self.group_size, self.residual_length)
        self.seen_tokens += T
        self.key_positions = self.next_key_positions(0, batch_size=B).to(k.device)
        S = self.key_positions.shape[1]
        return right_padded(keys, S), right_padded(values, S)

    def __len__(self) -> int:
        return max((len(row) for row in self._rows), default=0)

    def reset(self) -> None:
        self._rows = []
        self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False

    @property
    def nbytes(self) -> int:
        return sum(row.nbytes for row in self._rows)


class _Row:
    """One sequence of a :class:`QuantizedCache`: quantized chunks plus the residual."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.chunks: list[QuantizedKV] = []
        self.k, self.v = k, v  # full-precision residual, (1, H_kv, r, D)
        self.n_quantized = 0

    def dequantized(self, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pairs = [kivi_dequantize(chunk, dtype=dtype) for chunk in self.chunks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def compress(self, bits: int, G: int, residual_length: int) -> None:
        """Quantize the oldest ``G`` residual tokens while more than the residual remain."""
        while self.k.shape[2] >= residual_length + G:
            self.chunks.append(kivi(self.k[:, :, :G], self.v[:, :, :G], bits=bits, group_size=G))
            self.k, self.v = self.k[:, :, G:], self.v[:, :, G:]
            self.n_quantized += G

    def __len__(self) -> int:
        return self.n_quantized + self.k.shape[2]

    @property
    def nbytes(self) -> int:
        full = sum(t.numel() * t.element_size() for t in (self.k, self.v))
        return full + sum(c.keys.nbytes + c.values.nbytes for c in self.chunks)


CACHES.add(
    CacheSpec(
        name="quantized",
        example=lambda: QuantizedCache(bits=2, group_size=2, residual_length=1),
        fn=QuantizedCache,
        paper="liu2024kivi",
        exact=False,
    )
)
