"""KV caches: one class per kind, one interface (``update(k, v) -> (k_all, v_all)``).

Caches store keys and values and report their positions per sequence; the model
builds masks from those. Every kind is registered in :data:`CACHES` with a
:class:`CacheSpec` declaring what it stores (``"latent"`` for MLA's cache), the
mask rule its eviction implies, and its capabilities.
"""

from ._registry import CACHES, CacheSpec, spec_of
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
    "CacheSpec",
    "DynamicCache",
    "KVCache",
    "LatentCache",
    "PagedCache",
    "QuantizedCache",
    "SinkCache",
    "SlidingWindowCache",
    "StaticCache",
    "kv_bytes_per_token",
    "spec_of",
]
