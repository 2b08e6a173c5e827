"""Models: the source notes' text classifier, a configurable decoder LM, generation, loaders.

:class:`TextClassifier` is the text-classification transformer of the project's
source notes; :class:`DecoderLM` (configured by :class:`DecoderConfig`) is a
Llama/Mistral/Qwen2/DeepSeek-style decoder built from :mod:`llmref.attention`
and :mod:`llmref.position`; :func:`generate` decodes from it through any
:mod:`llmref.cache` kind; :func:`from_transformers` and :func:`from_gguf` load
real checkpoints.
"""

from .blocks import DecoderBlock, MoE, SwiGLU, TransformerBlock, moe, swiglu
from .classifier import TextClassifier
from .config import ATTENTION_KINDS, DecoderConfig, MLAConfig, MoEConfig
from .decoder import DecoderLM
from .generation import generate, make_caches, top_k_filter, top_p_filter
from .gguf import from_gguf, gguf_tokenizer, load_gguf, pack_gguf_linears
from .hf import SUPPORTED_ARCHITECTURES, config_from_transformers, from_transformers
from .routing import ROUTERS, route_tokens

__all__ = [
    "ATTENTION_KINDS",
    "ROUTERS",
    "SUPPORTED_ARCHITECTURES",
    "DecoderBlock",
    "DecoderConfig",
    "DecoderLM",
    "MLAConfig",
    "MoE",
    "MoEConfig",
    "SwiGLU",
    "TextClassifier",
    "TransformerBlock",
    "config_from_transformers",
    "from_gguf",
    "from_transformers",
    "generate",
    "gguf_tokenizer",
    "load_gguf",
    "make_caches",
    "moe",
    "pack_gguf_linears",
    "route_tokens",
    "swiglu",
    "top_k_filter",
    "top_p_filter",
]


def __getattr__(name: str) -> object:
    if name == "read_gguf":  # the GGUF container is quantization storage: it moved to llmref.quant
        import warnings

        from ..quant import read_gguf

        warnings.warn(
            "llmref.models.read_gguf is deprecated; use llmref.quant.read_gguf",
            DeprecationWarning,
            stacklevel=2,
        )
        return read_gguf
    raise AttributeError(f"module 'llmref.models' has no attribute {name!r}")
