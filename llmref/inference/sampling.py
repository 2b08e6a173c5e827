"""Temperature, and a :class:`SamplingConfig` applied to logits in transformers' order."""

from __future__ import annotations

import math

import torch

from .._checks import check_int
from ._args import check_ids_mask, check_interval, check_logits, check_token_ids
from .config import SamplingConfig
from .penalties import presence_frequency_penalty, repetition_penalty
from .truncation import TRUNCATION

__all__ = ["apply_temperature", "process_logits", "sample"]


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by a temperature: sharper below 1, flatter above.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    temperature : float
        :math:`\\tau > 0`, finite.

    Returns
    -------
    torch.Tensor
        ``logits / temperature``, same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``temperature`` not a number.
    ValueError
        If ``temperature`` is not a finite number > 0 (for greedy decoding,
        take the argmax instead).

    Notes
    -----
    :math:`p_i \\propto e^{z_i / \\tau}`: :math:`\\tau \\to 0` tends to the
    argmax, :math:`\\tau \\to \\infty` to the uniform distribution, and the
    order of the tokens never changes. Same operation as transformers'
    ``TemperatureLogitsWarper``.

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import apply_temperature
    >>> apply_temperature(torch.tensor([2.0, 1.0]), 0.5)
    tensor([4., 2.])
    """
    x = check_logits(logits)
    t = check_interval("temperature", temperature, 0.0, math.inf, open_low=True, open_high=True)
    return x / t


def process_logits(
    logits: torch.Tensor,
    config: SamplingConfig,
    *,
    input_ids: torch.Tensor | None = None,
    prompt_length: int = 0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply every rule of ``config`` to next-token logits, in the order transformers applies them.

    Parameters
    ----------
    logits : torch.Tensor
        Next-token scores ``(B, V)``, floating.
    config : SamplingConfig
        The rules and their values.
    input_ids : torch.Tensor, optional
        ``(B, L)``: the prompt followed by the tokens generated so far. Needed
        when a penalty is on; the repetition penalty counts all of it, the
        presence and frequency penalties only ``input_ids[:, prompt_length:]``.
    prompt_length : int, default 0
        How many leading columns of ``input_ids`` are the prompt.
    attention_mask : torch.Tensor, optional
        ``(B, L)``, 0 for padding, which no penalty counts.

    Returns
    -------
    torch.Tensor
        Processed logits ``(B, V)``, same dtype: removed tokens at
        ``config.filter_value``.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`SamplingConfig`, or as the rules raise.
    ValueError
        If a penalty is on and ``input_ids`` is missing, ``prompt_length`` is
        out of range, or as the rules raise.

    Notes
    -----
    The order is that of transformers' ``generate``: repetition penalty;
    presence and frequency penalties (transformers has none; they sit with
    the repetition penalty, before temperature, as in vLLM); temperature;
    then the truncation rules top-k, top-p, min-p, typical, epsilon, eta
    (:data:`~llmref.inference.TRUNCATION`'s order). A rule whose value is
    "off" is skipped, as ``generate`` skips it.

    Other libraries order differently, and truncation rules do not commute
    (top-p after top-k renormalises over the k survivors):

    - vLLM: penalties, temperature, **min-p**, then top-k and top-p; it has
      no typical, epsilon or eta sampling.
    - llama.cpp's default chain: penalties, DRY, top-n-sigma, top-k, typical,
      top-p, min-p, XTC, and **temperature last**, so its top-p and min-p see the
      untempered distribution (and its repetition and presence/frequency
      penalties count only the last 64 tokens, prompt included).

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import SamplingConfig, process_logits
    >>> logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    >>> process_logits(logits, SamplingConfig(temperature=0.5, top_k=2))
    tensor([[6., 4., -inf, -inf]])
    >>> ids = torch.tensor([[5, 0]])  # prompt [5], generated [0]
    >>> process_logits(logits, SamplingConfig(frequency_penalty=1.0), input_ids=ids,
    ...                prompt_length=1)
    tensor([[2., 2., 1., 0.]])
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    x = check_logits(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {tuple(x.shape)}")
    penalised = config.repetition_penalty != 1.0 or config.presence_penalty != 0.0
    penalised = penalised or config.frequency_penalty != 0.0
    if penalised:
        if input_ids is None:
            raise ValueError(
                "input_ids is required when a penalty is on (repetition_penalty != 1 or "
                "presence/frequency_penalty != 0), got None"
            )
        ids = check_token_ids("input_ids", input_ids, x.shape[0])
        mask = check_ids_mask(attention_mask, ids)
        prompt_length = check_int("prompt_length", prompt_length, minimum=0)
        if prompt_length > ids.shape[1]:
            raise ValueError(
                f"prompt_length must be <= input_ids' length {ids.shape[1]}, got {prompt_length}"
            )
        if config.repetition_penalty != 1.0:
            x = repetition_penalty(x, ids, config.repetition_penalty, attention_mask=mask)
        if config.presence_penalty != 0.0 or config.frequency_penalty != 0.0:
            x = presence_frequency_penalty(
                x,
                ids[:, prompt_length:],
                presence_penalty=config.presence_penalty,
                frequency_penalty=config.frequency_penalty,
                attention_mask=None if mask is None else mask[:, prompt_length:],
            )
    if config.temperature != 1.0:
        x = x / config.temperature
    for spec in TRUNCATION.values():
        value = getattr(config, spec.parameter)
        if value is None or value == spec.disabled_at:
            continue
        x = spec.fn(
            x, value, min_tokens_to_keep=config.min_tokens_to_keep, filter_value=config.filter_value
        )
    return x


def sample(
    logits: torch.Tensor,
    config: SamplingConfig | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    prompt_length: int = 0,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from the logits, processed by ``config``.

    Parameters
    ----------
    logits : torch.Tensor
        Next-token scores ``(B, V)``, floating.
    config : SamplingConfig, optional
        Rules to apply first (:func:`process_logits`); default none (plain
        sampling from the softmax).
    input_ids, prompt_length, attention_mask
        As :func:`process_logits` (for the penalties).
    generator : torch.Generator, optional
        Source of randomness (default: the global one).

    Returns
    -------
    torch.Tensor
        Token ids ``(B,)``, int64.

    Raises
    ------
    TypeError, ValueError
        As :func:`process_logits`.

    Notes
    -----
    Draws from :math:`\\operatorname{softmax}(z')` with :math:`z'` the
    processed logits, by ``torch.multinomial`` as transformers' ``generate``
    does (so the same generator state gives the same tokens).

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import SamplingConfig, sample
    >>> logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    >>> g = torch.Generator().manual_seed(0)
    >>> int(sample(logits, SamplingConfig(top_k=1), generator=g)[0])  # top-1 is greedy
    1
    """
    x = check_logits(logits)
    if config is not None:
        x = process_logits(
            x,
            config,
            input_ids=input_ids,
            prompt_length=prompt_length,
            attention_mask=attention_mask,
        )
    elif x.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {tuple(x.shape)}")
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
