"""MultiHeadLatentAttention: absorbed == expanded, cached decoding, transformers' DeepSeek-V2."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import MultiHeadLatentAttention, causal_mask, naive_attention
from tests.tolerances import assert_close

SIZES = dict(kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def make_mla(q_lora_rank=None, seed=0, **kw):
    torch.manual_seed(seed)
    mla = MultiHeadLatentAttention(48, 4, q_lora_rank=q_lora_rank, **SIZES, **kw).double()
    with torch.no_grad():  # non-trivial norm weights, so the tests see them
        mla.kv_norm.weight.uniform_(0.5, 1.5)
        if mla.q_norm is not None:
            mla.q_norm.weight.uniform_(0.5, 1.5)
    return mla


@pytest.mark.parametrize("q_lora_rank", [None, 10])
@pytest.mark.parametrize("masking", ["none", "causal", "mask"])
def test_absorbed_equals_expanded(q_lora_rank, masking):
    mla = make_mla(q_lora_rank)
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    kwargs = {"is_causal": True} if masking == "causal" else {}
    if masking == "mask":
        kwargs["mask"] = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    assert_close(mla.forward_absorbed(x, **kwargs), mla(x, **kwargs), torch.float64)


def test_expanded_path_against_hand_computation():
    mla = make_mla(q_lora_rank=10)
    x = torch.randn(1, 5, 48, dtype=torch.float64)
    H, nope, rope_dim, v_dim, r = 4, 8, 4, 6, 12
    q = mla.q_up(mla.q_norm(mla.q_down(x))).view(1, 5, H, nope + rope_dim).transpose(1, 2)
    c = mla.kv_down(x)
    latent, k_r = c[..., :r], c[..., r:]
    latent = latent / latent.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * mla.kv_norm.weight
    kv = (latent @ mla.kv_up.weight.T).view(1, 5, H, nope + v_dim).transpose(1, 2)
    q_rope = mla.rope(q[..., nope:])
    k_rope = mla.rope(k_r.unsqueeze(1)).expand(1, H, 5, rope_dim)
    heads = naive_attention(
        torch.cat([q[..., :nope], q_rope], -1),
        torch.cat([kv[..., :nope], k_rope], -1),
        kv[..., nope:],
        is_causal=True,
        scale=(nope + rope_dim) ** -0.5,
    )
    expected = mla.out_proj(heads.transpose(1, 2).reshape(1, 5, H * v_dim))
    assert_close(mla(x, is_causal=True), expected, torch.float64)


def test_decoding_from_a_latent_cache_equals_the_full_forward():
    """Prefill 6 tokens, then decode 3 one at a time using only the cached latent and RoPE key."""
    mla = make_mla(q_lora_rank=10)
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    full = mla(x, is_causal=True)
    latent, k_rope = mla.compress_kv(x[:, :6])
    steps = []
    for t in range(6, 9):
        new_latent, new_k_rope = mla.compress_kv(x[:, t : t + 1], offset=t)
        latent = torch.cat([latent, new_latent], dim=2)
        k_rope = torch.cat([k_rope, new_k_rope], dim=2)
        mask = causal_mask(1, t + 1, offset=t)
        steps.append(mla.forward_absorbed(x[:, t : t + 1], latent, k_rope, mask=mask, offset=t))
    assert_close(torch.cat(steps, dim=1), full[:, 6:], torch.float64)
    assert latent.shape[-1] + k_rope.shape[-1] == 12 + 4  # cached numbers per token


def test_matches_transformers_deepseek_v2_attention():
    ds = pytest.importorskip("transformers.models.deepseek_v2.modeling_deepseek_v2")
    from transformers import DeepseekV2Config

    from llmref.position import RotaryEmbedding

    cfg = DeepseekV2Config(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=10,
        kv_lora_rank=12,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,
        num_hidden_layers=1,
        max_position_embeddings=64,
        rope_theta=10000.0,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(3)
    hf = ds.DeepseekV2Attention(cfg, layer_idx=0).double().eval()
    with torch.no_grad():
        hf.q_a_layernorm.weight.uniform_(0.5, 1.5)
        hf.kv_a_layernorm.weight.uniform_(0.5, 1.5)
    rope = RotaryEmbedding(4, layout="interleaved", dtype=torch.float32)
    mla = MultiHeadLatentAttention(48, 4, q_lora_rank=10, **SIZES, rope=rope).double()
    mapping = {
        "q_down": hf.q_a_proj,
        "q_norm": hf.q_a_layernorm,
        "q_up": hf.q_b_proj,
        "kv_down": hf.kv_a_proj_with_mqa,
        "kv_norm": hf.kv_a_layernorm,
        "kv_up": hf.kv_b_proj,
        "out_proj": hf.o_proj,
    }
    with torch.no_grad():
        for ours, theirs in mapping.items():
            getattr(mla, ours).weight.copy_(theirs.weight)
    T = 7
    x = torch.randn(2, T, 48, dtype=torch.float64)
    freqs = ds.DeepseekV2RotaryEmbedding(cfg)(x, torch.arange(T)[None])
    additive = torch.zeros(T, T, dtype=torch.float64).masked_fill(~causal_mask(T), float("-inf"))[
        None, None
    ]
    expected = hf(x, attention_mask=additive, position_embeddings=freqs)[0]
    # transformers rotates in float32 (view_as_complex) and takes the softmax in float32.
    assert_close(mla(x, is_causal=True), expected, torch.float32)
    assert_close(mla.forward_absorbed(x, is_causal=True), expected, torch.float32)


def test_both_paths_give_the_same_gradients():
    mla = make_mla(q_lora_rank=10)
    x = torch.randn(2, 6, 48, dtype=torch.float64)
    grads = []
    for path in (mla.forward, mla.forward_absorbed):
        mla.zero_grad()
        xi = x.clone().requires_grad_(True)
        path(xi, is_causal=True).square().sum().backward()
        grads.append([xi.grad, *(p.grad.clone() for p in mla.parameters())])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, torch.float64)


def test_bad_input():
    mla = make_mla()
    x = torch.randn(1, 4, 48, dtype=torch.float64)
    latent, k_rope = mla.compress_kv(x)
    with pytest.raises(ValueError, match="latent and k_rope must be given together"):
        mla.forward_absorbed(x, latent)
    with pytest.raises(ValueError, match=r"latent must have shape \(B, 1, S, 12\)"):
        mla.forward_absorbed(x, latent[..., :5], k_rope)
    with pytest.raises(ValueError, match="x must have last dim d_model=48"):
        mla(torch.randn(1, 4, 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="qk_rope_head_dim must be >= 2"):
        MultiHeadLatentAttention(48, 4, **{**SIZES, "qk_rope_head_dim": 1})
    with pytest.raises(ValueError, match="kv_lora_rank must be >= 1"):
        MultiHeadLatentAttention(48, 4, **{**SIZES, "kv_lora_rank": 0})


def test_auto_backend_runs_the_absorbed_path_on_the_chunked_kernel(monkeypatch):
    """CPU SDPA has no fused kernel when the value width (kv_lora_rank) differs from the
    query/key width (kv_lora_rank + rope dim); "auto" must not send the absorbed path there."""
    mla = make_mla(q_lora_rank=10)
    assert mla.backend == "sdpa" and mla.absorbed_backend == "chunked"
    explicit = make_mla(q_lora_rank=10, backend="sdpa")
    assert explicit.absorbed_backend == "sdpa"  # an explicit choice is respected
    x = torch.randn(2, 7, 48, dtype=torch.float64)
    expected = explicit.forward_absorbed(x, is_causal=True)
    import llmref.attention.chunked as chunked_module
    import llmref.attention.functional as functional_module

    calls = []
    chunked_apply = chunked_module._ChunkedAttention.apply
    sdpa = functional_module.F.scaled_dot_product_attention
    monkeypatch.setattr(
        chunked_module._ChunkedAttention,
        "apply",
        lambda *a: calls.append("chunked") or chunked_apply(*a),
    )
    monkeypatch.setattr(
        functional_module.F,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append("sdpa") or sdpa(*a, **k),
    )
    out = mla.forward_absorbed(x, is_causal=True)
    assert calls == ["chunked"]
    assert_close(out, expected, torch.float64)
    mla(x, is_causal=True)  # the expanded path (equal widths per head) keeps SDPA
    assert calls == ["chunked", "sdpa"]
