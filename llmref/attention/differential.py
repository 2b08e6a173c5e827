"""Differential attention (Ye et al., 2024): the difference of two softmax attention maps.

Each head computes two attention maps from two halves of its query and key
and subtracts the second, scaled by ``lambda``, from the first. Noise that both
maps share -- attention spread over irrelevant context -- cancels, as in a
differential amplifier.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_qkv, compute_dtype, resolve_scale
from .functional import attention
from .variants import VARIANTS

__all__ = ["differential_attention"]


def _check_lam(lam: object, heads: int, device: torch.device) -> float | torch.Tensor:
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a float or a floating tensor, got a {lam.dtype} tensor")
        if lam.shape not in (torch.Size([]), torch.Size([heads])):
            raise ValueError(
                f"lam must be a float or a tensor of shape () or (H,) = ({heads},), "
                f"got shape {tuple(lam.shape)}"
            )
        if lam.device != device:
            raise ValueError(f"lam must be on the same device as q ({device}), got {lam.device}")
        return lam  # values are not inspected: that would synchronise with the device
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    value = float(lam)
    if not math.isfinite(value):
        raise ValueError(f"lam must be finite, got {value}")
    return value


@VARIANTS.register(
    "differential",
    paper="ye2024differential",
    reference="naive_attention",
    third_party="transformers.models.diffllama.modeling_diffllama.DiffLlamaAttention",
    features=frozenset({"mask", "is_causal", "scale"}),
    required=("lam",),
    exact=True,
)
def differential_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lam: float | torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Differential attention: ``(softmax(s Q1 K1^T) - lam * softmax(s Q2 K2^T)) V``.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, 2d)``: the last dim holds the two halves
        ``[q1 | q2]`` (``q1 = q[..., :d]``, ``q2 = q[..., d:]``).
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, 2d)`` holding ``[k1 | k2]``;
        ``H % H_kv == 0`` (GQA/MQA: query head ``h`` uses key/value head
        ``h // (H // H_kv)`` for both maps).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``, shared by both maps (``Dv = 2d``
        in the paper).
    lam : float or torch.Tensor
        The weight ``lambda`` of the second map: a number, or a tensor of shape
        ``()`` (one learned value, as in the paper) or ``(H,)`` (one per head),
        which receives a gradient if it requires one.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
        Applies to both maps.
    is_causal : bool, default False
        Top-left aligned causal mask (as in SDPA), combined with ``mask``.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(d)``, with ``d`` the *half* head
        dim, as in the official code.
    backend : str, default "auto"
        The :data:`~llmref.attention.ATTENTION` backend computing each softmax
        map (see :func:`~llmref.attention.attention`).

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError
        If an input is not a tensor or has a non-floating or mismatched dtype,
        ``mask`` is not boolean, or ``lam`` is neither a number nor a floating
        tensor.
    ValueError
        If shapes disagree (see :func:`~llmref.attention.naive_attention`), the
        head dim of ``q`` and ``k`` is odd, ``lam`` is a tensor of a shape
        other than ``()`` or ``(H,)`` or on another device, or a number that
        is not finite, ``scale`` is not a finite number > 0, or ``backend`` is
        unknown.

    Notes
    -----
    .. math::

        \\operatorname{DiffAttn}(Q, K, V) =
        \\left(\\operatorname{softmax}(s\\, Q_1 K_1^\\top)
        - \\lambda\\, \\operatorname{softmax}(s\\, Q_2 K_2^\\top)\\right) V,
        \\qquad s = 1/\\sqrt{d}.

    By linearity this is the difference of two ordinary attention outputs with
    the same values, which is how it is computed: two calls of
    :func:`~llmref.attention.attention`. Inputs in float16 or bfloat16 are
    computed in float32 and cast back, so the subtraction does not cancel in
    16-bit arithmetic. Fully masked rows are zero. This function is the
    attention core only; the paper's layer also re-parameterises
    :math:`\\lambda = e^{\\lambda_{q1} \\cdot \\lambda_{k1}} -
    e^{\\lambda_{q2} \\cdot \\lambda_{k2}} + \\lambda_{\\text{init}}` and applies a
    per-head RMSNorm and the factor :math:`1 - \\lambda_{\\text{init}}` to the
    output (a module's job).

    Layouts elsewhere. The official code (``microsoft/unilm``,
    ``Diff-Transformer/multihead_diffattn.py``) projects to ``2H`` heads of dim
    ``d``: heads ``2h`` and ``2h + 1`` are the two halves of differential head
    ``h``, and the values have ``H`` heads of dim ``2d``. Its query tensor
    ``q_off`` of shape ``(B, 2H, T, d)`` is this function's ``q`` as
    ``q_off.unflatten(1, (H, 2)).transpose(2, 3).flatten(-2)`` (likewise ``k``).
    For MHA that mapping is exact; with GQA, the official naive code repeats
    the ``2 H_kv`` half-heads of ``k`` consecutively, which pairs half-heads
    differently from ``q``, while here both halves of query head ``h`` use
    both halves of the same key head. transformers' ``DiffLlamaAttention``
    instead takes the first half of its heads as ``q1`` and the second half as
    ``q2`` (and likewise splits key and value heads), i.e.
    ``q = q_hf.unflatten(1, (2, H)).permute(0, 2, 3, 1, 4).flatten(-2)``, and
    the same for ``k`` and for ``v`` (with ``Dv`` = twice its head dim).

    References
    ----------
    :cite:t:`ye2024differential`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import naive_attention
    >>> from llmref.attention.differential import differential_attention
    >>> q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16)  # 2d = 16, GQA 4 / 2
    >>> v = torch.randn(1, 2, 6, 16)
    >>> out = differential_attention(q, k, v, lam=0.8, is_causal=True)
    >>> out.shape
    torch.Size([1, 4, 6, 16])
    >>> first = naive_attention(q[..., :8], k[..., :8], v, is_causal=True)  # scale 1/sqrt(8)
    >>> bool(torch.allclose(differential_attention(q, k, v, lam=0.0, is_causal=True), first,
    ...                     atol=1e-6))
    True
    """
    shapes = check_qkv(q, k, v)
    if shapes.head_dim % 2:
        raise ValueError(
            "q and k head dim must be even (2d, holding the halves [q1 | q2] and [k1 | k2]), "
            f"got {shapes.head_dim}"
        )
    d = shapes.head_dim // 2
    s = resolve_scale(scale, d)
    lam = _check_lam(lam, shapes.heads, q.device)
    compute = compute_dtype(q.dtype)
    qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)

    def softmax_map(half: slice) -> torch.Tensor:
        return attention(
            qc[..., half],
            kc[..., half],
            vc,
            mask=mask,
            is_causal=is_causal,
            scale=s,
            backend=backend,
        )

    first, second = softmax_map(slice(0, d)), softmax_map(slice(d, None))
    if isinstance(lam, torch.Tensor):
        lam = lam.to(compute).reshape(-1, 1, 1)  # () or (H,) -> broadcasts over (B, H, T, Dv)
    return (first - lam * second).to(q.dtype)
