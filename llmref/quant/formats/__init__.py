"""Number formats, one module per family: ``quantize(x, fmt, **options)`` and ``dequantize(qt)``.

Every format registers its quantize function in :data:`~llmref.quant.FORMATS`
(``llmref.quant.registry``); the entry's ``meta`` holds its ``dequantize``
function, its nominal code ``bits`` and its default ``group_size``. All formats
scale groups of consecutive elements along the last dimension (see
:mod:`llmref.quant.primitives`); the block/group size option is called
``group_size`` everywhere. The families:

- ``integer``: affine integers ``int2`` .. ``int8``, ``int``;
- ``bnb``: bitsandbytes' 4-bit codebooks ``nf4``, ``fp4``;
- ``minifloat``: ``fp4_e2m1``, FP8, OCP MX, ``nvfp4``;
- ``ggml``: ggml's blocks ``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``.

``dispatch`` holds the format-independent entry points.
"""

from ..registry import FORMATS
from . import bnb, ggml, integer, minifloat
from .bnb import BNB_FP4_VALUES, NF4_VALUES, from_bnb_4bit, to_bnb_4bit
from .dispatch import dequantize, fake_quantize, format_values, quantize
from .ggml import GGML_INT_BITS, GGUF_BLOCKS, from_ggml_blocks, ggml_to_int, to_ggml_blocks
from .integer import int_codes, int_tensor_from_codes
from .minifloat import FP4_E2M1_VALUES, e8m0_to_float

__all__ = [
    "BNB_FP4_VALUES",
    "FORMATS",
    "FP4_E2M1_VALUES",
    "GGML_INT_BITS",
    "GGUF_BLOCKS",
    "NF4_VALUES",
    "bnb",
    "dequantize",
    "e8m0_to_float",
    "fake_quantize",
    "format_values",
    "from_bnb_4bit",
    "from_ggml_blocks",
    "ggml",
    "ggml_to_int",
    "int_codes",
    "int_tensor_from_codes",
    "integer",
    "minifloat",
    "quantize",
    "to_bnb_4bit",
    "to_ggml_blocks",
]
