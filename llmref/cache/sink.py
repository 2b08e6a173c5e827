"""StreamingLLM's cache: attention-sink tokens plus a window of recent ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._checks import check_int
from ._registry import CACHES
from .base import KVCache, check_same_layout

if TYPE_CHECKING:
    from ..position import RotaryEmbedding

__all__ = ["SinkCache"]


@CACHES.register("sink", paper="xiao2024streamingllm")
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
    The new tokens' queries and keys must be rotated at positions
    :attr:`next_position` onward (``len(cache)`` before the update), which
    :class:`~llmref.attention.MultiHeadAttention` does. Exact for RoPE types
    whose frequencies do not depend on the sequence length (not ``dynamic``).

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
    >>> len(cache), cache.next_position  # 2 sinks + 2 recent kept for the next token
    (4, 4)
    """

    def __init__(self, n_sink: int, window: int, *, rope: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.n_sink = check_int("n_sink", n_sink, minimum=0)
        self.window = check_int("window", window, minimum=1)
        self.rope = rope
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    @property
    def next_position(self) -> int:
        return len(self)

    def attention_mask(self, T: int, *, window: int | None = None) -> torch.Tensor:
        """Causal mask over the returned keys restricted to the sinks plus the recent window.

        Parameters
        ----------
        T : int
            Number of queries (the tokens of the last update).
        window : int, optional
            A further sliding window of the layer, combined by AND.

        Returns
        -------
        torch.Tensor
            Shape ``(T, S)``.
        """
        keys = self.key_positions
        queries = keys[keys.numel() - T :]  # the new tokens are the last T returned keys
        distance = queries.unsqueeze(-1) - keys.unsqueeze(-2)
        allowed = (distance >= 0) & ((distance < self.window) | (keys < self.n_sink))
        if window is not None:
            allowed &= distance < window
        return allowed

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._check_kv(k, v)
        check_same_layout("k", k, self._k)
        check_same_layout("v", v, self._v)
        k_all = k if self._k is None else torch.cat([self._k, k], dim=2)
        v_all = v if self._v is None else torch.cat([self._v, v], dim=2)
        S = k_all.shape[2]
        self.key_positions = torch.arange(S, device=k.device)
        self.seen_tokens += k.shape[2]
        keep_recent = self.window - 1  # what the next query needs besides itself
        evict = max(0, S - self.n_sink - keep_recent)
        if evict == 0:
            self._k, self._v = k_all, v_all
        else:
            recent = k_all[:, :, self.n_sink + evict :]
            self._k = torch.cat([k_all[:, :, : self.n_sink], self._shift(recent, evict)], dim=2)
            self._v = torch.cat([v_all[:, :, : self.n_sink], v_all[:, :, self.n_sink + evict :]], 2)
        return k_all, v_all

    def _shift(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Rotate keys from position p to p - shift."""
        if self.rope is None or keys.shape[2] == 0:
            return keys
        from ..position import apply_rope, rope_cos_sin

        cos, sin = rope_cos_sin(
            self.rope.inv_freq.to(torch.float64),
            torch.tensor([-shift], device=keys.device),
            layout=self.rope.layout,
        )
        return apply_rope(keys, cos.to(keys.dtype), sin.to(keys.dtype), layout=self.rope.layout)

    def __len__(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def reset(self) -> None:
        self._k = self._v = None
        self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)
