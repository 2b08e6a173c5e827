"""ALiBi: attention with linear biases (Press et al., 2022)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int
from ._registries import POSITION

__all__ = ["AlibiBias", "alibi_bias", "alibi_slopes"]


def _check_float_dtype(dtype: object) -> torch.dtype:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype}")
    return dtype


def alibi_slopes(
    n_heads: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""ALiBi's per-head slopes, including head counts that are not powers of two.

    Parameters
    ----------
    n_heads : int
        Number of attention heads (>= 1).
    device : torch.device or str, optional
        Where to create the slopes.
    dtype : torch.dtype, default torch.float32
        Floating dtype of the result; the values are computed in float64 and
        rounded once.

    Returns
    -------
    torch.Tensor
        Shape ``(n_heads,)``, decreasing from ``2 ** (-8 / n)`` (``n`` the
        largest power of two ``<= n_heads``).

    Raises
    ------
    TypeError
        If ``n_heads`` is not an int or ``dtype`` is not floating.
    ValueError
        If ``n_heads < 1``.

    Notes
    -----
    For :math:`n` a power of two the slopes are the geometric sequence
    :math:`m_h = 2^{-8h/n}`, :math:`h = 1 \dots n` {cite:p}`press2022alibi`.
    Otherwise, with :math:`n` the largest power of two below ``n_heads``, the
    first :math:`n` slopes are those of :math:`n` heads and the remaining
    ``n_heads - n`` are every other slope of :math:`2n` heads (the odd
    powers :math:`2^{-8h/2n}`, :math:`h = 1, 3, 5, \dots`), which interleave
    with the first ones. This is the paper's code and BLOOM's
    ``build_alibi_tensor``; BLOOM evaluates :math:`(2^{-8/n})^h` in float32,
    which is off by up to ~7e-7 (relative) for large head counts, while
    these slopes are correctly rounded.

    References
    ----------
    :cite:t:`press2022alibi`

    Examples
    --------
    >>> alibi_slopes(8)
    tensor([0.5000, 0.2500, 0.1250, 0.0625, 0.0312, 0.0156, 0.0078, 0.0039])
    >>> alibi_slopes(6)  # 4 heads' slopes, then 2 of the 8-head ones that fall between
    tensor([0.2500, 0.0625, 0.0156, 0.0039, 0.5000, 0.1250])
    """
    n_heads = check_int("n_heads", n_heads, minimum=1)
    dtype = _check_float_dtype(dtype)
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    slopes += [2.0 ** (-8.0 * h / (2 * n)) for h in range(1, 2 * (n_heads - n), 2)]
    return torch.tensor(slopes, dtype=torch.float64, device=device).to(dtype)


@POSITION.register(
    "alibi",
    paper="press2022alibi",
    reference="alibi_bias",
    third_party="transformers.models.bloom.modeling_bloom.build_alibi_tensor",
    kind="bias",
    module="AlibiBias",
    traces=True,
    example=lambda: (AlibiBias(4).double(), (5, 7), {"offset": 2}),
)
def alibi_bias(
    n_heads: int,
    T: int,
    S: int | None = None,
    *,
    offset: int = 0,
    symmetric: bool = False,
    slopes: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""ALiBi's additive attention bias: ``-slope[h] * (i - j)``.

    Parameters
    ----------
    n_heads : int
        Number of heads ``H``.
    T : int
        Number of queries.
    S : int, optional
        Number of keys; default ``T``.
    offset : int, default 0
        Position of query 0 among the keys (``S - T`` for ``T`` new tokens
        after ``S - T`` cached ones). Without ``symmetric`` it only adds a
        constant to each row, which the softmax ignores.
    symmetric : bool, default False
        Use ``-slope * |i - j|`` (for bidirectional attention) instead of the
        causal form, whose entries above the diagonal are positive and meant to
        be masked.
    slopes : torch.Tensor, optional
        Shape ``(H,)``; default :func:`alibi_slopes`.
    device : torch.device or str, optional
        Where to create the bias (default: that of ``slopes``).
    dtype : torch.dtype, default torch.float32
        Floating dtype of the bias.

    Returns
    -------
    torch.Tensor
        Shape ``(H, T, S)``; add it to the ``(B, H, T, S)`` scores (e.g.
        ``naive_attention(q, k, v, bias=..., is_causal=True)``).

    Raises
    ------
    TypeError
        If a size is not an int or ``slopes`` is not a floating tensor.
    ValueError
        If a size is negative or ``slopes`` is not of shape ``(H,)``.

    Notes
    -----
    ALiBi adds no position information to the tokens; each head penalises a
    key linearly in its distance from the query,
    :math:`s_{ij} = q_i \cdot k_j / \sqrt{d} - m_h (i - j)`, so heads with a
    large slope look locally and heads with a small one far away
    {cite:p}`press2022alibi`. Since the penalty grows without bound, scores of
    distant tokens keep shrinking past the trained length instead of becoming
    unfamiliar, which is why ALiBi extrapolates.

    References
    ----------
    :cite:t:`press2022alibi`

    Examples
    --------
    >>> alibi_bias(2, 3)[0]
    tensor([[ 0.0000,  0.0625,  0.1250],
            [-0.0625,  0.0000,  0.0625],
            [-0.1250, -0.0625,  0.0000]])
    >>> alibi_bias(2, 1, 4, offset=3, symmetric=True)[1]
    tensor([[-0.0117, -0.0078, -0.0039,  0.0000]])
    """
    n_heads = check_int("n_heads", n_heads, minimum=1)
    T = check_int("T", T, minimum=0)
    S = T if S is None else check_int("S", S, minimum=0)
    offset = check_int("offset", offset)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    dtype = _check_float_dtype(dtype)
    if slopes is None:
        slopes = alibi_slopes(n_heads, device=device, dtype=torch.float64)
    elif not isinstance(slopes, torch.Tensor) or not slopes.dtype.is_floating_point:
        raise TypeError(f"slopes must be a floating torch.Tensor, got {slopes!r}")
    elif tuple(slopes.shape) != (n_heads,):
        raise ValueError(f"slopes must have shape ({n_heads},), got {tuple(slopes.shape)}")
    device = slopes.device if device is None else device
    query = torch.arange(T, device=device)[:, None] + offset
    key = torch.arange(S, device=device)[None, :]
    relative = key - query  # j - i, integers: no -0.0 on the diagonal
    if symmetric:
        relative = -relative.abs()
    # One rounding of slope * distance, in float64 for float64 and otherwise in float32
    # (BLOOM's choice; distances are exact there up to 2**24), then cast.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    bias = slopes.to(device=device, dtype=compute)[:, None, None] * relative.to(compute)
    return bias.to(dtype)


class AlibiBias(nn.Module):
    """ALiBi as a module: holds the slopes, returns the bias for given lengths.

    Parameters
    ----------
    n_heads : int
        Number of heads.
    symmetric : bool, default False
        Use ``-slope * |i - j|`` (bidirectional attention).

    Attributes
    ----------
    slopes : torch.Tensor
        Shape ``(n_heads,)``, a non-persistent buffer (nothing is learned).

    Examples
    --------
    >>> alibi = AlibiBias(4)
    >>> alibi(3, 5, offset=2).shape
    torch.Size([4, 3, 5])
    """

    slopes: torch.Tensor

    def __init__(self, n_heads: int, *, symmetric: bool = False) -> None:
        super().__init__()
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        self.symmetric = symmetric
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(
        self, T: int, S: int | None = None, *, offset: int = 0, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The ``(H, T, S)`` bias (see :func:`alibi_bias`).

        Parameters
        ----------
        T : int
            Number of queries.
        S : int, optional
            Number of keys; default ``T``.
        offset : int, default 0
            Position of query 0 among the keys.
        dtype : torch.dtype, optional
            dtype of the bias; default that of the slopes.

        Returns
        -------
        torch.Tensor
            Shape ``(n_heads, T, S)``.

        Examples
        --------
        >>> AlibiBias(1)(2)
        tensor([[[ 0.0000,  0.0039],
                 [-0.0039,  0.0000]]])
        """
        return alibi_bias(
            self.n_heads,
            T,
            S,
            offset=offset,
            symmetric=self.symmetric,
            slopes=self.slopes,
            dtype=self.slopes.dtype if dtype is None else dtype,
        )

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, symmetric={self.symmetric}"
