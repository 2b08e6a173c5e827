"""The interface every KV cache shares, and the checks they all run."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .._checks import check_float_dtype, check_tensor


class KVCache:
    """Base class of llmref's KV caches (one cache object per attention layer).

    A cache receives the keys and values of the newest tokens with
    :meth:`update` and returns the keys and values the new queries must attend
    to. It stores and reports *positions*; it builds no mask. After each update
    :attr:`key_positions` holds, per sequence, the position of every returned key
    (its index among that sequence's real tokens, ``-1`` where a slot holds no
    key: left padding, an empty block or ring slot), and the model builds the
    mask from these, the queries' positions and the rules the cache kind
    declares in its :class:`~llmref.cache.CacheSpec` (see
    :mod:`llmref.attention.masking`).

    Left padding: ``update(k, v, lengths=n)`` says that only the last ``n[b]``
    of row ``b``'s new tokens are real. Kinds that keep the padding slots give
    them position ``-1``; kinds whose layout depends on the tokens (paged
    blocks, KIVI groups, StreamingLLM sinks) drop them, so a padded row stores
    exactly what it stores alone.

    Attributes
    ----------
    seen_tokens : int
        Token slots written so far, padding included (the ``past`` of a model's
        ``attention_mask``).
    key_positions : torch.Tensor
        Positions of the keys returned by the last :meth:`update`, shape
        ``(B, S)``; ``-1`` = no key.
    ragged : bool
        Whether rows may differ (an update had ``lengths``, or a row was freed):
        then some keys may be ``-1`` and a model must build a dense mask.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import CACHES, KVCache
    >>> all(issubclass(spec.fn, KVCache) for spec in CACHES.values())
    True
    >>> cache = CACHES["dynamic"].fn()
    >>> k = torch.randn(2, 1, 3, 4)
    >>> _ = cache.update(k, k, lengths=torch.tensor([3, 1]))  # row 1: two padding tokens
    >>> cache.key_positions.tolist()
    [[0, 1, 2], [-1, -1, 0]]
    >>> cache.positions_for(1, batch_size=2).tolist()  # where the next token goes
    [[3], [1]]
    """

    stores = "kv"
    """What :meth:`update` takes: per-head ``"kv"``, or MLA's ``"latent"``."""

    def __init__(self) -> None:
        self.seen_tokens = 0
        self.key_positions = torch.zeros(1, 0, dtype=torch.long)
        self.ragged = False
        self._next: torch.Tensor | None = None  # (B,) each row's next position, where kept

    @property
    def next_positions(self) -> torch.Tensor:
        """Position of each sequence's next real token, shape ``(B,)`` (``(1,)`` when
        the cache has no per-sequence state yet: every sequence at ``seen_tokens``)."""
        if self._next is not None:
            return self._next
        return torch.full((1,), self.seen_tokens, dtype=torch.long)

    @property
    def next_position(self) -> int:
        """Deprecated: use :meth:`positions_for` (positions are per sequence)."""
        warnings.warn(
            "KVCache.next_position is deprecated; use positions_for(T, batch_size=B) "
            "(positions are per sequence)",
            DeprecationWarning,
            stacklevel=2,
        )
        return int(self.next_positions.max())

    def query_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sequence positions of the next ``T`` tokens, ``-1`` for padding.

        Parameters
        ----------
        T : int
            Number of new tokens per row.
        batch_size : int, default 1
            Rows.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, ``(B,)``; default all ``T``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T)``, int64.
        """
        start = self.next_positions
        steps = torch.arange(T, device=start.device)
        pos = start.reshape(-1, 1) + steps
        if lengths is None:
            return pos.expand(batch_size, T)
        pad = (T - lengths.to(start.device)).reshape(-1, 1)
        return torch.where(steps >= pad, pos - pad, -1).expand(batch_size, T)

    def positions_for(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RoPE positions of the next ``T`` tokens: :meth:`query_positions`, padding at 0.

        Caches that renumber positions (the sink cache) override this.

        Parameters
        ----------
        T : int
            Number of new tokens per row.
        batch_size : int, default 1
            Rows.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, ``(B,)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T)``.
        """
        return self.query_positions(T, batch_size=batch_size, lengths=lengths).clamp(min=0)

    def next_key_positions(
        self, T: int, *, batch_size: int = 1, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The :attr:`key_positions` an update of ``T`` tokens will leave, without updating.

        What lets a model build every layer's mask once, before the layers run.
        :meth:`update` sets :attr:`key_positions` from this same method.

        Parameters
        ----------
        T : int
            Number of new tokens per row.
        batch_size : int, default 1
            Rows.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, ``(B,)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, S)``.
        """
        raise NotImplementedError

    def attention_mask(self, T: int, *, window: int | None = None) -> torch.Tensor:
        """Deprecated: the model builds masks (:func:`llmref.attention.masking.cache_mask`).

        Returns the causal mask over :attr:`key_positions` (and ``window``) of the
        ``T`` newest queries, ``(B, 1, T, S)``; it does not include the rule a
        cache kind declares in its spec (use the replacement for that).
        """
        warnings.warn(
            "KVCache.attention_mask is deprecated; use llmref.attention.masking.cache_mask "
            "(masks are built from positions by the model, not by caches)",
            DeprecationWarning,
            stacklevel=2,
        )
        keys = self.key_positions
        queries = keys.amax(-1, keepdim=True) - T + 1 + torch.arange(T, device=keys.device)
        distance = queries.unsqueeze(-1) - keys.unsqueeze(-2)
        allowed = (distance >= 0) & (keys >= 0).unsqueeze(-2)
        if window is not None:
            allowed &= distance < window
        return allowed.unsqueeze(1)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values; return what the new queries attend to.

        Parameters
        ----------
        k : torch.Tensor
            Keys of the new tokens, shape ``(B, H_kv, T, D)``.
        v : torch.Tensor
            Values of the new tokens, shape ``(B, H_kv, T, Dv)``.
        lengths : torch.Tensor, optional
            Real tokens per row, ``(B,)``: the last ``lengths[b]`` of row ``b``
            (left padding); default all ``T``.

        Returns
        -------
        k_all, v_all : torch.Tensor
            Shapes ``(B, H_kv, S, D)`` and ``(B, H_kv, S, Dv)``, matching
            :attr:`key_positions` ``(B, S)``.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of tokens currently held (the longest row)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every token (buffers are kept where the cache preallocates)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of memory the cache holds for keys and values (allocated, not just used)."""
        raise NotImplementedError

    def _new_positions(self, T: int, B: int, lengths: torch.Tensor | None) -> torch.Tensor:
        return self.query_positions(T, batch_size=B, lengths=lengths)

    def _advanced(
        self, T: int, B: int, lengths: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Each row's next position after an update of ``T`` tokens, ``(B,)``."""
        start = self.next_positions.to(device).expand(B)
        return start + (T if lengths is None else lengths.to(device))

    def _check_rows(
        self, k: torch.Tensor, v: torch.Tensor, rows: list[torch.Tensor], lengths: object
    ) -> tuple[int, int, list[int]]:
        """Checks of caches that keep one stored ``(1, H_kv, n, D)`` tensor pair per row:
        ``(B, T, real new tokens per row)``."""
        B, _, T, _ = k.shape
        checked = self._check_lengths(lengths, B, T)
        if rows:
            check_same_layout("k", k[:1], rows[0])
            check_same_layout("v", v[:1], rows[1])
            if B != self.next_positions.shape[0]:
                raise ValueError(
                    f"batch size must stay {self.next_positions.shape[0]} sequences, got {B}"
                )
        new = [T] * B if checked is None else [int(n) for n in checked.tolist()]
        if any(not 0 <= n <= T for n in new):
            raise ValueError(f"lengths must be {B} ints in [0, {T}], got {new}")
        return B, T, new

    def _check_lengths(self, lengths: object, B: int, T: int) -> torch.Tensor | None:
        """Shape and dtype of ``lengths`` (its values are the model's to check, once)."""
        if lengths is None:
            return None
        check_tensor("lengths", lengths, ndim=1)
        assert isinstance(lengths, torch.Tensor)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
        self.ragged = True
        return lengths

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


def right_padded(rows: list[torch.Tensor], S: int) -> torch.Tensor:
    """Per-sequence rows ``(1, H, n_b, D)`` -> one ``(B, H, S, D)`` tensor, zeros after each end."""
    return torch.cat([F.pad(r, (0, 0, 0, S - r.shape[2])) for r in rows], dim=0)


def compact_positions(
    held: list[int], T: int, batch_size: int, lengths: torch.Tensor | None
) -> torch.Tensor:
    """Key positions of caches that store each row's real tokens from slot 0: ``0 .. n_b - 1``
    per row after adding the new ones, right-padded with ``-1``, ``(B, S)``."""
    old = held or [0] * batch_size
    new = [T] * len(old) if lengths is None else [int(n) for n in lengths.tolist()]
    after = torch.tensor([a + n for a, n in zip(old, new, strict=True)], dtype=torch.long)
    positions = torch.arange(int(after.max()) if after.numel() else 0)
    return torch.where(positions < after.unsqueeze(-1), positions, -1)
