"""KV caches: one class per kind, one interface (``update(k, v) -> (k_all, v_all)``).

Every kind is registered in :data:`CACHES`; ``meta["attention"]`` is ``"mla"``
for the latent cache (which stores latents, not keys and values).
"""

from ._registry import CACHES
from .base import KVCache
from .dynamic import DynamicCache
from .latent import LatentCache
from .memory import kv_bytes_per_token
from .paged import PagedCache
from .quantized import QuantizedCache
from .sink import SinkCache
from .sliding import SlidingWindowCache
from .static import StaticCache

__all__ = [
    "CACHES",
    "DynamicCache",
    "KVCache",
    "LatentCache",
    "PagedCache",
    "QuantizedCache",
    "SinkCache",
    "SlidingWindowCache",
    "StaticCache",
    "kv_bytes_per_token",
]
