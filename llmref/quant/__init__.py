"""Quantization: number formats, primitives, packed storage and quantized layers.

``quantize(x, fmt, **options)`` turns a float tensor into a
:class:`~llmref.quant.QuantizedTensor` in any format registered in
:data:`~llmref.quant.FORMATS` (integer, NF4, FP4, FP8, MX, NVFP4 and ggml's
block formats); ``dequantize`` turns it back. :class:`~llmref.quant.QuantLinear`
and :func:`~llmref.quant.quantize_model` apply weight quantization to
``nn.Linear`` layers (and to the layers modules declare through
:class:`~llmref.quant.QuantizableWeights`, such as a mixture of experts).
"""

from .calibration import calibration_text, evaluation_text, text_sequences, tokenize
from .evaluate import embedding_cosine, layer_sqnr, perplexity
from .formats import (
    BNB_FP4_VALUES,
    FORMATS,
    FP4_E2M1_VALUES,
    GGML_INT_BITS,
    GGUF_BLOCKS,
    NF4_VALUES,
    dequantize,
    fake_quantize,
    format_values,
    from_bnb_4bit,
    from_ggml_blocks,
    ggml_to_int,
    quantize,
    to_bnb_4bit,
    to_ggml_blocks,
)
from .gguf import GGUFFile, read_gguf
from .methods import (
    METHODS,
    AWQConfig,
    GPTQConfig,
    HQQConfig,
    Int8VectorwiseQuant,
    KIVIConfig,
    LLMInt8Config,
    MethodSpec,
    OutlierStats,
    QuantizedKV,
    RTNConfig,
    SmoothQuantConfig,
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
from .modules import QuantLinear, float_weight
from .packing import pack_codes, unpack_codes
from .primitives import (
    choose_qparams,
    dequantize_affine,
    quantize_affine,
    round_values,
)
from .protocol import QuantizableWeights
from .registry import FormatOptions, FormatSpec
from .tensor import QuantizedTensor

__all__ = [
    "BNB_FP4_VALUES",
    "FORMATS",
    "FP4_E2M1_VALUES",
    "GGML_INT_BITS",
    "GGUF_BLOCKS",
    "METHODS",
    "NF4_VALUES",
    "AWQConfig",
    "FormatOptions",
    "FormatSpec",
    "GGUFFile",
    "GPTQConfig",
    "HQQConfig",
    "Int8VectorwiseQuant",
    "KIVIConfig",
    "LLMInt8Config",
    "LayerReport",
    "MethodSpec",
    "OutlierStats",
    "QuantConfig",
    "QuantLinear",
    "QuantizableWeights",
    "QuantizedKV",
    "QuantizedTensor",
    "RTNConfig",
    "SmoothQuantConfig",
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
    "float_weight",
    "format_values",
    "from_bnb_4bit",
    "from_ggml_blocks",
    "ggml_to_int",
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
    "read_gguf",
    "round_values",
    "rtn",
    "smoothquant",
    "sqnr",
    "text_sequences",
    "to_bnb_4bit",
    "to_ggml_blocks",
    "tokenize",
    "unpack_codes",
]

# Renamed: llmref.models.from_gguf reads a file into a model; these two convert between a
# QuantizedTensor and ggml block bytes, and now say so.
_RENAMED = {"to_gguf": "to_ggml_blocks", "from_gguf": "from_ggml_blocks"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"llmref.quant.{name} is deprecated; use llmref.quant.{new} (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module 'llmref.quant' has no attribute {name!r}")
