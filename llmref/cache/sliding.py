"""Sliding-window KV cache: a ring buffer of the most recent keys."""

from __future__ import annotations

import torch

from .._checks import check_int
from ._registry import CACHES
from .base import KVCache, check_same_layout

__all__ = ["SlidingWindowCache"]


@CACHES.register(
    "sliding_window", paper="beltagy2020longformer", third_party="transformers.SlidingWindowLayer"
)
class SlidingWindowCache(KVCache):
    """Holds the ``window - 1`` most recent tokens in a ring buffer: constant memory.

    With llmref's window convention (a query sees ``window`` keys, itself
    included; see :func:`~llmref.attention.sliding_window_mask`), the next
    token needs only the ``window - 1`` tokens before it, so that is all the
    ring keeps. New tokens overwrite the oldest slots in place; the keys are
    returned in slot order, not time order, which attention does not mind
    because :attr:`key_positions` (and so the mask) follows the slots.

    Parameters
    ----------
    window : int
        Window width in tokens (>= 1), the same number as the attention's.

    Raises
    ------
    TypeError, ValueError
        If ``window`` is not an int >= 1.

    Notes
    -----
    :meth:`update` returns the ring's contents followed by all the new
    tokens, so a prefill of ``T`` tokens attends correctly (with
    :meth:`attention_mask` and the window) even when ``T > window``; only
    the last ``window - 1`` are then kept.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import SlidingWindowCache
    >>> cache = SlidingWindowCache(window=4)
    >>> for t in range(6):
    ...     k, v = cache.update(torch.full((1, 1, 1, 2), float(t)), torch.zeros(1, 1, 1, 2))
    >>> cache.key_positions.tolist(), len(cache)  # the ring after the last step, then the new key
    ([3, 4, 2, 5], 3)
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = check_int("window", window, minimum=1)
        self.capacity = self.window - 1
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._slot_positions = torch.zeros(0, dtype=torch.long)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        if self._k is None or self._v is None:
            self._k = k.new_zeros(*k.shape[:2], self.capacity, k.shape[3])
            self._v = v.new_zeros(*v.shape[:2], self.capacity, v.shape[3])
            self._slot_positions = torch.full((self.capacity,), -1, device=k.device)
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        T, start = k.shape[2], self.seen_tokens
        filled = self._slot_positions >= 0
        new_positions = torch.arange(start, start + T, device=k.device)
        k_all = torch.cat([self._k[:, :, filled], k], dim=2)
        v_all = torch.cat([self._v[:, :, filled], v], dim=2)
        self.key_positions = torch.cat([self._slot_positions[filled], new_positions])
        # Write the last `capacity` new tokens into their ring slots (position mod capacity).
        keep = min(T, self.capacity)
        if keep:
            slots = new_positions[T - keep :] % self.capacity
            self._k[:, :, slots] = k[:, :, T - keep :]
            self._v[:, :, slots] = v[:, :, T - keep :]
            self._slot_positions[slots] = new_positions[T - keep :]
        self.seen_tokens = start + T
        return k_all, v_all

    def __len__(self) -> int:
        return int((self._slot_positions >= 0).sum())

    def reset(self) -> None:
        self._slot_positions.fill_(-1)
        self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
