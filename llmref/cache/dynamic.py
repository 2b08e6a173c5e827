"""The growing KV cache: every token is kept."""

from __future__ import annotations

import torch

from .._checks import check_int
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

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` token slots, dropping the newest ones.

        What speculative decoding needs after a verification pass: the keys and
        values of rejected draft tokens are removed, so the next update appends
        where the accepted tokens end. The buffer keeps its capacity. The
        dropped slots must be real tokens (left padding is never dropped:
        ``length`` at least the padding of the longest-padded row).

        Parameters
        ----------
        length : int
            Token slots to keep, ``0 <= length <= len(self)``.

        Raises
        ------
        TypeError
            If ``length`` is not an int.
        ValueError
            If ``length`` is negative, longer than the cache, or would drop
            padding slots.

        Examples
        --------
        >>> import torch
        >>> from llmref.cache import DynamicCache
        >>> cache = DynamicCache()
        >>> _ = cache.update(torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8))
        >>> cache.crop(4)
        >>> len(cache), cache.key_positions.tolist(), cache.positions_for(1).tolist()
        (4, [[0, 1, 2, 3]], [[4]])
        """
        length = check_int("length", length, minimum=0)
        if length > self._len:
            raise ValueError(f"length must be <= the {self._len} tokens held, got {length}")
        dropped = self._len - length
        if dropped and bool((self.key_positions[:, length:] < 0).any()):
            raise ValueError(
                f"length must keep every padding slot (crop drops real tokens only), got {length}"
            )
        self.key_positions = self.key_positions[:, :length]
        if self._next is not None:
            self._next = self._next - dropped
        self._len = length
        self.seen_tokens -= dropped

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
