"""From positions to the mask a forward pass uses: the mask_mods evaluated on real positions.

A model builds each layer's attention mask once per forward from three things:
the queries' positions, the keys' positions (which a cache reports,
:meth:`~llmref.cache.KVCache.next_key_positions`; ``-1`` = no key, e.g. left
padding) and the rules that apply: causality, the layer's sliding window and
the rule a cache kind declares in its :class:`~llmref.cache.CacheSpec`
(StreamingLLM's sinks). Every rule is a ``mask_mod`` of :mod:`llmref.attention.masks`,
evaluated here on positions instead of indices; nothing else defines a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_tensor
from ..cache import KVCache, spec_of
from .masks import MaskMod, as_mask_mod

__all__ = ["cache_mask", "cache_mask_mods", "causal_rules", "layer_mask", "positions_mask"]


def positions_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    *,
    mask_mods: Sequence[MaskMod] = (),
) -> torch.Tensor:
    """Causal mask over positions, keys at ``-1`` excluded, AND every given ``mask_mod``.

    Parameters
    ----------
    query_positions : torch.Tensor
        Integer positions of the queries, ``(B, T)`` or ``(T,)``; ``-1`` marks a
        padding query (its row comes out fully masked, so attention returns zeros).
    key_positions : torch.Tensor
        Integer positions of the keys, ``(B, S)`` or ``(S,)``, in any order (a
        ring buffer returns slot order); ``-1`` = no key.
    mask_mods : sequence of callable
        Further rules, each ``mask_mod(b, h, q_idx, kv_idx)`` as in
        :func:`~llmref.attention.as_mask_mod`, called with positions as indices.

    Returns
    -------
    torch.Tensor
        Boolean ``(B, 1, T, S)``; ``True`` = may attend.

    Raises
    ------
    TypeError
        If a positions tensor is not an integer tensor.
    ValueError
        If the positions are not 1-D or 2-D, or their batch sizes differ.

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import as_mask_mod
    >>> q = torch.tensor([[2, 3], [0, 1]])  # row 1: two padding keys before its tokens
    >>> k = torch.tensor([[0, 1, 2, 3], [-1, -1, 0, 1]])
    >>> positions_mask(q, k)[:, 0].int().tolist()
    [[[1, 1, 1, 0], [1, 1, 1, 1]], [[0, 0, 1, 0], [0, 0, 1, 1]]]
    >>> window = as_mask_mod("sliding_window", window=2)
    >>> positions_mask(q[:1], k[:1], mask_mods=[window])[0, 0].int().tolist()
    [[0, 1, 1, 0], [0, 0, 1, 1]]
    """
    q = _check_positions("query_positions", query_positions)
    k = _check_positions("key_positions", key_positions)
    if q.shape[0] != k.shape[0] and 1 not in (q.shape[0], k.shape[0]):
        raise ValueError(
            f"query_positions and key_positions must have one batch size, got "
            f"{tuple(q.shape)} and {tuple(k.shape)}"
        )
    k = k.to(q.device)
    B = max(q.shape[0], k.shape[0])
    q_idx, kv_idx = q[:, None, :, None], k[:, None, None, :]
    b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    allowed = (kv_idx >= 0) & as_mask_mod("causal")(b, 0, q_idx, kv_idx)
    for mod in mask_mods:
        allowed = allowed & mod(b, 0, q_idx, kv_idx)
    return allowed.expand(B, 1, q.shape[1], k.shape[1])


def cache_mask_mods(cache: KVCache | None, *, window: int | None = None) -> list[MaskMod]:
    """The rules beyond causality for a layer: its window and its cache kind's declared rule.

    Parameters
    ----------
    cache : llmref.cache.KVCache or None
        The layer's cache; its :class:`~llmref.cache.CacheSpec` may declare a
        rule (``mask``, with parameters read from the cache's attributes).
    window : int, optional
        The layer's own sliding window.

    Returns
    -------
    list of callable
        ``mask_mod`` s (empty: plain causal attention).

    Examples
    --------
    >>> from llmref.cache import SinkCache
    >>> len(cache_mask_mods(SinkCache(n_sink=2, window=4), window=8))
    2
    """
    mods = [] if window is None else [as_mask_mod("sliding_window", window=window)]
    spec = None if cache is None else spec_of(cache)
    if spec is not None and spec.mask is not None:
        params: dict[str, Any] = {p: getattr(cache, p) for p in spec.mask_params}
        mods.append(as_mask_mod(spec.mask, **params))
    return mods


def cache_mask(
    cache: KVCache,
    T: int,
    *,
    batch_size: int = 1,
    lengths: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """The mask of the next ``T`` queries over the keys ``cache.update`` will return.

    Parameters
    ----------
    cache : llmref.cache.KVCache
        The layer's cache, *before* the update.
    T : int
        New tokens per row.
    batch_size : int, default 1
        Rows.
    lengths : torch.Tensor, optional
        Real (trailing) tokens per row, ``(B,)`` (left padding).
    window : int, optional
        The layer's sliding window.

    Returns
    -------
    torch.Tensor
        Boolean ``(B, 1, T, S)``.

    Examples
    --------
    >>> import torch
    >>> from llmref.cache import SlidingWindowCache
    >>> cache = SlidingWindowCache(window=3)
    >>> cache_mask(cache, 4)[0, 0].int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 1]], dtype=torch.int32)
    """
    queries = cache.query_positions(T, batch_size=batch_size, lengths=lengths)
    keys = cache.next_key_positions(T, batch_size=batch_size, lengths=lengths)
    return positions_mask(queries, keys, mask_mods=cache_mask_mods(cache, window=window))


def layer_mask(
    T: int,
    S: int | None = None,
    *,
    cache: KVCache | None = None,
    window: int | None = None,
    batch_size: int = 1,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The causal mask of one layer, or the kernel's ``is_causal`` fast path where it is exact.

    The one place that decides between a dense mask and the fast paths, used by
    :class:`~llmref.models.DecoderLM` once per forward (per group of layers with
    the same rules) and by an attention module called on its own with
    ``is_causal=True`` and no mask.

    Parameters
    ----------
    T : int
        New queries per row.
    S : int, optional
        Keys without a cache (default ``T``; the queries are the last ``T``).
    cache : llmref.cache.KVCache, optional
        The layer's cache, before its update.
    window : int, optional
        The layer's sliding window.
    batch_size : int, default 1
        Rows.
    lengths : torch.Tensor, optional
        Real (trailing) new tokens per row (left padding).

    Returns
    -------
    mask : torch.Tensor or None
        Boolean ``(B, 1, T, S)``, or ``None``.
    is_causal : bool
        ``True``: the kernel's causal mask is the whole rule (no past keys, no
        window, no padding); ``mask=None, is_causal=False``: every key is
        visible (one new token over a cache that holds only earlier real keys).

    Examples
    --------
    >>> layer_mask(5)
    (None, True)
    >>> mask, is_causal = layer_mask(3, 5, window=2)
    >>> mask[0, 0].int().tolist(), is_causal
    ([[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], False)
    """
    mods = cache_mask_mods(cache, window=window)
    if cache is None:
        S = T if S is None else S
        if not mods:  # the kernel's causal mask (top-left aligned, as SDPA's, when S != T)
            return None, True
        keys = torch.arange(S)
        return positions_mask(keys[S - T :], keys, mask_mods=mods), False
    plain = not mods and lengths is None and not cache.ragged
    if plain and cache.seen_tokens == 0:
        return None, True
    if plain and T == 1:
        return None, False
    return cache_mask(cache, T, batch_size=batch_size, lengths=lengths, window=window), False


def causal_rules(
    mask: torch.Tensor | None,
    T: int,
    S: int | None = None,
    *,
    cache: KVCache | None = None,
    window: int | None = None,
    batch_size: int = 1,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """``mask`` AND the layer's causal rules (:func:`layer_mask`), as kernel arguments.

    What an attention module called with ``is_causal=True`` does; a model hands
    its complete mask with ``is_causal=False`` instead, so nothing is rebuilt.

    Parameters
    ----------
    mask : torch.Tensor or None
        A further boolean mask broadcasting to ``(B, H, T, S)``.
    T, S, cache, window, batch_size, lengths
        As :func:`layer_mask`.

    Returns
    -------
    mask : torch.Tensor or None
    is_causal : bool

    Examples
    --------
    >>> import torch
    >>> causal_rules(None, 4)
    (None, True)
    >>> keep = torch.tensor([True, True, False, True])
    >>> mask, is_causal = causal_rules(keep, 4, window=2)
    >>> mask[0, 0].int().tolist(), is_causal
    ([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], False)
    """
    rules, is_causal = layer_mask(
        T, S, cache=cache, window=window, batch_size=batch_size, lengths=lengths
    )
    if rules is None:
        return mask, is_causal
    return (rules if mask is None else rules & mask.to(rules.device)), False


def _check_positions(name: str, positions: object) -> torch.Tensor:
    check_tensor(name, positions)
    assert isinstance(positions, torch.Tensor)
    if positions.dtype.is_floating_point or positions.dtype.is_complex:
        raise TypeError(f"{name} must be an integer tensor, got {positions.dtype}")
    if positions.ndim not in (1, 2):
        raise ValueError(f"{name} must be (T,) or (B, T), got shape {tuple(positions.shape)}")
    return positions if positions.ndim == 2 else positions.unsqueeze(0)
