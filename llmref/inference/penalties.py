"""Penalties on tokens already seen: repetition (CTRL), presence and frequency (OpenAI, vLLM).

Both take the logits of the next token ``(B, V)`` and the ids ``(B, L)`` that
count as seen, optionally with an ``attention_mask`` ``(B, L)`` whose zeros
mark padding that does not count. They differ in what they are for and how
they scale: the repetition penalty *divides* a positive logit (multiplies a
negative one) by a factor, once per distinct token, whatever its count; the
presence and frequency penalties *subtract*, the frequency one in proportion
to how often the token was produced.
"""

from __future__ import annotations

import torch

from ._args import check_ids_mask, check_interval, check_logits, check_token_ids

__all__ = ["presence_frequency_penalty", "repetition_penalty"]


def _check_rows(logits: object) -> torch.Tensor:
    x = check_logits(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {tuple(x.shape)}")
    return x


def _seen_ids(ids: object, attention_mask: object, logits: torch.Tensor, name: str) -> torch.Tensor:
    """The ids with padding and ids >= V mapped to the dummy column ``V``."""
    ids_t = check_token_ids(name, ids, logits.shape[0]).to(logits.device)
    mask = check_ids_mask(attention_mask, ids_t)
    V = logits.shape[-1]
    if mask is not None:
        ids_t = ids_t.masked_fill(~mask, V)
    return ids_t.clamp(max=V)


def repetition_penalty(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    penalty: float,
    *,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CTRL's repetition penalty: make the tokens of ``input_ids`` less (or more) likely.

    Parameters
    ----------
    logits : torch.Tensor
        Next-token scores ``(B, V)``, floating.
    input_ids : torch.Tensor
        Ids ``(B, L)`` seen so far: in transformers' ``generate``, the prompt
        and the generated tokens. Ids ``>= V`` are ignored, as transformers
        does (an embedding larger than the output head).
    penalty : float
        The factor, > 0: ``1`` changes nothing, above 1 penalises (CTRL used
        1.2), below 1 rewards repetition.
    attention_mask : torch.Tensor, optional
        ``(B, L)``; positions where it is 0 (padding) do not count.

    Returns
    -------
    torch.Tensor
        New logits ``(B, V)``, same dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor, ``input_ids`` not an integer
        tensor or ``penalty`` not a number.
    ValueError
        If shapes disagree, an id is negative or ``penalty <= 0``.

    Notes
    -----
    For every token :math:`i` that occurs in the row (any number of times),

    .. math::

        z_i \\leftarrow \\begin{cases} z_i \\cdot \\theta & z_i < 0 \\\\
        z_i / \\theta & z_i \\ge 0 \\end{cases}

    so that a penalty :math:`\\theta > 1` always lowers the logit
    {cite:p}`keskar2019ctrl` (CTRL divided unconditionally, which raises a
    negative logit). Same operations as transformers'
    ``RepetitionPenaltyLogitsProcessor``; vLLM and llama.cpp apply the same
    rule (llama.cpp only over the last ``penalty_last_n`` = 64 tokens).
    Scaling a logit is not invariant to adding a constant to the row, so the
    effect depends on where the model's logits happen to sit.

    References
    ----------
    :cite:t:`keskar2019ctrl`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import repetition_penalty
    >>> logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    >>> repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    tensor([[ 1.0000, -2.0000,  0.5000,  3.0000]])
    """
    x = _check_rows(logits)
    penalty = check_interval("penalty", penalty, 0.0, float("inf"), open_low=True, open_high=True)
    ids = _seen_ids(input_ids, attention_mask, x, "input_ids")
    V = x.shape[-1]
    padded = torch.nn.functional.pad(x, (0, 1))  # column V absorbs the ids that do not count
    seen = torch.gather(padded, 1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(1, ids, seen)[..., :V]


def presence_frequency_penalty(
    logits: torch.Tensor,
    output_ids: torch.Tensor,
    *,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the generated tokens.

    Parameters
    ----------
    logits : torch.Tensor
        Next-token scores ``(B, V)``, floating.
    output_ids : torch.Tensor
        The tokens generated so far ``(B, L)`` (not the prompt: OpenAI's API
        and vLLM count generated tokens only). Ids ``>= V`` are ignored.
    presence_penalty : float, default 0.0
        Subtracted once from every token generated at least once, in
        ``[-2, 2]`` (the range OpenAI and vLLM accept).
    frequency_penalty : float, default 0.0
        Subtracted once per occurrence, in ``[-2, 2]``.
    attention_mask : torch.Tensor, optional
        ``(B, L)``; positions where it is 0 do not count (padding, or
        tokens produced after a sequence finished).

    Returns
    -------
    torch.Tensor
        New logits ``(B, V)``, same dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor, ``output_ids`` not an
        integer tensor or a penalty not a number.
    ValueError
        If shapes disagree, an id is negative or a penalty is outside
        ``[-2, 2]``.

    Notes
    -----
    With :math:`c_i` the number of times token :math:`i` occurs in the row,

    .. math::

        z_i \\leftarrow z_i - c_i\\, \\alpha_\\text{frequency}
        - [c_i > 0]\\, \\alpha_\\text{presence},

    the formula of OpenAI's API documentation, applied in this order
    (frequency, then presence) as vLLM does. Subtracting from a logit is a
    division of its probability by :math:`e^{\\alpha}`, whatever the logit,
    unlike :func:`repetition_penalty`. transformers has no such processor;
    llama.cpp subtracts the same two terms, counted over the last
    ``penalty_last_n`` tokens of the context (prompt included).

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import presence_frequency_penalty
    >>> logits = torch.zeros(1, 4)
    >>> presence_frequency_penalty(logits, torch.tensor([[1, 1, 3]]),
    ...                            presence_penalty=0.5, frequency_penalty=0.25)
    tensor([[ 0.0000, -1.0000,  0.0000, -0.7500]])
    """
    x = _check_rows(logits)
    presence = check_interval(
        "presence_penalty", presence_penalty, -2.0, 2.0, open_low=False, open_high=False
    )
    frequency = check_interval(
        "frequency_penalty", frequency_penalty, -2.0, 2.0, open_low=False, open_high=False
    )
    ids = _seen_ids(output_ids, attention_mask, x, "output_ids")
    V = x.shape[-1]
    counts = torch.zeros(x.shape[0], V + 1, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=x.dtype))
    counts = counts[:, :V]
    out = x - frequency * counts
    return out - presence * (counts > 0).to(x.dtype)
