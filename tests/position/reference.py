"""Independently written float64 references for the position encodings.

They share no code with ``llmref.position``: RoPE is complex multiplication of
channel pairs by ``exp(i * m * theta)``, biases are explicit Python loops.
"""

from __future__ import annotations

import torch


def complex_rope(x, positions, inv_freq, layout="half", attention_factor=1.0):
    """Rotate ``x`` (..., T, D) at ``positions`` (T,) with complex arithmetic, in float64.

    Only the first ``2 * len(inv_freq)`` channels are rotated.
    """
    x = x.to(torch.float64)
    d = 2 * inv_freq.numel()
    rot, rest = x[..., :d], x[..., d:]
    if layout == "half":
        re, im = rot[..., : d // 2], rot[..., d // 2 :]
    else:
        re, im = rot[..., 0::2], rot[..., 1::2]
    z = torch.complex(re, im)
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    z = z * torch.polar(torch.full_like(angles, attention_factor), angles)
    if layout == "half":
        out = torch.cat([z.real, z.imag], dim=-1)
    else:
        out = torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1)


def loop_bias(T, S, fn, offset=0):
    """``(T, S)`` float64 tensor with entry ``fn(i + offset, j)``."""
    return torch.tensor(
        [[float(fn(i + offset, j)) for j in range(S)] for i in range(T)], dtype=torch.float64
    )
