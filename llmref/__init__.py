"""llmref: reference implementations of the building blocks of large language models.

Each technique is a plain function over tensors, tested against a naive float64
reference and against production libraries, explained in the docs and measured.
"""

from . import attention, cache, inference, models, position, quant
from ._registry import Registry, RegistryEntry, Spec

__version__ = "0.1.0"

__all__ = [
    "Registry",
    "RegistryEntry",
    "Spec",
    "__version__",
    "attention",
    "cache",
    "inference",
    "models",
    "position",
    "quant",
]
