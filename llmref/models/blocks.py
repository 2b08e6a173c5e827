"""Building blocks of a transformer language model: MLPs, mixtures of experts, whole blocks.

Functional core, thin modules: :func:`swiglu`, :func:`~llmref.models.route_tokens`
(:mod:`llmref.models.routing`) and :func:`moe` compute; the
modules :class:`SwiGLU`, :class:`MoE`, :class:`DecoderBlock` and
:class:`TransformerBlock` own the parameters and call them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_float_dtype, check_int, check_positive_float, check_tensor
from ..attention import MultiHeadAttention
from .attention_kinds import ATTENTION_KINDS
from .routing import ROUTERS, route_tokens

if TYPE_CHECKING:
    from ..cache import KVCache
    from .config import DecoderConfig, MoEConfig

__all__ = [
    "DecoderBlock",
    "MoE",
    "SwiGLU",
    "TransformerBlock",
    "moe",
    "swiglu",
]


def swiglu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    b_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The SwiGLU feed-forward network: ``W_down (silu(W_gate x) * W_up x)``.

    Parameters
    ----------
    x : torch.Tensor
        Input ``(..., d_model)``.
    w_gate, w_up : torch.Tensor
        Weights ``(d_ff, d_model)`` (:class:`torch.nn.Linear` layout).
    w_down : torch.Tensor
        Weight ``(d_model, d_ff)``.
    b_gate, b_up, b_down : torch.Tensor, optional
        Biases.

    Returns
    -------
    torch.Tensor
        Shape ``(..., d_model)``.

    Raises
    ------
    TypeError
        If an input is not a floating tensor.
    ValueError
        If the weight shapes do not fit ``x`` and each other.

    Notes
    -----
    A gated linear unit {cite:p}`shazeer2020glu` with the SiLU (swish)
    activation :math:`\operatorname{silu}(z) = z\,\sigma(z)`:

    .. math::

        \operatorname{SwiGLU}(x) = W_{down}\bigl(\operatorname{silu}(W_{gate} x)
        \odot W_{up} x\bigr).

    The gate lets each hidden unit scale its value multiplicatively; at equal
    parameter count (``d_ff`` about ``8/3 d_model`` instead of ``4 d_model``)
    it trains to lower loss than a ReLU or GELU MLP, which is why Llama,
    Mistral, Qwen and DeepSeek use it.

    References
    ----------
    :cite:t:`shazeer2020glu`

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(2, 3, 8)
    >>> w_gate, w_up, w_down = torch.randn(16, 8), torch.randn(16, 8), torch.randn(8, 16)
    >>> swiglu(x, w_gate, w_up, w_down).shape
    torch.Size([2, 3, 8])
    """
    for name, t in (("x", x), ("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        check_tensor(name, t)
        check_float_dtype(name, t)
    d = x.shape[-1]
    if w_gate.ndim != 2 or w_gate.shape != w_up.shape or w_gate.shape[1] != d:
        raise ValueError(
            f"w_gate and w_up must both be (d_ff, d_model={d}), got {tuple(w_gate.shape)} "
            f"and {tuple(w_up.shape)}"
        )
    if tuple(w_down.shape) != (d, w_gate.shape[0]):
        raise ValueError(
            f"w_down must be (d_model, d_ff) = {(d, w_gate.shape[0])}, got {tuple(w_down.shape)}"
        )
    return F.linear(F.silu(F.linear(x, w_gate, b_gate)) * F.linear(x, w_up, b_up), w_down, b_down)


class SwiGLU(nn.Module):
    """The SwiGLU MLP of Llama-style decoders (see :func:`swiglu`).

    Parameters
    ----------
    d_model : int
        Input and output width.
    d_ff : int
        Hidden width (transformers: ``intermediate_size``).
    bias : bool, default False
        Whether the three projections have biases.
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    gate_proj, up_proj : torch.nn.Linear
        ``d_model -> d_ff``.
    down_proj : torch.nn.Linear
        ``d_ff -> d_model``.

    Examples
    --------
    >>> import torch
    >>> mlp = SwiGLU(8, 16)
    >>> mlp(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.d_ff = check_int("d_ff", d_ff, minimum=1)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(d_model, d_ff, bias, **kw)
        self.up_proj = nn.Linear(d_model, d_ff, bias, **kw)
        self.down_proj = nn.Linear(d_ff, d_model, bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x`` of shape ``(..., d_model)``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}"


def moe(
    x: torch.Tensor,
    gate_up_proj: torch.Tensor | Sequence[Callable[[torch.Tensor], torch.Tensor]],
    down_proj: torch.Tensor | Sequence[Callable[[torch.Tensor], torch.Tensor]],
    weights: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """Run each token through its chosen SwiGLU experts and mix the outputs.

    Parameters
    ----------
    x : torch.Tensor
        Tokens ``(N, d_model)``.
    gate_up_proj : torch.Tensor or sequence of callables
        Every expert's gate and up weights stacked, ``(E, 2 * d_expert, d_model)``
        (gate rows first, as transformers stores them); or one layer per
        expert (``d_model -> 2 * d_expert``, e.g. the
        :class:`~llmref.quant.QuantLinear` layers of a quantized model).
    down_proj : torch.Tensor or sequence of callables
        Every expert's down weight, ``(E, d_model, d_expert)``; or one layer
        per expert (``d_expert -> d_model``).
    weights : torch.Tensor
        Mixing weights ``(N, top_k)``.
    indices : torch.Tensor
        Chosen experts ``(N, top_k)``.

    Returns
    -------
    torch.Tensor
        ``(N, d_model)`` in ``x``'s dtype.

    Raises
    ------
    ValueError
        If shapes disagree.

    Notes
    -----
    Tokens are grouped by expert (one matrix multiply per expert that has
    tokens), the reference loop of transformers' ``DeepseekV3Experts``; fused
    kernels sort tokens by expert and run one grouped GEMM.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(5, 8)
    >>> gate_up, down = torch.randn(4, 2 * 16, 8), torch.randn(4, 8, 16)
    >>> w, idx = route_tokens(torch.randn(5, 4), 2)
    >>> moe(x, gate_up, down, w, idx).shape
    torch.Size([5, 8])
    """
    check_tensor("x", x, ndim=2)
    if isinstance(gate_up_proj, torch.Tensor) or isinstance(down_proj, torch.Tensor):
        check_tensor("gate_up_proj", gate_up_proj, ndim=3)
        check_tensor("down_proj", down_proj, ndim=3)
        assert isinstance(gate_up_proj, torch.Tensor) and isinstance(down_proj, torch.Tensor)
        E, two_d, d = gate_up_proj.shape
        if d != x.shape[-1] or tuple(down_proj.shape) != (E, d, two_d // 2):
            raise ValueError(
                f"gate_up_proj (E, 2 d_expert, d_model) = {tuple(gate_up_proj.shape)} and "
                f"down_proj (E, d_model, d_expert) = {tuple(down_proj.shape)} do not fit x "
                f"{tuple(x.shape)}"
            )
    else:  # one layer per expert
        E = len(gate_up_proj)
        if len(down_proj) != E:
            raise ValueError(
                f"gate_up_proj and down_proj must hold one layer per expert each, got "
                f"{E} and {len(down_proj)}"
            )
    if weights.shape != indices.shape or weights.shape[0] != x.shape[0]:
        raise ValueError(
            f"weights and indices must both be (N={x.shape[0]}, top_k), got "
            f"{tuple(weights.shape)} and {tuple(indices.shape)}"
        )
    out = torch.zeros_like(x)
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=E).tolist()
    start = 0
    top_k = indices.shape[1]
    for e, n in enumerate(counts):
        if n == 0:
            continue
        sel = order[start : start + n]
        start += n
        token, slot = sel // top_k, sel % top_k
        gate, up = _expert_linear(gate_up_proj[e], x[token]).chunk(2, dim=-1)
        y = _expert_linear(down_proj[e], F.silu(gate) * up) * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _expert_linear(
    w: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)


def _linear_from(weight: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` (no bias) holding a copy of ``weight`` ``(out, in)``."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=False, device=weight.device, dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    return lin


class MoE(nn.Module):
    """A top-k mixture of SwiGLU experts, with optional always-on shared experts (DeepSeek).

    Parameters
    ----------
    d_model : int
        Input and output width.
    config : MoEConfig
        Number of experts, ``top_k``, expert width, routing rule, ...
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    router : torch.nn.Linear
        ``d_model -> n_experts``, no bias (transformers: ``gate``); it is
        applied in float32.
    e_score_correction_bias : torch.Tensor or None
        ``(n_experts,)`` float32 load-balancing bias (a buffer) of routing rules
        that use one (``"noaux_tc"``).
    gate_up_proj : torch.nn.Parameter
        ``(n_experts, 2 * d_expert, d_model)``.
    down_proj : torch.nn.Parameter
        ``(n_experts, d_model, d_expert)``.
    experts : torch.nn.ModuleList or None
        ``None`` until :meth:`quantizable_linears` is called; then one
        ``ModuleDict`` of ``gate_up_proj`` and ``down_proj`` linear layers per
        expert, which replace the stacked parameters (same result).
    shared_experts : SwiGLU or None
        Width ``n_shared_experts * d_expert``.

    Notes
    -----
    **Quantization.** The layer implements
    :class:`~llmref.quant.QuantizableWeights`: it declares every expert's two
    matrices and the shared experts quantizable, and keeps the router float
    (its discrete top-k choice flips on small logit changes; AutoAWQ, AutoGPTQ
    and vLLM keep it unquantized too). :func:`~llmref.quant.quantize_model`
    then quantizes one layer per expert: each sees only the tokens routed to
    it, so calibrated methods (GPTQ, AWQ) get each expert's own activations
    and every kernel (2-D weights) applies.

    Examples
    --------
    >>> import torch
    >>> from llmref.models import MoEConfig
    >>> layer = MoE(16, MoEConfig(n_experts=4, top_k=2, d_expert=8, n_shared_experts=1))
    >>> layer(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    e_score_correction_bias: torch.Tensor | None

    def __init__(
        self,
        d_model: int,
        config: MoEConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        from .config import MoEConfig

        super().__init__()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig, got {type(config).__name__}")
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.config = config
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        E, d_e = config.n_experts, config.d_expert
        self.router = nn.Linear(d_model, E, bias=False, **kw)
        bias = None
        if ROUTERS[config.topk_method].correction_bias:
            bias = torch.zeros(E, device=device, dtype=torch.float32)
        self.register_buffer("e_score_correction_bias", bias)
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * d_e, d_model, **kw))
        self.down_proj = nn.Parameter(torch.empty(E, d_model, d_e, **kw))
        nn.init.normal_(self.gate_up_proj, std=d_model**-0.5)
        nn.init.normal_(self.down_proj, std=d_e**-0.5)
        self.shared_experts = (
            SwiGLU(d_model, config.n_shared_experts * d_e, **kw)
            if config.n_shared_experts
            else None
        )
        self.experts: nn.ModuleList | None = None

    def _expert_layers(self) -> list[dict[str, nn.Linear]]:
        assert self.experts is not None
        return [dict(expert.items()) for expert in self.experts]  # type: ignore[operator]

    def quantizable_linears(self) -> dict[str, nn.Linear]:
        """The linear layers quantization may replace: the experts', not the router.

        On the first call the stacked ``gate_up_proj``/``down_proj`` parameters
        become one pair of ``nn.Linear`` layers per expert (``experts``), with
        the same weights, and the forward uses them from then on.

        Returns
        -------
        dict of str to torch.nn.Linear
            ``experts.<e>.gate_up_proj``, ``experts.<e>.down_proj`` and the
            shared experts' layers, by name relative to this module.

        Examples
        --------
        >>> import torch
        >>> from llmref.models import MoEConfig
        >>> layer = MoE(16, MoEConfig(n_experts=4, top_k=2, d_expert=8))
        >>> x = torch.randn(5, 16)
        >>> before = layer(x)
        >>> sorted(layer.quantizable_linears())[:2]
        ['experts.0.down_proj', 'experts.0.gate_up_proj']
        >>> bool(torch.equal(layer(x), before))
        True
        """
        if self.experts is None:
            self.experts = nn.ModuleList(
                nn.ModuleDict(
                    {
                        "gate_up_proj": _linear_from(self.gate_up_proj[e]),
                        "down_proj": _linear_from(self.down_proj[e]),
                    }
                )
                for e in range(self.config.n_experts)
            )
            del self.gate_up_proj, self.down_proj
        out: dict[str, nn.Linear] = {}
        for e, expert in enumerate(self._expert_layers()):
            for name, lin in expert.items():
                out[f"experts.{e}.{name}"] = lin
        if self.shared_experts is not None:
            for name, mod in self.shared_experts.named_modules():
                if isinstance(mod, nn.Linear):
                    out[f"shared_experts.{name}"] = mod
        return out

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Experts and weights for tokens ``x`` of shape ``(N, d_model)``.

        Parameters
        ----------
        x : torch.Tensor
            Tokens ``(N, d_model)``.

        Returns
        -------
        weights, indices : torch.Tensor
            As :func:`route_tokens`.
        """
        c = self.config
        logits = F.linear(x.float(), self.router.weight.float())
        return route_tokens(
            logits,
            c.top_k,
            topk_method=c.topk_method,
            n_group=c.n_group,
            topk_group=c.topk_group,
            correction_bias=self.e_score_correction_bias,
            norm_topk_prob=c.norm_topk_prob,
            routed_scaling_factor=c.routed_scaling_factor,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., d_model)``."""
        flat = x.reshape(-1, self.d_model)
        weights, indices = self.route(flat)
        if self.experts is None:
            out = moe(flat, self.gate_up_proj, self.down_proj, weights, indices)
        else:
            gate_up = [expert["gate_up_proj"] for expert in self._expert_layers()]
            down = [expert["down_proj"] for expert in self._expert_layers()]
            out = moe(flat, gate_up, down, weights, indices)
        out = out.view_as(x)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"d_model={self.d_model}, n_experts={c.n_experts}, top_k={c.top_k}, "
            f"d_expert={c.d_expert}, n_shared_experts={c.n_shared_experts}, "
            f"topk_method={c.topk_method!r}"
        )


# -- blocks --------------------------------------------------------------------------------


class DecoderBlock(nn.Module):
    """A pre-norm decoder block: ``h = x + attn(norm(x))``, ``out = h + mlp(norm(h))``.

    Built from a :class:`~llmref.models.DecoderConfig` and a layer number,
    which choose the attention kind (:class:`~llmref.attention.MultiHeadAttention`
    or :class:`~llmref.attention.MultiHeadLatentAttention`), its sliding window
    and the feed-forward kind (:class:`SwiGLU` or :class:`MoE`).

    Parameters
    ----------
    config : DecoderConfig
        The model's configuration.
    index : int
        Layer number.
    rope : torch.nn.Module, optional
        Rotary embedding shared by the model's layers (``None`` without RoPE).
    position_bias : torch.nn.Module, optional
        Additive position bias (ALiBi) shared by the layers.
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    attn_norm, mlp_norm : torch.nn.RMSNorm
        The pre-norms (transformers: ``input_layernorm``, ``post_attention_layernorm``).
    attn : torch.nn.Module
        Built by the layer's attention kind (:data:`~llmref.models.ATTENTION_KINDS`):
        :class:`~llmref.attention.MultiHeadAttention` or
        :class:`~llmref.attention.MultiHeadLatentAttention` for the built-in kinds.
    mlp : SwiGLU or MoE

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig
    >>> cfg = DecoderConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=4, d_ff=64)
    >>> DecoderBlock(cfg, 0)(torch.randn(2, 5, 32)).shape
    torch.Size([2, 5, 32])
    """

    def __init__(
        self,
        config: DecoderConfig,
        index: int,
        *,
        rope: nn.Module | None = None,
        position_bias: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        spec = config.layer(index)
        self.index = index
        self.spec = spec
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        d = config.d_model
        self.attn_norm = nn.RMSNorm(d, eps=config.norm_eps, **kw)
        self.mlp_norm = nn.RMSNorm(d, eps=config.norm_eps, **kw)
        kind = ATTENTION_KINDS[spec.attention]  # the kind's own builder (DecoderConfig checked it)
        self.attn = kind.fn(config, index, rope=rope, position_bias=position_bias, **kw)
        self.mlp: SwiGLU | MoE
        if spec.mlp == "moe":
            assert config.moe is not None
            self.mlp = MoE(d, config.moe, **kw)
        else:
            self.mlp = SwiGLU(d, config.d_ff, bias=config.mlp_bias, **kw)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = True,
        position_ids: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the block to the residual stream ``x`` of shape ``(B, T, d_model)``.

        Parameters
        ----------
        x : torch.Tensor
            Residual stream ``(B, T, d_model)``.
        mask : torch.Tensor, optional
            Boolean mask (``True`` = may attend) over the keys attended to.
        is_causal : bool, default True
            Apply the causal rules besides ``mask`` (see
            :class:`~llmref.attention.MultiHeadAttention`); a model that hands
            a complete mask passes ``False``.
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)``; default from the cache, else ``0..T-1``.
        position_embeddings : tuple of torch.Tensor, optional
            RoPE ``(cos, sin)`` computed once per forward by the model.
        cache : llmref.cache.KVCache, optional
            This layer's cache.
        lengths : torch.Tensor, optional
            Real (trailing) tokens per row, for the cache (left padding).

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.
        """
        h = x + self.attn(
            self.attn_norm(x),
            mask=mask,
            is_causal=is_causal,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            cache=cache,
            lengths=lengths,
        )
        return h + self.mlp(self.mlp_norm(h))


class TransformerBlock(nn.Module):
    """The source notes' transformer block: post-norm, bidirectional, ReLU MLP.

    ``h = LayerNorm(x + attn(x))``, ``out = LayerNorm(h + mlp(h))`` with
    ``mlp = Linear(d, d_ff) -> ReLU -> Linear(d_ff, d)``: the block of the
    original Transformer encoder {cite:p}`vaswani2017attention` and of the
    text-classification transformer in the project's source notes (Peter
    Bloem's ``TransformerBlock``).

    Parameters
    ----------
    d_model : int
        Width (``k`` in the notes).
    n_heads : int
        Attention heads.
    d_ff : int, optional
        MLP hidden width; default ``4 * d_model``.
    dropout : float, default 0.0
        Dropout after the attention and the MLP (training only).
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    attn : MultiHeadAttention
    norm1, norm2 : torch.nn.LayerNorm
    mlp : torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> block = TransformerBlock(32, 4)
    >>> block(torch.randn(2, 7, 32)).shape
    torch.Size([2, 7, 32])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_ff: int | None = None,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_model = check_int("d_model", d_model, minimum=1)
        d_ff = 4 * d_model if d_ff is None else check_int("d_ff", d_ff, minimum=1)
        if dropout != 0.0:
            dropout = check_positive_float("dropout", dropout)
            if dropout >= 1.0:
                raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.attn = MultiHeadAttention(d_model, n_heads, bias=True, **kw)
        self.norm1 = nn.LayerNorm(d_model, **kw)
        self.norm2 = nn.LayerNorm(d_model, **kw)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff, **kw), nn.ReLU(), nn.Linear(d_ff, d_model, **kw)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``(B, T, d_model)``.

        Parameters
        ----------
        x : torch.Tensor
            Input ``(B, T, d_model)``.
        mask : torch.Tensor, optional
            Boolean mask broadcasting to ``(B, H, T, T)`` (e.g. keys that are
            padding masked out); no causal mask is applied.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, d_model)``.
        """
        h = self.norm1(x + self.dropout(self.attn(x, mask=mask)))
        return self.norm2(h + self.dropout(self.mlp(h)))
