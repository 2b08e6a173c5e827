"""from_transformers: same logits and same greedy generations as transformers' own models."""

from __future__ import annotations

import pytest
import torch

from llmref.models import config_from_transformers, from_transformers, generate
from tests.models.helpers import assert_greedy_tokens_match, assert_logits_within, float64_twin

pytestmark = pytest.mark.xcheck

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,  # decisive argmaxes: float32 rounding never flips a greedy choice
)
DEEPSEEK = dict(
    COMMON,
    num_hidden_layers=3,
    num_key_value_heads=4,
    moe_intermediate_size=32,
    kv_lora_rank=16,
    q_lora_rank=24,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=4,
    topk_group=2,
)
YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 64,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# name -> (transformers class name, config class name, config overrides)
ARCHS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "llama-bias-llama3-tied": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {"attention_bias": True, "rope_parameters": LLAMA3, "tie_word_embeddings": True},
    ),
    "mistral-window": ("MistralForCausalLM", "MistralConfig", {"sliding_window": 5}),
    "qwen2-mixed-window": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
    ),
    "deepseek_v2": ("DeepseekV2ForCausalLM", "DeepseekV2Config", {"topk_method": "greedy"}),
    "deepseek_v2-group-no-q-lora": (
        "DeepseekV2ForCausalLM",
        "DeepseekV2Config",
        {"topk_method": "group_limited_greedy", "q_lora_rank": None},
    ),
    "deepseek_v3-yarn": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        {"routed_scaling_factor": 2.5, "rope_parameters": YARN},
    ),
    "deepseek_v3-half-rope": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        {"rope_interleave": False},
    ),
}


def build(arch):
    transformers = pytest.importorskip("transformers")
    model_cls, config_cls, overrides = ARCHS[arch]
    base = DEEPSEEK if arch.startswith("deepseek") else COMMON
    config = getattr(transformers, config_cls)(**{**base, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # non-trivial norms, biases and router biases, so the test sees them
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
    return hf


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request):
    hf = build(request.param)
    return request.param, hf, from_transformers(hf)


@pytest.fixture(scope="module")
def reference(pair):
    """llmref's model in float64 (transformers' own float64 model is no reference: its
    RMSNorm and eager softmax run in float32 whatever the model's dtype)."""
    return float64_twin(pair[2])


def prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # the first prompt is left-padded
    return ids, mask


def test_logits_match_transformers(pair, reference):
    _, hf, model = pair
    ids, mask = prompts()
    assert_logits_within(reference, ids, torch.ones_like(ids), llmref=model, transformers=hf)
    assert_logits_within(reference, ids, mask, llmref=model, transformers=hf)  # left padding


def test_greedy_generation_matches_transformers(pair, reference):
    """32 greedy tokens, batched with left padding: the teacher-forced logits along
    transformers' tokens, and identical tokens up to the first step whose top-2 margin is
    within the two models' rounding (all 32 but after a near-tie in one qwen2 row)."""
    _, hf, model = pair
    ids, mask = prompts()
    expected = hf.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert expected.shape == (2, 42)
    out = generate(model, ids, 32, attention_mask=mask)
    full_mask = torch.cat([mask, torch.ones_like(expected[:, 10:])], dim=1)
    ref, scale = assert_logits_within(reference, expected, full_mask, llmref=model, transformers=hf)
    assert_greedy_tokens_match(out, expected, ref, scale, prompt=10)


def test_weights_are_copied_not_shared():
    hf = build("llama")
    model = from_transformers(hf)
    with torch.no_grad():
        hf.model.embed_tokens.weight.zero_()
    assert model.embed.weight.abs().sum() > 0


def test_config_conversion_details():
    hf = build("qwen2-mixed-window")
    cfg = config_from_transformers(hf.config)
    assert cfg.window == (None, 5) and cfg.attention_bias == "qkv" and cfg.attention == ("gqa",) * 2
    ds = config_from_transformers(build("deepseek_v3-yarn").config)
    assert ds.mlp == ("dense", "moe", "moe") and ds.moe.topk_method == "noaux_tc"
    mscale = 0.1 * torch.log(torch.tensor(4.0)).item() + 1.0
    assert ds.attention_scale == pytest.approx(12**-0.5 * mscale**2)


def test_unsupported_models_are_rejected():
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="model_type must be one of"):
        config_from_transformers(transformers.GPT2Config())
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        config_from_transformers({**COMMON, "model_type": "llama", "hidden_act": "gelu"})
    with pytest.raises(TypeError, match="hf_model must be a transformers model"):
        from_transformers(torch.nn.Linear(2, 2))
