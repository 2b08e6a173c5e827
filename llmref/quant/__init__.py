"""Quantization: number formats, primitives, packed storage and quantized layers.

``quantize(x, fmt, **options)`` turns a float tensor into a
:class:`~llmref.quant.QuantizedTensor` in any format registered in
:data:`~llmref.quant.FORMATS` (integer, NF4, FP4, FP8, MX, NVFP4 and ggml's
block formats); ``dequantize`` turns it back. :class:`~llmref.quant.QuantLinear`
and :func:`~llmref.quant.quantize_model` apply weight-only quantization to
``nn.Linear`` layers.
"""

from . import ggml as ggml
from .calibration import calibration_text, evaluation_text, text_sequences, tokenize
from .evaluate import embedding_cosine, layer_sqnr, perplexity
from .formats import (
    BNB_FP4_VALUES,
    FORMATS,
    FP4_E2M1_VALUES,
    NF4_VALUES,
    dequantize,
    format_values,
    quantize,
)
from .ggml import from_gguf, to_gguf
from .methods import (
    METHODS,
    Int8VectorwiseQuant,
    OutlierStats,
    QuantizedKV,
    activation_outliers,
    awq,
    gptq,
    gptq_hessian,
    hqq,
    int8_vectorwise_quant,
    kivi,
    kivi_dequantize,
    llm_int8,
    rtn,
    smoothquant,
)
from .metrics import cosine_similarity, max_abs_error, model_size_bytes, mse, sqnr
from .model import LayerReport, QuantConfig, quantize_model
from .modules import QuantLinear
from .packing import from_bnb_4bit, pack_codes, to_bnb_4bit, unpack_codes
from .primitives import (
    choose_qparams,
    dequantize_affine,
    fake_quantize,
    quantize_affine,
    round_values,
)
from .tensor import QuantizedTensor

__all__ = [
    "BNB_FP4_VALUES",
    "FORMATS",
    "FP4_E2M1_VALUES",
    "METHODS",
    "NF4_VALUES",
    "Int8VectorwiseQuant",
    "LayerReport",
    "OutlierStats",
    "QuantConfig",
    "QuantLinear",
    "QuantizedKV",
    "QuantizedTensor",
    "activation_outliers",
    "awq",
    "calibration_text",
    "choose_qparams",
    "cosine_similarity",
    "dequantize",
    "dequantize_affine",
    "embedding_cosine",
    "evaluation_text",
    "fake_quantize",
    "format_values",
    "from_bnb_4bit",
    "from_gguf",
    "gptq",
    "gptq_hessian",
    "hqq",
    "int8_vectorwise_quant",
    "kivi",
    "kivi_dequantize",
    "layer_sqnr",
    "llm_int8",
    "max_abs_error",
    "model_size_bytes",
    "mse",
    "pack_codes",
    "perplexity",
    "quantize",
    "quantize_affine",
    "quantize_model",
    "round_values",
    "rtn",
    "smoothquant",
    "sqnr",
    "text_sequences",
    "to_bnb_4bit",
    "to_gguf",
    "tokenize",
    "unpack_codes",
]
