"""The growing KV cache: every token is kept."""

from __future__ import annotations

import torch

from ._registry import CACHES, CacheSpec
from .base import KVCache, check_same_layout

__all__ = ["DynamicCache"]


class DynamicCache(KVCache):
    """Keeps every token's keys and values, growing a buffer by doubling.

    Appending by ``torch.cat`` copies the whole cache at each step (quadratic
    work over a generation); this cache instead keeps spare capacity and
    doubles it when full, so appends are amortised O(1) copies per token.
    Left padding is stored in place (stream order) with position ``-1``.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import DynamicCache
    >>> cache = DynamicCache()
    >>> k, v = cache.update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))  # prefill
    >>> k, v = cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))  # one step
    >>> k.shape, len(cache), cache.key_positions.tolist()
    (torch.Size([1, 2, 6, 8]), 6, [[0, 1, 2, 3, 4, 5]])
    """

    def __init__(self) -> None:
        super().__init__()
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        new = self._new_positions(T, batch_size, lengths)
        old = self.key_positions.to(new.device).expand(new.shape[0], -1)
        return torch.cat([old, new], dim=-1)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        B, _, T, _ = k.shape
        lengths = self._check_lengths(lengths, B, T)
        positions = self.next_key_positions(T, batch_size=B, lengths=lengths).to(k.device)
        need = self._len + T
        if self._k is None or self._v is None or need > self._k.shape[2]:
            capacity = max(need, 2 * (0 if self._k is None else self._k.shape[2]), 16)
            self._k = self._grow(self._k, k, capacity)
            self._v = self._grow(self._v, v, capacity)
        self._k[:, :, self._len : need] = k
        self._v[:, :, self._len : need] = v
        self._next = self._advanced(T, B, lengths, k.device)
        self._len = need
        self.seen_tokens += T
        self.key_positions = positions
        return self._k[:, :, :need], self._v[:, :, :need]

    def _grow(self, old: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        shape = (*like.shape[:2], capacity, like.shape[3])
        new = like.new_empty(shape)
        if old is not None:
            new[:, :, : self._len] = old[:, :, : self._len]
        return new

    def __len__(self) -> int:
        return self._len

    def reset(self) -> None:
        self._k = self._v = self._next = None
        self._len = self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)


CACHES.add(
    CacheSpec(
        name="dynamic",
        fn=DynamicCache,
        paper="pope2023efficiently",
        third_party="transformers.DynamicCache",
        traces=True,
    )
)
