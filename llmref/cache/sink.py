"""StreamingLLM's cache: attention-sink tokens plus a window of recent ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .._checks import check_int
from ._registry import CACHES, CacheSpec
from .base import KVCache, right_padded

if TYPE_CHECKING:
    from ..position import RotaryEmbedding

__all__ = ["SinkCache"]


class SinkCache(KVCache):
    """Keeps the first ``n_sink`` tokens and the recent window, renumbering positions.

    StreamingLLM lets a model run far past its trained length: the first few
    tokens ("attention sinks", where softmax parks probability mass) are kept
    forever, the rest is a sliding window, and positions are counted *inside
    the cache*, so they never exceed ``n_sink + window - 1``. When a token is
    evicted the newer ones move down one position, so their cached RoPE keys
    are rotated back by the shift (rotations compose: rotating a key by
    ``-s`` moves it from position ``p`` to ``p - s``). Transformers removed its
    ``SinkCache``; this is a self-contained, tested version.

    Parameters
    ----------
    n_sink : int
        Number of initial tokens always kept (>= 0).
    window : int
        Recent tokens each query sees, itself included (>= 1), as in
        :func:`~llmref.attention.sink_mask`.
    rope : llmref.position.RotaryEmbedding, optional
        The layer's :class:`~llmref.position.RotaryEmbedding` (its ``inv_freq``
        and ``layout`` are used to re-rotate keys). ``None`` for models whose
        keys carry no rotation (NoPE, ALiBi).

    Raises
    ------
    TypeError, ValueError
        For sizes that are not ints in range.

    Notes
    -----
    Two kinds of position meet here. :attr:`key_positions` are each kept token's
    index in its sequence, so the model's mask is the ``"sink"`` rule of
    :mod:`llmref.attention.masks` (declared in the spec, with this cache's
    ``n_sink`` and ``window``). RoPE positions are counted inside the cache: the
    new tokens' queries and keys must be rotated at :meth:`positions_for`
    (``len(cache)`` onward, per row), which :class:`~llmref.models.DecoderLM`
    and :class:`~llmref.attention.MultiHeadAttention` do. Exact for RoPE types
    whose frequencies do not depend on the sequence length (not ``dynamic``).

    The re-rotation of kept keys on eviction is the one place RoPE is computed
    outside the model's once-per-forward cos/sin: it corrects *stored* keys by an
    angle (``-shift``) that depends on this cache's eviction count per row, not
    on the new tokens' positions, so it belongs to the cache's storage, as in
    transformers' former ``SinkCache``.

    Left padding (``update(..., lengths=...)``) is not stored: each row keeps
    its own first ``n_sink`` *real* tokens as sinks, and a padded row stores,
    rotates and returns exactly what it would alone (rows are right-padded to the
    longest, position ``-1``).

    References
    ----------
    :cite:t:`xiao2024streamingllm`

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import SinkCache
    >>> cache = SinkCache(n_sink=2, window=3)
    >>> for t in range(8):
    ...     k, v = cache.update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    >>> len(cache), cache.positions_for(1).tolist()  # 2 sinks + 2 recent kept: next at 4
    (4, [[4]])
    >>> cache.key_positions.tolist()  # what the last step attended to, by sequence index
    [[0, 1, 5, 6, 7]]
    """

    def __init__(self, n_sink: int, window: int, *, rope: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.n_sink = check_int("n_sink", n_sink, minimum=0)
        self.window = check_int("window", window, minimum=1)
        self.rope = rope
        self._rows: list[_Row] = []

    @property
    def next_positions(self) -> torch.Tensor:
        if not self._rows:
            return super().next_positions
        return torch.tensor([row.next for row in self._rows], dtype=torch.long)

    def positions_for(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RoPE positions of the next ``T`` tokens, counted inside the cache (``len`` of
        each row onward); padding at 0. Shape ``(B, T)``."""
        kept = torch.tensor([len(row) for row in self._rows] or [0], dtype=torch.long)
        steps = torch.arange(T)
        pad = (
            torch.zeros(1, 1, dtype=torch.long) if lengths is None else (T - lengths.cpu())[:, None]
        )
        return torch.where(steps >= pad, kept[:, None] + steps - pad, 0).expand(batch_size, T)

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        new = self._new_positions(T, batch_size, lengths).cpu()
        held = [row.positions for row in self._rows]
        held = held or [torch.zeros(0, dtype=torch.long)] * new.shape[0]
        kept = [torch.cat([old, p[p >= 0]]) for old, p in zip(held, new, strict=True)]
        S = max(p.numel() for p in kept)
        return torch.stack([F.pad(p, (0, S - p.numel()), value=-1) for p in kept])

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        stored = [self._rows[0].k, self._rows[0].v] if self._rows else []
        B, T, new = self._check_rows(k, v, stored, lengths)
        positions = self.next_key_positions(T, batch_size=B, lengths=lengths)
        if not self._rows:
            self._rows = [_Row(k[:1, :, :0], v[:1, :, :0]) for _ in range(B)]
        keys, values = [], []
        for b, (row, n) in enumerate(zip(self._rows, new, strict=True)):
            k_all = torch.cat([row.k, k[b : b + 1, :, T - n :]], dim=2)
            v_all = torch.cat([row.v, v[b : b + 1, :, T - n :]], dim=2)
            kept = positions[b, : k_all.shape[2]]
            keys.append(k_all)
            values.append(v_all)
            evict = max(0, k_all.shape[2] - self.n_sink - (self.window - 1))
            recent = slice(self.n_sink + evict, None)
            row.k = torch.cat(
                [k_all[:, :, : self.n_sink], self._shift(k_all[:, :, recent], evict)], 2
            )
            row.v = torch.cat([v_all[:, :, : self.n_sink], v_all[:, :, recent]], 2)
            row.positions = torch.cat([kept[: self.n_sink], kept[recent]])
            row.next += n
        self.seen_tokens += T
        self.key_positions = positions.to(k.device)
        S = positions.shape[1]
        return right_padded(keys, S), right_padded(values, S)

    def _shift(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Rotate keys from position p to p - shift."""
        if self.rope is None or keys.shape[2] == 0 or shift == 0:
            return keys
        from ..position import apply_rope, rope_cos_sin

        cos, sin = rope_cos_sin(
            self.rope.inv_freq.to(torch.float64),
            torch.tensor([-shift], device=keys.device),
            layout=self.rope.layout,
        )
        return apply_rope(keys, cos.to(keys.dtype), sin.to(keys.dtype), layout=self.rope.layout)

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
    """One sequence of a :class:`SinkCache`: kept keys/values and their sequence positions."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v
        self.positions = torch.zeros(0, dtype=torch.long)
        self.next = 0  # real tokens seen

    def __len__(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v))


CACHES.add(
    CacheSpec(
        name="sink",
        example=lambda: SinkCache(2, 4),
        fn=SinkCache,
        paper="xiao2024streamingllm",
        mask="sink",
        mask_params=("n_sink", "window"),
        renumbers_positions=True,
    )
)
