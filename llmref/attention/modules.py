"""Thin ``nn.Module`` wrappers: they own the projections and call the functions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_heads, check_int, check_model_input, check_positive_float
from ..cache import KVCache, spec_of
from ..position import apply_rope
from ..quant import float_weight
from .functional import attention, resolve_backend
from .masking import causal_rules

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped key/value heads (MHA, GQA, MQA).

    Options cover what current decoders add around the attention kernel:
    QK-norm, logit softcapping, a sliding window, learned attention sinks, and
    an injected position encoding (RoPE rotating queries and keys, or an
    additive position bias such as ALiBi).

    Parameters
    ----------
    d_model : int
        Model (embedding) width.
    n_heads : int
        Number of query heads ``H``.
    n_kv_heads : int, optional
        Number of key/value heads ``H_kv``; ``n_heads`` (the default) is MHA,
        ``1`` is MQA, anything between that divides ``n_heads`` is GQA.
    head_dim : int, optional
        Width of one head; defaults to ``d_model // n_heads`` (which must then
        divide exactly).
    bias : bool, default False
        Whether the projections have biases.
    out_bias : bool, optional
        Whether the output projection has a bias; default ``bias``. Qwen2 has
        query/key/value biases but none on the output (``bias=True,
        out_bias=False``).
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(head_dim)`` (Gemma uses
        ``query_pre_attn_scalar ** -0.5``).
    qk_norm : bool, default False
        RMS-normalise each query and key head (with a learned scale) before the
        position encoding, as Qwen3 and Gemma 3 do (OLMo 2 normalises the whole
        ``H * head_dim`` projection instead).
    norm_eps : float, default 1e-6
        Epsilon of the QK-norm.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)`` (Gemma 2).
    window : int, optional
        Sliding window: each query sees the ``window`` most recent keys, itself
        included (see :func:`~llmref.attention.sliding_window_mask`); one of the
        causal rules applied with ``is_causal=True``.
    sinks : bool, default False
        Learn one sink logit per head (gpt-oss), initialised to zero.
    rope : torch.nn.Module, optional
        Rotary embedding applied to queries and keys, called as
        ``rope(x, position_ids, offset=offset)`` on ``(B, H, T, D)`` tensors,
        e.g. :class:`~llmref.position.RotaryEmbedding`.
    position_bias : torch.nn.Module, optional
        Additive position bias called as ``position_bias(T, S, offset=offset)``
        and returning ``(H, T, S)``, e.g. :class:`~llmref.position.AlibiBias`.
        With a cache it is evaluated over the span of cached positions and
        gathered by the cache's ``key_positions``, so caches that return keys out
        of time order (the sliding-window ring buffer) get the right bias.
    backend : str, default "auto"
        A name in :data:`~llmref.attention.ATTENTION`, or ``"auto"`` (or
        ``"fast"``), resolved at each call by :func:`~llmref.attention.attention`,
        which knows the inputs' and the bias's dtypes: SDPA when it supports
        the options used and keeps the bias's precision, else the chunked
        kernel. Checked here against the options (a backend lacking one is
        refused at construction).
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    qkv_proj : torch.nn.Linear
        Fused input projection; its output rows are the query heads, then the
        key heads, then the value heads, ``(H + 2 H_kv) * head_dim`` in all.
    out_proj : torch.nn.Linear
        Output projection from ``H * head_dim`` back to ``d_model``.
    q_norm, k_norm : torch.nn.RMSNorm or None
        The QK-norms (``qk_norm=True``).
    sink_logits : torch.nn.Parameter or None
        Per-head sink logits, shape ``(H,)`` (``sinks=True``).
    requested_backend : str
        ``backend`` as given (``"auto"`` stays ``"auto"``); what each call hands
        :func:`~llmref.attention.attention`.
    backend : str
        The backend a call runs when its bias (if any) is in the inputs' dtype:
        ``requested_backend`` resolved without the call's dtypes. Assigning a
        name sets ``requested_backend`` (checked against the options).

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If a size is < 1, ``n_heads % n_kv_heads != 0``, ``d_model`` is not
        divisible by ``n_heads`` when ``head_dim`` is not given, or the backend
        is unknown or lacks a feature the options need.

    Notes
    -----
    The forward pass is :math:`\\operatorname{MHA}(x) = \\operatorname{concat}_h
    \\bigl(\\operatorname{Attention}(x W_Q^h, c W_K^{g(h)}, c W_V^{g(h)})\\bigr) W_O`
    where :math:`c` is the context (``x`` itself for self-attention) and
    :math:`g(h) = \\lfloor h H_{kv} / H \\rfloor` maps a query head to its
    key/value group. Fewer key/value heads shrink the KV cache by ``H / H_kv``.

    References
    ----------
    :cite:t:`vaswani2017attention`, :cite:t:`shazeer2019fast`,
    :cite:t:`ainslie2023gqa`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import MultiHeadAttention
    >>> mha = MultiHeadAttention(64, 8, n_kv_heads=2)  # GQA, 4 query heads per group
    >>> x = torch.randn(3, 10, 64)
    >>> mha(x, is_causal=True).shape
    torch.Size([3, 10, 64])
    >>> gemma_like = MultiHeadAttention(64, 8, qk_norm=True, softcap=50.0, window=4)
    >>> gemma_like(x, is_causal=True).shape
    torch.Size([3, 10, 64])
    >>> qwen2_like = MultiHeadAttention(64, 8, n_kv_heads=2, bias=True, out_bias=False)
    >>> qwen2_like.qkv_proj.bias is not None, qwen2_like.out_proj.bias is None
    (True, True)
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        scale: float | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        softcap: float | None = None,
        window: int | None = None,
        sinks: bool = False,
        rope: nn.Module | None = None,
        position_bias: nn.Module | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_model, n_heads, n_kv_heads, head_dim = check_heads(d_model, n_heads, n_kv_heads, head_dim)
        if out_bias is not None and not isinstance(out_bias, bool):
            raise TypeError(f"out_bias must be a bool, got {type(out_bias).__name__}")
        out_bias = bias if out_bias is None else out_bias
        self.scale = None if scale is None else check_positive_float("scale", scale)
        self.softcap = None if softcap is None else check_positive_float("softcap", softcap)
        self.window = None if window is None else check_int("window", window, minimum=1)
        features = {
            name
            for name, used in (
                ("softcap", softcap is not None),
                ("sinks", sinks),
                ("bias", position_bias is not None),
            )
            if used
        }
        self._features = frozenset(features)
        self.backend = backend  # checked against the options; resolved per call
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = head_dim
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias, **kw)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, out_bias, **kw)
        self.q_norm = nn.RMSNorm(head_dim, eps=norm_eps, **kw) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=norm_eps, **kw) if qk_norm else None
        self.sink_logits = nn.Parameter(torch.zeros(n_heads, **kw)) if sinks else None
        self.rope = rope
        self.position_bias = position_bias

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        offset: int = 0,
        cache: KVCache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to ``context`` (or to ``x`` itself).

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(B, T, d_model)``.
        context : torch.Tensor, optional
            Keys/values source of shape ``(B, S, d_model)`` (cross-attention);
            defaults to ``x`` (self-attention).
        mask : torch.Tensor, optional
            Boolean mask broadcasting to ``(B, H, T, S)`` over the keys attended
            to (after the cache's update); ``True`` = may attend. Used as given
            (a model builds it complete, see :mod:`llmref.attention.masking`).
        is_causal : bool, default False
            Apply the layer's causal rules (:func:`~llmref.attention.masking.causal_rules`:
            causality, ``window`` and the cache's positions), ANDed with ``mask``.
            ``False``: ``mask`` alone (none: every key is visible).
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)`` for ``rope`` (self-attention);
            default from the cache, else ``offset + arange(T)``.
        offset : int, default 0
            Position of the first token, for ``rope`` and ``position_bias`` when
            ``position_ids`` is not given.
        cache : llmref.cache.KVCache, optional
            KV cache of this layer (self-attention only). The new keys and
            values are stored in it and the queries attend to everything it
            returns.
        position_embeddings : tuple of torch.Tensor, optional
            RoPE ``(cos, sin)`` tables at the new tokens' positions, computed once
            per forward by the model (:meth:`~llmref.position.RotaryEmbedding.position_embeddings`);
            they replace ``position_ids``.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, ``(B,)``, passed to ``cache.update``
            (left padding).

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.
        """
        check_model_input("x", x, self.d_model)
        B, T, _ = x.shape
        q, k, v = self._project(x, context)
        if cache is not None:
            self._check_cache(cache, context)
            if position_ids is None and position_embeddings is None:
                position_ids = cache.positions_for(T, batch_size=B, lengths=lengths)
        if is_causal:  # the layer's own rules; a model hands a complete mask instead
            mask, is_causal = causal_rules(
                mask, T, k.shape[2], cache=cache, window=self.window, batch_size=B, lengths=lengths
            )
        if self.rope is not None:
            if position_embeddings is not None:
                cos, sin = position_embeddings
                q = apply_rope(q, cos, sin, layout=self.rope.layout)
                k = apply_rope(k, cos, sin, layout=self.rope.layout)
            else:
                position_ids = None if position_ids is None else position_ids.to(x.device)
                q = self.rope(q, position_ids, offset=offset)
                k = self.rope(k, position_ids, offset=offset)
        if cache is not None:
            k, v = cache.update(k, v) if lengths is None else cache.update(k, v, lengths=lengths)
        extra: dict[str, Any] = {}
        if self.softcap is not None:
            extra["softcap"] = self.softcap
        if self.sink_logits is not None:
            extra["sinks"] = self.sink_logits
        if self.position_bias is not None:
            extra["bias"] = self._position_bias(T, k.shape[2], offset, cache)
        out = attention(  # "auto" resolved here, knowing q's and the bias's dtypes
            q,
            k,
            v,
            mask=None if mask is None else mask.to(q.device),
            is_causal=is_causal,
            scale=self.scale,
            backend=self.requested_backend,
            **extra,
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    @property
    def backend(self) -> str:
        """The backend a call runs when its bias is in the inputs' dtype (see the class
        docstring); each call resolves :attr:`requested_backend` with its own dtypes."""
        return resolve_backend(self.requested_backend, self._features)

    @backend.setter
    def backend(self, backend: str) -> None:
        resolve_backend(backend, self._features)  # an unknown name or a missing feature: now
        self.requested_backend = backend

    def _project(
        self, x: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, H, T, D)`` and keys, values ``(B, H_kv, S, D)``, QK-normed."""
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q_rows = H * D
        if context is None:
            q, k, v = self.qkv_proj(x).split((q_rows, H_kv * D, H_kv * D), dim=-1)
            S = T
        else:
            check_model_input("context", context, self.d_model)
            if context.shape[0] != B:
                raise ValueError(f"context batch size must equal x's ({B}), got {context.shape[0]}")
            S = context.shape[1]
            w, b = float_weight(self.qkv_proj), self.qkv_proj.bias  # QuantLinear too
            q = nn.functional.linear(x, w[:q_rows], None if b is None else b[:q_rows])
            kv = nn.functional.linear(context, w[q_rows:], None if b is None else b[q_rows:])
            k, v = kv.split(H_kv * D, dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, S, H_kv, D).transpose(1, 2)
        v = v.view(B, S, H_kv, D).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    @staticmethod
    def _check_cache(cache: KVCache, context: torch.Tensor | None) -> None:
        if context is not None:
            raise ValueError("cache is for self-attention; pass no context with it")
        if cache.stores != "kv":
            raise TypeError(
                f"MultiHeadAttention needs a cache of keys and values, got "
                f"{type(cache).__name__} (which stores {cache.stores!r})"
            )

    def _position_bias(self, T: int, S: int, offset: int, cache: KVCache | None) -> torch.Tensor:
        """``position_bias`` over the keys attended to, following the cache's key positions.

        The bias depends on ``query - key`` only, and each row's keys (in any order:
        a ring buffer returns slot order) lie within ``S`` positions of its newest
        key, so it is computed once over ``S`` keys in order and gathered per row.
        A cache that renumbers positions (the sink cache) is biased by its own
        numbering, the place of each key among those kept.
        """
        assert self.position_bias is not None
        if cache is None:
            return self.position_bias(T, S, offset=offset)
        ordered = self.position_bias(T, S, offset=S - T)  # (H, T, S): keys 0..S-1 in order
        # the bias's device, not a weight's: a quantized out_proj has no .weight
        keys = cache.key_positions.to(ordered.device)  # (B, S), -1 = no key
        spec = spec_of(cache)
        if spec is not None and spec.renumbers_positions:
            keys = torch.where(keys >= 0, torch.arange(S, device=keys.device), -1)
        newest = keys.amax(-1, keepdim=True)
        index = (S - 1 - (newest - keys)).clamp(0, S - 1)  # padding keys: masked anyway
        H = ordered.shape[0]
        return ordered.expand(keys.shape[0], H, T, S).gather(
            -1, index[:, None, None, :].expand(-1, H, T, -1)
        )

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, **options: Any) -> MultiHeadAttention:
        """Build an equivalent module from a :class:`torch.nn.MultiheadAttention`.

        The packed ``in_proj_weight`` (query, key, value rows) maps directly
        onto :attr:`qkv_proj`; weights are copied, not shared.

        Parameters
        ----------
        module : torch.nn.MultiheadAttention
            A module with equal query/key/value widths, no ``bias_k``/``bias_v``
            and ``add_zero_attn=False``.
        **options
            Further keyword options of the constructor (``backend``, ...).

        Returns
        -------
        MultiHeadAttention
            Same weights, same dtype and device; ``n_kv_heads == n_heads``.

        Raises
        ------
        TypeError
            If ``module`` is not a :class:`torch.nn.MultiheadAttention`.
        ValueError
            If it uses a feature llmref's module does not have.

        Examples
        --------
        >>> import torch
        >>> ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        >>> mha = MultiHeadAttention.from_torch(ref)
        >>> x = torch.randn(2, 5, 32)
        >>> torch.allclose(mha(x), ref(x, x, x, need_weights=False)[0], atol=1e-6)
        True
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(
                f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}"
            )
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ValueError(
                "module must have kdim == vdim == embed_dim, no bias_k/bias_v and "
                "add_zero_attn=False"
            )
        w = module.in_proj_weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            bias=module.in_proj_bias is not None,
            device=w.device,
            dtype=w.dtype,
            **options,
        )
        with torch.no_grad():
            new.qkv_proj.weight.copy_(w)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if module.in_proj_bias is not None:
                new.qkv_proj.bias.copy_(module.in_proj_bias)
                new.out_proj.bias.copy_(module.out_proj.bias)
        return new

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, backend={self.requested_backend!r}, "
            f"softcap={self.softcap}, window={self.window}"
        )
