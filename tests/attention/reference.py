"""An independently written float64 attention, used to check llmref's own reference.

It deliberately shares no code with ``llmref.attention``: it copies K/V heads
with ``repeat_interleave`` (the Hugging Face ``repeat_kv`` formulation), builds
an additive ``-inf`` bias and uses ``torch.softmax``.
"""

from __future__ import annotations

import math

import torch


def textbook_attention(q, k, v, mask=None, is_causal=False, scale=None):
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    T, S = scores.shape[-2:]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # fully masked rows -> 0 by convention
    return weights @ v
