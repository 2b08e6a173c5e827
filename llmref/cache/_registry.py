"""The registry of KV cache kinds."""

from .._registry import Registry

CACHES = Registry("cache")
"""Registry of KV cache classes, name -> :class:`~llmref.RegistryEntry`."""
