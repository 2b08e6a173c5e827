"""The cache of multi-head latent attention: the latent and the shared RoPE key."""

from __future__ import annotations

from ._registry import CACHES, CacheSpec
from .dynamic import DynamicCache

__all__ = ["LatentCache"]


class LatentCache(DynamicCache):
    """Stores what :class:`~llmref.attention.MultiHeadLatentAttention` needs per token.

    The two tensors passed to :meth:`update` are the normalised latent
    ``(B, 1, T, kv_lora_rank)`` and the rotated shared RoPE key
    ``(B, 1, T, qk_rope_head_dim)`` from
    :meth:`~llmref.attention.MultiHeadLatentAttention.compress_kv`, not per-head
    keys and values: ``kv_lora_rank + qk_rope_head_dim`` numbers per token and
    layer (576 for DeepSeek-V2/V3) instead of ``2 * H * head_dim``.

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import MultiHeadLatentAttention
    >>> from llmref.cache import LatentCache
    >>> mla = MultiHeadLatentAttention(
    ...     32, 4, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4
    ... )
    >>> cache = LatentCache()
    >>> out = mla(torch.randn(1, 5, 32), is_causal=True, cache=cache)
    >>> latent, k_rope = cache._k, cache._v
    >>> len(cache), latent.shape[-1] + k_rope.shape[-1]
    (5, 10)
    """

    stores = "latent"


CACHES.add(
    CacheSpec(name="latent", fn=LatentCache, paper="deepseek2024v2", stores="latent", traces=True)
)
