"""What the decoding algorithms need from a model, so that they sit below :mod:`llmref.models`.

:func:`~llmref.inference.beam_search` (and :func:`llmref.models.generate`, which builds on
this package) call a model only through this small protocol, which
:class:`llmref.models.DecoderLM` satisfies: the decoding rules never import the models.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["LanguageModel", "check_language_model"]


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model as the decoding algorithms call it.

    ``model(input_ids, attention_mask=mask)`` returns next-token logits
    ``(B, T, V)`` for ids ``(B, T)`` (``mask`` ``(B, T)``, 0 for left padding, or
    ``None``); ``model.config.vocab_size`` is ``V``; ``model.parameters()``
    gives the device and dtype. :class:`llmref.models.DecoderLM` is one.

    Examples
    --------
    >>> from llmref.inference import LanguageModel
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4,
    ...                                 d_ff=64))
    >>> isinstance(model, LanguageModel)
    True
    """

    config: Any

    def __call__(
        self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


def check_language_model(model: object) -> int:
    """Check that ``model`` follows :class:`LanguageModel`; return its vocabulary size.

    Parameters
    ----------
    model : object
        The model to check.

    Returns
    -------
    int
        ``model.config.vocab_size``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, has no ``parameters()`` or no
        ``config.vocab_size``.

    Examples
    --------
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4,
    ...                                 d_ff=64))
    >>> check_language_model(model)
    50
    >>> try:
    ...     check_language_model(object())
    ... except TypeError as err:
    ...     print(err)  # doctest: +NORMALIZE_WHITESPACE
    model must be a language model (callable, with parameters() and config.vocab_size,
    e.g. llmref.models.DecoderLM), got object
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not (callable(model) and hasattr(model, "parameters") and isinstance(vocab, int)):
        raise TypeError(
            "model must be a language model (callable, with parameters() and "
            f"config.vocab_size, e.g. llmref.models.DecoderLM), got {type(model).__name__}"
        )
    return vocab
