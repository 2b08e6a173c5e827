"""M-RoPE: multimodal rotary position embedding (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_int
from ._registries import POSITION
from .rope import _check_layout, _check_positions, _expand_pairs
from .rope_scaling import _check_inv_freq

__all__ = ["mrope_axes", "mrope_cos_sin", "mrope_position_ids"]


def mrope_axes(mrope_section: Sequence[int], *, interleaved: bool = False) -> torch.Tensor:
    """Which position axis (0 temporal, 1 height, 2 width) drives each frequency.

    Parameters
    ----------
    mrope_section : sequence of int
        Number of frequency pairs per axis ``(t, h, w)``, e.g. ``[16, 24, 24]``
        for Qwen2-VL's 128-channel heads; they sum to ``rotary_dim // 2``.
    interleaved : bool, default False
        False: contiguous chunks ``t..t h..h w..w`` (Qwen2-VL, Qwen2.5-VL).
        True: round-robin ``t h w t h w ...`` until the height and width
        quotas are used, then temporal (Qwen3-VL).

    Returns
    -------
    torch.Tensor
        Integer tensor of shape ``(sum(mrope_section),)`` with values 0, 1, 2.

    Raises
    ------
    TypeError
        If ``mrope_section`` is not three ints.
    ValueError
        If a section is negative, or (interleaved) a height or width quota
        does not fit in the round-robin.

    Examples
    --------
    >>> mrope_axes([2, 1, 1])
    tensor([0, 0, 1, 2])
    >>> mrope_axes([2, 1, 1], interleaved=True)
    tensor([0, 1, 2, 0])
    """
    if not isinstance(mrope_section, Sequence) or len(mrope_section) != 3:
        raise TypeError(f"mrope_section must be 3 ints (t, h, w), got {mrope_section!r}")
    sections = [check_int(f"mrope_section[{i}]", s, minimum=0) for i, s in enumerate(mrope_section)]
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
    n = sum(sections)
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    axes = torch.zeros(n, dtype=torch.int64)
    for axis in (1, 2):
        if sections[axis] and axis + 3 * (sections[axis] - 1) >= n:
            raise ValueError(
                f"interleaved mrope_section {sections}: {sections[axis]} pairs for axis {axis} "
                f"do not fit every third of {n} pairs"
            )
        axes[axis : 3 * sections[axis] : 3] = axis
    return axes


@POSITION.register(
    "mrope",
    paper="wang2024qwen2vl",
    reference="mrope_cos_sin",
    third_party="transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding",
    kind="rotary",
    module=None,
)
def mrope_cos_sin(
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor,
    mrope_section: Sequence[int],
    *,
    interleaved: bool = False,
    attention_factor: float = 1.0,
    layout: str = "half",
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""cos/sin tables of multimodal RoPE: each frequency band follows one position axis.

    Parameters
    ----------
    inv_freq : torch.Tensor
        RoPE frequencies ``(d/2,)``.
    position_ids : torch.Tensor
        Integer positions ``(3, B, T)`` (temporal, height, width). Text
        positions ``(B, T)`` or ``(T,)`` are used for all three axes, which is
        plain RoPE (as in transformers, a 2-D tensor is always ``(B, T)``).
    mrope_section : sequence of int
        Pairs per axis, summing to ``d/2`` (see :func:`mrope_axes`).
    interleaved : bool, default False
        Qwen3-VL's round-robin assignment instead of contiguous chunks.
    attention_factor : float, default 1.0
        Multiplier of cos and sin.
    layout : {"half", "interleaved"}, default "half"
        Channel layout of the tables (Qwen models use ``"half"``).
    dtype : torch.dtype, optional
        dtype of the result; default that of ``inv_freq``.

    Returns
    -------
    cos, sin : torch.Tensor
        Shape ``(B, T, d)`` (or ``(T, d)`` for 1-D text positions); use them with
        :func:`~llmref.position.apply_rope`.

    Raises
    ------
    TypeError
        If an input has the wrong type.
    ValueError
        If ``mrope_section`` does not sum to ``len(inv_freq)`` or a 3-D
        ``position_ids`` has a leading dimension other than 3.

    Notes
    -----
    An image patch in row :math:`r`, column :math:`c` of frame :math:`f` gets
    the position triple :math:`(f, r, c)` (each offset by where the image
    starts); a text token at :math:`n` gets :math:`(n, n, n)`. Pair :math:`i`
    rotates by :math:`\theta_i` times the coordinate of its axis, so scores
    depend on the temporal, vertical and horizontal offsets separately, each
    through its own band of frequencies {cite:p}`wang2024qwen2vl`. For text
    only, all three coordinates are equal and M-RoPE is RoPE.

    References
    ----------
    :cite:t:`wang2024qwen2vl`

    Examples
    --------
    >>> from llmref.position import rope_frequencies
    >>> inv_freq, _ = rope_frequencies(8)
    >>> pos = mrope_position_ids([(1, 2, 2)])  # one 2 x 2 image: (3, 4) t, h, w
    >>> cos, sin = mrope_cos_sin(inv_freq, pos[:, None], [2, 1, 1])  # (3, B=1, T=4)
    >>> cos.shape
    torch.Size([1, 4, 8])
    """
    inv_freq = _check_inv_freq(inv_freq)
    position_ids = _check_positions(position_ids)
    layout = _check_layout(layout)
    axes = mrope_axes(mrope_section, interleaved=interleaved).to(inv_freq.device)
    if axes.numel() != inv_freq.numel():
        raise ValueError(
            f"mrope_section must sum to len(inv_freq) = {inv_freq.numel()}, got "
            f"{list(mrope_section)} (sum {axes.numel()})"
        )
    if position_ids.ndim <= 2:
        position_ids = position_ids.expand(3, *position_ids.shape)  # text: t = h = w
    if position_ids.ndim != 3 or position_ids.shape[0] != 3:
        raise ValueError(
            "position_ids must be (3, B, T), or (B, T) / (T,) for text, got shape "
            f"{tuple(position_ids.shape)}"
        )
    angles = position_ids.to(inv_freq.device)[..., None].to(inv_freq.dtype) * inv_freq
    # angles: (3, ..., d/2); pair i takes the angle of its own axis
    index = axes.view(1, *([1] * (angles.ndim - 2)), -1).expand(1, *angles.shape[1:])
    angles = angles.gather(0, index)[0]
    angles = _expand_pairs(angles, layout)
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def mrope_position_ids(
    segments: Sequence[int | tuple[int, int, int]], *, start: int = 0
) -> torch.Tensor:
    """3-D positions of a sequence of text runs and vision grids, as Qwen2-VL numbers them.

    Parameters
    ----------
    segments : sequence of int or (int, int, int)
        In order: an int ``n`` is a run of ``n`` text tokens; a triple
        ``(t, h, w)`` is an image or video of ``t`` frames of ``h x w`` tokens
        (after the vision encoder's patch merging), flattened frame by frame,
        row by row.
    start : int, default 0
        Position of the first token.

    Returns
    -------
    torch.Tensor
        Integer tensor ``(3, T)``: temporal, height and width positions
        (index it ``[:, None]`` for the ``(3, B, T)`` of :func:`mrope_cos_sin`).

    Raises
    ------
    TypeError, ValueError
        If a segment is not a non-negative int or a triple of positive ints.

    Notes
    -----
    Text continues from the largest position used so far plus one. Vision
    tokens share the start position ``s`` and add their frame, row and column
    indices. For images this is exactly transformers' ``get_rope_index``;
    for videos transformers (>= 5) spaces frames by a time interval and lets
    the following text continue after ``s + max(h, w)``, while this function
    keeps unit frame spacing and continues after the largest position (Qwen2-VL's
    original rule); they agree when ``t <= max(h, w)``.

    Examples
    --------
    >>> mrope_position_ids([2, (1, 2, 3), 1])
    tensor([[0, 1, 2, 2, 2, 2, 2, 2, 5],
            [0, 1, 2, 2, 2, 3, 3, 3, 5],
            [0, 1, 2, 3, 4, 2, 3, 4, 5]])
    """
    start = check_int("start", start, minimum=0)
    parts = []
    for segment in segments:
        if isinstance(segment, tuple):
            if len(segment) != 3:
                raise TypeError(f"a vision segment must be (t, h, w), got {segment!r}")
            t, h, w = (
                check_int(name, v, minimum=1) for name, v in zip("thw", segment, strict=True)
            )
            grid = torch.stack(
                torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            )
            ids = grid.reshape(3, -1) + start
        else:
            n = check_int("text segment", segment, minimum=0)
            ids = (torch.arange(n) + start).expand(3, n)
        parts.append(ids)
        if ids.numel():
            start = int(ids.max()) + 1
    if not parts:
        return torch.zeros(3, 0, dtype=torch.int64)
    return torch.cat(parts, dim=1)
