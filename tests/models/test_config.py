"""DecoderConfig, MLAConfig, MoEConfig: normalisation and errors that name the field."""

from __future__ import annotations

import pytest

from llmref.models import DecoderConfig, MLAConfig, MoEConfig

BASE = dict(vocab_size=100, d_model=64, n_layers=3, n_heads=8, d_ff=128)
MLA = MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
MOE = MoEConfig(n_experts=4, top_k=2, d_expert=16)


def test_defaults_and_per_layer_normalisation():
    cfg = DecoderConfig(**BASE)
    assert cfg.n_kv_heads == 8 and cfg.head_dim == 8 and cfg.attention == ("mha",) * 3
    assert cfg.window == (None,) * 3 and cfg.mlp == ("dense",) * 3
    assert DecoderConfig(**BASE, attention="mqa").n_kv_heads == 1
    cfg = DecoderConfig(
        **BASE,
        attention=["mla", "mla", "gqa"],
        n_kv_heads=2,
        mla=MLA,
        window=[None, None, 16],
        mlp=["dense", "moe", "moe"],
        moe=MOE,
    )
    assert cfg.layer(2) == ("gqa", 16, "moe")
    assert (
        cfg.replace(
            n_layers=5, attention="mha", n_kv_heads=8, window=None, mla=None, mlp="dense", moe=None
        ).n_layers
        == 5
    )
    assert DecoderConfig(**BASE, rope_parameters={"factor": 2.0}, rope_type="linear") == (
        DecoderConfig(**BASE, rope_parameters={"factor": 2.0}, rope_type="linear")
    )


@pytest.mark.parametrize(
    "changes,exc,message",
    [
        (dict(vocab_size=0), ValueError, "vocab_size must be >= 1"),
        (dict(d_model=64.0), TypeError, "d_model must be an int"),
        (dict(n_kv_heads=3), ValueError, "n_kv_heads must divide n_heads=8"),
        (dict(attention="gqa"), ValueError, "attention 'gqa' needs 1 < n_kv_heads < n_heads=8"),
        (dict(attention="mqa", n_kv_heads=2), ValueError, "attention 'mqa' needs n_kv_heads == 1"),
        (dict(attention="flash"), ValueError, "attention must be one of"),
        (dict(attention=["mha", "mha"]), ValueError, r"one per layer \(n_layers=3\), got 2"),
        (dict(attention="mla"), TypeError, "mla must be an MLAConfig"),
        (dict(mla=MLA), ValueError, "mla is given but no layer uses 'mla'"),
        (dict(attention="mla", mla=MLA, window=8), ValueError, "window is not supported on MLA"),
        (dict(attention="mla", mla=MLA, position="alibi"), ValueError, "MLA needs RoPE"),
        (dict(window=0), ValueError, "window must be >= 1"),
        (dict(position="sinusoidal"), ValueError, "position must be one of"),
        (dict(rope_type="ntk"), ValueError, "rope_type must be one of"),
        (dict(rope_parameters=[1.0]), TypeError, "rope_parameters must be a mapping"),
        (dict(rope_layout="pairs"), ValueError, "rope_layout must be one of"),
        (dict(rope_theta=-1.0), ValueError, "rope_theta must be a finite number > 0"),
        (dict(attention_bias=True), ValueError, "attention_bias must be one of"),
        (dict(mlp="moe"), TypeError, "moe must be a MoEConfig"),
        (dict(moe=MOE), ValueError, "moe is given but no layer uses a 'moe' mlp"),
        (dict(mlp=["dense", "sparse", "dense"]), ValueError, "mlp must be one of"),
        (dict(d_model=60), ValueError, "d_model must be divisible by n_heads"),
        (dict(tie_embeddings=1), TypeError, "tie_embeddings must be a bool"),
        (dict(norm_eps=0.0), ValueError, "norm_eps must be a finite number > 0"),
    ],
)
def test_decoder_config_errors(changes, exc, message):
    with pytest.raises(exc, match=message):
        DecoderConfig(**{**BASE, **changes})


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        (dict(n_experts=4, top_k=5, d_expert=8), ValueError, "top_k must be <= n_experts=4"),
        (
            dict(n_experts=4, top_k=2, d_expert=8, topk_method="best"),
            ValueError,
            "topk_method must be one of",
        ),
        (
            dict(n_experts=4, top_k=2, d_expert=8, topk_method="noaux_tc"),
            ValueError,
            "needs n_group and topk_group",
        ),
        (
            dict(n_experts=6, top_k=2, d_expert=8, topk_method="noaux_tc", n_group=4, topk_group=2),
            ValueError,
            "n_group must divide n_experts=6",
        ),
        (
            dict(n_experts=8, top_k=2, d_expert=8, topk_method="noaux_tc", n_group=4, topk_group=5),
            ValueError,
            "topk_group must be <= n_group=4",
        ),
        (
            dict(n_experts=8, top_k=5, d_expert=8, topk_method="noaux_tc", n_group=4, topk_group=2),
            ValueError,
            "top_k=5 exceeds the experts in topk_group=2 groups of 2",
        ),
        (
            dict(n_experts=4, top_k=2, d_expert=8, routed_scaling_factor=0),
            ValueError,
            "routed_scaling_factor must be a finite number > 0",
        ),
        (
            dict(n_experts=4, top_k=2, d_expert=8, norm_topk_prob="yes"),
            TypeError,
            "norm_topk_prob must be a bool",
        ),
    ],
)
def test_moe_config_errors(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        MoEConfig(**kwargs)


def test_mla_config_errors():
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=3, v_head_dim=4)
    with pytest.raises(ValueError, match="kv_lora_rank must be >= 1"):
        MLAConfig(kv_lora_rank=0, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4)
    with pytest.raises(ValueError, match="q_lora_rank must be >= 1"):
        MLAConfig(
            kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, q_lora_rank=0
        )


def test_layer_index_and_replace_errors():
    cfg = DecoderConfig(**BASE)
    with pytest.raises(ValueError, match="index must be < n_layers=3"):
        cfg.layer(3)
    with pytest.raises(TypeError, match=r"unknown DecoderConfig fields: \['layers'\]"):
        cfg.replace(layers=4)


def test_the_default_attention_kind_takes_any_number_of_kv_heads():
    """ "mha" names the whole MultiHeadAttention family: n_kv_heads alone makes GQA or MQA."""
    from llmref.models import DecoderLM

    cfg = DecoderConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
    assert cfg.layer(0).attention == "mha" and cfg.n_kv_heads == 2
    attn = DecoderLM(cfg).layers[0].attn
    assert (attn.n_heads, attn.n_kv_heads) == (4, 2)
    assert DecoderConfig(**{**BASE, "n_kv_heads": 1}).n_kv_heads == 1
    assert DecoderConfig(**{**BASE, "attention": "mqa"}).n_kv_heads == 1  # mqa's default


def test_attention_kinds_are_typed_specs_that_the_config_reads():
    from llmref.models import ATTENTION_KINDS
    from llmref.models.attention_kinds import AttentionKindSpec

    assert {"mha", "gqa", "mqa", "mla"} <= set(ATTENTION_KINDS)  # plus tests/extending toys
    assert all(isinstance(spec, AttentionKindSpec) for spec in ATTENTION_KINDS.values())
    assert ATTENTION_KINDS["mla"].section == "mla" and not ATTENTION_KINDS["mla"].windows
    assert ATTENTION_KINDS["gqa"].kv_heads(2, 8) and not ATTENTION_KINDS["gqa"].kv_heads(8, 8)
