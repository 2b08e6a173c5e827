"""Configuration of :class:`~llmref.models.DecoderLM`: frozen dataclasses that check themselves."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from .._checks import check_int, check_positive_float
from .attention_kinds import ATTENTION_KINDS
from .routing import ROUTERS

__all__ = ["ATTENTION_KINDS", "DecoderConfig", "LayerSpec", "MLAConfig", "MoEConfig"]

POSITIONS = ("rope", "alibi", "nope")
"""Position encodings a decoder can use, by their names in :data:`llmref.position.POSITION`."""

MLP_KINDS = ("dense", "moe")
"""Feed-forward kinds of a decoder layer: a SwiGLU MLP or a mixture of experts."""

ATTENTION_BIAS = ("none", "qkv", "all")
"""Which attention projections have biases: none (Llama), q/k/v only (Qwen2), all."""


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise in __post_init__


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    assert isinstance(value, str)
    return value


def _per_layer(name: str, value: object, n_layers: int) -> tuple[Any, ...]:
    """A single value for every layer, or a sequence of exactly ``n_layers`` values."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return (value,) * n_layers
    values = tuple(value)
    if len(values) != n_layers:
        raise ValueError(
            f"{name} must be one value or one per layer (n_layers={n_layers}), "
            f"got {len(values)} values"
        )
    return values


@dataclass(frozen=True)
class MLAConfig:
    """Sizes of multi-head latent attention (DeepSeek-V2/V3), as in transformers' config.

    Parameters
    ----------
    kv_lora_rank : int
        Width of the key/value latent (what the cache stores, with the RoPE key).
    qk_nope_head_dim : int
        Per-head query/key channels without position information.
    qk_rope_head_dim : int
        Channels of the decoupled RoPE part (one key shared by all heads).
    v_head_dim : int
        Per-head value channels.
    q_lora_rank : int, optional
        Width of the query latent; ``None`` projects queries directly.
    norm_eps : float, default 1e-6
        Epsilon of the RMSNorms on the latents (transformers keeps these at 1e-6
        whatever ``rms_norm_eps`` is).

    Raises
    ------
    TypeError, ValueError
        If a size is not a positive int or ``norm_eps`` is not > 0.

    Examples
    --------
    >>> MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
    MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, \
q_lora_rank=None, norm_eps=1e-06)
    """

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_int("kv_lora_rank", self.kv_lora_rank, minimum=1)
        check_int("qk_nope_head_dim", self.qk_nope_head_dim, minimum=1)
        check_int("qk_rope_head_dim", self.qk_rope_head_dim, minimum=2)
        check_int("v_head_dim", self.v_head_dim, minimum=1)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        if self.q_lora_rank is not None:
            check_int("q_lora_rank", self.q_lora_rank, minimum=1)
        _set(self, "norm_eps", check_positive_float("norm_eps", self.norm_eps))


@dataclass(frozen=True)
class MoEConfig:
    """A top-k mixture-of-experts feed-forward layer, optionally with shared experts.

    Parameters
    ----------
    n_experts : int
        Routed experts (transformers: ``n_routed_experts`` / ``num_local_experts``).
    top_k : int
        Experts each token is sent to (``num_experts_per_tok``).
    d_expert : int
        Hidden width of one expert's SwiGLU (``moe_intermediate_size``).
    n_shared_experts : int, default 0
        Experts every token always goes through (DeepSeek), merged into one
        SwiGLU of width ``n_shared_experts * d_expert``.
    topk_method : str, default "greedy"
        Routing rule, a name in :data:`~llmref.models.ROUTERS`: ``"greedy"``
        (softmax, then top-k; Mixtral, DeepSeek-V2), ``"group_limited_greedy"``
        (DeepSeek-V2: top-k within the best ``topk_group`` of ``n_group``
        groups) or ``"noaux_tc"`` (DeepSeek-V3: sigmoid scores, a bias that
        balances load, groups ranked by their two best experts).
    n_group, topk_group : int, optional
        Expert groups, and how many of them a token may use (group routing).
    norm_topk_prob : bool, default False
        Renormalise the chosen experts' weights to sum to one.
    routed_scaling_factor : float, default 1.0
        Multiplies the routed experts' weights.

    Raises
    ------
    TypeError, ValueError
        For sizes that are not positive ints, ``top_k > n_experts``, an unknown
        ``topk_method``, or group settings that do not divide the experts.

    Examples
    --------
    >>> MoEConfig(n_experts=8, top_k=2, d_expert=64).topk_method
    'greedy'
    """

    n_experts: int
    top_k: int
    d_expert: int
    n_shared_experts: int = 0
    topk_method: str = "greedy"
    n_group: int | None = None
    topk_group: int | None = None
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        check_int("n_experts", self.n_experts, minimum=1)
        check_int("top_k", self.top_k, minimum=1)
        check_int("d_expert", self.d_expert, minimum=1)
        check_int("n_shared_experts", self.n_shared_experts, minimum=0)
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k must be <= n_experts={self.n_experts}, got top_k={self.top_k}")
        _check_choice("topk_method", self.topk_method, tuple(ROUTERS))
        _check_bool("norm_topk_prob", self.norm_topk_prob)
        _set(
            self,
            "routed_scaling_factor",
            check_positive_float("routed_scaling_factor", self.routed_scaling_factor),
        )
        if ROUTERS[self.topk_method].grouped:
            if self.n_group is None or self.topk_group is None:
                raise ValueError(f"topk_method={self.topk_method!r} needs n_group and topk_group")
            check_int("n_group", self.n_group, minimum=1)
            check_int("topk_group", self.topk_group, minimum=1)
            if self.n_experts % self.n_group:
                raise ValueError(
                    f"n_group must divide n_experts={self.n_experts}, got n_group={self.n_group}"
                )
            if self.topk_group > self.n_group:
                raise ValueError(
                    f"topk_group must be <= n_group={self.n_group}, got {self.topk_group}"
                )
            if self.top_k > self.topk_group * (self.n_experts // self.n_group):
                raise ValueError(
                    f"top_k={self.top_k} exceeds the experts in topk_group={self.topk_group} "
                    f"groups of {self.n_experts // self.n_group}"
                )


class LayerSpec(NamedTuple):
    """What one decoder layer is made of (from :meth:`DecoderConfig.layer`)."""

    attention: str
    """Attention kind, one of ``llmref.models.ATTENTION_KINDS``."""
    window: int | None
    """Sliding-window width, or ``None`` for full causal attention."""
    mlp: str
    """``"dense"`` (SwiGLU) or ``"moe"``."""


@dataclass(frozen=True)
class DecoderConfig:
    """Everything that defines a :class:`~llmref.models.DecoderLM`.

    Per-layer fields (``attention``, ``window``, ``mlp``) take one value for
    every layer or a sequence of ``n_layers`` values; they are stored as
    tuples.

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    d_model : int
        Width of the residual stream (transformers: ``hidden_size``).
    n_layers : int
        Number of decoder blocks.
    n_heads : int
        Query heads per attention layer.
    d_ff : int
        Hidden width of the dense SwiGLU MLP (``intermediate_size``).
    n_kv_heads : int, optional
        Key/value heads of the MHA-family layers; default ``n_heads`` (``1`` if
        every such layer is ``"mqa"``).
    head_dim : int, optional
        Width of one head; default ``d_model // n_heads``.
    attention : str or sequence of str, default "mha"
        Attention kind per layer, names in :data:`~llmref.models.ATTENTION_KINDS`.
        ``"mha"`` takes any ``n_kv_heads`` (GQA and MQA included); ``"gqa"`` and
        ``"mqa"`` also check that ``n_kv_heads`` is what they name.
    window : int, None or sequence, default None
        Sliding window per layer (each query sees this many keys, itself
        included, as :func:`~llmref.attention.sliding_window_mask`); ``None``
        is full causal attention.
    mla : MLAConfig or mapping, optional
        Sizes of the ``"mla"`` layers (required iff one is used); a mapping is
        taken as :class:`MLAConfig`'s keywords.
    position : {"rope", "alibi", "nope"}, default "rope"
        Position encoding, by its name in :data:`llmref.position.POSITION`.
    rope_theta : float, default 10000.0
        RoPE base.
    rope_type : str, default "default"
        Frequency rule, a name in :data:`llmref.position.ROPE_SCALING`.
    rope_parameters : mapping, optional
        Parameters of the rule, named as transformers' ``rope_parameters``
        (``factor``, ``original_max_position_embeddings``, ...).
    rope_layout : {"half", "interleaved"}, default "half"
        RoPE channel layout of the queries and keys (see
        :func:`~llmref.position.apply_rope`); DeepSeek's MLA uses
        ``"interleaved"``.
    max_position_embeddings : int, optional
        Trained context length (needed by some ``rope_type`` rules).
    attention_scale : float, optional
        Score scale; default ``1 / sqrt(head_dim)`` (for MLA
        ``1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)``).
    attention_bias : {"none", "qkv", "all"}, default "none"
        Biases of the attention projections: none (Llama, Mistral), query/key/value
        only (Qwen2), or all of them including the output projection.
    mlp_bias : bool, default False
        Biases in the SwiGLU MLPs.
    mlp : str or sequence of str, default "dense"
        Feed-forward kind per layer: ``"dense"`` or ``"moe"``.
    moe : MoEConfig, optional
        The mixture of experts (required iff a layer is ``"moe"``).
    norm_eps : float, default 1e-6
        Epsilon of the RMSNorms (``rms_norm_eps``).
    tie_embeddings : bool, default False
        Share the token embedding with the output head (``tie_word_embeddings``).
    init_std : float, default 0.02
        Standard deviation of the normal initialisation of weights
        (``initializer_range``).

    Raises
    ------
    TypeError, ValueError
        If a field has the wrong type or an invalid value, or fields disagree
        (``n_kv_heads`` vs the attention kinds, ``"mla"`` without ``mla``, a
        window on an MLA layer, ALiBi with MLA, ...). Messages name the field.

    Examples
    --------
    A Llama-style config (GQA, RoPE), and one with a sliding window on every
    other layer:

    >>> cfg = DecoderConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=8,
    ...                     n_kv_heads=2, d_ff=512, attention="gqa")
    >>> cfg.head_dim, cfg.layer(0)
    (32, LayerSpec(attention='gqa', window=None, mlp='dense'))
    >>> cfg = DecoderConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=8, d_ff=512,
    ...                     window=[None, 128, None, 128])
    >>> cfg.window
    (None, 128, None, 128)
    >>> DecoderConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=8, d_ff=512,
    ...               attention="gqa")
    Traceback (most recent call last):
    ...
    ValueError: attention 'gqa' needs 1 < n_kv_heads < n_heads=8, got n_kv_heads=8
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    attention: str | Sequence[str] = "mha"
    window: int | Sequence[int | None] | None = None
    mla: MLAConfig | None = None
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    rope_layout: str = "half"
    max_position_embeddings: int | None = None
    attention_scale: float | None = None
    attention_bias: str = "none"
    mlp_bias: bool = False
    mlp: str | Sequence[str] = "dense"
    moe: MoEConfig | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        from ..position import ROPE_SCALING

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
            check_int(name, getattr(self, name), minimum=1)
        n = self.n_layers
        attention = _per_layer("attention", self.attention, n)
        for kind in attention:
            _check_choice("attention", kind, tuple(ATTENTION_KINDS))
        _set(self, "attention", attention)
        kinds = [ATTENTION_KINDS[k] for k in dict.fromkeys(attention)]
        rules = [spec for spec in kinds if spec.kv_heads is not None]
        if self.n_kv_heads is None:  # n_heads, unless the kinds want one head (MQA)
            H = self.n_heads

            def fits(kv: int) -> bool:
                return all(r.kv_heads(kv, H) for r in rules if r.kv_heads is not None)

            _set(self, "n_kv_heads", 1 if not fits(H) and fits(1) else H)
        kv = check_int("n_kv_heads", self.n_kv_heads, minimum=1)
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got n_kv_heads={kv}")
        for spec in rules:
            assert spec.kv_heads is not None
            if not spec.kv_heads(kv, self.n_heads):
                need = spec.kv_heads_rule.format(n_heads=self.n_heads)
                raise ValueError(f"attention {spec.name!r} needs {need}, got n_kv_heads={kv}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model must be divisible by n_heads when head_dim is not given, got "
                    f"d_model={self.d_model} and n_heads={self.n_heads}"
                )
            _set(self, "head_dim", self.d_model // self.n_heads)
        check_int("head_dim", self.head_dim, minimum=1)

        windows = _per_layer("window", self.window, n)
        for i, (kind, w) in enumerate(zip(attention, windows, strict=True)):
            if w is not None:
                check_int("window", w, minimum=1)
                if not ATTENTION_KINDS[kind].windows:
                    raise ValueError(
                        f"window is not supported on {kind.upper()} layers (layer {i})"
                    )
        _set(self, "window", windows)

        for section, cls in _SECTIONS.items():
            users = [spec.name for spec in kinds if spec.section == section]
            value = getattr(self, section)
            if isinstance(value, Mapping):  # its keywords, as a config file would give them
                value = cls(**value)
                _set(self, section, value)
            if users and not isinstance(value, cls):
                raise TypeError(
                    f"{section} must be an {cls.__name__} when a layer uses {users[0]!r} "
                    f"attention, got {type(value).__name__}"
                )
            if not users and value is not None:
                raise ValueError(f"{section} is given but no layer uses {section!r} attention")

        _check_choice("position", self.position, POSITIONS)
        for spec in kinds:
            if self.position == "alibi" and not spec.position_bias:
                raise ValueError(
                    f"position 'alibi' cannot be used with {spec.name!r} attention "
                    f"({spec.name.upper()} needs RoPE)"
                )
        _set(self, "rope_theta", check_positive_float("rope_theta", self.rope_theta))
        _check_choice("rope_type", self.rope_type, tuple(ROPE_SCALING))
        if not isinstance(self.rope_parameters, Mapping):
            raise TypeError(
                f"rope_parameters must be a mapping, got {type(self.rope_parameters).__name__}"
            )
        _set(self, "rope_parameters", dict(self.rope_parameters))
        _check_choice("rope_layout", self.rope_layout, ("half", "interleaved"))
        if self.max_position_embeddings is not None:
            check_int("max_position_embeddings", self.max_position_embeddings, minimum=1)
        if self.attention_scale is not None:
            _set(
                self,
                "attention_scale",
                check_positive_float("attention_scale", self.attention_scale),
            )
        _check_choice("attention_bias", self.attention_bias, ATTENTION_BIAS)
        _check_bool("mlp_bias", self.mlp_bias)

        mlps = _per_layer("mlp", self.mlp, n)
        for kind in mlps:
            _check_choice("mlp", kind, MLP_KINDS)
        _set(self, "mlp", mlps)
        if "moe" in mlps:
            if not isinstance(self.moe, MoEConfig):
                raise TypeError(
                    f"moe must be a MoEConfig when a layer uses a 'moe' mlp, "
                    f"got {type(self.moe).__name__}"
                )
        elif self.moe is not None:
            raise ValueError("moe is given but no layer uses a 'moe' mlp")

        _set(self, "norm_eps", check_positive_float("norm_eps", self.norm_eps))
        _check_bool("tie_embeddings", self.tie_embeddings)
        _set(self, "init_std", check_positive_float("init_std", self.init_std))

    def layer(self, index: int) -> LayerSpec:
        """The attention kind, window and MLP kind of layer ``index``.

        Parameters
        ----------
        index : int
            Layer number, ``0 <= index < n_layers``.

        Returns
        -------
        LayerSpec

        Raises
        ------
        ValueError
            If ``index`` is out of range.
        """
        index = check_int("index", index, minimum=0)
        if index >= self.n_layers:
            raise ValueError(f"index must be < n_layers={self.n_layers}, got {index}")
        assert isinstance(self.attention, tuple) and isinstance(self.window, tuple)
        assert isinstance(self.mlp, tuple)
        return LayerSpec(self.attention[index], self.window[index], self.mlp[index])

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (and validated again).

        Parameters
        ----------
        **changes
            Field names and new values.

        Returns
        -------
        DecoderConfig

        Examples
        --------
        >>> cfg = DecoderConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, d_ff=128)
        >>> cfg.replace(n_layers=3).attention
        ('mha', 'mha', 'mha')
        """
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown DecoderConfig fields: {sorted(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        n_layers = changes.get("n_layers", self.n_layers)
        if n_layers != self.n_layers:  # per-layer tuples of the old length no longer fit
            for name in ("attention", "window", "mlp"):
                if name not in changes and len(set(values[name])) == 1:
                    values[name] = values[name][0]
        values.update(changes)
        return DecoderConfig(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_SECTIONS: dict[str, type] = {"mla": MLAConfig}
"""DecoderConfig fields holding an attention kind's own sizes (``AttentionKindSpec.section``)."""
