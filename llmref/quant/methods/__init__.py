"""Post-training quantization methods, each a plain function on one weight matrix.

Every method is registered in :data:`~llmref.quant.METHODS` and takes
``(weight, inputs=None, *, fmt, group_size, **options)`` (see
:mod:`llmref.quant.methods.base`); :func:`~llmref.quant.quantize_model`
applies any of them to a whole model with calibration data.
"""

from .base import METHODS
from .rtn import rtn

__all__ = ["METHODS", "rtn"]
