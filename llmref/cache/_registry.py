"""The registry of KV cache kinds and the spec each kind declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .._registry import Registry, Spec

__all__ = ["CACHES", "CacheSpec", "spec_of"]

STORES = ("kv", "latent")
LAYOUTS = ("dense", "block_table")


@dataclass(frozen=True, kw_only=True)
class CacheSpec(Spec):
    """What a KV cache kind declares to the model, the tests and the docs.

    A cache stores keys and values and reports their positions; it never builds
    a mask. The rule its eviction implies (a ring buffer keeps a window, StreamingLLM
    keeps sinks plus a window) is *declared* here by name, and the model turns it
    into a mask with the same ``mask_mod`` as every other mask
    (:func:`~llmref.attention.masking.cache_mask_mods`).

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : type
        The cache class (a :class:`~llmref.cache.KVCache` subclass).
    stores : {"kv", "latent"}
        What :meth:`~llmref.cache.KVCache.update` takes: per-head keys and values,
        or MLA's latent and shared RoPE key.
    mask : str or None
        Name in :data:`~llmref.attention.MASKS` of the rule the kept keys imply
        (``"sliding_window"``, ``"sink"``), or ``None`` (plain causal).
    mask_params : tuple of str
        The cache instance's attributes passed to that mask, by name
        (``("window",)``, ``("n_sink", "window")``).
    renumbers_positions : bool
        Whether the cache gives new tokens RoPE positions of its own (the sink
        cache counts inside the cache); the model then takes the positions from
        :meth:`~llmref.cache.KVCache.positions_for` instead of the token stream.
    exact : bool
        Whether cached decoding equals the full forward under the equality
        policy (False for lossy storage such as KIVI, whose bound is its step).
    traces : bool
        Whether a decoding step through it is captured as one graph by
        ``torch.compile(fullgraph=True)`` (no host values in :meth:`~llmref.cache.KVCache.update`).
        The contract suite (``llmref.testing.contracts.cache``) checks it either
        way: a declared exemption must really break the graph.
    layout : {"dense", "block_table"}
        What :meth:`~llmref.cache.KVCache.update` hands attention: ``"dense"`` keys and values
        ``(B, H_kv, S, D)`` (every kind today; the paged cache gathers its
        blocks), or ``"block_table"`` (reserved: a paged cache handing a
        paged-attention kernel its pool and per-sequence block table instead).
    per_head_positions : bool
        Reserved for eviction caches that keep different tokens per head
        (H2O, SnapKV): ``key_positions`` then has shape ``(B, H_kv, S)``.
    needs_scores : bool
        Reserved for caches that evict by attention score (H2O, SnapKV): the
        layer hands them the attention weights after each step.
    example : callable or None
        Builds a small instance whose every behaviour shows within a dozen
        tokens (a window of 4, groups of 2), for the contract suite
        (:mod:`llmref.testing.contracts.cache`) and the docs; ``None``: ``fn()``.

    Examples
    --------
    >>> from llmref.cache import CACHES
    >>> spec = CACHES["sink"]
    >>> spec.mask, spec.mask_params, spec.renumbers_positions
    ('sink', ('n_sink', 'window'), True)
    >>> CACHES["latent"].stores
    'latent'
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    stores: str = "kv"
    mask: str | None = None
    mask_params: tuple[str, ...] = ()
    renumbers_positions: bool = False
    exact: bool = True
    traces: bool = False
    layout: str = "dense"
    per_head_positions: bool = False
    needs_scores: bool = False
    example: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stores not in STORES:
            raise ValueError(f"{self.name}: stores must be one of {STORES}, got {self.stores!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.mask_params and self.mask is None:
            raise ValueError(f"{self.name}: mask_params {self.mask_params} given without a mask")


CACHES: Registry[CacheSpec] = Registry("cache", CacheSpec)
"""Registry of KV cache kinds, name -> :class:`CacheSpec`."""


def spec_of(cache: object) -> CacheSpec | None:
    """The spec registered for ``cache``'s class (or a registered base class), else None.

    Parameters
    ----------
    cache : object
        A cache instance.

    Returns
    -------
    CacheSpec or None
        ``None`` for caches of unregistered classes (they declare no mask rule).

    Examples
    --------
    >>> from llmref.cache import SlidingWindowCache
    >>> spec_of(SlidingWindowCache(4)).name
    'sliding_window'
    """
    for cls in type(cache).__mro__:
        for spec in CACHES.values():
            if spec.fn is cls:
                return spec
    return None
