"""A preallocated KV cache of fixed capacity."""

from __future__ import annotations

import torch

from .._checks import check_int
from ._registry import CACHES, CacheSpec
from .base import check_same_layout
from .dynamic import DynamicCache

__all__ = ["StaticCache"]


class StaticCache(DynamicCache):
    """Keys and values in buffers of ``max_len`` tokens, allocated once.

    The buffers are allocated at the first :meth:`update` (from the shape,
    dtype and device of the keys) and never move or grow afterwards, which is
    what CUDA graphs and ``torch.compile`` need; writing past ``max_len`` is an
    error rather than a reallocation. Left padding is stored in place with
    position ``-1``, as in :class:`~llmref.cache.DynamicCache`.

    Parameters
    ----------
    max_len : int
        Capacity in tokens (>= 1).

    Raises
    ------
    TypeError, ValueError
        If ``max_len`` is not an int >= 1.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import StaticCache
    >>> cache = StaticCache(8)
    >>> k, v = cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
    >>> k.shape, cache.nbytes  # the full 8-token buffers are held from the start
    (torch.Size([1, 2, 3, 4]), 512)
    """

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = check_int("max_len", max_len, minimum=1)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        if self._k is None or self._v is None:
            self._k = k.new_zeros(*k.shape[:2], self.max_len, k.shape[3])
            self._v = v.new_zeros(*v.shape[:2], self.max_len, v.shape[3])
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        B, _, T, _ = k.shape
        need = self._len + T
        if need > self.max_len:
            raise ValueError(
                f"static cache is full: it holds {self._len} of max_len={self.max_len} tokens "
                f"and cannot take {T} more"
            )
        lengths = self._check_lengths(lengths, B, T)
        positions = self.next_key_positions(T, batch_size=B, lengths=lengths).to(k.device)
        self._k[:, :, self._len : need] = k
        self._v[:, :, self._len : need] = v
        self._next = self._advanced(T, B, lengths, k.device)
        self._len = need
        self.seen_tokens += T
        self.key_positions = positions
        return self._k[:, :, :need], self._v[:, :, :need]

    def reset(self) -> None:
        self._len = self.seen_tokens = 0
        self._next = None
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False


CACHES.add(
    CacheSpec(
        name="static",
        example=lambda: StaticCache(64),
        fn=StaticCache,
        paper="pope2023efficiently",
        third_party="transformers.StaticCache",
        traces=True,
    )
)
