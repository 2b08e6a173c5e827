"""Loading Hugging Face transformers checkpoints into :class:`~llmref.models.DecoderLM`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from .config import DecoderConfig, MLAConfig, MoEConfig
from .decoder import DecoderLM, empty_model

__all__ = ["SUPPORTED_ARCHITECTURES", "config_from_transformers", "from_transformers"]

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "deepseek_v2", "deepseek_v3")
"""transformers ``model_type`` values :func:`from_transformers` converts."""


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope(config: Any) -> tuple[float, str, dict[str, Any]]:
    """``(rope_theta, rope_type, rope_parameters)`` of a transformers config (v4 or v5 style)."""
    params = _get(config, "rope_parameters")
    if params is None:  # transformers 4: rope_theta + rope_scaling
        params = dict(_get(config, "rope_scaling") or {})
        params.setdefault("rope_theta", _get(config, "rope_theta", 10000.0))
    params = {k: v for k, v in dict(params).items() if v is not None}
    theta = float(params.pop("rope_theta", _get(config, "rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type == "dynamic" and params.get("alpha"):
        # HunYuan's checkpoints spell static NTK-alpha as "dynamic" + "alpha" (a fixed alpha:
        # nothing depends on the sequence length); llmref's name for that rule is ntk_alpha.
        rope_type = "ntk_alpha"
        params = {k: v for k, v in params.items() if k in ("alpha", "partial_rotary_factor")}
    return theta, rope_type, params


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def config_from_transformers(config: Any) -> DecoderConfig:
    """The :class:`~llmref.models.DecoderConfig` of a transformers model config.

    Parameters
    ----------
    config : transformers.PretrainedConfig or mapping
        A config whose ``model_type`` is in :data:`SUPPORTED_ARCHITECTURES`
        (attributes or keys named as in transformers).

    Returns
    -------
    DecoderConfig

    Raises
    ------
    ValueError
        If the ``model_type`` is not supported or the config uses a feature
        llmref's decoder does not have (an activation other than SiLU, ...).

    Notes
    -----
    Field by field: ``hidden_size -> d_model``, ``intermediate_size -> d_ff``,
    ``num_key_value_heads -> n_kv_heads`` (and the attention kind ``"mha"``,
    ``"gqa"`` or ``"mqa"``), ``rope_parameters -> rope_theta, rope_type,
    rope_parameters``, Mistral's ``sliding_window`` on every layer, Qwen2's
    ``layer_types`` per layer, DeepSeek's MLA sizes, MoE settings and
    ``first_k_dense_replace`` dense layers. A ``rope_type`` of ``"dynamic"`` with an
    ``"alpha"`` key (HunYuan's spelling of static NTK-alpha scaling) becomes
    ``"ntk_alpha"``. transformers' DeepSeek-V2 ignores
    ``norm_topk_prob``, and so does this conversion; for YaRN it multiplies
    the MLA score scale by ``mscale(factor, mscale_all_dim)**2``, as here.

    Examples
    --------
    >>> cfg = config_from_transformers({
    ...     "model_type": "llama", "vocab_size": 100, "hidden_size": 64,
    ...     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    ...     "intermediate_size": 128, "rope_parameters": {"rope_type": "default",
    ...     "rope_theta": 500000.0}})
    >>> cfg.attention, cfg.rope_theta
    (('gqa', 'gqa'), 500000.0)
    """
    model_type = _get(config, "model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"model_type must be one of {', '.join(map(repr, SUPPORTED_ARCHITECTURES))}, "
            f"got {model_type!r}"
        )
    act = _get(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act must be 'silu' (SwiGLU MLP), got {act!r}")
    n_layers = int(_get(config, "num_hidden_layers"))
    n_heads = int(_get(config, "num_attention_heads"))
    n_kv = int(_get(config, "num_key_value_heads") or n_heads)
    d_model = int(_get(config, "hidden_size"))
    theta, rope_type, rope_params = _rope(config)
    kw: dict[str, Any] = dict(
        vocab_size=int(_get(config, "vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=int(_get(config, "intermediate_size")),
        rope_theta=theta,
        rope_type=rope_type,
        rope_parameters=rope_params,
        max_position_embeddings=_get(config, "max_position_embeddings"),
        norm_eps=float(_get(config, "rms_norm_eps", 1e-6)),
        tie_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        init_std=float(_get(config, "initializer_range", 0.02)),
    )
    if model_type.startswith("deepseek"):
        q_lora = _get(config, "q_lora_rank")
        mla = MLAConfig(
            kv_lora_rank=int(_get(config, "kv_lora_rank")),
            qk_nope_head_dim=int(_get(config, "qk_nope_head_dim")),
            qk_rope_head_dim=int(_get(config, "qk_rope_head_dim")),
            v_head_dim=int(_get(config, "v_head_dim")),
            q_lora_rank=None if q_lora is None else int(q_lora),
        )
        scale = (mla.qk_nope_head_dim + mla.qk_rope_head_dim) ** -0.5
        mscale_all_dim = rope_params.get("mscale_all_dim", 0)
        if rope_type != "default" and mscale_all_dim:
            scale *= _yarn_mscale(float(rope_params["factor"]), float(mscale_all_dim)) ** 2
        v3 = model_type == "deepseek_v3"
        interleave = bool(_get(config, "rope_interleave", True)) if v3 else True
        n_experts = _get(config, "n_routed_experts") or _get(config, "num_local_experts")
        moe = MoEConfig(
            n_experts=int(n_experts),
            top_k=int(_get(config, "num_experts_per_tok")),
            d_expert=int(_get(config, "moe_intermediate_size")),
            n_shared_experts=int(_get(config, "n_shared_experts") or 0),
            topk_method="noaux_tc" if v3 else str(_get(config, "topk_method") or "greedy"),
            n_group=_get(config, "n_group"),
            topk_group=_get(config, "topk_group"),
            norm_topk_prob=bool(_get(config, "norm_topk_prob", False)) if v3 else False,
            routed_scaling_factor=float(_get(config, "routed_scaling_factor", 1.0)),
        )
        first_dense = int(_get(config, "first_k_dense_replace") or 0)
        kw.update(
            attention="mla",
            mla=mla,
            head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
            rope_layout="interleaved" if interleave else "half",
            attention_scale=scale,
            attention_bias="all" if _get(config, "attention_bias", False) else "none",
            mlp=["dense" if i < first_dense else "moe" for i in range(n_layers)],
            moe=moe,
        )
        return DecoderConfig(**kw)

    kind = "mha" if n_kv == n_heads else "mqa" if n_kv == 1 else "gqa"
    head_dim = _get(config, "head_dim") or d_model // n_heads
    kw.update(attention=kind, n_kv_heads=n_kv, head_dim=int(head_dim))
    if model_type == "llama":
        kw.update(
            attention_bias="all" if _get(config, "attention_bias", False) else "none",
            mlp_bias=bool(_get(config, "mlp_bias", False)),
        )
    elif model_type == "mistral":
        kw.update(window=_get(config, "sliding_window"))
    else:  # qwen2
        sliding = _get(config, "sliding_window")
        types = _get(config, "layer_types") or ["full_attention"] * n_layers
        kw.update(
            attention_bias="qkv",
            window=[sliding if t == "sliding_attention" else None for t in types],
        )
    return DecoderConfig(**kw)


_MHA = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_RENAMES = [  # (transformers suffix regex, llmref name), applied inside model.layers.{i}.
    (r"input_layernorm\.weight", "attn_norm.weight"),
    (r"post_attention_layernorm\.weight", "mlp_norm.weight"),
    (r"self_attn\.o_proj\.(weight|bias)", r"attn.out_proj.\1"),
    (r"self_attn\.q_a_proj\.(weight|bias)", r"attn.q_down.\1"),
    (r"self_attn\.q_a_layernorm\.weight", "attn.q_norm.weight"),
    (r"self_attn\.q_b_proj\.weight", "attn.q_up.weight"),
    (r"self_attn\.kv_a_proj_with_mqa\.(weight|bias)", r"attn.kv_down.\1"),
    (r"self_attn\.kv_a_layernorm\.weight", "attn.kv_norm.weight"),
    (r"self_attn\.kv_b_proj\.weight", "attn.kv_up.weight"),
    (r"mlp\.(gate|up|down)_proj\.(weight|bias)", r"mlp.\1_proj.\2"),
    (r"mlp\.gate\.weight", "mlp.router.weight"),
    (r"mlp\.gate\.e_score_correction_bias", "mlp.e_score_correction_bias"),
    (r"mlp\.experts\.gate_up_proj", "mlp.gate_up_proj"),
    (r"mlp\.experts\.down_proj", "mlp.down_proj"),
    (r"mlp\.shared_experts\.(gate|up|down)_proj\.weight", r"mlp.shared_experts.\1_proj.weight"),
]


def _state_dict_from_transformers(
    state_dict: Mapping[str, torch.Tensor], config: DecoderConfig
) -> dict[str, torch.Tensor]:
    """Rename (and fuse) a transformers causal-LM state dict into :class:`DecoderLM` names.

    ``q_proj``/``k_proj``/``v_proj`` are concatenated into ``qkv_proj`` (MHA
    layers), MLA and MoE weights are renamed; every other key must be known.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    for key, value in state_dict.items():
        if key == "model.embed_tokens.weight":
            out["embed.weight"] = value
            continue
        if key == "model.norm.weight":
            out["norm.weight"] = value
            continue
        if key == "lm_head.weight":
            out["lm_head.weight"] = value
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
        if m is None:
            raise ValueError(f"unexpected transformers weight {key!r}")
        i, rest = int(m[1]), m[2]
        mha = re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)", rest)
        if mha is not None and config.layer(i).attention != "mla":
            qkv.setdefault((i, mha[2]), [None, None, None])[_MHA[mha[1]]] = value
            continue
        if rest == "self_attn.q_proj.weight":  # MLA without a query latent
            out[f"layers.{i}.attn.q_proj.weight"] = value
            continue
        for pattern, repl in _RENAMES:
            if re.fullmatch(pattern, rest):
                out[f"layers.{i}." + re.sub(pattern, repl, rest)] = value
                break
        else:
            raise ValueError(f"unexpected transformers weight {key!r}")
    for (i, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"layer {i} lacks one of q_proj/k_proj/v_proj {kind}")
        out[f"layers.{i}.attn.qkv_proj.{kind}"] = torch.cat(parts)  # type: ignore[arg-type]
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def from_transformers(
    hf_model: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DecoderLM:
    """A :class:`~llmref.models.DecoderLM` with the weights of a transformers causal LM.

    Parameters
    ----------
    hf_model : transformers.PreTrainedModel
        A ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
        ``DeepseekV2ForCausalLM`` or ``DeepseekV3ForCausalLM`` (any model whose
        ``config.model_type`` is in :data:`SUPPORTED_ARCHITECTURES`), e.g. the
        SmolLM2 checkpoint (a Llama) loaded from GGUF.
    device, dtype : optional
        Where and in which dtype to create the model; default those of
        ``hf_model``'s weights. Weights are copied.

    Returns
    -------
    DecoderLM
        Same logits as ``hf_model`` (to float32 rounding in float32), same
        greedy generations.

    Raises
    ------
    TypeError
        If ``hf_model`` has no ``config`` and ``state_dict``.
    ValueError
        As :func:`config_from_transformers`, or if the state dict holds a
        weight llmref does not know.

    Notes
    -----
    RoPE is taken from the config's ``rope_parameters`` (any ``rope_type``),
    computed in float32 as transformers does. q/k/v projections are fused
    into one ``qkv_proj`` (concatenated rows, which gives the same products).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> hf = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64,
    ...     intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    ...     num_key_value_heads=2)).eval()  # doctest: +SKIP
    >>> model = from_transformers(hf)  # doctest: +SKIP
    >>> ids = torch.randint(0, 100, (1, 8))  # doctest: +SKIP
    >>> torch.allclose(model(ids), hf(ids).logits, atol=1e-5)  # doctest: +SKIP
    True
    """
    if not (hasattr(hf_model, "config") and hasattr(hf_model, "state_dict")):
        raise TypeError(
            f"hf_model must be a transformers model (with config and state_dict), "
            f"got {type(hf_model).__name__}"
        )
    config = config_from_transformers(hf_model.config)
    first = next(iter(hf_model.parameters()))
    model = empty_model(
        config,
        device=first.device if device is None else device,
        dtype=first.dtype if dtype is None else dtype,
    )
    return _load_weights(model, _state_dict_from_transformers(hf_model.state_dict(), config))


def _load_weights(model: DecoderLM, weights: Mapping[str, torch.Tensor]) -> DecoderLM:
    """Copy ``weights`` (llmref names, any dtype/device) into ``model``; every weight must fit.

    Returns
    -------
    DecoderLM
        ``model`` itself.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not _tied(model, k)]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for key, value in weights.items():
            target = expected[key]
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(
                    f"weight {key!r} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(target.shape)}"
                )
            target.copy_(value)
    return model


def _tied(model: DecoderLM, key: str) -> bool:
    return key == "lm_head.weight" and model.config.tie_embeddings
