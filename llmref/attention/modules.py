"""Thin ``nn.Module`` wrappers: they own the projections and call the functions."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int, check_tensor
from .functional import ATTENTION, attention

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped key/value heads (MHA, GQA, MQA).

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
    backend : str, default "auto"
        Attention backend passed to :func:`~llmref.attention.attention`.
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    qkv_proj : torch.nn.Linear
        Fused input projection; its output rows are the query heads, then the
        key heads, then the value heads, ``(H + 2 H_kv) * head_dim`` in all.
    out_proj : torch.nn.Linear
        Output projection from ``H * head_dim`` back to ``d_model``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If a size is < 1, ``n_heads % n_kv_heads != 0``, ``d_model`` is not
        divisible by ``n_heads`` when ``head_dim`` is not given, or the backend
        is unknown.

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
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_model = check_int("d_model", d_model, minimum=1)
        n_heads = check_int("n_heads", n_heads, minimum=1)
        n_kv_heads = (
            n_heads if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads, minimum=1)
        )
        if n_heads % n_kv_heads != 0:
            raise ValueError(
                f"n_heads must be a multiple of n_kv_heads, got n_heads={n_heads} "
                f"and n_kv_heads={n_kv_heads}"
            )
        if head_dim is None:
            if d_model % n_heads != 0:
                raise ValueError(
                    f"d_model must be divisible by n_heads when head_dim is not given, "
                    f"got d_model={d_model} and n_heads={n_heads}"
                )
            head_dim = d_model // n_heads
        head_dim = check_int("head_dim", head_dim, minimum=1)
        if backend != "auto" and backend not in ATTENTION:
            known = ", ".join(repr(n) for n in ("auto", *ATTENTION))
            raise ValueError(f"backend must be one of {known}, got {backend!r}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim, self.backend = head_dim, backend
        kw = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias, **kw)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias, **kw)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
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
            Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
        is_causal : bool, default False
            Apply a top-left aligned causal mask.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.
        """
        self._check_input("x", x)
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q_rows = H * D
        if context is None:
            q, k, v = self.qkv_proj(x).split((q_rows, H_kv * D, H_kv * D), dim=-1)
            S = T
        else:
            self._check_input("context", context)
            if context.shape[0] != B:
                raise ValueError(f"context batch size must equal x's ({B}), got {context.shape[0]}")
            S = context.shape[1]
            w, b = self.qkv_proj.weight, self.qkv_proj.bias
            q = nn.functional.linear(x, w[:q_rows], None if b is None else b[:q_rows])
            kv = nn.functional.linear(context, w[q_rows:], None if b is None else b[q_rows:])
            k, v = kv.split(H_kv * D, dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, S, H_kv, D).transpose(1, 2)
        v = v.view(B, S, H_kv, D).transpose(1, 2)
        out = attention(q, k, v, mask=mask, is_causal=is_causal, backend=self.backend)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, q_rows))

    def _check_input(self, name: str, x: object) -> None:
        check_tensor(name, x, ndim=3)
        assert isinstance(x, torch.Tensor)
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{name} must have last dim d_model={self.d_model}, got shape {tuple(x.shape)}"
            )

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Build an equivalent module from a :class:`torch.nn.MultiheadAttention`.

        The packed ``in_proj_weight`` (query, key, value rows) maps directly
        onto :attr:`qkv_proj`; weights are copied, not shared.

        Parameters
        ----------
        module : torch.nn.MultiheadAttention
            A module with equal query/key/value widths, no ``bias_k``/``bias_v``
            and ``add_zero_attn=False``.

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
            f"head_dim={self.head_dim}, backend={self.backend!r}"
        )
