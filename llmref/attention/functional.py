"""Scaled dot-product attention: the naive reference, SDPA, and a dispatcher.

All functions take queries, keys and values in the ``(B, H, T, D)`` layout of
:func:`torch.nn.functional.scaled_dot_product_attention` and return a tensor
of shape ``(B, H, T, Dv)`` in the input dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._checks import (
    check_bias,
    check_mask,
    check_positive_float,
    check_qkv,
    check_sinks,
    compute_dtype,
    resolve_scale,
)
from .._registry import Registry
from .masks import causal_mask

__all__ = ["ATTENTION", "attention", "naive_attention", "sdpa_attention"]

ATTENTION = Registry("attention backend")
"""Registry of attention implementations, name -> :class:`~llmref.RegistryEntry`.

Every entry accepts ``(q, k, v, *, mask=None, is_causal=False, scale=None,
bias=None)`` and gives the same result; :func:`attention` dispatches to them by
name. ``meta["features"]`` lists the optional keywords an entry supports
beyond those (``"bias"``, ``"softcap"``, ``"sinks"``).
"""


def _combined_mask(
    mask: torch.Tensor | None, is_causal: bool, T: int, S: int, device: torch.device
) -> torch.Tensor | None:
    """AND a user mask with the (top-left aligned) causal mask."""
    if not is_causal:
        return mask
    causal = causal_mask(T, S, device=device)
    return causal if mask is None else mask & causal


@ATTENTION.register(
    "naive",
    paper="vaswani2017attention",
    reference="naive_attention",
    third_party="torch.nn.functional.scaled_dot_product_attention",
    features=frozenset({"bias", "softcap", "sinks"}),
)
def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    return_weights: bool = False,
) -> Any:
    """Attention computed exactly as written: ``softmax(q k^T * scale) v``.

    This is the reference every other attention implementation in llmref is
    tested against. It materialises the full ``(B, H, T, S)`` weight matrix.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``; ``H % H_kv == 0``. With
        ``H_kv < H`` each key/value head serves ``H // H_kv`` consecutive query
        heads (GQA; ``H_kv == 1`` is MQA), as with ``enable_gqa=True`` in
        :func:`torch.nn.functional.scaled_dot_product_attention`.
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Apply the causal mask ``causal_mask(T, S)`` (top-left aligned, like
        SDPA). Combined with ``mask`` by logical AND.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``. Must be > 0.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)``, added to the
        scaled (and softcapped) scores: ALiBi, T5 and other relative biases.
    softcap : float, optional
        If given, scores are capped smoothly as ``softcap * tanh(s / softcap)``
        before bias and mask (Gemma 2 logit softcapping). Must be > 0.
    sinks : torch.Tensor, optional
        Per-head sink logits of shape ``(H,)``: one extra softmax entry per row
        that has no value, so a head can put probability mass on "nothing"
        (gpt-oss's learned attention sinks).
    return_weights : bool, default False
        Also return the attention weights (over the real keys; with ``sinks``
        a row sums to less than 1).

    Returns
    -------
    out : torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.
    weights : torch.Tensor
        Only if ``return_weights``: shape ``(B, H, T, S)``, dtype of ``q``;
        each row sums to 1, or is all zeros if the row is fully masked.

    Raises
    ------
    TypeError
        If an input is not a tensor, has a non-floating or mismatched dtype,
        or ``mask`` is not boolean.
    ValueError
        If an input is not 4-D, batch or head dims disagree, ``H % H_kv != 0``,
        ``mask`` or ``bias`` does not broadcast to ``(B, H, T, S)``, ``sinks`` is
        not of shape ``(H,)``, or ``scale`` or ``softcap`` is not a finite
        number > 0.

    Notes
    -----
    .. math::

        \\operatorname{Attention}(Q, K, V) =
        \\operatorname{softmax}\\!\\left(s\\, Q K^\\top + A + M\\right) V,
        \\qquad s = 1/\\sqrt{D},

    with the additive ``bias`` :math:`A` and :math:`M_{ij} = 0` where the mask
    allows and :math:`-\\infty` elsewhere. The softmax subtracts the row
    maximum before exponentiating. A fully masked row has no defined softmax;
    llmref returns zeros for it (as PyTorch's CPU SDPA does) instead of NaN.
    Inputs in float16 or bfloat16 are computed in float32 and cast back.

    References
    ----------
    :cite:t:`vaswani2017attention`, :cite:t:`ainslie2023gqa`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import naive_attention
    >>> q = torch.randn(2, 8, 5, 16)
    >>> k, v = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)  # GQA: 8 / 2
    >>> out, w = naive_attention(q, k, v, is_causal=True, return_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 8, 5, 16]), torch.Size([2, 8, 5, 5]))
    >>> bool(torch.allclose(w.sum(-1), torch.ones(2, 8, 5)))
    True
    """
    shapes = check_qkv(q, k, v)
    B, H, H_kv, T, S, _, Dv = shapes
    s = resolve_scale(scale, shapes.head_dim)
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if bias is not None:
        check_bias(bias, shapes, q.device)
    if sinks is not None:
        check_sinks(sinks, shapes, q.device)
    cap = None if softcap is None else check_positive_float("softcap", softcap)
    mask = _combined_mask(mask, is_causal, T, S, q.device)

    compute = compute_dtype(q.dtype)
    G = H // H_kv
    # GQA without copying K/V: the G query heads sharing a key/value head are consecutive,
    # so (B, H, T, D) is (B, H_kv, G * T, D) -- the groups become extra query rows of one
    # plain batched matmul per key/value head. (Broadcasting a (B, H_kv, 1, S, D) key
    # against (B, H_kv, G, T, D) queries makes torch.matmul materialise G copies of K.)
    qg = q.to(compute).reshape(B, H_kv, G * T, -1)
    kc, vc = k.to(compute), v.to(compute)
    scores = torch.matmul(qg, kc.transpose(-1, -2)).mul_(s).reshape(B, H, T, S)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    if bias is not None:
        scores = scores + bias.to(compute)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Stable softmax that leaves fully masked rows at exactly zero.
    row_max = scores.amax(dim=-1, keepdim=True)
    if sinks is not None:
        sink = sinks.to(compute).view(1, H, 1, 1)
        row_max = torch.maximum(row_max, sink)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(scores - row_max)
    denom = exp.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denom = denom + torch.exp(sink - row_max)
    weights = exp / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.matmul(weights.reshape(B, H_kv, G * T, S), vc).reshape(B, H, T, Dv)
    out = out.to(q.dtype)
    if return_weights:
        return out, weights.to(q.dtype)
    return out


@ATTENTION.register(
    "sdpa",
    paper="dao2022flashattention",
    reference="naive_attention",
    third_party="torch.nn.functional.scaled_dot_product_attention",
    features=frozenset({"bias"}),
)
def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention through :func:`torch.nn.functional.scaled_dot_product_attention`.

    Validates its input like every llmref function, then calls PyTorch's fused
    kernels (FlashAttention-style on CPU and GPU) with ``enable_gqa`` when
    ``H_kv < H``.

    Parameters
    ----------
    q, k, v : torch.Tensor
        Queries ``(B, H, T, D)``, keys ``(B, H_kv, S, D)``, values
        ``(B, H_kv, S, Dv)``; see :func:`naive_attention`.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Top-left aligned causal mask, combined with ``mask`` by logical AND
        (SDPA itself refuses both at once; llmref merges them).
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)``; passed to SDPA as
        a float ``attn_mask`` (in ``q``'s dtype) with masked entries at ``-inf``.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError, ValueError
        As :func:`naive_attention`.

    Notes
    -----
    Fully masked rows come back as zeros. PyTorch's CPU kernels already do
    this; on other devices llmref zeroes those rows explicitly, because some
    GPU kernels return NaN there.

    References
    ----------
    :cite:t:`dao2022flashattention`

    Examples
    --------
    >>> import torch
    >>> q, k, v = (torch.randn(1, 4, 6, 8) for _ in range(3))
    >>> torch.allclose(sdpa_attention(q, k, v), naive_attention(q, k, v), atol=1e-6)
    True
    """
    shapes = check_qkv(q, k, v)
    s = resolve_scale(scale, shapes.head_dim)
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if bias is not None:
        check_bias(bias, shapes, q.device)
    if mask is not None or bias is not None:
        mask = _combined_mask(mask, is_causal, shapes.query_len, shapes.key_len, q.device)
        is_causal = False
    attn_mask = mask
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=s,
        enable_gqa=shapes.kv_heads != shapes.heads,
    )
    if mask is not None and q.device.type != "cpu":
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


def resolve_backend(backend: str, features: set[str]) -> str:
    """The ATTENTION entry to use: ``backend`` itself, or for ``"auto"`` SDPA when it
    supports every needed feature and the chunked (FlashAttention) kernel otherwise.

    This rule knows features, not shapes. A module whose shapes SDPA cannot run
    fused makes its own ``"auto"`` choice on top of it: MultiHeadLatentAttention's
    absorbed path (query/key width != value width, one shared key/value head)
    uses the chunked kernel (see its ``absorbed_backend``)."""
    if backend == "auto":
        return "sdpa" if features <= ATTENTION["sdpa"].meta["features"] else "chunked"
    if backend not in ATTENTION:
        known = ", ".join(repr(n) for n in ("auto", *ATTENTION))
        raise ValueError(f"backend must be one of {known}, got {backend!r}")
    missing = features - ATTENTION[backend].meta["features"]
    if missing:
        raise ValueError(
            f"backend {backend!r} does not support {sorted(missing)}; use 'auto' or one of "
            + ", ".join(repr(n) for n, e in ATTENTION.items() if features <= e.meta["features"])
        )
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention through a chosen backend.

    Every backend gives the same result (to floating-point rounding); they
    differ in speed and memory.

    Parameters
    ----------
    q, k, v : torch.Tensor
        Queries ``(B, H, T, D)``, keys ``(B, H_kv, S, D)``, values
        ``(B, H_kv, S, Dv)``; see :func:`naive_attention`.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Top-left aligned causal mask (see :func:`~llmref.attention.causal_mask`).
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)`` (ALiBi, relative
        position biases).
    backend : str, default "auto"
        A name registered in :data:`ATTENTION` (``"naive"``, ``"sdpa"``,
        ``"chunked"``, ...), or ``"auto"``, which picks ``"sdpa"``.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    ValueError
        If ``backend`` is unknown; otherwise as :func:`naive_attention`.

    Examples
    --------
    >>> import torch
    >>> q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    >>> a = attention(q, k, v, is_causal=True)
    >>> b = attention(q, k, v, is_causal=True, backend="naive")
    >>> torch.allclose(a, b, atol=1e-6)
    True
    """
    name = resolve_backend(backend, set() if bias is None else {"bias"})
    return ATTENTION[name].fn(q, k, v, mask=mask, is_causal=is_causal, scale=scale, bias=bias)
