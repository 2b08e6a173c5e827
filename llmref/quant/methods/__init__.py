"""Post-training quantization methods, each a plain function on one weight matrix.

Every method is registered in :data:`~llmref.quant.METHODS` and takes
``(weight, inputs=None, *, fmt, group_size, **options)`` (see
:mod:`llmref.quant.methods.base`); :func:`~llmref.quant.quantize_model`
applies any of them to a whole model with calibration data.
"""

from .awq import awq
from .base import METHODS
from .gptq import gptq, gptq_hessian
from .hqq import hqq
from .kivi import QuantizedKV, kivi, kivi_dequantize
from .llm_int8 import Int8VectorwiseQuant, int8_vectorwise_quant, llm_int8
from .rtn import rtn
from .smoothquant import OutlierStats, activation_outliers, smoothquant

__all__ = [
    "METHODS",
    "Int8VectorwiseQuant",
    "OutlierStats",
    "QuantizedKV",
    "activation_outliers",
    "awq",
    "gptq",
    "gptq_hessian",
    "hqq",
    "int8_vectorwise_quant",
    "kivi",
    "kivi_dequantize",
    "llm_int8",
    "rtn",
    "smoothquant",
]
