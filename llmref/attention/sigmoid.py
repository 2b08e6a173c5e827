"""Sigmoid attention (Ramapuram et al., 2024): an elementwise sigmoid instead of the softmax.

Each weight is ``sigmoid(score + b)`` on its own, with no normalisation across
keys. The bias ``b = -log(S)`` keeps the total weight of a row near 1 at the
start of training, which is what makes sigmoid attention train as stably as
softmax attention.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_bias, check_mask, check_qkv, compute_dtype, resolve_scale
from .masks import causal_mask
from .variants import VARIANTS

__all__ = ["sigmoid_attention"]


def _check_sigmoid_bias(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"sigmoid_bias must be a float or None, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"sigmoid_bias must be finite, got {value}")
    return value


@VARIANTS.register(
    "sigmoid",
    paper="ramapuram2024sigmoid",
    reference="sigmoid_attention",
    third_party=None,
    features=frozenset({"mask", "is_causal", "scale", "bias"}),
    required=(),
    exact=True,
)
def sigmoid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    sigmoid_bias: float | None = None,
) -> torch.Tensor:
    """Sigmoid attention: ``sigmoid(q k^T * scale + bias + b) v``, masked weights zero.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``; ``H % H_kv == 0`` (GQA/MQA: each
        key/value head serves ``H // H_kv`` consecutive query heads).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
        A masked entry has weight exactly 0.
    is_causal : bool, default False
        Top-left aligned causal mask (as in SDPA), combined with ``mask`` by
        logical AND.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)`` (ALiBi, relative
        positions), added to the scaled scores.
    sigmoid_bias : float, optional
        The scalar ``b`` added to every score; defaults to ``-log(S)``, with
        ``S`` the number of keys (``k.shape[2]``). Any finite number.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError
        If an input is not a tensor or has a non-floating or mismatched dtype,
        ``mask`` is not boolean, or ``sigmoid_bias`` is not a real number.
    ValueError
        If shapes disagree (see :func:`~llmref.attention.naive_attention`),
        ``mask`` or ``bias`` does not broadcast to ``(B, H, T, S)``, ``scale``
        is not a finite number > 0, or ``sigmoid_bias`` is not finite.

    Notes
    -----
    .. math::

        O = \\bigl(\\sigma(s\\, Q K^\\top + A + b) \\circ M\\bigr) V, \\qquad
        \\sigma(x) = \\frac{1}{1 + e^{-x}}, \\quad b = -\\log S,

    with the additive ``bias`` :math:`A` and :math:`M_{ij} \\in \\{0, 1\\}` the
    mask. Rows are not normalised, so a row's weights need not sum to 1 and a
    fully masked row is zero. The bias is the paper's :math:`b = -\\log(n)`,
    with :math:`n` the sequence length: with scores near zero each weight is
    :math:`\\sigma(-\\log S) = 1 / (1 + S)`, so a row's weights sum to
    :math:`S / (1 + S) \\approx 1`, like a softmax row. Here :math:`S` is the
    number of keys passed in, also when ``is_causal`` leaves early rows fewer
    visible keys (the paper, too, uses one :math:`n` for the whole sequence);
    pass ``sigmoid_bias`` to use another value, such as the training context
    length during decoding. Inputs in float16 or bfloat16 are computed in
    float32 and cast back.

    References
    ----------
    :cite:t:`ramapuram2024sigmoid`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.sigmoid import sigmoid_attention
    >>> q = torch.zeros(1, 2, 3, 8)  # zero scores: every weight is 1 / (1 + S)
    >>> k, v = torch.randn(1, 2, 4, 8), torch.ones(1, 2, 4, 1)
    >>> out = sigmoid_attention(q, k, v)
    >>> out.shape, bool(torch.allclose(out, torch.full_like(out, 4 / 5)))  # S / (1 + S)
    (torch.Size([1, 2, 3, 1]), True)
    """
    shapes = check_qkv(q, k, v)
    B, H, H_kv, T, S, _, Dv = shapes
    s = resolve_scale(scale, shapes.head_dim)
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if bias is not None:
        check_bias(bias, shapes, q.device)
    if sigmoid_bias is None:
        b = -math.log(S) if S > 0 else 0.0
    else:
        b = _check_sigmoid_bias(sigmoid_bias)
    if is_causal:
        causal = causal_mask(T, S, device=q.device)
        mask = causal if mask is None else mask & causal

    compute = compute_dtype(q.dtype)
    G = H // H_kv
    qg = q.to(compute).reshape(B, H_kv, G, T, -1)
    kg = k.to(compute).unsqueeze(2)
    vg = v.to(compute).unsqueeze(2)
    scores = torch.matmul(qg, kg.transpose(-1, -2)).mul_(s).reshape(B, H, T, S)
    if bias is not None:
        scores = scores + bias.to(compute)
    weights = torch.sigmoid(scores + b)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    out = torch.matmul(weights.reshape(B, H_kv, G, T, S), vg)
    return out.reshape(B, H, T, Dv).to(q.dtype)
