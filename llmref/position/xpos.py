"""xPos: RoPE with an exponential decay of scores in the relative distance (Sun et al., 2023)."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_float_dtype, check_int, check_positive_float, check_tensor
from ._registries import POSITION
from .rope import _check_layout, _check_positions, _expand_pairs, apply_rope, rope_cos_sin
from .rope_scaling import rope_frequencies

__all__ = ["XPos", "apply_xpos", "xpos_scale"]


def xpos_scale(
    head_dim: int,
    position_ids: torch.Tensor,
    *,
    gamma: float = 0.4,
    scale_base: float = 512.0,
    center: int = 0,
    layout: str = "half",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""xPos's per-channel scale ``zeta_i ** ((n - center) / scale_base)`` at positions ``n``.

    Parameters
    ----------
    head_dim : int
        Channels per head (even).
    position_ids : torch.Tensor
        Integer positions of any shape.
    gamma : float, default 0.4
        Sets the per-pair decay rates ``zeta_i = (2i / d + gamma) / (1 + gamma)``,
        from ``gamma / (1 + gamma)`` (fastest decay) up to almost 1.
    scale_base : float, default 512.0
        ``B``: the exponent is position / B.
    center : int, default 0
        Position subtracted before exponentiating. It cancels in every q·k
        product but keeps the scales representable: ``zeta ** (n / B)``
        underflows float32 for ``n`` beyond about ``70 * B`` with the default
        ``gamma``; use the middle of the longest sequence.
    layout : {"half", "interleaved"}, default "half"
        Channel layout, as for :func:`~llmref.position.apply_rope`.
    dtype : torch.dtype, default torch.float32
        Floating dtype of the result (computed in float64).

    Returns
    -------
    torch.Tensor
        Shape ``(*position_ids.shape, head_dim)``: multiply queries by it and
        divide keys by it (see :func:`apply_xpos`).

    Raises
    ------
    TypeError
        If ``position_ids`` is not an integer tensor or a number has the
        wrong type.
    ValueError
        If ``head_dim`` is odd or a parameter is not positive.

    Notes
    -----
    See :func:`apply_xpos`.

    Examples
    --------
    >>> xpos_scale(4, torch.tensor([0, 512]), dtype=torch.float64)
    tensor([[1.0000, 1.0000, 1.0000, 1.0000],
            [0.2857, 0.6429, 0.2857, 0.6429]], dtype=torch.float64)
    """
    head_dim = check_int("head_dim", head_dim, minimum=2)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for xPos, got {head_dim}")
    position_ids = _check_positions(position_ids)
    gamma = check_positive_float("gamma", gamma)
    scale_base = check_positive_float("scale_base", scale_base)
    center = check_int("center", center)
    layout = _check_layout(layout)
    device = position_ids.device
    pairs = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device)
    zeta = (pairs / head_dim + gamma) / (1 + gamma)
    exponent = (position_ids.to(torch.float64) - center)[..., None] / scale_base
    return _expand_pairs(zeta**exponent, layout).to(dtype)


@POSITION.register(
    "xpos",
    paper="sun2023length",
    reference="apply_xpos",
    kind="rotary",
    module="XPos",
    traces=True,
    example=lambda: (
        XPos(8),
        tuple(torch.randn(2, 4, T, 8, dtype=torch.float64) for T in (5, 7)),
        {"k_offset": 1},
    ),
)
def apply_xpos(
    q: torch.Tensor,
    k: torch.Tensor,
    cos_q: torch.Tensor,
    sin_q: torch.Tensor,
    cos_k: torch.Tensor,
    sin_k: torch.Tensor,
    scale_q: torch.Tensor,
    scale_k: torch.Tensor,
    *,
    layout: str = "half",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rotate queries and keys as RoPE does, scaling queries up and keys down by position.

    Parameters
    ----------
    q : torch.Tensor
        Queries ``(B, H, T, D)``.
    k : torch.Tensor
        Keys ``(B, H_kv, S, D)``.
    cos_q, sin_q : torch.Tensor
        RoPE tables at the query positions (:func:`~llmref.position.rope_cos_sin`).
    cos_k, sin_k : torch.Tensor
        RoPE tables at the key positions.
    scale_q : torch.Tensor
        :func:`xpos_scale` at the query positions.
    scale_k : torch.Tensor
        :func:`xpos_scale` at the key positions (same ``center``).
    layout : {"half", "interleaved"}, default "half"
        Channel layout.

    Returns
    -------
    q, k : torch.Tensor
        Rotated and scaled, same shapes and dtypes as the inputs.

    Raises
    ------
    TypeError
        If an input is not a floating tensor.
    ValueError
        If shapes do not match, as :func:`~llmref.position.apply_rope`.

    Notes
    -----
    xPos {cite:p}`sun2023length` rotates like RoPE and multiplies pair
    :math:`i` of the query at position :math:`n` by :math:`\zeta_i^{n/B}` and of
    the key at :math:`m` by :math:`\zeta_i^{-m/B}`. Scaling a pair commutes with
    rotating it, so the score is

    .. math::

        \tilde q_n \cdot \tilde k_m = \sum_i \zeta_i^{(n-m)/B}\,
            \bigl(q^{(i)}\bigr)^\top R\bigl((n - m)\theta_i\bigr)\, k^{(i)} ,

    still a function of :math:`n - m` only, with an explicit exponential decay
    that RoPE's own (oscillating) long-term decay lacks. Fast-rotating pairs
    (small :math:`i`) decay fastest, which is what stabilises attention
    resolution beyond the trained length. The scale applies only with causal
    attention (:math:`n \ge m`); for :math:`n < m` it grows instead.

    References
    ----------
    :cite:t:`sun2023length`

    Examples
    --------
    >>> from llmref.position import rope_frequencies, rope_cos_sin
    >>> inv_freq, _ = rope_frequencies(8)
    >>> pos = torch.arange(6)
    >>> cos, sin = rope_cos_sin(inv_freq, pos)
    >>> scale = xpos_scale(8, pos)
    >>> q, k = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    >>> q2, k2 = apply_xpos(q, k, cos, sin, cos, sin, scale, scale)
    >>> q2.shape, k2.shape
    (torch.Size([1, 1, 6, 8]), torch.Size([1, 1, 6, 8]))
    """
    for name, t in (("scale_q", scale_q), ("scale_k", scale_k)):
        check_tensor(name, t)
        check_float_dtype(name, t)
    if scale_q.shape != cos_q.shape or scale_k.shape != cos_k.shape:
        raise ValueError(
            "scale_q/scale_k must have the shapes of cos_q/cos_k, got "
            f"{tuple(scale_q.shape)} vs {tuple(cos_q.shape)} and {tuple(scale_k.shape)} vs "
            f"{tuple(cos_k.shape)}"
        )
    q_out = apply_rope(q, cos_q * scale_q, sin_q * scale_q, layout=layout)
    k_out = apply_rope(k, cos_k / scale_k, sin_k / scale_k, layout=layout)
    return q_out, k_out


class XPos(nn.Module):
    """xPos for a causal decoder: RoPE frequencies plus per-position scales.

    Parameters
    ----------
    head_dim : int
        Channels per head (even).
    base : float, default 10000.0
        RoPE base.
    gamma : float, default 0.4
        See :func:`xpos_scale`.
    scale_base : float, default 512.0
        See :func:`xpos_scale`.
    center : int, default 0
        See :func:`xpos_scale`; keep it fixed while decoding with a KV cache
        (cached keys were scaled with it).
    layout : {"half", "interleaved"}, default "half"
        Channel layout.

    Attributes
    ----------
    inv_freq : torch.Tensor
        RoPE frequencies (float64 buffer).

    Examples
    --------
    >>> xpos = XPos(16)
    >>> q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    >>> q2, k2 = xpos(q, k)
    >>> q2.shape
    torch.Size([1, 2, 5, 16])
    """

    inv_freq: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        gamma: float = 0.4,
        scale_base: float = 512.0,
        center: int = 0,
        layout: str = "half",
    ) -> None:
        super().__init__()
        self.head_dim = check_int("head_dim", head_dim, minimum=2)
        self.gamma = check_positive_float("gamma", gamma)
        self.scale_base = check_positive_float("scale_base", scale_base)
        self.center = check_int("center", center)
        self.layout = _check_layout(layout)
        inv_freq, _ = rope_frequencies(head_dim, base=base, dtype=torch.float64)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cos, sin = rope_cos_sin(self.inv_freq, positions, layout=self.layout)
        scale = xpos_scale(
            self.head_dim,
            positions,
            gamma=self.gamma,
            scale_base=self.scale_base,
            center=self.center,
            layout=self.layout,
            dtype=torch.float64,
        )
        return cos, sin, scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        q_offset: int | None = None,
        k_offset: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate and scale queries at ``q_offset + arange(T)``, keys at ``k_offset + arange(S)``.

        Parameters
        ----------
        q : torch.Tensor
            Queries ``(B, H, T, D)``.
        k : torch.Tensor
            Keys ``(B, H_kv, S, D)``.
        q_offset : int, optional
            Position of the first query; default ``k_offset + S - T`` (the
            queries are the last ``T`` of the keys' positions).
        k_offset : int, default 0
            Position of the first key.

        Returns
        -------
        q, k : torch.Tensor
            Same shapes and dtypes as the inputs.

        Examples
        --------
        >>> xpos = XPos(8)
        >>> q, k = xpos(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 4, 8))  # one new token
        >>> q.shape, k.shape
        (torch.Size([1, 1, 1, 8]), torch.Size([1, 1, 4, 8]))
        """
        T, S = q.shape[-2], k.shape[-2]
        k_offset = check_int("k_offset", k_offset, minimum=0)
        q_start = k_offset + S - T if q_offset is None else check_int("q_offset", q_offset)
        device = self.inv_freq.device
        cos_q, sin_q, scale_q = self._tables(torch.arange(q_start, q_start + T, device=device))
        cos_k, sin_k, scale_k = self._tables(torch.arange(k_offset, k_offset + S, device=device))
        q_out, k_out = apply_xpos(
            q, k, cos_q, sin_q, cos_k, sin_k, scale_q, scale_k, layout=self.layout
        )
        return q_out, k_out

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, gamma={self.gamma}, scale_base={self.scale_base}, "
            f"center={self.center}, layout={self.layout!r}"
        )
