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
    """Holds the ``window`` most recent tokens in a ring buffer: constant memory.

    With llmref's window convention (a query sees ``window`` keys, itself
    included; see :func:`~llmref.attention.sliding_window_mask`), a decoding
    step needs exactly the ``window`` newest tokens, so that is the ring's
    size. Token ``p`` lives in slot ``p mod window``; a decoding step
    overwrites the oldest slot in place and returns the ring itself, with no
    copy. The keys come back in slot order, not time order, which attention
    does not mind because :attr:`key_positions` (and so the mask) follows the
    slots.

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
    An update of ``T > 1`` tokens (a prefill) returns the ring's contents
    followed by all the new tokens, so every new query finds its window even
    when ``T > window``; then the last ``window`` tokens are written to the ring.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import SlidingWindowCache
    >>> cache = SlidingWindowCache(window=4)
    >>> for t in range(6):
    ...     k, v = cache.update(torch.full((1, 1, 1, 2), float(t)), torch.zeros(1, 1, 1, 2))
    >>> cache.key_positions.tolist(), k[0, 0, :, 0].tolist()  # slot order: token p in slot p % 4
    ([4, 5, 2, 3], [4.0, 5.0, 2.0, 3.0])
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = check_int("window", window, minimum=1)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._slot_positions = torch.zeros(0, dtype=torch.long)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        if self._k is None or self._v is None:
            self._k = k.new_zeros(*k.shape[:2], self.window, k.shape[3])
            self._v = v.new_zeros(*v.shape[:2], self.window, v.shape[3])
            self._slot_positions = torch.full((self.window,), -1, device=k.device)
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        T, start = k.shape[2], self.seen_tokens
        filled = min(start, self.window)  # slots 0 .. filled-1 are in use
        if T > 1:
            k_all = torch.cat([self._k[:, :, :filled], k], dim=2)
            v_all = torch.cat([self._v[:, :, :filled], v], dim=2)
            new_positions = torch.arange(start, start + T, device=k.device)
            positions = torch.cat([self._slot_positions[:filled], new_positions])
        self._write(k, v, start)
        self.seen_tokens = start + T
        if T > 1:
            self.key_positions = positions
            return k_all, v_all
        used = min(self.seen_tokens, self.window)
        self.key_positions = self._slot_positions[:used].clone()
        return self._k[:, :, :used], self._v[:, :, :used]

    def attention_mask(self, T: int, *, window: int | None = None) -> torch.Tensor:
        """Causal mask limited to this cache's window (and to ``window`` if smaller).

        Parameters
        ----------
        T : int
            Number of queries (the tokens of the last update).
        window : int, optional
            The layer's window, if it has its own.

        Returns
        -------
        torch.Tensor
            Shape ``(T, S)``.
        """
        own = self.window if window is None else min(window, self.window)
        return super().attention_mask(T, window=own)

    def _write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Write the last ``window`` of the new tokens to slots ``p mod window`` (<= 2 slices)."""
        assert self._k is not None and self._v is not None
        T = k.shape[2]
        keep = min(T, self.window)
        first = start + T - keep  # position of the first token written
        done = 0
        while done < keep:
            slot = (first + done) % self.window
            n = min(keep - done, self.window - slot)
            src = slice(T - keep + done, T - keep + done + n)
            self._k[:, :, slot : slot + n] = k[:, :, src]
            self._v[:, :, slot : slot + n] = v[:, :, src]
            self._slot_positions[slot : slot + n] = torch.arange(
                first + done, first + done + n, device=k.device
            )
            done += n

    def __len__(self) -> int:
        return min(self.seen_tokens, self.window)

    def reset(self) -> None:
        self._slot_positions.fill_(-1)
        self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
