"""Worked example: a new attention backend, registered by one import.

``toy_two_pass`` is the safe softmax of the days before FlashAttention: a first
pass over the key blocks finds each row's maximum score, a second pass sums the
exponentials and the weighted values with that fixed maximum. It never holds more
than one ``T x block_size`` block of scores (like the online softmax) but computes
every score twice. Its spec declares what :func:`~llmref.attention.attention` and
the contract suite (``tests/testing/test_attention_contracts.py``) need: the
options it supports, that it is exact, that it adds the bias in the compute dtype.
"""

from __future__ import annotations

import math

import torch

from llmref._checks import (
    check_bias,
    check_mask,
    check_positive_float,
    check_qkv,
    check_sinks,
    compute_dtype,
    resolve_scale,
)
from llmref.attention import ATTENTION, causal_mask


@ATTENTION.register(
    "toy_two_pass",
    paper="milakov2018online",
    reference="naive_attention",
    features=frozenset({"bias", "softcap", "sinks"}),
    exact=True,
    bias_precision="compute",
    auto_order=None,  # by name only: "auto" never picks it
)
def two_pass_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    block_size: int = 64,
) -> torch.Tensor:
    """Softmax attention in two passes over blocks of keys: the row maxima, then the sums.

    Parameters
    ----------
    q, k, v : torch.Tensor
        Queries ``(B, H, T, D)``, keys ``(B, H_kv, S, D)``, values ``(B, H_kv, S, Dv)``.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Top-left aligned causal mask, combined with ``mask`` by AND.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)``, added in the compute dtype.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)`` before bias and mask.
    sinks : torch.Tensor, optional
        Per-head sink logits of shape ``(H,)``.
    block_size : int, default 64
        Keys per block.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``; fully masked rows are zero.
    """
    shapes = check_qkv(q, k, v)
    B, H, H_kv, T, S, D, Dv = shapes
    s = resolve_scale(scale, D)
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if bias is not None:
        check_bias(bias, shapes, q.device)
    if sinks is not None:
        check_sinks(sinks, shapes, q.device)
    cap = None if softcap is None else check_positive_float("softcap", softcap)
    if is_causal:
        causal = causal_mask(T, S, device=q.device)
        mask = causal if mask is None else mask & causal
    compute = compute_dtype(q.dtype)
    qc = q.to(compute)
    kc, vc = (t.to(compute).repeat_interleave(H // H_kv, dim=1) for t in (k, v))

    def scores(j: int) -> torch.Tensor:
        x = qc @ kc[:, :, j : j + block_size].transpose(-1, -2) * s
        if cap is not None:
            x = torch.tanh(x / cap) * cap
        if bias is not None:
            x = x + bias.to(compute).expand(B, H, T, S)[..., j : j + block_size]
        if mask is not None:
            x = x.masked_fill(~mask.expand(B, H, T, S)[..., j : j + block_size], -math.inf)
        return x

    blocks = range(0, S, block_size)
    row_max = torch.full((B, H, T, 1), -math.inf, dtype=compute, device=q.device)
    for j in blocks:  # pass 1: each row's maximum score
        row_max = torch.maximum(row_max, scores(j).amax(dim=-1, keepdim=True))
    if sinks is not None:
        sink = sinks.to(compute).view(1, H, 1, 1)
        row_max = torch.maximum(row_max, sink)
    # Any shift gives the same softmax: no gradient through it; 0 for fully masked rows.
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0).detach()
    total = torch.zeros_like(row_max)
    out = torch.zeros(B, H, T, Dv, dtype=compute, device=q.device)
    for j in blocks:  # pass 2: the sums, with the maximum fixed
        p = torch.exp(scores(j) - row_max)
        total = total + p.sum(dim=-1, keepdim=True)
        out = out + p @ vc[:, :, j : j + block_size]
    if sinks is not None:
        total = total + torch.exp(sink - row_max)
    return (out / torch.where(total > 0, total, 1.0)).to(q.dtype)
