"""Multi-head latent attention (MLA), DeepSeek-V2's low-rank key/value compression."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_model_input, check_positive_float, check_tensor
from ..cache import KVCache
from ..position import apply_rope
from ..quant import float_weight
from .functional import ATTENTION, resolve_backend
from .masking import causal_rules

__all__ = ["MultiHeadLatentAttention"]


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention: keys and values rebuilt from a small shared latent.

    Each token's keys and values for all heads are generated from one latent
    vector of ``kv_lora_rank`` channels plus one shared RoPE key of
    ``qk_rope_head_dim`` channels, which is all a KV cache has to store. Two
    equivalent computations are provided: :meth:`forward` expands the latent
    into per-head keys and values (what training does), and
    :meth:`forward_absorbed` folds the key and value up-projections into the
    query and output sides so attention runs directly on the cached latent
    (what decoding does).

    Parameters
    ----------
    d_model : int
        Model width.
    n_heads : int
        Number of attention heads ``H``.
    kv_lora_rank : int
        Width ``r`` of the key/value latent.
    qk_nope_head_dim : int
        Per-head query/key channels without position information.
    qk_rope_head_dim : int
        Channels of the decoupled RoPE part (per query head; one shared key).
    v_head_dim : int
        Per-head value channels.
    q_lora_rank : int, optional
        Width of the query latent; ``None`` projects queries directly (as
        DeepSeek-V2-Lite does).
    rope : torch.nn.Module, optional
        Rotary embedding over ``qk_rope_head_dim`` channels, called as
        ``rope(x, position_ids, offset=offset)``; default
        ``RotaryEmbedding(qk_rope_head_dim, layout="interleaved")`` (DeepSeek
        rotates adjacent pairs).
    scale : float, optional
        Score scale; default ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``
        (with YaRN, DeepSeek multiplies it by ``mscale ** 2``).
    bias : bool, default False
        Biases on the down-projections and the output projection (transformers'
        ``attention_bias``). The key/value up-projection never has one, which
        is what makes the absorbed path exact.
    norm_eps : float, default 1e-6
        Epsilon of the RMSNorms on the latents.
    backend : str, default "auto"
        Attention backend (see :class:`MultiHeadAttention`). With ``"auto"``,
        :meth:`forward` uses SDPA and :meth:`forward_absorbed` the chunked
        kernel (see :attr:`absorbed_backend`).
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    q_proj or q_down, q_norm, q_up : torch.nn.Module
        Query path (transformers: ``q_proj`` or ``q_a_proj``,
        ``q_a_layernorm``, ``q_b_proj``).
    kv_down : torch.nn.Linear
        ``d_model -> kv_lora_rank + qk_rope_head_dim`` (``kv_a_proj_with_mqa``).
    kv_norm : torch.nn.RMSNorm
        Norm of the latent (``kv_a_layernorm``).
    kv_up : torch.nn.Linear
        ``kv_lora_rank -> H * (qk_nope_head_dim + v_head_dim)`` (``kv_b_proj``).
    out_proj : torch.nn.Linear
        ``H * v_head_dim -> d_model`` (``o_proj``).
    backend, absorbed_backend : str
        The :data:`~llmref.attention.ATTENTION` entries :meth:`forward` and
        :meth:`forward_absorbed` call. They differ only for ``backend="auto"``:
        the absorbed path is multi-query attention with key width
        ``kv_lora_rank + qk_rope_head_dim`` and value width ``kv_lora_rank``
        (576 and 512 in DeepSeek-V2), and PyTorch's CPU SDPA has a fused kernel
        only for equal query/key/value widths. It falls back to its unfused
        math path, which with ``enable_gqa`` first copies the shared latent
        once per head (``repeat_interleave``). For one decode step of
        DeepSeek-V2-Lite's sizes against 4096 cached tokens that is over ten
        times slower than the chunked kernel, which treats the ``H`` heads
        sharing the latent as extra query rows of one matmul (no copies) and
        keeps memory linear when a long prompt goes through the latent cache.

    Raises
    ------
    TypeError, ValueError
        For sizes that are not positive ints, a bad ``scale`` or an unknown
        backend.

    Notes
    -----
    With latent :math:`c_j = \\operatorname{RMSNorm}(W_{DKV} x_j)` and per-head
    up-projections :math:`W_{UK}^h`, :math:`W_{UV}^h`, the content score is

    .. math::

        q_i^{h\\top} k_j^h = q_i^{h\\top} W_{UK}^h c_j
        = \\bigl(W_{UK}^{h\\top} q_i^h\\bigr)^{\\top} c_j ,

    so the absorbed query :math:`W_{UK}^{h\\top} q^h` attends to the latent
    itself, and :math:`\\sum_j p_{ij} W_{UV}^h c_j = W_{UV}^h \\sum_j p_{ij} c_j`
    moves the value projection after attention. The RoPE part cannot be
    absorbed (a rotation sits between the projections), hence the separate
    shared key :math:`k^R_j`. Attention then is multi-query attention over
    keys :math:`[c_j; k^R_j]` and values :math:`c_j`, and the cache holds
    ``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer.

    References
    ----------
    :cite:t:`deepseek2024v2`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import MultiHeadLatentAttention
    >>> mla = MultiHeadLatentAttention(
    ...     64, 4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8
    ... ).double()
    >>> x = torch.randn(2, 10, 64, dtype=torch.float64)
    >>> full = mla(x, is_causal=True)
    >>> torch.allclose(full, mla.forward_absorbed(x, is_causal=True))
    True
    >>> latent, k_rope = mla.compress_kv(x)  # what a cache stores: 16 + 4 numbers per token
    >>> latent.shape, k_rope.shape
    (torch.Size([2, 1, 10, 16]), torch.Size([2, 1, 10, 4]))
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        q_lora_rank: int | None = None,
        rope: nn.Module | None = None,
        scale: float | None = None,
        bias: bool = False,
        norm_eps: float = 1e-6,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        self.kv_lora_rank = check_int("kv_lora_rank", kv_lora_rank, minimum=1)
        self.qk_nope_head_dim = check_int("qk_nope_head_dim", qk_nope_head_dim, minimum=1)
        self.qk_rope_head_dim = check_int("qk_rope_head_dim", qk_rope_head_dim, minimum=2)
        self.v_head_dim = check_int("v_head_dim", v_head_dim, minimum=1)
        self.q_lora_rank = (
            None if q_lora_rank is None else check_int("q_lora_rank", q_lora_rank, minimum=1)
        )
        qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.scale = qk_head_dim**-0.5 if scale is None else check_positive_float("scale", scale)
        self.backend = resolve_backend(backend, set())
        self.absorbed_backend = "chunked" if backend == "auto" else self.backend
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        H = self.n_heads
        self.q_proj: nn.Linear | None = None
        self.q_down: nn.Linear | None = None
        self.q_norm: nn.RMSNorm | None = None
        self.q_up: nn.Linear | None = None
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, H * qk_head_dim, bias=False, **kw)
        else:
            self.q_down = nn.Linear(d_model, self.q_lora_rank, bias=bias, **kw)
            self.q_norm = nn.RMSNorm(self.q_lora_rank, eps=norm_eps, **kw)
            self.q_up = nn.Linear(self.q_lora_rank, H * qk_head_dim, bias=False, **kw)
        self.kv_down = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=bias, **kw)
        self.kv_norm = nn.RMSNorm(kv_lora_rank, eps=norm_eps, **kw)
        self.kv_up = nn.Linear(kv_lora_rank, H * (qk_nope_head_dim + v_head_dim), bias=False, **kw)
        self.out_proj = nn.Linear(H * v_head_dim, d_model, bias=bias, **kw)
        if rope is None:
            from ..position import RotaryEmbedding

            rope = RotaryEmbedding(qk_rope_head_dim, layout="interleaved", device=device)
        self.rope = rope

    def _rotate(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None,
        offset: int,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        if position_embeddings is not None:
            cos, sin = position_embeddings
            return apply_rope(x, cos, sin, layout=self.rope.layout)
        position_ids = None if position_ids is None else position_ids.to(x.device)
        return self.rope(x, position_ids, offset=offset)

    def _queries(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None,
        offset: int,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_down is not None and self.q_norm is not None and self.q_up is not None
            q = self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(B, T, self.n_heads, -1).transpose(1, 2)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        return q_nope, self._rotate(q_rope, position_ids, offset, position_embeddings)

    def compress_kv(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        offset: int = 0,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-token state a latent KV cache stores: the normalised latent and the RoPE key.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(B, T, d_model)``.
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)`` for the RoPE key.
        offset : int, default 0
            Position of the first token when ``position_ids`` is not given.
        position_embeddings : tuple of torch.Tensor, optional
            RoPE ``(cos, sin)`` at the tokens' positions (computed once per forward
            by a model); they replace ``position_ids``.

        Returns
        -------
        latent : torch.Tensor
            Shape ``(B, 1, T, kv_lora_rank)``.
        k_rope : torch.Tensor
            Rotated shared key, shape ``(B, 1, T, qk_rope_head_dim)``.
        """
        x = check_model_input("x", x, self.d_model)
        latent, k_rope = self.kv_down(x).split([self.kv_lora_rank, self.qk_rope_head_dim], -1)
        latent = self.kv_norm(latent).unsqueeze(1)
        k_rope = self._rotate(k_rope.unsqueeze(1), position_ids, offset, position_embeddings)
        return latent, k_rope

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        offset: int = 0,
        cache: KVCache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention with keys and values expanded from the latent (training path).

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(B, T, d_model)``.
        mask : torch.Tensor, optional
            Boolean mask broadcasting to ``(B, H, T, S)`` over the keys attended
            to; ``True`` = may attend. Used as given (a model builds it complete).
        is_causal : bool, default False
            Apply the causal rules, ANDed with ``mask`` (with a cache:
            :func:`~llmref.attention.masking.causal_rules` over its positions).
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)``; default from the cache, else
            ``offset + arange(T)``.
        offset : int, default 0
            Position of the first token when ``position_ids`` is not given.
        cache : llmref.cache.LatentCache, optional
            Decode through a latent cache: the new tokens' latents are stored
            and attention runs on the absorbed path over everything cached.
        position_embeddings : tuple of torch.Tensor, optional
            RoPE ``(cos, sin)`` at the new tokens' positions, computed once per
            forward by a model; they replace ``position_ids``.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, ``(B,)``, for ``cache.update`` (left padding).

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.

        Raises
        ------
        TypeError
            If ``cache`` does not store latents.
        """
        x = check_model_input("x", x, self.d_model)
        B, T, _ = x.shape
        if cache is not None:
            if cache.stores != "latent":
                raise TypeError(
                    f"MultiHeadLatentAttention needs a latent cache (llmref.cache.LatentCache), "
                    f"got {type(cache).__name__} (which stores {cache.stores!r})"
                )
            if is_causal:  # the causal rules over the cache; a model hands a complete mask
                mask, is_causal = causal_rules(mask, T, cache=cache, batch_size=B, lengths=lengths)
            if position_ids is None and position_embeddings is None:
                position_ids = cache.positions_for(T, batch_size=B, lengths=lengths)
            new = self.compress_kv(
                x, position_ids, offset=offset, position_embeddings=position_embeddings
            )
            latent, k_rope = (
                cache.update(*new) if lengths is None else cache.update(*new, lengths=lengths)
            )
            return self.forward_absorbed(
                x,
                latent,
                k_rope,
                mask=mask,
                is_causal=is_causal,
                position_ids=position_ids,
                offset=offset,
                position_embeddings=position_embeddings,
            )
        H, nope = self.n_heads, self.qk_nope_head_dim
        q_nope, q_rope = self._queries(x, position_ids, offset, position_embeddings)
        latent, k_rope = self.compress_kv(
            x, position_ids, offset=offset, position_embeddings=position_embeddings
        )
        kv = self.kv_up(latent.squeeze(1)).view(B, T, H, nope + self.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([nope, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(-1, H, -1, -1)], dim=-1)
        out = ATTENTION[self.backend].fn(q, k, v, mask=mask, is_causal=is_causal, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * self.v_head_dim))

    def forward_absorbed(
        self,
        x: torch.Tensor,
        latent: torch.Tensor | None = None,
        k_rope: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        offset: int = 0,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attention directly on the latent, with the up-projections absorbed (decode path).

        Parameters
        ----------
        x : torch.Tensor
            The new tokens, shape ``(B, T, d_model)``.
        latent, k_rope : torch.Tensor, optional
            The cached state of all ``S`` keys (past and new), shapes
            ``(B, 1, S, kv_lora_rank)`` and ``(B, 1, S, qk_rope_head_dim)``
            from :meth:`compress_kv`; default: computed from ``x`` (``S = T``).
        mask : torch.Tensor, optional
            Boolean mask broadcasting to ``(B, H, T, S)``. With a cache use
            :func:`~llmref.attention.causal_mask` with ``offset = S - T``.
        is_causal : bool, default False
            Top-left aligned causal mask (right only when ``S == T``).
        position_ids : torch.Tensor, optional
            Positions of the new tokens, ``(T,)`` or ``(B, T)``.
        offset : int, default 0
            Position of the first new token when ``position_ids`` is not given.
        position_embeddings : tuple of torch.Tensor, optional
            RoPE ``(cos, sin)`` at the new tokens' positions; replace ``position_ids``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``; equal to :meth:`forward` up to rounding.

        Raises
        ------
        ValueError
            If only one of ``latent`` and ``k_rope`` is given, or their shapes
            do not match the module.
        """
        x = check_model_input("x", x, self.d_model)
        B, T, _ = x.shape
        H, nope, r = self.n_heads, self.qk_nope_head_dim, self.kv_lora_rank
        if (latent is None) != (k_rope is None):
            raise ValueError("latent and k_rope must be given together (from compress_kv)")
        if latent is None or k_rope is None:
            latent, k_rope = self.compress_kv(
                x, position_ids, offset=offset, position_embeddings=position_embeddings
            )
        for name, t, width in (("latent", latent, r), ("k_rope", k_rope, self.qk_rope_head_dim)):
            check_tensor(name, t, ndim=4)
            if t.shape[0] != B or t.shape[1] != 1 or t.shape[3] != width:
                raise ValueError(
                    f"{name} must have shape (B, 1, S, {width}) with B={B}, got {tuple(t.shape)}"
                )
        q_nope, q_rope = self._queries(x, position_ids, offset, position_embeddings)
        w_up = float_weight(self.kv_up).view(H, nope + self.v_head_dim, r)  # QuantLinear too
        w_uk, w_uv = w_up[:, :nope], w_up[:, nope:]
        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)
        out_latent = ATTENTION[self.absorbed_backend].fn(
            torch.cat([q_latent, q_rope], dim=-1),
            torch.cat([latent, k_rope], dim=-1),
            latent,
            mask=mask,
            is_causal=is_causal,
            scale=self.scale,
        )
        out = torch.einsum("bhtr,hvr->bthv", out_latent, w_uv)
        return self.out_proj(out.reshape(B, T, H * self.v_head_dim))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, kv_lora_rank={self.kv_lora_rank}, "
            f"q_lora_rank={self.q_lora_rank}, qk_nope_head_dim={self.qk_nope_head_dim}, "
            f"qk_rope_head_dim={self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}"
        )
