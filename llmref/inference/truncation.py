"""Truncation rules: which tokens a sampler may draw (top-k, top-p, min-p, typical, epsilon, eta).

Each rule takes logits ``(..., V)`` and returns them with the removed tokens set
to ``filter_value`` (``-inf`` by default, so that a softmax gives them
probability zero). Every rule keeps at least ``min_tokens_to_keep`` tokens and
follows transformers' logits warper of the same name operation for operation,
so the two agree bit for bit on the same inputs (tested). The rules register
themselves in :data:`TRUNCATION`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._checks import check_int
from .._registry import Registry, Spec
from ._args import (
    as_rows,
    check_filter_value,
    check_interval,
    check_logits,
    check_min_tokens_to_keep,
)

__all__ = [
    "TRUNCATION",
    "TruncationSpec",
    "epsilon_filter",
    "eta_filter",
    "min_p_filter",
    "top_k_filter",
    "top_p_filter",
    "typical_filter",
]

NEG_INF = -math.inf


@dataclass(frozen=True, kw_only=True)
class TruncationSpec(Spec):
    """What is known about one truncation rule.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`; ``third_party`` is transformers' warper.
    fn : callable
        ``fn(logits, value, *, min_tokens_to_keep=1, filter_value=-inf)``.
    parameter : str
        The name of the rule's value: its field in
        :class:`~llmref.inference.SamplingConfig` (transformers'
        ``GenerationConfig`` uses the same name).
    disabled_at : float or None
        The value at which :func:`~llmref.inference.process_logits` skips the
        rule, as transformers' ``generate`` does (``top_p=1.0`` ...); ``None``
        when only an unset value disables it.

    Examples
    --------
    >>> from llmref.inference import TRUNCATION
    >>> spec = TRUNCATION["top_p"]
    >>> spec.parameter, spec.third_party
    ('top_p', 'transformers.TopPLogitsWarper')
    """

    primary: ClassVar[str | None] = "fn"
    fn: Callable[..., torch.Tensor]
    parameter: str
    disabled_at: float | None = None


TRUNCATION: Registry[TruncationSpec] = Registry("truncation rule", TruncationSpec)
"""Registry of the truncation rules, in the order transformers applies them."""


def _prepare(
    logits: object, min_tokens_to_keep: object, filter_value: object
) -> tuple[torch.Tensor, int, float]:
    x = check_logits(logits)
    return x, check_min_tokens_to_keep(min_tokens_to_keep), check_filter_value(filter_value)


def top_k_filter(
    logits: torch.Tensor,
    k: int,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Top-k: keep the ``max(k, min_tokens_to_keep)`` largest logits of each row.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    k : int
        Tokens to keep (>= 1); values above ``V`` keep everything.
    min_tokens_to_keep : int, default 1
        Keep at least this many tokens (raises ``k`` to it, as transformers does).
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype. Ties with the k-th largest logit are all kept.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``k`` not an int.
    ValueError
        If ``k < 1`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    :math:`\\{\\, i : z_i \\ge z_{(k)} \\,\\}`, with :math:`z_{(k)}` the k-th
    largest logit {cite:p}`fan2018hierarchical`. Same operations as
    transformers' ``TopKLogitsWarper``.

    References
    ----------
    :cite:t:`fan2018hierarchical`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import top_k_filter
    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    k = check_int("k", k, minimum=1)
    rows = as_rows(x)
    k = min(max(k, keep), rows.shape[-1])
    kth = torch.topk(rows, k)[0][..., -1, None]
    return rows.masked_fill(rows < kth, fill).reshape(x.shape)


def top_p_filter(
    logits: torch.Tensor,
    p: float,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Top-p (nucleus): keep the smallest set of most likely tokens whose probability reaches ``p``.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    p : float
        Probability mass to keep, in ``(0, 1]``.
    min_tokens_to_keep : int, default 1
        Keep at least this many of the most likely tokens.
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``p`` not a number.
    ValueError
        If ``p`` is outside ``(0, 1]`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    Sort the probabilities in ascending order and remove every token whose
    cumulative probability (itself included) is at most :math:`1 - p`: what
    is left is the most likely tokens up to and including the one that brings
    their mass to at least :math:`p` {cite:p}`holtzman2020curious`. Same
    operations as transformers' ``TopPLogitsWarper``; with ``p = 1`` only
    tokens of probability exactly zero are removed.

    References
    ----------
    :cite:t:`holtzman2020curious`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import top_p_filter
    >>> logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    >>> top_p_filter(logits, 0.75).isfinite().tolist()  # 0.5 + 0.3 reaches 0.75
    [True, True, False, False]
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    p = check_interval("top_p", p, 0.0, 1.0, open_low=True, open_high=False)
    rows = as_rows(x)
    ascending, order = torch.sort(rows, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -keep:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return rows.masked_fill(drop, fill).reshape(x.shape)


def min_p_filter(
    logits: torch.Tensor,
    min_p: float,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Min-p: keep the tokens at least ``min_p`` times as likely as the most likely one.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    min_p : float
        Relative threshold in ``[0, 1]`` (0 keeps every token, 1 only the most
        likely ones); typical values are 0.01-0.2.
    min_tokens_to_keep : int, default 1
        Keep at least this many of the most likely tokens.
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``min_p`` not a number.
    ValueError
        If ``min_p`` is outside ``[0, 1]`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    Keep :math:`\\{\\, i : p_i \\ge p_\\text{min} \\max_j p_j \\,\\}`
    {cite:p}`nguyen2024minp`: the cut-off follows the model's confidence,
    strict when one token dominates and loose when the distribution is flat.
    Same operations as transformers' ``MinPLogitsWarper``.

    References
    ----------
    :cite:t:`nguyen2024minp`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import min_p_filter
    >>> logits = torch.tensor([0.9, 0.047, 0.0274, 0.0256]).log()
    >>> min_p_filter(logits, 0.05).isfinite().tolist()  # threshold 0.05 * 0.9 = 0.045
    [True, True, False, False]
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    min_p = check_interval("min_p", min_p, 0.0, 1.0, open_low=False, open_high=False)
    rows = as_rows(x)
    probs = torch.softmax(rows, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    drop = probs < threshold
    most_likely = torch.topk(probs, min(keep, probs.shape[-1]), dim=-1).indices
    drop.scatter_(-1, most_likely, False)
    return rows.masked_fill(drop, fill).reshape(x.shape)


def typical_filter(
    logits: torch.Tensor,
    mass: float,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    mass : float
        Probability mass to keep, in ``(0, 1)`` (transformers' ``typical_p``).
    min_tokens_to_keep : int, default 1
        Keep at least this many of the *most typical* tokens.
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``mass`` not a number.
    ValueError
        If ``mass`` is outside ``(0, 1)`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    With entropy :math:`H = -\\sum_j p_j \\log p_j`, sort the tokens by
    :math:`|{-\\log p_i} - H|` (ascending) and keep the shortest prefix whose
    probability reaches ``mass`` {cite:p}`meister2023typical`, ties with the
    last kept distance included. Unlike the other rules it may drop the most
    likely token (when it is far more likely than typical). Same operations
    as transformers' ``TypicalLogitsWarper``.

    References
    ----------
    :cite:t:`meister2023typical`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import typical_filter
    >>> logits = torch.tensor([0.4, 0.2, 0.2, 0.2]).log()
    >>> typical_filter(logits, 0.5).isfinite().tolist()  # the 0.4 token is atypical
    [False, True, True, True]
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    mass = check_interval("mass", mass, 0.0, 1.0, open_low=True, open_high=True)
    rows = as_rows(x)
    log_p = torch.nn.functional.log_softmax(rows, dim=-1)
    entropy = -(log_p * torch.exp(log_p)).nansum(-1, keepdim=True)
    distance = torch.abs((-log_p) - entropy)
    sorted_distance, order = torch.sort(distance, descending=False)
    cumulative = rows.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1)
    last.clamp_(max=sorted_distance.shape[-1] - 1)
    drop_sorted = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
    drop_sorted[..., :keep] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return rows.masked_fill(drop, fill).reshape(x.shape)


def _keep_top(rows: torch.Tensor, drop: torch.Tensor, keep: int) -> torch.Tensor:
    """``drop`` minus the ``keep`` largest logits of each row (and their ties)."""
    kth = torch.topk(rows, min(keep, rows.shape[-1]))[0][..., -1, None]
    return drop & (rows < kth)


def epsilon_filter(
    logits: torch.Tensor,
    epsilon: float,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Epsilon sampling: keep the tokens of probability at least ``epsilon``.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    epsilon : float
        Absolute probability cut-off in ``(0, 1)`` (transformers'
        ``epsilon_cutoff``; the paper suggests 3e-4 to 9e-4).
    min_tokens_to_keep : int, default 1
        Keep at least this many of the most likely tokens.
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``epsilon`` not a number.
    ValueError
        If ``epsilon`` is outside ``(0, 1)`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    Keep :math:`\\{\\, i : p_i \\ge \\epsilon \\,\\}` {cite:p}`hewitt2022truncation`.
    Same operations as transformers' ``EpsilonLogitsWarper``.

    References
    ----------
    :cite:t:`hewitt2022truncation`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import epsilon_filter
    >>> logits = torch.tensor([0.87, 0.099, 0.03, 0.001]).log()
    >>> epsilon_filter(logits, 0.05).isfinite().tolist()
    [True, True, False, False]
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    epsilon = check_interval("epsilon", epsilon, 0.0, 1.0, open_low=True, open_high=True)
    rows = as_rows(x)
    drop = _keep_top(rows, rows.softmax(dim=-1) < epsilon, keep)
    return rows.masked_fill(drop, fill).reshape(x.shape)


def eta_filter(
    logits: torch.Tensor,
    epsilon: float,
    *,
    min_tokens_to_keep: int = 1,
    filter_value: float = NEG_INF,
) -> torch.Tensor:
    """Eta sampling: an entropy-dependent probability cut-off, ``min(epsilon, sqrt(epsilon) e^-H)``.

    Parameters
    ----------
    logits : torch.Tensor
        Scores ``(..., V)``, floating.
    epsilon : float
        The paper's :math:`\\epsilon`, in ``(0, 1)`` (transformers'
        ``eta_cutoff``; the paper suggests 3e-4 to 4e-3, by model size).
    min_tokens_to_keep : int, default 1
        Keep at least this many of the most likely tokens.
    filter_value : float, default -inf
        What removed tokens are set to.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating tensor or ``epsilon`` not a number.
    ValueError
        If ``epsilon`` is outside ``(0, 1)`` or ``min_tokens_to_keep < 1``.

    Notes
    -----
    Keep :math:`\\{\\, i : p_i \\ge \\eta \\,\\}` with
    :math:`\\eta = \\min(\\epsilon, \\sqrt{\\epsilon}\\, e^{-H})` and :math:`H` the
    entropy of the row {cite:p}`hewitt2022truncation`: a flat (high-entropy)
    distribution gets a lower cut-off than a peaked one. Same operations as
    transformers' ``EtaLogitsWarper``, except that :math:`\\epsilon` is held in
    the logits' dtype (transformers holds it in float32, which only matters
    for float64 logits).

    References
    ----------
    :cite:t:`hewitt2022truncation`

    Examples
    --------
    >>> import torch
    >>> from llmref.inference import eta_filter
    >>> logits = torch.tensor([0.9, 0.05, 0.04, 0.01]).log()
    >>> eta_filter(logits, 0.0625).isfinite().tolist()  # eta = min(0.0625, 0.25 e^-H) = 0.0625
    [True, False, False, False]
    """
    x, keep, fill = _prepare(logits, min_tokens_to_keep, filter_value)
    epsilon = check_interval("epsilon", epsilon, 0.0, 1.0, open_low=True, open_high=True)
    rows = as_rows(x)
    eps = torch.tensor(epsilon, dtype=rows.dtype, device=rows.device)
    entropy = torch.distributions.Categorical(logits=rows, validate_args=False).entropy()
    eta = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[..., None]
    drop = _keep_top(rows, rows.softmax(dim=-1) < eta, keep)
    return rows.masked_fill(drop, fill).reshape(x.shape)


def _register(fn: Callable[..., Any], name: str, paper: str, warper: str, **kw: Any) -> None:
    TRUNCATION.add(
        TruncationSpec(
            name=name,
            fn=fn,
            paper=paper,
            third_party=f"transformers.{warper}",
            parameter=kw.pop("parameter", name),
            **kw,
        )
    )


# In the order transformers' generate applies them.
_register(top_k_filter, "top_k", "fan2018hierarchical", "TopKLogitsWarper", disabled_at=0)
_register(top_p_filter, "top_p", "holtzman2020curious", "TopPLogitsWarper", disabled_at=1.0)
_register(min_p_filter, "min_p", "nguyen2024minp", "MinPLogitsWarper")
_register(
    typical_filter,
    "typical",
    "meister2023typical",
    "TypicalLogitsWarper",
    parameter="typical_p",
    disabled_at=1.0,
)
_register(
    epsilon_filter,
    "epsilon",
    "hewitt2022truncation",
    "EpsilonLogitsWarper",
    parameter="epsilon_cutoff",
    disabled_at=0.0,
)
_register(
    eta_filter,
    "eta",
    "hewitt2022truncation",
    "EtaLogitsWarper",
    parameter="eta_cutoff",
    disabled_at=0.0,
)
