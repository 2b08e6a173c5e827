"""Models: the source notes' text classifier, a configurable decoder LM, generation, loaders.

:class:`TextClassifier` is the text-classification transformer of the project's
source notes; :class:`DecoderLM` (configured by :class:`DecoderConfig`) is a
Llama/Mistral/Qwen2/DeepSeek-style decoder built from :mod:`llmref.attention`
and :mod:`llmref.position`; :func:`generate` decodes from it through any
:mod:`llmref.cache` kind; :func:`from_transformers` and :func:`from_gguf` load
real checkpoints.
"""

import torch

from .. import inference as _inference
from .blocks import DecoderBlock, MoE, SwiGLU, TransformerBlock, moe, swiglu
from .classifier import TextClassifier
from .config import ATTENTION_KINDS, DecoderConfig, MLAConfig, MoEConfig
from .decoder import DecoderLM
from .generation import generate, make_caches
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


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Deprecated: use :func:`llmref.inference.top_k_filter` (same result, more options).

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``.
    k : int
        Tokens to keep (>= 1).

    Returns
    -------
    torch.Tensor
        The logits with all but the ``k`` largest (and their ties) at ``-inf``.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from llmref.models import top_k_filter
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out = top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 1)
    >>> out, caught[0].category.__name__
    (tensor([-inf, 3., -inf]), 'DeprecationWarning')
    """
    _deprecated("top_k_filter")
    return _inference.top_k_filter(logits, k)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Deprecated: use :func:`llmref.inference.top_p_filter` (same result, more options).

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``.
    p : float
        Probability mass to keep, in ``(0, 1]``.

    Returns
    -------
    torch.Tensor
        The logits with the tokens outside the nucleus at ``-inf``.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from llmref.models import top_p_filter
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out = top_p_filter(torch.tensor([0.6, 0.3, 0.1]).log(), 0.5)
    >>> out.isfinite().tolist(), caught[0].category.__name__
    ([True, False, False], 'DeprecationWarning')
    """
    _deprecated("top_p_filter")
    return _inference.top_p_filter(logits, p)


def _deprecated(name: str) -> None:
    import warnings

    warnings.warn(
        f"llmref.models.{name} is deprecated; use llmref.inference.{name}",
        DeprecationWarning,
        stacklevel=3,
    )


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
