"""Scaled dot-product attention: the naive reference, SDPA, and a dispatcher.

All functions take queries, keys and values in the ``(B, H, T, D)`` layout of
:func:`torch.nn.functional.scaled_dot_product_attention` and return a tensor
of shape ``(B, H, T, Dv)`` in the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .._checks import (
    check_bias,
    check_mask,
    check_positive_float,
    check_qkv,
    check_sinks,
    compute_dtype,
    resolve_scale,
)
from .._registry import Registry, Spec
from ..position._registries import legacy_meta
from .masks import causal_mask, causal_offset

__all__ = ["ATTENTION", "AttentionBackendSpec", "attention", "naive_attention", "sdpa_attention"]

#: The optional keywords a backend may support beyond ``mask``, ``is_causal`` and ``scale``.
FEATURES = frozenset({"bias", "softcap", "sinks", "causal_alignment"})
#: Where the additive bias enters a backend (:attr:`AttentionBackendSpec.bias_precision`).
BIAS_PRECISIONS = ("compute", "input")


@dataclass(frozen=True, kw_only=True)
class AttentionBackendSpec(Spec):
    """Spec of a softmax-attention backend in :data:`ATTENTION`.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        ``fn(q, k, v, *, mask=None, is_causal=False, scale=None, **features)``
        returning ``(B, H, T, Dv)`` in ``q``'s dtype.
    features : frozenset of str
        The optional keywords ``fn`` supports, among ``"bias"``, ``"softcap"``,
        ``"sinks"`` and ``"causal_alignment"`` (taking ``"bottom_right"``
        besides the default ``"top_left"``); :func:`attention` refuses the
        others by name.
    exact : bool, default True
        Whether every result equals :func:`naive_attention`'s under the equality
        policy (:mod:`llmref.testing.equality`) on every input the backend
        supports (with ``bias_precision="input"``: every bias already in
        ``q``'s dtype). ``backend="auto"`` only picks exact backends.
    bias_precision : {"compute", "input"}, default "compute"
        Where the bias enters: ``"compute"`` adds it in the compute dtype
        (float32 for 16-bit inputs, as the reference does); ``"input"`` first
        rounds it to ``q``'s dtype, which changes the result when a 16-bit
        input comes with a wider bias (:func:`attention` then refuses the
        backend unless ``backend="fast"``).
    auto_order : int or None, default None
        Position in the static order ``"auto"`` and ``"fast"`` try (lower
        first); ``None`` keeps the backend out of both (it runs only by name).
    backward_on_cpu : bool, default True
        Whether ``fn`` is differentiable on CPU.

    Raises
    ------
    TypeError
        If ``fn`` is not callable or a flag is not a bool.
    ValueError
        If ``features`` names an unknown keyword or ``bias_precision`` is not
        ``"compute"`` or ``"input"``.

    Examples
    --------
    >>> from llmref.attention import ATTENTION
    >>> spec = ATTENTION["sdpa"]
    >>> sorted(spec.features), spec.bias_precision, spec.auto_order
    (['bias', 'causal_alignment'], 'input', 0)
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    features: frozenset[str] = frozenset()
    exact: bool = True
    bias_precision: str = "compute"
    auto_order: int | None = None
    backward_on_cpu: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"attention backend {self.name!r}"
        if not callable(self.fn):
            raise TypeError(f"{where}: fn must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.features, frozenset) or not self.features <= FEATURES:
            raise ValueError(
                f"{where}: features must be a frozenset of {sorted(FEATURES)}, "
                f"got {self.features!r}"
            )
        if self.bias_precision not in BIAS_PRECISIONS:
            raise ValueError(
                f"{where}: bias_precision must be one of {BIAS_PRECISIONS}, "
                f"got {self.bias_precision!r}"
            )
        for flag in ("exact", "backward_on_cpu"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{where}: {flag} must be a bool")
        if self.auto_order is not None and (
            isinstance(self.auto_order, bool) or not isinstance(self.auto_order, int)
        ):
            raise TypeError(f"{where}: auto_order must be an int or None, got {self.auto_order!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def rounds_bias(self, dtype: torch.dtype, bias_dtype: torch.dtype) -> bool:
        """Whether this backend would round a ``bias_dtype`` bias below the reference's precision.

        Parameters
        ----------
        dtype : torch.dtype
            The dtype of ``q``, ``k`` and ``v``.
        bias_dtype : torch.dtype
            The dtype of the bias.

        Returns
        -------
        bool
            True for an ``"input"``-precision backend given 16-bit inputs and a
            bias of another dtype: the reference adds that bias in float32.

        Examples
        --------
        >>> import torch
        >>> from llmref.attention import ATTENTION
        >>> ATTENTION["sdpa"].rounds_bias(torch.float16, torch.float32)
        True
        >>> ATTENTION["sdpa"].rounds_bias(torch.float16, torch.float16)
        False
        """
        return (
            self.bias_precision == "input" and bias_dtype != dtype and compute_dtype(dtype) != dtype
        )

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the fields as the old ``meta`` dict."""
        return legacy_meta(self)


ATTENTION = Registry("attention backend", AttentionBackendSpec)
"""Registry of softmax-attention backends, name -> :class:`AttentionBackendSpec`.

Every entry accepts ``(q, k, v, *, mask=None, is_causal=False, scale=None)`` and
the optional keywords its ``features`` declare (``"bias"``, ``"softcap"``,
``"sinks"``), and gives the reference result (``exact``); :func:`attention`
dispatches to them by name, and ``"auto"`` tries them in ``auto_order``.
"""


def _combined_mask(
    mask: torch.Tensor | None,
    is_causal: bool,
    T: int,
    S: int,
    device: torch.device,
    causal_alignment: str = "top_left",
) -> torch.Tensor | None:
    """AND a user mask with the causal mask of the given alignment."""
    offset = causal_offset(causal_alignment, T, S)  # validates the name even without is_causal
    if not is_causal:
        return mask
    causal = causal_mask(T, S, offset=offset, device=device)
    return causal if mask is None else mask & causal


@ATTENTION.register(
    "naive",
    paper="vaswani2017attention",
    reference="naive_attention",
    third_party="torch.nn.functional.scaled_dot_product_attention",
    features=frozenset({"bias", "softcap", "sinks", "causal_alignment"}),
    auto_order=2,
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
    causal_alignment: str = "top_left",
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
        Apply the causal mask ``causal_mask(T, S, offset=...)`` of
        ``causal_alignment``. Combined with ``mask`` by logical AND.
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
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        Where ``is_causal`` puts the diagonal when ``T != S``. ``"top_left"``
        (SDPA's ``is_causal=True``, PyTorch's
        ``torch.nn.attention.bias.CausalVariant.UPPER_LEFT``): query ``i``
        sees keys ``0 .. i``. ``"bottom_right"`` (FlashAttention >= 2.1,
        ``CausalVariant.LOWER_RIGHT``): the queries are the last ``T`` of
        ``S`` positions, query ``i`` sees keys ``0 .. i + S - T``; with
        ``T > S`` the first ``T - S`` rows see nothing (zeros). The same for
        ``T == S``; ignored without ``is_causal``.
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
        not of shape ``(H,)``, ``scale`` or ``softcap`` is not a finite
        number > 0, or ``causal_alignment`` is neither name.

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
    mask = _combined_mask(mask, is_causal, T, S, q.device, causal_alignment)

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
    features=frozenset({"bias", "causal_alignment"}),
    bias_precision="input",
    auto_order=0,
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
    causal_alignment: str = "top_left",
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
        a float ``attn_mask`` with masked entries at ``-inf``. SDPA wants that
        mask in ``q``'s dtype, so a wider bias is rounded to it first (the
        spec's ``bias_precision="input"``): :func:`attention` does not pick
        this backend for such a call unless asked for ``backend="fast"``.
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        As in :func:`naive_attention`. Bottom-right alone goes to SDPA as
        PyTorch's ``torch.nn.attention.bias.causal_lower_right(T, S)``
        (``CausalVariant.LOWER_RIGHT``) when ``T <= S``; with a mask, a bias
        or ``T > S`` (which PyTorch warns gives NaN rows) as a dense mask.

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
    T, S = shapes.query_len, shapes.key_len
    lower_right = is_causal and causal_offset(causal_alignment, T, S) != 0
    if mask is not None or bias is not None or (lower_right and T > S):
        mask = _combined_mask(mask, is_causal, T, S, q.device, causal_alignment)
        is_causal = lower_right = False
    attn_mask: Any = mask
    if lower_right:  # T < S: PyTorch's own bottom-right causal bias
        attn_mask, is_causal = causal_lower_right(T, S), False
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


#: Backend names :func:`attention` takes besides the registered ones.
DISPATCH = ("auto", "fast")


def _in_order() -> Iterator[AttentionBackendSpec]:
    """The backends ``"auto"`` and ``"fast"`` consider, in their static order."""
    ranked = [spec for spec in ATTENTION.values() if spec.auto_order is not None]
    return iter(sorted(ranked, key=lambda spec: (spec.auto_order, spec.name)))


def resolve_backend(
    backend: str,
    features: set[str] | frozenset[str],
    *,
    dtype: torch.dtype | None = None,
    bias_dtype: torch.dtype | None = None,
) -> str:
    """The :data:`ATTENTION` entry that runs a call: ``backend`` itself, or the one
    ``"auto"`` or ``"fast"`` picks.

    ``"auto"`` takes the first backend in ``auto_order`` (``"sdpa"``,
    ``"chunked"``, ``"naive"``) that is ``exact``, supports every needed
    feature and would not round the bias below the reference's precision;
    ``"fast"`` the first that supports the features, rounding allowed. The
    choice depends on declared fields and dtypes only (nothing is timed), so it
    is the same on every machine. Without ``dtype``/``bias_dtype`` (a module
    checking its options at construction) the bias is taken to be in the
    inputs' dtype; :class:`~llmref.attention.MultiHeadAttention` then resolves
    each call through :func:`attention`, with the dtypes. An explicit name is
    refused if it lacks a feature or would round the bias.
    MultiHeadLatentAttention's absorbed path (query/key width != value width)
    makes its own choice on top of this (see its ``absorbed_backend``).
    """
    needed = frozenset(features)

    def rounding(spec: AttentionBackendSpec) -> bool:
        if dtype is None or bias_dtype is None or "bias" not in needed:
            return False
        return spec.rounds_bias(dtype, bias_dtype)

    if backend in DISPATCH:
        for spec in _in_order():
            if not needed <= spec.features:
                continue
            if backend == "fast" or (spec.exact and not rounding(spec)):
                return spec.name
        raise ValueError(
            f"backend={backend!r}: no backend in the automatic order supports {sorted(needed)}"
        )
    if not isinstance(backend, str) or backend not in ATTENTION:
        known = ", ".join(repr(n) for n in (*DISPATCH, *ATTENTION))
        raise ValueError(f"backend must be one of {known}, got {backend!r}")
    spec = ATTENTION[backend]
    missing = needed - spec.features
    if missing:
        able = [n for n, e in ATTENTION.items() if needed <= e.features]
        raise ValueError(
            f"backend {backend!r} does not support {sorted(missing)}; use 'auto' or one of "
            + ", ".join(map(repr, able))
        )
    if rounding(spec):
        raise ValueError(
            f"backend {backend!r} would round the {bias_dtype} bias to the inputs' {dtype}, "
            "which changes the result; use backend='auto', pass bias.to(q.dtype), or accept "
            "the rounding with backend='fast'"
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
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    causal_alignment: str = "top_left",
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention through a chosen backend, exact by default.

    Every backend but ``"fast"`` gives the reference result of
    :func:`naive_attention` under the equality policy; they differ in speed
    and memory.

    Parameters
    ----------
    q, k, v : torch.Tensor
        Queries ``(B, H, T, D)``, keys ``(B, H_kv, S, D)``, values
        ``(B, H_kv, S, Dv)``; see :func:`naive_attention`.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Causal mask aligned as ``causal_alignment`` says (see
        :func:`~llmref.attention.causal_mask`).
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)`` (ALiBi, relative
        position biases), added in the compute dtype like the reference does
        (float32 for 16-bit inputs), whatever the backend.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)`` (Gemma 2).
    sinks : torch.Tensor, optional
        Per-head sink logits of shape ``(H,)`` (gpt-oss).
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        ``"top_left"``: SDPA's ``is_causal`` (PyTorch's
        ``torch.nn.attention.bias.CausalVariant.UPPER_LEFT``), query ``i``
        sees keys ``0 .. i``. ``"bottom_right"``: FlashAttention's (>= 2.1)
        ``causal=True`` (``CausalVariant.LOWER_RIGHT``), the queries are the
        last ``T`` positions, so query ``i`` sees keys ``0 .. i + S - T``:
        ``causal_mask(T, S, offset=S - T)``. Every built-in backend takes
        both and the chunked one skips the hidden tiles of either; a
        backend without the ``"causal_alignment"`` feature is refused for
        ``"bottom_right"``.
    backend : str, default "auto"
        ``"auto"``: the first backend, in the static order ``"sdpa"``,
        ``"chunked"``, ``"naive"`` (:attr:`AttentionBackendSpec.auto_order`),
        that is exact, supports the options used and keeps the bias's
        precision. So SDPA runs unless the call needs softcapping or sinks, or
        brings a 16-bit ``q`` with a bias of another dtype (SDPA would round
        the bias to ``q``'s dtype); the chunked FlashAttention kernel runs
        then. ``"fast"``: the first in that order that supports the options,
        even if it rounds the bias (see Notes). Or a name registered in
        :data:`ATTENTION` (``"naive"``, ``"sdpa"``, ``"chunked"``, ``"flex"``).

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    ValueError
        If ``backend`` is unknown, lacks an option used, or would round the
        bias; otherwise as :func:`naive_attention`.

    Notes
    -----
    The cost of ``"fast"``, measured: float16 inputs (``B=2, H=4, T=113,
    S=203, D=64``, standard normal) with a float32 ALiBi bias shifted and
    scaled to span ``-60 .. 0`` are off the float64 result by 7.4e-3 through
    SDPA (the bias rounded to float16) against 9.5e-4 through ``"auto"`` (the
    chunked kernel, bias in float32): 7.7 times the error; in bfloat16 5.5e-2
    against 7.6e-3. With a bias already in ``q``'s dtype, or with float32
    and float64 inputs, ``"fast"`` and ``"auto"`` pick the same backend.

    Examples
    --------
    >>> import torch
    >>> q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    >>> a = attention(q, k, v, is_causal=True)
    >>> b = attention(q, k, v, is_causal=True, backend="naive")
    >>> torch.allclose(a, b, atol=1e-6)
    True
    """
    extra: dict[str, Any] = {
        key: value
        for key, value in (("bias", bias), ("softcap", softcap), ("sinks", sinks))
        if value is not None
    }
    if causal_alignment != "top_left":  # the default goes to every backend, named or not
        causal_offset(causal_alignment, 0, 0)
        extra["causal_alignment"] = causal_alignment
    bias_dtype = bias.dtype if isinstance(bias, torch.Tensor) else None
    q_dtype = q.dtype if isinstance(q, torch.Tensor) else None
    name = resolve_backend(backend, set(extra), dtype=q_dtype, bias_dtype=bias_dtype)
    return ATTENTION[name].fn(q, k, v, mask=mask, is_causal=is_causal, scale=scale, **extra)
