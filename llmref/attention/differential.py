"""Differential attention (Ye et al., 2024): the difference of two softmax attention maps.

Each head computes two attention maps from two halves of its query and key
and subtracts the second, scaled by ``lambda``, from the first. Noise that both
maps share -- attention spread over irrelevant context -- cancels, as in a
differential amplifier.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from .._checks import (
    check_heads,
    check_int,
    check_model_input,
    check_positive_float,
    check_qkv,
    compute_dtype,
    resolve_scale,
)
from .functional import attention, resolve_backend
from .variants import VARIANTS

__all__ = ["DifferentialAttention", "differential_attention"]


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


def lambda_init_for_layer(layer_index: int) -> float:
    """The DIFF Transformer's initial lambda of layer ``layer_index`` (1-based):
    ``0.8 - 0.6 * exp(-0.3 * (layer_index - 1))``."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_index - 1))


_HEAD_NORMS = ("rms", "group")


class DifferentialAttention(nn.Module):
    """The DIFF Transformer's attention layer: differential heads, learned lambda, head norm.

    Wraps :func:`differential_attention` with the projections and the three
    things the paper's layer adds around it: the re-parameterised
    :math:`\\lambda`, a per-head normalisation of the output, and the fixed
    factor :math:`1 - \\lambda_{\\text{init}}`.

    Parameters
    ----------
    d_model : int
        Model width.
    n_heads : int
        Number of differential heads ``H``. Each has two query/key halves of
        ``head_dim // 2`` channels and one value of ``head_dim`` channels, so
        it costs as much as two ordinary heads of ``head_dim // 2``.
    layer_index : int
        Position of this layer in the stack, counted from 1 (the paper's
        :math:`l`); sets :attr:`lambda_init`. The official code's ``depth``
        and transformers' ``layer_idx`` count from 0: pass that + 1.
    n_kv_heads : int, optional
        Key/value heads ``H_kv`` (GQA/MQA); default ``n_heads``. Query head
        ``h`` uses key/value head ``h // (H // H_kv)`` for both halves.
    head_dim : int, optional
        Channels ``2d`` of one differential head (both halves); default
        ``d_model // n_heads``. Must be even.
    bias : bool, default False
        Whether the projections have biases.
    scale : float, optional
        Score scale; default ``1 / sqrt(head_dim // 2)`` (the half dim, as in
        the official code).
    head_norm : {"rms", "group"}, default "rms"
        Normalisation of each head's output (the paper's GroupNorm with one
        group per head): ``"rms"`` is an RMSNorm over the ``head_dim`` channels
        of each head with one learned scale shared by the heads (the official
        code's ``subln``); ``"group"`` is ``torch.nn.GroupNorm`` with
        ``n_heads`` groups (mean-centred, a learned scale and shift per channel).
    norm_eps : float, default 1e-5
        Epsilon of the head norm.
    lambda_std : float, default 0.1
        Standard deviation of the normal initialisation of the lambda vectors.
    rope : torch.nn.Module, optional
        Rotary embedding over ``head_dim // 2`` channels, applied to each
        query/key half separately, called as ``rope(x, position_ids, offset=offset)``
        (as in :class:`~llmref.attention.MultiHeadAttention`), e.g.
        :class:`~llmref.position.RotaryEmbedding`.
    backend : str, default "auto"
        The :data:`~llmref.attention.ATTENTION` backend computing each softmax
        map.
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    q_proj, k_proj, v_proj, out_proj : torch.nn.Linear
        Projections; query rows are ``H`` heads of ``[q1 | q2]`` (``head_dim``
        each), key rows ``H_kv`` heads of ``[k1 | k2]``, value rows ``H_kv``
        heads of ``head_dim``. This is the official code's row order (its
        ``2H`` half-heads, consecutive pairs forming one head), so its weights
        load unchanged.
    lambda_q1, lambda_k1, lambda_q2, lambda_k2 : torch.nn.Parameter
        Vectors of ``head_dim // 2`` that re-parameterise lambda.
    lambda_init : float
        :math:`0.8 - 0.6\\, e^{-0.3 (l - 1)}` for ``layer_index`` :math:`l`.
    head_norm : torch.nn.Module
        The per-head normalisation.

    Raises
    ------
    TypeError
        If a size or ``layer_index`` is not an int.
    ValueError
        If a size or ``layer_index`` is < 1, ``n_heads % n_kv_heads != 0``,
        ``head_dim`` is odd (or ``d_model`` not divisible by ``n_heads`` when
        ``head_dim`` is not given), ``head_norm`` is unknown, ``scale``,
        ``norm_eps`` or ``lambda_std`` is not a finite number > 0, or the backend
        is unknown.

    Notes
    -----
    For each head, with :math:`d` = ``head_dim // 2``:

    .. math::

        \\lambda = e^{\\lambda_{q1} \\cdot \\lambda_{k1}} - e^{\\lambda_{q2} \\cdot
        \\lambda_{k2}} + \\lambda_{\\text{init}}, \\qquad
        \\operatorname{head} = (1 - \\lambda_{\\text{init}})\\,
        \\operatorname{Norm}\\bigl(\\operatorname{DiffAttn}(Q, K, V; \\lambda)\\bigr),

    and the heads are concatenated and projected by ``out_proj``. One
    :math:`\\lambda` is shared by all heads of a layer. The re-parameterisation
    keeps learning dynamics of lambda in step with the other weights, and the
    head norm followed by the factor :math:`1 - \\lambda_{\\text{init}}` gives
    the layer the gradient scale of ordinary attention. transformers'
    ``DiffLlamaAttention`` is the same layer with ``head_norm="rms"`` without a
    learned scale and a different head layout (see
    :func:`differential_attention`).

    References
    ----------
    :cite:t:`ye2024differential`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import DifferentialAttention
    >>> layer = DifferentialAttention(64, 4, layer_index=3, n_kv_heads=2)  # 2d = 16
    >>> round(layer.lambda_init, 4)  # 0.8 - 0.6 exp(-0.6)
    0.4707
    >>> x = torch.randn(2, 10, 64)
    >>> layer(x, is_causal=True).shape
    torch.Size([2, 10, 64])
    >>> layer.lam().shape  # one lambda per layer
    torch.Size([])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        layer_index: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        scale: float | None = None,
        head_norm: str = "rms",
        norm_eps: float = 1e-5,
        lambda_std: float = 0.1,
        rope: nn.Module | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        layer_index = check_int("layer_index", layer_index, minimum=1)
        d_model, n_heads, n_kv_heads, head_dim = check_heads(d_model, n_heads, n_kv_heads, head_dim)
        if head_dim % 2:
            raise ValueError(
                f"head_dim must be even (two query/key halves of head_dim // 2), got {head_dim}"
            )
        if head_norm not in _HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {_HEAD_NORMS}, got {head_norm!r}")
        norm_eps = check_positive_float("norm_eps", norm_eps)
        lambda_std = check_positive_float("lambda_std", lambda_std)
        self.scale = None if scale is None else check_positive_float("scale", scale)
        self.backend = resolve_backend(backend, set())
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim, self.layer_index = head_dim, layer_index
        self.lambda_init = lambda_init_for_layer(layer_index)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias, **kw)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias, **kw)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias, **kw)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias, **kw)
        half = head_dim // 2
        self.lambda_q1 = nn.Parameter(torch.empty(half, **kw).normal_(0.0, lambda_std))
        self.lambda_k1 = nn.Parameter(torch.empty(half, **kw).normal_(0.0, lambda_std))
        self.lambda_q2 = nn.Parameter(torch.empty(half, **kw).normal_(0.0, lambda_std))
        self.lambda_k2 = nn.Parameter(torch.empty(half, **kw).normal_(0.0, lambda_std))
        self.head_norm_kind = head_norm
        self.head_norm: nn.Module
        if head_norm == "rms":
            self.head_norm = nn.RMSNorm(head_dim, eps=norm_eps, **kw)
        else:
            self.head_norm = nn.GroupNorm(n_heads, n_heads * head_dim, eps=norm_eps, **kw)
        self.rope = rope

    def lam(self) -> torch.Tensor:
        """The current lambda, ``exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init``.

        Returns
        -------
        torch.Tensor
            A 0-d tensor (differentiable in the four lambda vectors).

        Examples
        --------
        >>> import torch
        >>> from llmref.attention import DifferentialAttention
        >>> layer = DifferentialAttention(32, 2, layer_index=1)
        >>> with torch.no_grad():
        ...     _ = layer.lambda_q1.zero_(), layer.lambda_q2.zero_()
        >>> round(float(layer.lam().detach()), 6)  # exp(0) - exp(0) + lambda_init of layer 1
        0.2
        """
        return (
            torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
            - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
            + self.lambda_init
        )

    def _halves_rope(
        self, x: torch.Tensor, position_ids: torch.Tensor | None, offset: int
    ) -> torch.Tensor:
        """Rotate each half of ``(B, H, T, 2d)`` by RoPE over ``d`` channels."""
        B, H, T, D = x.shape
        halves = x.unflatten(-1, (2, D // 2)).transpose(2, 3).reshape(B, 2 * H, T, D // 2)
        rotated = self.rope(halves, position_ids, offset=offset)  # type: ignore[misc]
        return rotated.unflatten(1, (H, 2)).transpose(2, 3).reshape(B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Differential self-attention over ``x``.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(B, T, d_model)``.
        mask : torch.Tensor, optional
            Boolean mask broadcasting to ``(B, H, T, T)``; ``True`` = may attend.
        is_causal : bool, default False
            Apply the causal mask.
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)`` for ``rope``.
        offset : int, default 0
            Position of the first token for ``rope`` when ``position_ids`` is
            not given.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.

        Raises
        ------
        TypeError, ValueError
            If ``x`` is not a 3-D tensor with last dim ``d_model``; for a bad
            ``mask`` as :func:`differential_attention`.
        """
        B, T, _ = check_model_input("x", x, self.d_model).shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)
        if self.rope is not None:
            q = self._halves_rope(q, position_ids, offset)
            k = self._halves_rope(k, position_ids, offset)
        heads = differential_attention(
            q,
            k,
            v,
            lam=self.lam(),
            mask=mask,
            is_causal=is_causal,
            scale=self.scale,
            backend=self.backend,
        )  # (B, H, T, D)
        heads = heads.transpose(1, 2)  # (B, T, H, D)
        if self.head_norm_kind == "rms":
            heads = self.head_norm(heads)
        else:
            heads = self.head_norm(heads.reshape(B * T, H * D))
        heads = heads.reshape(B, T, H * D) * (1.0 - self.lambda_init)
        return self.out_proj(heads)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, layer_index={self.layer_index}, "
            f"lambda_init={self.lambda_init:.4f}, backend={self.backend!r}"
        )
