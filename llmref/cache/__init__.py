"""KV caches: one class per kind, one interface (``update(k, v) -> (k_all, v_all)``).

Every kind is registered in :data:`CACHES`.
"""

from ._registry import CACHES
from .base import KVCache
from .dynamic import DynamicCache

__all__ = ["CACHES", "DynamicCache", "KVCache"]
