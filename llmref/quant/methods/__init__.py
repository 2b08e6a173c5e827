"""Post-training quantization methods, each a plain function on one weight matrix.

Every method is registered in :data:`~llmref.quant.METHODS` as a
:class:`~llmref.quant.MethodSpec` and takes
``(weight, inputs=None, *, fmt, group_size="default", **options)`` (see
:mod:`llmref.quant.methods.base`); its own options are the fields of its frozen
config class. :func:`~llmref.quant.quantize_model` applies any of them to a whole
model with calibration data.
"""

from .awq import AWQConfig, awq
from .base import METHODS, MethodSpec
from .gptq import GPTQConfig, gptq, gptq_hessian
from .hqq import HQQConfig, hqq
from .kivi import KIVIConfig, QuantizedKV, kivi, kivi_dequantize
from .llm_int8 import Int8VectorwiseQuant, LLMInt8Config, int8_vectorwise_quant, llm_int8
from .rtn import RTNConfig, rtn
from .smoothquant import OutlierStats, SmoothQuantConfig, activation_outliers, smoothquant

__all__ = [
    "METHODS",
    "AWQConfig",
    "GPTQConfig",
    "HQQConfig",
    "Int8VectorwiseQuant",
    "KIVIConfig",
    "LLMInt8Config",
    "MethodSpec",
    "OutlierStats",
    "QuantizedKV",
    "RTNConfig",
    "SmoothQuantConfig",
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
