"""Sliding-window KV cache: a ring buffer of the most recent keys."""

from __future__ import annotations

import torch

from .._checks import check_int
from ._registry import CACHES, CacheSpec
from .base import KVCache, check_same_layout

__all__ = ["SlidingWindowCache"]


class SlidingWindowCache(KVCache):
    """Holds the ``window`` most recent tokens in a ring buffer: constant memory.

    With llmref's window convention (a query sees ``window`` keys, itself
    included; see :func:`~llmref.attention.sliding_window_mask`), a decoding
    step needs exactly the ``window`` newest tokens, so that is the ring's
    size. Token ``p`` lives in slot ``p mod window``; a decoding step
    overwrites the oldest slot in place and returns the ring itself, with no
    copy. The keys come back in slot order, not time order, which attention
    does not mind because :attr:`key_positions` (and so the mask the model
    builds) follows the slots. Its spec declares the ``"sliding_window"`` rule
    with this cache's ``window``: the keys a prefill returns beyond the ring
    are masked by the same rule the ring implements.

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
    ([[4, 5, 2, 3]], [4.0, 5.0, 2.0, 3.0])
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = check_int("window", window, minimum=1)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._slot_positions = torch.full((1, self.window), -1, dtype=torch.long)

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        new = self._new_positions(T, batch_size, lengths)
        slots = self._slot_positions.to(new.device).expand(new.shape[0], -1)
        filled = min(self.seen_tokens, self.window)
        if T > 1:
            return torch.cat([slots[:, :filled], new], dim=-1)
        used = min(self.seen_tokens + T, self.window)
        return self._written(slots, new, self.seen_tokens)[:, :used]

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        if self._k is None or self._v is None:
            self._k = k.new_zeros(*k.shape[:2], self.window, k.shape[3])
            self._v = v.new_zeros(*v.shape[:2], self.window, v.shape[3])
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        B, _, T, _ = k.shape
        lengths = self._check_lengths(lengths, B, T)
        start = self.seen_tokens
        filled = min(start, self.window)  # slots 0 .. filled-1 are in use
        positions = self.next_key_positions(T, batch_size=B, lengths=lengths).to(k.device)
        if T > 1:
            k_all = torch.cat([self._k[:, :, :filled], k], dim=2)
            v_all = torch.cat([self._v[:, :, :filled], v], dim=2)
        new = self._new_positions(T, B, lengths).to(k.device)
        slots = self._slot_positions.to(k.device).expand(B, -1)
        self._slot_positions = self._written(slots, new, start)
        self._write(k, v, start)
        self._next = self._advanced(T, B, lengths, k.device)
        self.seen_tokens = start + T
        self.key_positions = positions
        if T > 1:
            return k_all, v_all
        used = min(self.seen_tokens, self.window)
        return self._k[:, :, :used], self._v[:, :, :used]

    def _ring(self, start: int, T: int) -> list[tuple[int, slice]]:
        """(slot, source slice) of the runs the last ``window`` new tokens are written to."""
        keep = min(T, self.window)
        first = start + T - keep  # stream index of the first token written
        runs, done = [], 0
        while done < keep:
            slot = (first + done) % self.window
            n = min(keep - done, self.window - slot)
            runs.append((slot, slice(T - keep + done, T - keep + done + n)))
            done += n
        return runs

    def _written(self, slots: torch.Tensor, new: torch.Tensor, start: int) -> torch.Tensor:
        """Slot positions after writing tokens with positions ``new`` (B, T) from ``start``."""
        out = slots.clone()
        for slot, src in self._ring(start, new.shape[1]):
            out[:, slot : slot + src.stop - src.start] = new[:, src]
        return out

    def _write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Write the last ``window`` of the new tokens to slots ``p mod window`` (<= 2 slices)."""
        assert self._k is not None and self._v is not None
        for slot, src in self._ring(start, k.shape[2]):
            n = src.stop - src.start
            self._k[:, :, slot : slot + n] = k[:, :, src]
            self._v[:, :, slot : slot + n] = v[:, :, src]

    def __len__(self) -> int:
        return min(self.seen_tokens, self.window)

    def reset(self) -> None:
        self._slot_positions = torch.full((1, self.window), -1, dtype=torch.long)
        self._next = None
        self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)


CACHES.add(
    CacheSpec(
        name="sliding_window",
        example=lambda: SlidingWindowCache(4),
        fn=SlidingWindowCache,
        paper="beltagy2020longformer",
        third_party="transformers.SlidingWindowLayer",
        mask="sliding_window",
        mask_params=("window",),
        traces=True,
    )
)
