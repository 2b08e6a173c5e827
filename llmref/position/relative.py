"""Learned relative-position biases: T5's buckets, KERPLE's kernels and FIRE's interpolation.

Each returns an additive bias of shape ``(H, T, S)`` for the ``(B, H, T, S)``
attention scores. Query ``i`` sits at position ``i + offset`` among the keys,
so ``offset = S - T`` describes ``T`` new tokens after ``S - T`` cached ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_float_dtype, check_int, check_positive_float, check_tensor
from ._registries import POSITION

__all__ = [
    "FireBias",
    "KerpleBias",
    "T5RelativeBias",
    "fire_bias",
    "kerple_bias",
    "t5_bias",
    "t5_relative_position_bucket",
]


def _lengths(T: object, S: object, offset: object) -> tuple[int, int, int]:
    T = check_int("T", T, minimum=0)
    S = T if S is None else check_int("S", S, minimum=0)
    return T, S, check_int("offset", offset)


def _relative_positions(T: int, S: int, offset: int, device: torch.device) -> torch.Tensor:
    """``(T, S)`` integer tensor ``j - (i + offset)``: key position minus query position."""
    query = torch.arange(T, device=device)[:, None] + offset
    return torch.arange(S, device=device)[None, :] - query


# -- T5 ----------------------------------------------------------------------------------


def t5_relative_position_bucket(
    relative_position: torch.Tensor,
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    r"""T5's bucket of each relative position: exact when near, logarithmic when far.

    Parameters
    ----------
    relative_position : torch.Tensor
        Integer tensor of ``key_position - query_position`` (any shape).
    bidirectional : bool, default True
        Encoder (True): half of the buckets for keys after the query, half for
        keys before. Decoder (False): keys after the query all go to bucket 0
        (they are masked anyway).
    num_buckets : int, default 32
        Number of buckets (T5 uses 32).
    max_distance : int, default 128
        Distances at or beyond it share the last bucket (of each direction).

    Returns
    -------
    torch.Tensor
        Integer (int64) tensor of the same shape, values in ``[0, num_buckets)``.

    Raises
    ------
    TypeError
        If ``relative_position`` is not an integer tensor or an option has the
        wrong type.
    ValueError
        If ``num_buckets`` is too small to have an exact and a logarithmic half
        (at least 4 when bidirectional, 2 otherwise) or ``max_distance`` does
        not exceed the exact range.

    Notes
    -----
    With :math:`n` buckets per direction and distance :math:`r \ge 0`, the first
    :math:`n/2` buckets hold :math:`r = 0 \dots n/2 - 1` one each; beyond that

    .. math::

        \text{bucket}(r) = \frac{n}{2} + \left\lfloor
            \frac{\ln(2r/n)}{\ln(2\,r_\text{max}/n)}\cdot\frac{n}{2}\right\rfloor ,

    capped at :math:`n - 1`, so bucket widths grow geometrically up to
    ``max_distance`` {cite:p}`raffel2020t5`. The logarithm is computed in
    float32, exactly as in Mesh TensorFlow and transformers (float64 would move
    a few boundary distances to the next bucket).

    References
    ----------
    :cite:t:`raffel2020t5`

    Examples
    --------
    >>> rel = torch.tensor([-200, -20, -3, 0, 3, 20, 200])
    >>> t5_relative_position_bucket(rel)
    tensor([15, 10,  3,  0, 19, 26, 31])
    >>> t5_relative_position_bucket(rel, bidirectional=False)
    tensor([31, 17,  3,  0,  0,  0,  0])
    """
    check_tensor("relative_position", relative_position)
    rel = relative_position
    if rel.dtype.is_floating_point or rel.dtype.is_complex or rel.dtype == torch.bool:
        raise TypeError(f"relative_position must be an integer tensor, got {rel.dtype}")
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {type(bidirectional).__name__}")
    num_buckets = check_int("num_buckets", num_buckets, minimum=4 if bidirectional else 2)
    max_distance = check_int("max_distance", max_distance, minimum=1)
    rel = rel.to(torch.int64)
    bucket = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rel > 0).to(torch.int64) * num_buckets
        distance = rel.abs()
    else:
        distance = (-rel).clamp(min=0)
    max_exact = num_buckets // 2
    if max_distance <= max_exact:
        raise ValueError(
            f"max_distance must exceed the exact range num_buckets // "
            f"{4 if bidirectional else 2} = {max_exact}, got {max_distance}"
        )
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (num_buckets - max_exact)).to(torch.int64)
    far = far.clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


@POSITION.register(
    "t5",
    paper="raffel2020t5",
    reference="t5_relative_position_bucket",
    third_party="transformers.models.t5.modeling_t5.T5Attention.compute_bias",
    kind="bias",
    module="T5RelativeBias",
    traces=True,
    example=lambda: (T5RelativeBias(4, bidirectional=False).double(), (5, 7), {"offset": 2}),
)
def t5_bias(
    weight: torch.Tensor,
    T: int,
    S: int | None = None,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    offset: int = 0,
) -> torch.Tensor:
    """T5's relative attention bias: a learned value per (bucket, head).

    Parameters
    ----------
    weight : torch.Tensor
        The bias table, shape ``(num_buckets, H)`` (T5's
        ``relative_attention_bias.weight``).
    T : int
        Number of queries.
    S : int, optional
        Number of keys; default ``T``.
    bidirectional : bool, default True
        True in T5's encoder, False in its decoder.
    max_distance : int, default 128
        As in :func:`t5_relative_position_bucket`.
    offset : int, default 0
        Position of query 0 among the keys (transformers' ``past_seen_tokens``).

    Returns
    -------
    torch.Tensor
        Shape ``(H, T, S)``, dtype of ``weight``.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating tensor or a size is not an int.
    ValueError
        If ``weight`` is not 2-D or a size is negative.

    Notes
    -----
    T5 adds this bias to the scores of every layer (computed in the first
    layer and shared) and scales neither queries nor the scores by
    :math:`1/\\sqrt{d}` {cite:p}`raffel2020t5`.

    References
    ----------
    :cite:t:`raffel2020t5`

    Examples
    --------
    >>> weight = torch.arange(64.0).view(32, 2)  # bucket b, head h -> 2 b + h
    >>> t5_bias(weight, 2, 4)[0]
    tensor([[ 0., 34., 36., 38.],
            [ 2.,  0., 34., 36.]])
    """
    check_tensor("weight", weight, ndim=2)
    check_float_dtype("weight", weight)
    T, S, offset = _lengths(T, S, offset)
    rel = _relative_positions(T, S, offset, weight.device)
    buckets = t5_relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=weight.shape[0], max_distance=max_distance
    )
    return weight[buckets].permute(2, 0, 1)


class T5RelativeBias(nn.Module):
    """T5's relative position bias with its learned ``(num_buckets, H)`` table.

    Parameters
    ----------
    n_heads : int
        Number of heads.
    num_buckets : int, default 32
        Number of buckets.
    max_distance : int, default 128
        Distance at which the buckets stop growing.
    bidirectional : bool, default True
        True for an encoder, False for a decoder.

    Attributes
    ----------
    relative_attention_bias : torch.nn.Module
        An embedding with ``weight`` of shape ``(num_buckets, n_heads)``, named
        as in transformers' ``T5Attention`` so weights load directly.

    Examples
    --------
    >>> bias = T5RelativeBias(4, bidirectional=False)
    >>> bias(5, 5).shape
    torch.Size([4, 5, 5])
    """

    def __init__(
        self,
        n_heads: int,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        self.num_buckets = check_int("num_buckets", num_buckets, minimum=2)
        self.max_distance = check_int("max_distance", max_distance, minimum=1)
        self.bidirectional = bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)

    def forward(self, T: int, S: int | None = None, *, offset: int = 0) -> torch.Tensor:
        """The ``(H, T, S)`` bias (see :func:`t5_bias`).

        Parameters
        ----------
        T : int
            Number of queries.
        S : int, optional
            Number of keys; default ``T``.
        offset : int, default 0
            Position of query 0 among the keys.

        Returns
        -------
        torch.Tensor
            Shape ``(n_heads, T, S)``.

        Examples
        --------
        >>> bias = T5RelativeBias(2)
        >>> bias(1, 3, offset=2).shape
        torch.Size([2, 1, 3])
        """
        return t5_bias(
            self.relative_attention_bias.weight,
            T,
            S,
            bidirectional=self.bidirectional,
            max_distance=self.max_distance,
            offset=offset,
        )

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}"
        )


# -- KERPLE ------------------------------------------------------------------------------


def _check_per_head(name: str, value: object) -> torch.Tensor:
    check_tensor(name, value, ndim=1)
    assert isinstance(value, torch.Tensor)
    check_float_dtype(name, value)
    return value


@POSITION.register(
    "kerple",
    paper="chi2022kerple",
    reference="kerple_bias",
    kind="bias",
    module="KerpleBias",
    forms=("log", "power"),
    traces=False,  # kerple_bias checks r1, r2 > 0: a host value
    example=lambda: (KerpleBias(4).double(), (5, 7), {"offset": 2}),
)
def kerple_bias(
    T: int,
    S: int | None = None,
    *,
    r1: torch.Tensor,
    r2: torch.Tensor,
    kernel: str = "log",
    offset: int = 0,
) -> torch.Tensor:
    r"""KERPLE's bias from a conditionally positive definite kernel of the distance.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; default ``T``.
    r1, r2 : torch.Tensor
        Per-head kernel parameters, shape ``(H,)``, both > 0 (``r2 <= 2`` for
        the power kernel).
    kernel : {"log", "power"}, default "log"
        ``"log"``: ``-r1 * log(1 + r2 * |i - j|)``; ``"power"``:
        ``-r1 * |i - j| ** r2``.
    offset : int, default 0
        Position of query 0 among the keys.

    Returns
    -------
    torch.Tensor
        Shape ``(H, T, S)``, dtype of ``r1``.

    Raises
    ------
    TypeError
        If ``r1`` or ``r2`` is not a floating tensor or a size is not an int.
    ValueError
        If ``r1`` and ``r2`` differ in shape, a parameter is out of range or
        ``kernel`` is unknown.

    Notes
    -----
    A conditionally positive definite (CPD) kernel :math:`k` becomes a
    positive definite one after adding a constant, and the softmax ignores
    constants, so :math:`-k(|i - j|)` is a valid relative bias
    {cite:p}`chi2022kerple`. The logarithmic kernel decays more slowly than
    ALiBi's linear penalty (which is the power kernel with :math:`r_2 = 1`)
    and extrapolated best in the paper.

    References
    ----------
    :cite:t:`chi2022kerple`

    Examples
    --------
    >>> r1, r2 = torch.tensor([1.0]), torch.tensor([1.0])
    >>> kerple_bias(1, 4, r1=r1, r2=r2, offset=3)
    tensor([[[-1.3863, -1.0986, -0.6931,  0.0000]]])
    >>> kerple_bias(1, 4, r1=r1, r2=r2, kernel="power", offset=3)
    tensor([[[-3., -2., -1.,  0.]]])
    """
    T, S, offset = _lengths(T, S, offset)
    r1, r2 = _check_per_head("r1", r1), _check_per_head("r2", r2)
    if r1.shape != r2.shape:
        raise ValueError(
            f"r1 and r2 must have one shape (H,), got {tuple(r1.shape)} and {tuple(r2.shape)}"
        )
    if kernel not in ("log", "power"):
        raise ValueError(f"kernel must be 'log' or 'power', got {kernel!r}")
    if not bool((r1 > 0).all() and (r2 > 0).all()):
        raise ValueError("r1 and r2 must be > 0 (KERPLE's kernels are CPD only then)")
    if kernel == "power" and not bool((r2 <= 2).all()):
        raise ValueError("r2 must be <= 2 for the power kernel (it is CPD only for 0 < r2 <= 2)")
    distance = _relative_positions(T, S, offset, r1.device).abs().to(r1.dtype)
    a, b = r1[:, None, None], r2[:, None, None].to(r1.dtype)
    kernel_value = torch.log1p(b * distance) if kernel == "log" else distance**b
    return a * (0.0 - kernel_value)  # 0 - x: +0.0, not -0.0, at distance 0


class KerpleBias(nn.Module):
    """KERPLE with learned per-head kernel parameters.

    Parameters
    ----------
    n_heads : int
        Number of heads.
    kernel : {"log", "power"}, default "log"
        Which kernel (see :func:`kerple_bias`).
    eps : float, default 1e-2
        Lower clamp of both parameters in :meth:`forward`, keeping them
        positive while training.

    Attributes
    ----------
    r1, r2 : torch.nn.Parameter
        Shape ``(n_heads,)``; initialised uniformly in ``(0, 2)`` and
        ``(0, 1)`` (the paper's code), clamped to ``[eps, ...]`` (and
        ``r2 <= 2`` for the power kernel) when used.

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> kerple = KerpleBias(4)
    >>> kerple(3, 3).shape
    torch.Size([4, 3, 3])
    """

    def __init__(self, n_heads: int, *, kernel: str = "log", eps: float = 1e-2) -> None:
        super().__init__()
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        if kernel not in ("log", "power"):
            raise ValueError(f"kernel must be 'log' or 'power', got {kernel!r}")
        self.kernel = kernel
        self.eps = check_positive_float("eps", eps)
        self.r1 = nn.Parameter(torch.rand(n_heads) * 2)
        self.r2 = nn.Parameter(torch.rand(n_heads))

    def forward(self, T: int, S: int | None = None, *, offset: int = 0) -> torch.Tensor:
        """The ``(H, T, S)`` bias (see :func:`kerple_bias`).

        Parameters
        ----------
        T : int
            Number of queries.
        S : int, optional
            Number of keys; default ``T``.
        offset : int, default 0
            Position of query 0 among the keys.

        Returns
        -------
        torch.Tensor
            Shape ``(n_heads, T, S)``.

        Examples
        --------
        >>> KerpleBias(2, kernel="power")(2, 4, offset=2).shape
        torch.Size([2, 2, 4])
        """
        r1 = self.r1.clamp(min=self.eps)
        r2 = self.r2.clamp(min=self.eps)
        if self.kernel == "power":
            r2 = r2.clamp(max=2.0)
        return kerple_bias(T, S, r1=r1, r2=r2, kernel=self.kernel, offset=offset)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, kernel={self.kernel!r}"


# -- FIRE --------------------------------------------------------------------------------


@POSITION.register(
    "fire",
    paper="li2024fire",
    reference="fire_bias",
    kind="bias",
    module="FireBias",
    traces=True,
    example=lambda: (FireBias(4).double(), (5, 7), {"offset": 2}),
)
def fire_bias(
    T: int,
    S: int | None = None,
    *,
    mlp: Callable[[torch.Tensor], torch.Tensor],
    c: float | torch.Tensor = 0.1,
    threshold: float | torch.Tensor = 512.0,
    offset: int = 0,
    eps: float = 1e-6,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""FIRE's bias: a learned function of the progressively normalised distance.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; default ``T``.
    mlp : callable
        Maps the normalised distances, shape ``(T, S, 1)``, to ``(T, S, H)``
        (FIRE uses a 2-layer MLP of width 32 with a ReLU).
    c : float or torch.Tensor, default 0.1
        Slope inside the log transform ``psi(x) = log(c x + 1)`` (> 0; learned
        in FIRE).
    threshold : float or torch.Tensor, default 512.0
        ``L``: queries before position ``L`` are normalised by ``psi(L)``
        instead of ``psi(i)`` (learned in FIRE).
    offset : int, default 0
        Position of query 0 among the keys.
    eps : float, default 1e-6
        Added to the normaliser.
    dtype : torch.dtype, default torch.float32
        dtype of the distances given to ``mlp``.
    device : torch.device or str, optional
        Where to create them.

    Returns
    -------
    torch.Tensor
        Shape ``(H, T, S)``, whatever dtype ``mlp`` returns. Entries with
        ``j > i`` (future keys) are computed from ``|i - j|`` and are meant to
        be masked.

    Raises
    ------
    TypeError
        If ``mlp`` is not callable or a size is not an int.
    ValueError
        If a size is negative or ``mlp`` returns the wrong shape.

    Notes
    -----
    The bias is :math:`b(i, j) = f_\theta\bigl(\psi(i - j) /
    \psi(\max(L, i))\bigr)` with :math:`\psi(x) = \ln(cx + 1)`
    {cite:p}`li2024fire`. Dividing by the query's own position maps every
    distance into :math:`[0, 1]` whatever the sequence length, so the MLP only
    ever interpolates; the log transform spends its resolution on short
    distances; :math:`L` keeps short sequences from being stretched. With a
    suitable :math:`f_\theta` FIRE can represent T5's buckets, ALiBi and
    KERPLE.

    References
    ----------
    :cite:t:`li2024fire`

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> fire_bias(4, mlp=mlp, threshold=2.0).shape
    torch.Size([2, 4, 4])
    """
    if not callable(mlp):
        raise TypeError(f"mlp must be callable, got {type(mlp).__name__}")
    T, S, offset = _lengths(T, S, offset)
    if not isinstance(c, torch.Tensor):
        c = torch.tensor(check_positive_float("c", c), dtype=dtype, device=device)
    if not isinstance(threshold, torch.Tensor):
        threshold = torch.tensor(
            check_positive_float("threshold", threshold), dtype=dtype, device=device
        )
    device = c.device if device is None else device
    query = (torch.arange(T, device=device) + offset).to(dtype)
    distance = _relative_positions(T, S, offset, torch.device(device)).abs().to(dtype)
    normaliser = torch.maximum(query, threshold.to(dtype).abs())[:, None]
    psi_distance = torch.log(torch.abs(c * distance) + 1)
    psi_normaliser = torch.log(torch.abs(c * normaliser) + 1) + eps
    out = mlp((psi_distance / psi_normaliser).unsqueeze(-1))
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[:2] != (T, S):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"mlp must map (T, S, 1) to (T, S, H), got {shape}")
    return out.permute(2, 0, 1)


class FireBias(nn.Module):
    """FIRE with its MLP, learned ``c`` and learned threshold ``L``.

    Parameters
    ----------
    n_heads : int
        Number of heads.
    hidden : int, default 32
        Width of the MLP's hidden layer.
    c : float, default 0.1
        Initial ``c``.
    threshold : float, default 512.0
        Initial ``L``; learned as ``L * multiplier`` with the multiplier
        initialised to 1 (FIRE's parameterisation).

    Attributes
    ----------
    mlp : torch.nn.Module
        ``Linear(1, hidden) -> ReLU -> Linear(hidden, n_heads)``.
    c : torch.nn.Parameter
        Scalar.
    threshold_multiplier : torch.nn.Parameter
        Scalar; the threshold is ``threshold * threshold_multiplier``.

    Examples
    --------
    >>> fire = FireBias(4)
    >>> fire(6).shape
    torch.Size([4, 6, 6])
    """

    def __init__(
        self, n_heads: int, *, hidden: int = 32, c: float = 0.1, threshold: float = 512.0
    ) -> None:
        super().__init__()
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        hidden = check_int("hidden", hidden, minimum=1)
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, n_heads))
        self.c = nn.Parameter(torch.tensor(check_positive_float("c", c)))
        self.threshold = check_positive_float("threshold", threshold)
        self.threshold_multiplier = nn.Parameter(torch.tensor(1.0))

    def forward(self, T: int, S: int | None = None, *, offset: int = 0) -> torch.Tensor:
        """The ``(H, T, S)`` bias (see :func:`fire_bias`).

        Parameters
        ----------
        T : int
            Number of queries.
        S : int, optional
            Number of keys; default ``T``.
        offset : int, default 0
            Position of query 0 among the keys.

        Returns
        -------
        torch.Tensor
            Shape ``(n_heads, T, S)``.

        Examples
        --------
        >>> FireBias(2)(1, 5, offset=4).shape
        torch.Size([2, 1, 5])
        """
        return fire_bias(
            T,
            S,
            mlp=self.mlp,
            c=self.c,
            threshold=self.threshold * self.threshold_multiplier,
            offset=offset,
            dtype=self.c.dtype,
            device=self.c.device,
        )

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, threshold={self.threshold}"
