"""CoPE: contextual position encoding (Golovneva et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import (
    AttentionShapes,
    check_float_dtype,
    check_int,
    check_mask,
    check_tensor,
    resolve_scale,
)
from ._registries import POSITION

__all__ = ["CoPE", "cope_bias", "cope_positions"]


def _check_qk(q: object, k: object) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("q", q), ("k", k)):
        check_tensor(name, t, ndim=4)
        check_float_dtype(name, t)  # type: ignore[arg-type]
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q (B, H, T, D) and k (B, H_kv, S, D) must share B and D, got {tuple(q.shape)} "
            f"and {tuple(k.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"q heads must be a multiple of k heads, got {q.shape[1]} and {k.shape[1]}"
        )
    return q, k


def cope_positions(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    r"""CoPE's contextual positions: how many gated keys lie between query and key.

    Parameters
    ----------
    q : torch.Tensor
        Queries ``(B, H, T, D)``.
    k : torch.Tensor
        Keys ``(B, H_kv, S, D)``, ``H % H_kv == 0`` (grouped heads).
    scale : float, optional
        Score scale; default ``1 / sqrt(D)``.
    mask : torch.Tensor, optional
        Boolean mask (True = may attend) broadcasting to ``(B, H, T, S)``;
        masked keys get gate 0.
    is_causal : bool, default True
        Apply the causal mask (top-left aligned, like
        :func:`~llmref.attention.naive_attention`).

    Returns
    -------
    torch.Tensor
        ``p`` of shape ``(B, H, T, S)``, float, in the dtype of ``q``.

    Raises
    ------
    TypeError
        If ``q``, ``k`` or ``mask`` has the wrong type or dtype.
    ValueError
        If the shapes do not match.

    Notes
    -----
    With gates :math:`g_{ij} = \sigma(s\, q_i \cdot k_j)` (zero where masked),
    :math:`p_{ij} = \sum_{t \ge j} g_{it}`: under the causal mask, the sum over
    :math:`t = j \dots i` {cite:p}`golovneva2024contextual`. With every gate 1
    this is the token distance plus one, :math:`i - j + 1`; gates near 0 make
    tokens not count, so a head can count sentences or nouns instead of tokens.

    Examples
    --------
    >>> q = torch.zeros(1, 1, 3, 4)  # every gate is sigmoid(0) = 0.5
    >>> cope_positions(q, q)[0, 0]
    tensor([[0.5000, 0.0000, 0.0000],
            [1.0000, 0.5000, 0.0000],
            [1.5000, 1.0000, 0.5000]])
    """
    q, k = _check_qk(q, k)
    B, H, T, D = q.shape
    S = k.shape[2]
    scale_value = resolve_scale(scale, D)
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    gates = torch.sigmoid((q @ k.transpose(-1, -2)) * scale_value)
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    if mask is not None:
        check_mask(mask, AttentionShapes(B, H, H, T, S, D, D), q.device)
        allowed = allowed & mask
    gates = gates.masked_fill(~allowed, 0.0)
    return gates.flip(-1).cumsum(-1).flip(-1)


@POSITION.register(
    "cope",
    paper="golovneva2024contextual",
    reference="cope_bias",
    kind="bias",
    module="CoPE",
    traces=True,
    example=lambda: _example(),
)
def cope_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    pos_emb: torch.Tensor,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    r"""CoPE's additive bias: the query against embeddings of fractional contextual positions.

    Parameters
    ----------
    q : torch.Tensor
        Queries ``(B, H, T, D)``.
    k : torch.Tensor
        Keys ``(B, H_kv, S, D)``.
    pos_emb : torch.Tensor
        Learned position embeddings ``(D, P)`` for integer positions
        ``0 .. P - 1``; larger contextual positions are clamped to ``P - 1``.
    scale : float, optional
        Score scale used for the gates; default ``1 / sqrt(D)``.
    mask : torch.Tensor, optional
        Boolean mask (True = may attend) broadcasting to ``(B, H, T, S)``.
    is_causal : bool, default True
        Apply the causal mask.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, S)`` in the dtype of ``q``: add it to the scaled
        scores (``naive_attention(q, k, v, bias=..., is_causal=True)``).

    Raises
    ------
    TypeError
        If an input has the wrong type or dtype.
    ValueError
        If the shapes do not match.

    Notes
    -----
    With :math:`p_{ij}` from :func:`cope_positions` and
    :math:`z_i[n] = q_i \cdot e[n]` for integer :math:`n`, CoPE interpolates
    linearly between the two neighbouring integers
    {cite:p}`golovneva2024contextual`:

    .. math::

        b_{ij} = (\lceil p_{ij} \rceil - p_{ij})\, z_i[\lfloor p_{ij} \rfloor]
               + (p_{ij} - \lfloor p_{ij} \rfloor)\, z_i[\lceil p_{ij} \rceil] .

    Computing :math:`z_i` for the :math:`P` integers first costs
    :math:`O(TPD)` instead of :math:`O(TSD)` for a full embedding per pair.

    References
    ----------
    :cite:t:`golovneva2024contextual`

    Examples
    --------
    >>> q = torch.zeros(1, 1, 3, 4)
    >>> pos_emb = torch.eye(4)  # e[n] = n-th unit vector: q . e[n] = q[n]
    >>> q[..., :] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # z[n] = n
    >>> cope_bias(q, torch.zeros(1, 1, 3, 4), pos_emb)[0, 0]  # b = p
    tensor([[0.5000, 0.0000, 0.0000],
            [1.0000, 0.5000, 0.0000],
            [1.5000, 1.0000, 0.5000]])
    """
    check_tensor("pos_emb", pos_emb, ndim=2)
    check_float_dtype("pos_emb", pos_emb)
    q, k = _check_qk(q, k)
    if pos_emb.shape[0] != q.shape[-1]:
        raise ValueError(f"pos_emb must be (D={q.shape[-1]}, P), got shape {tuple(pos_emb.shape)}")
    n_pos = pos_emb.shape[1]
    positions = cope_positions(q, k, scale=scale, mask=mask, is_causal=is_causal)
    positions = positions.clamp(max=n_pos - 1)
    lower = positions.floor()
    weight = positions - lower
    lower_idx = lower.long()
    upper_idx = positions.ceil().long()
    logits = q @ pos_emb.to(q.dtype)  # (B, H, T, P): the query against each integer position
    return logits.gather(-1, lower_idx) * (1 - weight) + logits.gather(-1, upper_idx) * weight


class CoPE(nn.Module):
    """CoPE's learned position embeddings.

    Parameters
    ----------
    head_dim : int
        Channels per head ``D``.
    n_positions : int
        Number of integer positions ``P`` (contextual positions are clamped
        to ``P - 1``; they count gated tokens, so ``P`` can be much smaller
        than the context).

    Attributes
    ----------
    pos_emb : torch.nn.Parameter
        Shape ``(head_dim, n_positions)``, initialised to zeros as in the
        paper's code (CoPE starts as NoPE).

    Examples
    --------
    >>> cope = CoPE(8, 16)
    >>> q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    >>> cope(q, k).shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(self, head_dim: int, n_positions: int) -> None:
        super().__init__()
        self.head_dim = check_int("head_dim", head_dim, minimum=1)
        self.n_positions = check_int("n_positions", n_positions, minimum=1)
        self.pos_emb = nn.Parameter(torch.zeros(head_dim, n_positions))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        scale: float | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
    ) -> torch.Tensor:
        """The ``(B, H, T, S)`` bias (see :func:`cope_bias`).

        Parameters
        ----------
        q : torch.Tensor
            Queries ``(B, H, T, D)``.
        k : torch.Tensor
            Keys ``(B, H_kv, S, D)``.
        scale : float, optional
            Score scale; default ``1 / sqrt(D)``.
        mask : torch.Tensor, optional
            Boolean mask, True = may attend.
        is_causal : bool, default True
            Apply the causal mask.

        Returns
        -------
        torch.Tensor
            Shape ``(B, H, T, S)``.

        Examples
        --------
        >>> CoPE(4, 8)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)).abs().max().item()
        0.0
        """
        return cope_bias(q, k, self.pos_emb, scale=scale, mask=mask, is_causal=is_causal)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, n_positions={self.n_positions}"


def _example() -> tuple[CoPE, tuple[torch.Tensor, torch.Tensor], dict[str, object]]:
    """:data:`~llmref.position.POSITION`'s example call: drawn embeddings (not CoPE's zeros)."""
    cope = CoPE(8, 6).double()
    nn.init.normal_(cope.pos_emb)
    q, k = (torch.randn(2, 4, 5, 8, dtype=torch.float64) for _ in range(2))
    return cope, (q, k), {}
