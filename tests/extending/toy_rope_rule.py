"""Worked example: a new RoPE frequency rule, registered by one import.

``toy_truncated`` keeps the fastest ``fraction`` of RoPE's rotating pairs and
stops the rest (frequency 0: cos 1, sin 0), the idea of p-RoPE: the slowest
pairs turn so little over a context that they act as position-free channels.
Declaring ``required``/``optional`` is what lets
:func:`~llmref.position.rope_frequencies` accept exactly these keys, and the
``example`` is what the contract suite (``tests/testing/test_position_contracts.py``)
calls it with.
"""

from __future__ import annotations

import torch

from llmref._checks import check_positive_float
from llmref.position import ROPE_SCALING, default_frequencies


@ROPE_SCALING.register(
    "toy_truncated",
    paper="su2024roformer",
    reference="default_frequencies",
    required=("fraction",),
    optional=("partial_rotary_factor",),
    example={"fraction": 0.75},
)
def truncated_frequencies(
    head_dim: int,
    *,
    fraction: float | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    """RoPE's frequencies with all but the fastest ``fraction`` of pairs stopped.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    fraction : float
        Share of the pairs that keep rotating, in ``(0, 1]`` (required).
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``: the default frequencies, 0 past the first
        ``int(fraction * d // 2)``.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    ValueError
        If ``fraction`` is missing or outside ``(0, 1]``, or as
        :func:`~llmref.position.default_frequencies`.
    """
    if fraction is None:
        raise ValueError("rope_type='toy_truncated' needs 'fraction' in rope_parameters")
    fraction = check_positive_float("fraction", fraction)
    if fraction > 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    inv_freq, _ = default_frequencies(
        head_dim, base=base, partial_rotary_factor=partial_rotary_factor, device=device, dtype=dtype
    )
    kept = int(fraction * inv_freq.numel())
    pair = torch.arange(inv_freq.numel(), device=inv_freq.device)
    return torch.where(pair < kept, inv_freq, torch.zeros_like(inv_freq)), 1.0
