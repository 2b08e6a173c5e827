"""The registry of number formats, below every format family.

:data:`FORMATS` lives here, not with the formats, so that
:class:`~llmref.quant.QuantizedTensor` can dequantize itself through it without
importing the families that register into it (which import the tensor type).
"""

from __future__ import annotations

from .._registry import Registry

__all__ = ["FORMATS"]

FORMATS = Registry("quantization format")
"""Registry of number formats, name -> :class:`~llmref.RegistryEntry`.

``FORMATS[name](x, **options)`` returns a :class:`~llmref.quant.QuantizedTensor`;
``FORMATS[name].meta`` has ``dequantize`` (the inverse), ``bits`` (bits per
code), ``group_size`` (default block size, ``None`` = per channel or per
tensor) and ``kind`` (``"int"``, ``"codebook"``, ``"float"``, ``"mx"``,
``"ggml"``).
"""
