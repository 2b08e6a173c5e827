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


def rotation_scale(x, inv_freq, layout="half", factor=1.0, positions=None):
    """Per-channel magnitude behind RoPE's output, for ``assert_within``.

    Rotated channel ``c`` of pair ``(re, im)`` is ``factor * (re cos -/+ im sin)``:
    its roundings scale with ``factor * (|re| + |im|)``. With ``positions``, the
    angles themselves are rounded in the computation's dtype (``eps * angle`` rad),
    which multiplies that by ``1 + |angle|``. Channels past the rotary dimension
    pass through: ``|x|``.
    """
    x = x.detach().to(torch.float64).abs()
    d = 2 * inv_freq.numel()
    rot, rest = x[..., :d], x[..., d:]
    if layout == "half":
        pair = rot[..., : d // 2] + rot[..., d // 2 :]
    else:
        pair = rot[..., 0::2] + rot[..., 1::2]
    pair = pair * abs(factor)
    if positions is not None:
        angles = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
        if angles.ndim == 3 and pair.ndim == 4:  # (B, T, d/2) against (B, H, T, d/2)
            angles = angles[:, None]
        pair = pair * (1.0 + angles.abs())
    pair = torch.cat([pair, pair], dim=-1) if layout == "half" else pair.repeat_interleave(2, -1)
    return torch.cat([pair, rest.expand(*pair.shape[:-1], rest.shape[-1])], dim=-1)


def rope_low_precision(x, positions, inv_freq, layout, dtype):
    """The naive RoPE in a low-precision ``dtype``: tables and arithmetic rounded to it.

    The angles are exact (float64) and cos/sin rounded once to ``dtype``; each output
    channel is ``re * cos - im * sin`` (or ``re * sin + im * cos``) in ``dtype``.
    """
    d = 2 * inv_freq.numel()
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x = x.to(dtype)
    rot, rest = x[..., :d], x[..., d:]
    if layout == "half":
        re, im = rot[..., : d // 2], rot[..., d // 2 :]
    else:
        re, im = rot[..., 0::2], rot[..., 1::2]
    out_re, out_im = re * cos - im * sin, re * sin + im * cos
    if layout == "half":
        out = torch.cat([out_re, out_im], dim=-1)
    else:
        out = torch.stack([out_re, out_im], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1)
