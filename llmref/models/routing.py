"""Mixture-of-experts routing: which experts each token runs, and with what weights.

The rules are registered by name in :data:`ROUTERS` (``topk_method`` names as in
DeepSeek's configs); :func:`route_tokens` applies one. :class:`~llmref.models.MoEConfig`
validates its ``topk_method`` against the registry, and
:class:`~llmref.models.MoE` routes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._checks import check_int, check_tensor
from .._registry import Registry, Spec
from ..position._registries import legacy_meta

__all__ = ["ROUTERS", "RouterSpec", "route_tokens"]


@dataclass(frozen=True, kw_only=True)
class RouterSpec(Spec):
    """Spec of a mixture-of-experts routing rule in :data:`ROUTERS`.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        ``fn(logits, *, n_group, topk_group, correction_bias)`` taking router
        logits ``(N, E)`` and returning per-expert selection scores and the
        weights to mix the chosen experts with, both ``(N, E)``.
    grouped : bool, default False
        The rule routes within expert groups and needs ``n_group`` and
        ``topk_group``.
    correction_bias : bool, default False
        The rule takes a learned load-balancing bias (DeepSeek-V3's
        ``e_score_correction_bias``), which the MoE layer then owns.

    Raises
    ------
    TypeError
        If ``fn`` is not callable or a flag is not a bool.

    Examples
    --------
    >>> from llmref.models.routing import ROUTERS
    >>> ROUTERS["noaux_tc"].grouped, ROUTERS["greedy"].grouped
    (True, False)
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    grouped: bool = False
    correction_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise TypeError(f"router {self.name!r}: fn must be callable")
        for flag in ("grouped", "correction_bias"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"router {self.name!r}: {flag} must be a bool")

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(*args, **kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the fields as the old ``meta`` dict."""
        return legacy_meta(self)


ROUTERS = Registry("router", RouterSpec)
"""Registry of mixture-of-experts routing rules (``topk_method`` names as in DeepSeek's
configs), name -> :class:`~llmref.models.routing.RouterSpec`. Each takes router logits
``(N, E)`` and returns per-expert selection scores and the weights to mix the chosen
ones with."""


def _group_mask(scores: torch.Tensor, group_scores: torch.Tensor, topk_group: int) -> torch.Tensor:
    """Keep the experts of the ``topk_group`` best groups: bool ``(N, E)``."""
    n_group = group_scores.shape[-1]
    chosen = group_scores.topk(topk_group, dim=-1, sorted=False).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, chosen, True)
    return keep.repeat_interleave(scores.shape[-1] // n_group, dim=-1)


@ROUTERS.register(
    "greedy", paper="shazeer2017outrageously", third_party="transformers DeepseekV2TopkRouter"
)
def greedy_routing(logits: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts; choose by the probabilities, mix with them."""
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    return probs, probs


@ROUTERS.register(
    "group_limited_greedy",
    paper="deepseek2024v2",
    third_party="transformers DeepseekV2TopkRouter",
    grouped=True,
)
def group_limited_routing(
    logits: torch.Tensor, *, n_group: int, topk_group: int, **_: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax; only experts of the ``topk_group`` groups with the highest best score compete."""
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    best = probs.view(probs.shape[0], n_group, -1).amax(dim=-1)
    return probs.masked_fill(~_group_mask(probs, best, topk_group), 0.0), probs


@ROUTERS.register(
    "noaux_tc",
    paper="deepseekai2024v3",
    third_party="transformers DeepseekV3TopkRouter",
    grouped=True,
    correction_bias=True,
)
def noaux_tc_routing(
    logits: torch.Tensor,
    *,
    n_group: int,
    topk_group: int,
    correction_bias: torch.Tensor | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores; choose by score + load-balancing bias within the best groups
    (ranked by the sum of their two best experts); mix with the unbiased scores."""
    scores = logits.float().sigmoid()
    choice = scores if correction_bias is None else scores + correction_bias.float()
    per_group = choice.view(choice.shape[0], n_group, -1)
    best = per_group.topk(min(2, per_group.shape[-1]), dim=-1).values.sum(dim=-1)
    return choice.masked_fill(~_group_mask(choice, best, topk_group), float("-inf")), scores


def route_tokens(
    logits: torch.Tensor,
    top_k: int,
    *,
    topk_method: str = "greedy",
    n_group: int | None = None,
    topk_group: int | None = None,
    correction_bias: torch.Tensor | None = None,
    norm_topk_prob: bool = False,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Choose ``top_k`` experts per token and the weights to mix their outputs with.

    Parameters
    ----------
    logits : torch.Tensor
        Router logits ``(N, E)``, one row per token (computed in float32).
    top_k : int
        Experts per token.
    topk_method : str, default "greedy"
        A rule in :data:`ROUTERS` (see :class:`~llmref.models.MoEConfig`).
    n_group, topk_group : int, optional
        Group routing settings (``"group_limited_greedy"``, ``"noaux_tc"``).
    correction_bias : torch.Tensor, optional
        ``(E,)`` load-balancing bias added to the scores for the choice only
        (DeepSeek-V3's ``e_score_correction_bias``).
    norm_topk_prob : bool, default False
        Renormalise the chosen weights to sum to one.
    routed_scaling_factor : float, default 1.0
        Multiplies the weights.

    Returns
    -------
    weights : torch.Tensor
        float32 ``(N, top_k)``.
    indices : torch.Tensor
        Expert ids ``(N, top_k)``.

    Raises
    ------
    KeyError
        If ``topk_method`` is not registered.
    ValueError
        If ``logits`` is not 2-D, ``top_k`` exceeds the experts, or a grouped
        rule lacks its group settings.

    Notes
    -----
    With scores :math:`s = \operatorname{softmax}(W_r x)` (or a sigmoid) the
    layer computes :math:`y = \sum_{e \in \operatorname{TopK}(s)} g_e E_e(x)`:
    each token runs only ``top_k`` of the ``E`` experts, so parameters grow with
    ``E`` while compute per token stays that of ``top_k`` experts
    {cite:p}`shazeer2017outrageously`. The selection is not differentiable;
    the router learns through the weights :math:`g_e` of the chosen experts.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    >>> w, idx = route_tokens(logits, 2, norm_topk_prob=True)
    >>> idx.sort().values.tolist(), round(float(w.sum()), 6)
    ([[0, 2]], 1.0)
    """
    check_tensor("logits", logits, ndim=2)
    top_k = check_int("top_k", top_k, minimum=1)
    if top_k > logits.shape[-1]:
        raise ValueError(f"top_k must be <= the number of experts {logits.shape[-1]}, got {top_k}")
    rule = ROUTERS[topk_method]
    if rule.grouped and (n_group is None or topk_group is None):
        raise ValueError(f"topk_method={topk_method!r} needs n_group and topk_group")
    choice, mix = rule.fn(
        logits, n_group=n_group, topk_group=topk_group, correction_bias=correction_bias
    )
    indices = choice.topk(top_k, dim=-1, sorted=False).indices
    weights = mix.gather(-1, indices)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, indices
