"""Performer's FAVOR+ (Choromanski et al., 2021): softmax attention by positive random features.

The softmax kernel ``exp(x . y)`` is an expectation over Gaussian vectors ``w``:
``exp(x . y) = E[exp(w . x - |x|^2 / 2) exp(w . y - |y|^2 / 2)]``. Averaging over
``m`` sampled ``w`` gives features ``phi`` with ``phi(x) . phi(y) ~ exp(x . y)``;
every feature is positive, so the estimated weights and their row sums are too.
Linear attention on these features (:mod:`llmref.attention.linear`) then
approximates softmax attention in ``O(T m Dv)`` time, and the approximation
improves as ``m`` grows. Drawing the ``w`` in orthogonal blocks lowers the
variance further.
"""

from __future__ import annotations

import math

import torch

from .._checks import FLOAT_DTYPES, check_int, check_qkv, check_tensor, compute_dtype, resolve_scale
from .linear import _causal_chunked, _noncausal, _normalise, _with_ones
from .variants import VARIANTS

__all__ = ["favor_features", "orthogonal_random_features", "performer_attention"]


def orthogonal_random_features(
    n_features: int,
    head_dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw the random projection of FAVOR+: Gaussian-like rows, orthogonal within blocks.

    Parameters
    ----------
    n_features : int
        Number of random features ``m`` (rows); >= 1.
    head_dim : int
        Dimension ``D`` of the vectors being projected (columns); >= 1.
    generator : torch.Generator, optional
        A CPU generator, for reproducible draws. The draw always happens on the
        CPU in float64, so a seed gives the same projection on every device.
    dtype : torch.dtype, default torch.float32
        Floating dtype of the result.
    device : torch.device or str, optional
        Device of the result (default CPU).

    Returns
    -------
    torch.Tensor
        Shape ``(n_features, head_dim)``. Each full block of ``head_dim``
        consecutive rows is mutually orthogonal; the last block may be partial.

    Raises
    ------
    TypeError
        If ``n_features`` or ``head_dim`` is not an int, ``dtype`` is not a
        floating dtype, or ``generator`` is not a ``torch.Generator``.
    ValueError
        If ``n_features`` or ``head_dim`` is < 1, or ``generator`` is not on
        the CPU.

    Notes
    -----
    Each block is :math:`Q` from the QR decomposition of a ``D x D`` standard
    Gaussian matrix, with the signs of its columns fixed by the diagonal of
    :math:`R` so that :math:`Q` is Haar-distributed; its rows are then unit
    vectors uniform on the sphere, and orthogonal to each other. Row
    :math:`i` is rescaled by the norm of an independent ``D``-dimensional
    Gaussian vector (a :math:`\\chi_D` sample), which gives every row exactly
    the distribution of a :math:`\\mathcal{N}(0, I_D)` vector -- this keeps the
    FAVOR+ estimator unbiased -- while rows in one block stay orthogonal, which
    lowers its variance. As in the authors' code there are ``ceil(m / D)``
    independent blocks, the last one truncated.

    References
    ----------
    :cite:t:`choromanski2021rethinking`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.performer import orthogonal_random_features
    >>> w = orthogonal_random_features(20, 8, generator=torch.Generator().manual_seed(0))
    >>> w.shape
    torch.Size([20, 8])
    >>> block = w[:8]
    >>> gram = block @ block.T
    >>> bool(torch.allclose(gram - torch.diag(gram.diag()), torch.zeros(8, 8), atol=1e-5))
    True
    """
    m = check_int("n_features", n_features, minimum=1)
    d = check_int("head_dim", head_dim, minimum=1)
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(t) for t in FLOAT_DTYPES)
        raise TypeError(f"dtype must be one of {allowed}, got {dtype!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    n_blocks = -(-m // d)
    gaussian = torch.randn(n_blocks, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) >= 0, 1.0, -1.0)
    q = q * signs.unsqueeze(-2)  # Haar-distributed orthogonal blocks
    rows = q.transpose(-1, -2).reshape(n_blocks * d, d)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=-1)
    return (rows * norms.unsqueeze(-1)).to(device=device, dtype=dtype)


def _check_projection(projection: object, head_dim: int, device: torch.device) -> torch.Tensor:
    check_tensor("projection", projection, ndim=2)
    assert isinstance(projection, torch.Tensor)
    if not projection.is_floating_point():
        raise TypeError(f"projection must have a floating dtype, got {projection.dtype}")
    if projection.shape[0] == 0 or projection.shape[1] != head_dim:
        raise ValueError(
            f"projection must have shape (n_features, D) = (m, {head_dim}) with m >= 1, "
            f"got {tuple(projection.shape)}"
        )
    if projection.device != device:
        raise ValueError(
            f"projection must be on the same device as the inputs ({device}), "
            f"got {projection.device}"
        )
    return projection


def _favor(
    x: torch.Tensor, projection: torch.Tensor, is_query: bool, stabilize: bool
) -> torch.Tensor:
    """FAVOR+ features of ``x`` (already in the compute dtype); shape (..., m)."""
    w = projection.to(x.dtype)
    u = torch.matmul(x, w.transpose(-1, -2)) - x.square().sum(dim=-1, keepdim=True) / 2
    if stabilize and u.numel() > 0:
        # Queries: the max over each row's features; keys: one max per (batch, head) over
        # every key and feature. Both are common factors that cancel in the normalisation.
        dims = (-1,) if is_query else (-2, -1)
        u = u - u.amax(dim=dims, keepdim=True)
    return torch.exp(u) / math.sqrt(w.shape[0])


def favor_features(
    x: torch.Tensor,
    projection: torch.Tensor,
    *,
    is_query: bool,
    stabilize: bool = True,
) -> torch.Tensor:
    """Positive random features of FAVOR+: ``phi(x) = exp(W x - |x|^2 / 2 - c) / sqrt(m)``.

    Parameters
    ----------
    x : torch.Tensor
        Queries or keys of shape ``(B, H, T, D)``, already multiplied by the
        square root of the score scale (see :func:`performer_attention`).
    projection : torch.Tensor
        Random projection ``W`` of shape ``(m, D)``, e.g. from
        :func:`orthogonal_random_features`.
    is_query : bool
        Chooses the stabiliser ``c``: per row for queries, one per
        ``(batch, head)`` for keys.
    stabilize : bool, default True
        Subtract the stabiliser ``c``. With False, ``phi(x) . phi(y)`` is the
        raw unbiased estimate of ``exp(x . y)`` (and may overflow).

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, m)``, dtype of ``x`` (computed in float32 for 16-bit
        inputs), every entry > 0 unless it underflows.

    Raises
    ------
    TypeError
        If ``x`` or ``projection`` is not a floating tensor, or ``is_query``
        or ``stabilize`` is not a bool.
    ValueError
        If ``x`` is not 4-D, or ``projection`` does not have shape ``(m, D)`` or
        is on another device.

    Notes
    -----
    For :math:`w \\sim \\mathcal{N}(0, I_D)`,
    :math:`\\mathbb{E}\\bigl[e^{w^\\top x - |x|^2/2}\\, e^{w^\\top y - |y|^2/2}\\bigr]
    = e^{x^\\top y}`, so with rows :math:`w_1, \\dots, w_m` of the projection

    .. math::

        \\phi(x)_i = \\frac{1}{\\sqrt m} \\exp\\!\\left(w_i^\\top x - \\tfrac{|x|^2}{2} - c\\right),
        \\qquad \\mathbb{E}\\bigl[\\phi(x)^\\top \\phi(y)\\bigr] = e^{x^\\top y - c_x - c_y}.

    The stabiliser keeps ``exp`` from overflowing. For a query :math:`c` is the
    largest exponent of its own row, so its largest feature is exactly
    :math:`1/\\sqrt m`. For keys :math:`c` is the largest exponent over all keys
    and features of one ``(batch, head)``. In attention, output row :math:`i` is
    :math:`\\sum_j \\phi(q_i)^\\top\\phi(k_j) v_j / \\sum_j \\phi(q_i)^\\top\\phi(k_j)`:
    :math:`e^{-c_{q_i}}` multiplies the numerator and denominator of row
    :math:`i` alike, and :math:`e^{-c_k}` multiplies every term of every row
    alike, so both cancel exactly. A per-key stabiliser would weight keys
    differently and would not cancel. (Common implementations subtract only
    :math:`\\max_i w_i^\\top x` and add a small constant to every feature;
    including :math:`|x|^2/2` in the max, as here, keeps a query row from
    underflowing to all zeros without changing the estimate.)

    References
    ----------
    :cite:t:`choromanski2021rethinking`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.performer import favor_features, orthogonal_random_features
    >>> w = orthogonal_random_features(64, 16, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(1, 2, 5, 16) * 0.5
    >>> phi = favor_features(x, w, is_query=True)
    >>> phi.shape, bool((phi > 0).all())
    (torch.Size([1, 2, 5, 64]), True)
    >>> bool(torch.allclose(phi.amax(dim=-1), torch.full((1, 2, 5), 64**-0.5)))
    True
    """
    check_tensor("x", x, ndim=4)
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    for name, flag in (("is_query", is_query), ("stabilize", stabilize)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    projection = _check_projection(projection, x.shape[-1], x.device)
    compute = compute_dtype(x.dtype)
    return _favor(x.to(compute), projection, is_query, stabilize).to(x.dtype)


@VARIANTS.register(
    "performer",
    paper="choromanski2021rethinking",
    reference="naive_attention",
    third_party=None,
    features=frozenset({"is_causal", "scale"}),
    required=("projection",),
    exact=False,
)
def performer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    projection: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Softmax attention approximated by FAVOR+: linear attention on positive random features.

    Cost is ``O(T m Dv)`` instead of ``O(T S D)``; the result approaches
    :func:`~llmref.attention.naive_attention` as the number of features ``m``
    grows (the error falls roughly like ``1 / sqrt(m)``).

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``; ``H % H_kv == 0`` (GQA/MQA).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    projection : torch.Tensor
        Random projection of shape ``(m, D)`` from
        :func:`orthogonal_random_features` (or i.i.d. Gaussian rows); shared by
        all heads. Redraw it to resample the approximation.
    is_causal : bool, default False
        Query ``i`` sees keys ``0..i`` (top-left aligned), computed with the
        chunked prefix sums of :func:`~llmref.attention.linear.linear_attention`.
    scale : float, optional
        Score scale ``s`` of the softmax being approximated; defaults to
        ``1 / sqrt(D)``.
    chunk_size : int, default 64
        Causal form only: positions per chunk (any value gives the same result).

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError
        If an input is not a tensor or has a non-floating or mismatched dtype.
    ValueError
        If shapes disagree (see :func:`~llmref.attention.naive_attention`),
        ``projection`` is not of shape ``(m, D)`` or is on another device,
        ``scale`` is not a finite number > 0, or ``chunk_size < 1``.

    Notes
    -----
    Softmax attention weights are :math:`\\exp(s\\, q^\\top k)` normalised over
    keys. Writing :math:`s\\, q^\\top k = (\\sqrt{s} q)^\\top (\\sqrt{s} k)`, FAVOR+
    computes

    .. math::

        o_i = \\frac{\\sum_{j} \\phi(\\sqrt{s} q_i)^\\top \\phi(\\sqrt{s} k_j)\\, v_j}
                    {\\sum_{j} \\phi(\\sqrt{s} q_i)^\\top \\phi(\\sqrt{s} k_j)}

    with :func:`favor_features` :math:`\\phi` (stabilised; see there why the
    stabilisers cancel), summing over :math:`j \\le i` when causal. No
    :math:`\\epsilon` is added: the features are positive, so denominators are
    too, unless every visible feature product underflows -- then the row is
    zero, like a fully masked row. Numerator and denominator are estimated with
    the same features, so the ratio is consistent but not unbiased. When causal,
    the key stabiliser is still one maximum over all keys, later ones included:
    it cancels exactly, but a later key whose exponent lies far above (about
    80 in float32) those an early query sees makes that row's features
    underflow, and the row comes back as zeros.

    With :math:`m` i.i.d. Gaussian features the variance of the kernel estimate
    is :math:`e^{2 x^\\top y}\\bigl(e^{|x + y|^2} - 1\\bigr) / m` (orthogonal
    blocks only reduce it), so the relative error grows exponentially with the
    query and key norms: with :math:`D = 16` and ``randn`` inputs
    (:math:`s|q|^2 \\approx 4`), 4096 features still leave an output error
    above 50 %, while with half those norms it is a few percent.
    Inputs in float16 or bfloat16 are computed in float32 and cast back.

    References
    ----------
    :cite:t:`choromanski2021rethinking`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import naive_attention
    >>> from llmref.attention.performer import orthogonal_random_features, performer_attention
    >>> g = torch.Generator().manual_seed(0)
    >>> q, k, v = (torch.randn(1, 2, 32, 16, generator=g) for _ in range(3))
    >>> q, k = q / 2, k / 2  # FAVOR+ works best with small query/key norms (see Notes)
    >>> exact = naive_attention(q, k, v)
    >>> for m in (16, 4096):
    ...     w = orthogonal_random_features(m, 16, generator=g)
    ...     err = (performer_attention(q, k, v, projection=w) - exact).norm() / exact.norm()
    ...     print(m, "features:", "error < 0.1" if err < 0.1 else "error >= 0.1")
    16 features: error >= 0.1
    4096 features: error < 0.1
    """
    shapes = check_qkv(q, k, v)
    s = resolve_scale(scale, shapes.head_dim)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    projection = _check_projection(projection, shapes.head_dim, q.device)
    B, H, H_kv, T, _, _, Dv = shapes
    if T == 0:
        return q.new_zeros(B, H, 0, Dv)
    compute = compute_dtype(q.dtype)
    root = math.sqrt(s)
    phi_q = _favor(q.to(compute) * root, projection, True, True)
    phi_k = _favor(k.to(compute) * root, projection, False, True)
    phi_q5 = phi_q.unflatten(1, (H_kv, H // H_kv))
    v1 = _with_ones(v.to(compute))
    if is_causal:
        num_den = _causal_chunked(phi_q5, phi_k, v1, chunk_size)
    else:
        num_den = _noncausal(phi_q5, phi_k, v1)
    return _normalise(num_den, 0.0).flatten(1, 2).to(q.dtype)
