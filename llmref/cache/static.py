"""A preallocated KV cache of fixed capacity."""

from __future__ import annotations

import torch

from .._checks import check_int
from ._registry import CACHES
from .base import KVCache, check_same_layout

__all__ = ["StaticCache"]


@CACHES.register("static", paper="pope2023efficiently", third_party="transformers.StaticCache")
class StaticCache(KVCache):
    """Keys and values in buffers of ``max_len`` tokens, allocated once.

    The buffers are allocated at the first :meth:`update` (from the shape,
    dtype and device of the keys) and never move or grow afterwards, which is
    what CUDA graphs and ``torch.compile`` need; writing past ``max_len`` is an
    error rather than a reallocation.

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
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        if self._k is None or self._v is None:
            self._k = k.new_zeros(*k.shape[:2], self.max_len, k.shape[3])
            self._v = v.new_zeros(*v.shape[:2], self.max_len, v.shape[3])
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        need = self._len + k.shape[2]
        if need > self.max_len:
            raise ValueError(
                f"static cache is full: it holds {self._len} of max_len={self.max_len} tokens "
                f"and cannot take {k.shape[2]} more"
            )
        self._k[:, :, self._len : need] = k
        self._v[:, :, self._len : need] = v
        self._len = self.seen_tokens = need
        self.key_positions = torch.arange(need, device=k.device)
        return self._k[:, :, :need], self._v[:, :, :need]

    def __len__(self) -> int:
        return self._len

    def reset(self) -> None:
        self._len = self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
