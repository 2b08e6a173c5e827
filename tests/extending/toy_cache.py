"""Worked example: a new KV cache kind, registered by one import.

``toy_recent`` keeps the ``window`` most recent token slots by concatenating and
slicing (the simple way: a copy per step, where the sliding-window ring overwrites one
slot in place). It stores keys and values and reports positions; it builds no mask:
its spec declares that what it keeps implies the ``"sliding_window"`` rule, with the
cache's own ``window``, and the model turns that into the mask. Left padding is kept
in place with position ``-1`` (the base class's :meth:`query_positions` numbers the
new tokens). The contract suite (``tests/testing/test_cache_contracts.py``) picks it up.
"""

from __future__ import annotations

import torch

from llmref._checks import check_int
from llmref.cache import CACHES, CacheSpec, KVCache


class RecentCache(KVCache):
    """The ``window`` most recent token slots, in time order.

    Parameters
    ----------
    window : int
        Slots kept (>= 1): what a query with a window of ``window`` keys needs.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = check_int("window", window, minimum=1)
        self.reset()

    @property
    def next_positions(self) -> torch.Tensor:
        """Each row's next position: one past its newest real key (0 before any)."""
        if self._positions.shape[1] == 0:
            return super().next_positions
        return self._positions.amax(-1) + 1

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The kept positions, then the new tokens' (``-1``: padding)."""
        new = self.query_positions(T, batch_size=batch_size, lengths=lengths)
        kept = self._positions.to(new.device).expand(new.shape[0], -1)
        return torch.cat([kept, new], dim=-1)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the kept slots and the new ones; keep the last ``window``."""
        k, v = self._check_kv(k, v)
        B, _, T, _ = k.shape
        lengths = self._check_lengths(lengths, B, T)
        positions = self.next_key_positions(T, batch_size=B, lengths=lengths)
        k_all = k if self._k is None else torch.cat([self._k, k], dim=2)
        v_all = v if self._v is None else torch.cat([self._v, v], dim=2)
        self._k, self._v = k_all[:, :, -self.window :], v_all[:, :, -self.window :]
        self._positions = positions[:, -self.window :]
        self.seen_tokens += T
        self.key_positions = positions
        return k_all, v_all

    def __len__(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def reset(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._positions = torch.zeros(1, 0, dtype=torch.long)
        self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)


CACHES.add(
    CacheSpec(
        name="toy_recent",
        fn=RecentCache,
        paper="beltagy2020longformer",
        mask="sliding_window",  # what it keeps implies this rule, with its own window
        mask_params=("window",),
        traces=True,  # concatenating and slicing: one graph (the cache contract checks it)
        example=lambda: RecentCache(4),
    )
)
