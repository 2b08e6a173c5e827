"""The interface every KV cache shares, and the checks they all run."""

from __future__ import annotations

import torch

from .._checks import check_float_dtype, check_tensor


class KVCache:
    """Base class of llmref's KV caches (one cache object per attention layer).

    A cache receives the keys and values of the newest tokens with
    :meth:`update` and returns the keys and values the new queries must attend
    to, oldest first. After each update, :attr:`key_positions` holds the
    position of every returned key, from which a layer builds its mask
    (``key_positions[j] <= query_position[i]``, plus a window where one
    applies); the new queries sit at positions
    ``seen_tokens - T .. seen_tokens - 1``.

    Attributes
    ----------
    seen_tokens : int
        Tokens written so far: the position the next token will have.
    key_positions : torch.Tensor
        Positions of the keys returned by the last :meth:`update`, shape ``(S,)``.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import CACHES, KVCache
    >>> all(issubclass(entry.fn, KVCache) for entry in CACHES.values())
    True
    >>> cache = CACHES["sliding_window"](window=3)
    >>> _ = cache.update(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2))
    >>> cache.attention_mask(4).int()  # 4 new queries, each sees itself and 2 before
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 1]], dtype=torch.int32)
    """

    stores = "kv"
    """What :meth:`update` takes: per-head ``"kv"``, or MLA's ``"latent"``."""

    def __init__(self) -> None:
        self.seen_tokens = 0
        self.key_positions = torch.zeros(0, dtype=torch.long)

    @property
    def next_position(self) -> int:
        """Position the next token's query and key are rotated to (``seen_tokens`` by default;
        caches that renumber positions, like the sink cache, override it)."""
        return self.seen_tokens

    def positions_for(self, T: int) -> torch.Tensor:
        """Positions to rotate the next ``T`` tokens to: ``next_position + arange(T)``.

        Parameters
        ----------
        T : int
            Number of new tokens.

        Returns
        -------
        torch.Tensor
            Shape ``(T,)`` (``(B, T)`` for caches with per-sequence positions).
        """
        return self.next_position + torch.arange(T)

    def attention_mask(self, T: int, *, window: int | None = None) -> torch.Tensor:
        """Boolean mask of the ``T`` newest queries over the keys of the last update.

        Query ``i`` may see key ``j`` iff ``key_positions[j] <= query_position[i]``
        (and, with ``window``, ``query_position[i] - key_positions[j] < window``).

        Parameters
        ----------
        T : int
            Number of queries (the tokens of the last update).
        window : int, optional
            Sliding-window width (keys seen, the query's own included).

        Returns
        -------
        torch.Tensor
            Shape ``(T, S)`` (caches with per-sequence positions return
            ``(B, 1, T, S)``).
        """
        keys = self.key_positions
        queries = self.next_position - T + torch.arange(T, device=keys.device)
        distance = queries.unsqueeze(-1) - keys.unsqueeze(-2)
        allowed = distance >= 0
        if window is not None:
            allowed &= distance < window
        return allowed

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values; return what the new queries attend to.

        Parameters
        ----------
        k : torch.Tensor
            Keys of the new tokens, shape ``(B, H_kv, T, D)``.
        v : torch.Tensor
            Values of the new tokens, shape ``(B, H_kv, T, Dv)``.

        Returns
        -------
        k_all, v_all : torch.Tensor
            Shapes ``(B, H_kv, S, D)`` and ``(B, H_kv, S, Dv)``.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of tokens currently held."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every token (buffers are kept where the cache preallocates)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of memory the cache holds for keys and values (allocated, not just used)."""
        raise NotImplementedError

    def _check_kv(self, k: object, v: object) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x in (("k", k), ("v", v)):
            check_tensor(name, x, ndim=4)
            check_float_dtype(name, x)  # type: ignore[arg-type]
        assert isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"k and v must agree on (B, H_kv, T), got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        return k, v


def check_same_layout(
    name: str, new: torch.Tensor, stored: torch.Tensor | None, *, time_dim: int = 2
) -> None:
    """New entries must match the stored ones in every dim but time, in dtype and device."""
    if stored is None:
        return
    want = stored.shape[:time_dim] + stored.shape[time_dim + 1 :]
    got = new.shape[:time_dim] + new.shape[time_dim + 1 :]
    if want != got:
        raise ValueError(
            f"{name} must match the cached (B, H_kv, *, D) = {tuple(stored.shape)} "
            f"outside the time dim, got {tuple(new.shape)}"
        )
    if new.dtype != stored.dtype or new.device != stored.device:
        raise TypeError(
            f"{name} must have the cache's dtype/device ({stored.dtype}, {stored.device}), "
            f"got ({new.dtype}, {new.device})"
        )
