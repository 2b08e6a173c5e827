"""Inference: how next-token logits become tokens — sampling rules, penalties and beam search.

The sampling rules are plain functions over next-token logits ``(B, V)``:
temperature (:func:`apply_temperature`), the truncation rules of
:data:`TRUNCATION` (:func:`top_k_filter`, :func:`top_p_filter`,
:func:`min_p_filter`, :func:`typical_filter`, :func:`epsilon_filter`,
:func:`eta_filter`) and the penalties on tokens already seen
(:func:`repetition_penalty`, :func:`presence_frequency_penalty`), each equal to
transformers' logits processor of the same name where it has one. A
:class:`SamplingConfig` holds a choice of them, :func:`process_logits` applies it
in transformers' order and :func:`sample` draws from the result.
:func:`beam_search` decodes with transformers' beam search semantics from any
:class:`LanguageModel` (such as :class:`~llmref.models.DecoderLM`). The package sits
below :mod:`llmref.models` (whose :func:`~llmref.models.generate` samples with these
rules and delegates ``num_beams > 1`` to :func:`beam_search`), so it calls models only
through that protocol. :func:`speculative_generate` decodes from a target model with a
cheaper draft (a small model, the target's first layers by :func:`early_exit_draft`, or a
quantized copy), exactly: its output distribution is the target's.
"""

from .beam import beam_search
from .config import SamplingConfig
from .penalties import presence_frequency_penalty, repetition_penalty
from .protocol import LanguageModel, check_language_model
from .sampling import apply_temperature, process_logits, sample
from .speculative import (
    CachedLanguageModel,
    SpeculativeStats,
    dynamic_caches,
    early_exit_draft,
    speculative_generate,
)
from .truncation import (
    TRUNCATION,
    TruncationSpec,
    epsilon_filter,
    eta_filter,
    min_p_filter,
    top_k_filter,
    top_p_filter,
    typical_filter,
)

__all__ = [
    "TRUNCATION",
    "CachedLanguageModel",
    "LanguageModel",
    "SamplingConfig",
    "SpeculativeStats",
    "TruncationSpec",
    "apply_temperature",
    "beam_search",
    "check_language_model",
    "dynamic_caches",
    "early_exit_draft",
    "epsilon_filter",
    "eta_filter",
    "min_p_filter",
    "presence_frequency_penalty",
    "process_logits",
    "repetition_penalty",
    "sample",
    "speculative_generate",
    "top_k_filter",
    "top_p_filter",
    "typical_filter",
]
