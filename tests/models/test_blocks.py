"""Blocks: SwiGLU, routing and mixture of experts (against transformers' DeepSeek), whole blocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmref.models import (
    ROUTERS,
    DecoderBlock,
    DecoderConfig,
    MoE,
    MoEConfig,
    SwiGLU,
    TransformerBlock,
    moe,
    route_tokens,
    swiglu,
)
from llmref.testing import assert_within
from tests.models.helpers import forward_scale


def test_swiglu_against_its_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12, bias=True).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    g = x @ mlp.gate_proj.weight.T + mlp.gate_proj.bias
    u = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    expected = (g * torch.sigmoid(g) * u) @ mlp.down_proj.weight.T + mlp.down_proj.bias
    scale = forward_scale(mlp, x)  # the three projections' |x||W| + |b|
    assert_within(mlp(x), expected, scale=scale)
    w = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    b = dict(b_gate=mlp.gate_proj.bias, b_up=mlp.up_proj.bias, b_down=mlp.down_proj.bias)
    assert_within(swiglu(x, *w, **b), expected, scale=scale)


@pytest.mark.xcheck
def test_swiglu_matches_transformers_llama_mlp():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    torch.manual_seed(1)
    hf = llama.LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2))
    mlp = SwiGLU(16, 40)
    mlp.load_state_dict(hf.state_dict())
    x = torch.randn(3, 16)
    # each side against the float64 forward of the same weights
    ref = copy.deepcopy(mlp).double()
    expected, scale = ref(x.double()), forward_scale(ref, x.double())
    assert_within(mlp(x), expected, scale=scale)
    assert_within(hf(x), expected, scale=scale, what="transformers' LlamaMLP")


def naive_moe(x, layer):
    """Token by token, expert by expert, in float64."""
    weights, indices = layer.route(x)
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for w, e in zip(weights[n], indices[n], strict=True):
            gate, up = (x[n] @ layer.gate_up_proj[e].T).chunk(2)
            out[n] += w * ((F.silu(gate) * up) @ layer.down_proj[e].T)
    return out


@pytest.mark.parametrize("method", list(ROUTERS))
def test_moe_equals_the_naive_loop(method):
    grouped = ROUTERS[method].grouped
    cfg = MoEConfig(
        n_experts=8,
        top_k=3,
        d_expert=6,
        topk_method=method,
        n_group=4 if grouped else None,
        topk_group=2 if grouped else None,
        norm_topk_prob=True,
    )
    torch.manual_seed(2)
    layer = MoE(10, cfg).double()
    x = torch.randn(2, 7, 10, dtype=torch.float64)
    flat = x.reshape(-1, 10)
    # experts batched by GEMMs against one token at a time: the same sums to rounding
    assert_within(layer(x).reshape(-1, 10), naive_moe(flat, layer), scale=forward_scale(layer, x))
    weights, indices = layer.route(flat)
    # float32 routing weights normalised over top_k = 3: a few roundings of 1
    assert_within(weights.sum(-1), torch.ones(14, dtype=torch.float64), scale=1.0)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # distinct experts per token


def test_group_routing_only_uses_the_best_groups():
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0, 4.0, 4.0, 0.0, 0.0]])  # 4 groups of 2
    # group maxima (softmax): g0 = e0, g2 = e4/e5 -> with topk_group=1 only group 0 is allowed
    _, idx = route_tokens(logits, 2, topk_method="group_limited_greedy", n_group=4, topk_group=1)
    assert sorted(idx[0].tolist()) == [0, 1]
    _, idx = route_tokens(logits, 2, topk_method="greedy")
    assert sorted(idx[0].tolist()) == [0, 4] or sorted(idx[0].tolist()) == [0, 5]
    # noaux_tc ranks groups by the sum of their two best (sigmoid) scores: g2 (4, 4) wins over g0
    _, idx = route_tokens(logits, 2, topk_method="noaux_tc", n_group=4, topk_group=1)
    assert sorted(idx[0].tolist()) == [4, 5]
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.4, 0.0, 0.0, 0.0])  # biases the choice only
    w, idx = route_tokens(
        logits, 2, topk_method="noaux_tc", n_group=4, topk_group=2, correction_bias=bias
    )
    assert sorted(idx[0].tolist()) == [0, 5]
    expected = torch.sigmoid(torch.tensor([4.0, 5.0], dtype=torch.float64))
    assert_within(w.sort().values[0], expected, scale=expected)  # a sigmoid: a rounding or two


@pytest.mark.xcheck
@pytest.mark.parametrize(
    "version,method", [("v2", "greedy"), ("v2", "group_limited_greedy"), ("v3", "noaux_tc")]
)
def test_moe_matches_transformers_deepseek(version, method):
    transformers = pytest.importorskip("transformers")
    if version == "v2":
        from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds

        config = transformers.DeepseekV2Config(topk_method=method)
        hf_cls = ds.DeepseekV2Moe
    else:
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds

        config = transformers.DeepseekV3Config()
        hf_cls = ds.DeepseekV3MoE
    sizes = dict(
        hidden_size=24,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_shared_experts=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=version == "v3",
    )
    for k, v in sizes.items():
        setattr(config, k, v)
    torch.manual_seed(3)
    hf = hf_cls(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
        if version == "v3":
            hf.gate.e_score_correction_bias.normal_(0, 0.2)
    cfg = MoEConfig(
        n_experts=8,
        top_k=3,
        d_expert=8,
        n_shared_experts=2,
        topk_method=method,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=version == "v3",
    )
    layer = MoE(24, cfg)
    state = {
        "router.weight": hf.gate.weight,
        "gate_up_proj": hf.experts.gate_up_proj,
        "down_proj": hf.experts.down_proj,
        **{f"shared_experts.{k}": v for k, v in hf.shared_experts.state_dict().items()},
    }
    if version == "v3":
        state["e_score_correction_bias"] = hf.gate.e_score_correction_bias
    layer.load_state_dict(state)
    x = torch.randn(2, 9, 24)
    # each side against llmref's float64 forward of the same weights (routing in float32, as
    # both do; the choices are decisive for this seed)
    ref = copy.deepcopy(layer).double()
    expected, scale = ref(x.double()), forward_scale(ref, x.double())
    with torch.no_grad():
        assert_within(layer(x), expected, scale=scale)
        assert_within(hf(x), expected, scale=scale, what="transformers' DeepSeek MoE")


def test_decoder_block_is_pre_norm_residual():
    cfg = DecoderConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2, d_ff=24, position="nope")
    torch.manual_seed(4)
    block = DecoderBlock(cfg, 0).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x + block.attn(block.attn_norm(x), is_causal=True)
    expected = h + block.mlp(block.mlp_norm(h))
    assert_within(block(x), expected, scale=forward_scale(block, x))


def test_transformer_block_is_the_notes_post_norm_block():
    torch.manual_seed(5)
    block = TransformerBlock(16, 4, d_ff=32).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    h = F.layer_norm(x + block.attn(x), (16,), block.norm1.weight, block.norm1.bias)
    ff = block.mlp[2](torch.relu(block.mlp[0](h)))
    expected = F.layer_norm(h + ff, (16,), block.norm2.weight, block.norm2.bias)
    scale = forward_scale(block, x)
    assert_within(block(x), expected, scale=scale)
    # bidirectional: the first token sees the last one (a change a million roundings wide)
    y = x.clone()
    y[:, -1] += 1
    with pytest.raises(AssertionError, match="outside"):
        assert_within(block(x)[:, 0], block(y)[:, 0], scale=scale, c=1e6)


def test_bad_input():
    with pytest.raises(ValueError, match=r"w_down must be \(d_model, d_ff\)"):
        swiglu(torch.randn(2, 4), torch.randn(6, 4), torch.randn(6, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="w_gate and w_up must both be"):
        swiglu(torch.randn(2, 4), torch.randn(6, 3), torch.randn(6, 3), torch.randn(3, 6))
    with pytest.raises(ValueError, match="top_k must be <= the number of experts 4"):
        route_tokens(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match="needs n_group and topk_group"):
        route_tokens(torch.randn(3, 4), 2, topk_method="noaux_tc")
    with pytest.raises(KeyError, match="unknown router 'best'"):
        route_tokens(torch.randn(3, 4), 2, topk_method="best")
    with pytest.raises(ValueError, match="do not fit x"):
        moe(
            torch.randn(3, 4),
            torch.randn(2, 6, 5),
            torch.randn(2, 5, 3),
            torch.ones(3, 1),
            torch.zeros(3, 1, dtype=torch.long),
        )
    with pytest.raises(TypeError, match="config must be a MoEConfig"):
        MoE(4, {"n_experts": 2})
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        TransformerBlock(8, 2, dropout=1.0)
