"""MultiHeadLatentAttention: absorbed == expanded, cached decoding, transformers' DeepSeek-V2."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import MultiHeadLatentAttention, causal_mask, naive_attention
from llmref.testing import assert_within
from tests.attention.reference import (
    attention_err,
    exact,
    grad_scales,
    linear_err,
    mag,
    rms_norm_err,
    rope_err,
)

SIZES = dict(kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
ROUNDED = frozenset({"projections", "norm", "rope"})
BOTH = ("expanded", "absorbed")


def mla_mag(mla, x, *, mask=None, is_causal=False, paths=BOTH, rounded=ROUNDED, grad=False):
    """The error scale of MultiHeadLatentAttention (tests.attention.reference): the query
    and key/value down-projections, their RMSNorms, the up-projections, RoPE, attention
    and the output projection, on the expanded path (K and V from the latent), the
    absorbed one (attention over the latent, W_uk and W_uv applied to queries and
    outputs), or the sum of both (comparing the two). ``rounded``: the steps whose own
    rounding counts (attention always does). Returns it and the leaves: "x" (its error,
    0) and every parameter's ``|p|`` by name (recording gradients if ``grad``)."""
    own = {step: step in rounded for step in ROUNDED}
    B, T, _ = x.shape
    H, nope, r, dv = mla.n_heads, mla.qk_nope_head_dim, mla.kv_lora_rank, mla.v_head_dim
    leaves = {"x": exact(x)}
    leaves.update({n: mag(p, grad=grad) for n, p in mla.named_parameters()})

    def linear(name, y, e):
        module = getattr(mla, name)
        wm, bm = leaves[f"{name}.weight"], leaves.get(f"{name}.bias")
        return linear_err(y, e, module.weight, module.bias, wm=wm, bm=bm, own=own["projections"])

    def norm(name, y, e):
        module = getattr(mla, name)
        w = leaves[f"{name}.weight"]
        return rms_norm_err(y, e, module.weight, eps=module.eps, wm=w, own=own["norm"])

    if mla.q_proj is not None:
        q, eq = linear("q_proj", x, leaves["x"])
    else:
        q, eq = linear("q_up", *norm("q_norm", *linear("q_down", x, leaves["x"])))
    q, eq = (t.view(B, T, H, -1).transpose(1, 2) for t in (q, eq))
    q_nope, q_rope = q.split([nope, q.shape[-1] - nope], dim=-1)
    e_nope, e_rope = eq.split([nope, q.shape[-1] - nope], dim=-1)
    q_rope, e_rope = rope_err(q_rope, e_rope, mla.rope, own=own["rope"])
    c, ec = linear("kv_down", x, leaves["x"])
    latent, e_latent = norm("kv_norm", c[..., :r], ec[..., :r])
    latent, e_latent = latent.unsqueeze(1), e_latent.unsqueeze(1)
    k_rope, ek_rope = rope_err(
        c[..., r:].unsqueeze(1), ec[..., r:].unsqueeze(1), mla.rope, own=own["rope"]
    )
    heads_err = 0.0
    if "expanded" in paths:
        kv, ekv = linear("kv_up", latent.squeeze(1), e_latent.squeeze(1))
        kv, ekv = (t.view(B, T, H, nope + dv).transpose(1, 2) for t in (kv, ekv))
        expand = lambda t: t.expand(-1, H, -1, -1)  # noqa: E731
        heads, err = attention_err(
            torch.cat([q_nope, q_rope], -1),
            torch.cat([kv[..., :nope], expand(k_rope)], -1),
            kv[..., nope:],
            torch.cat([e_nope, e_rope], -1),
            torch.cat([ekv[..., :nope], expand(ek_rope)], -1),
            ekv[..., nope:],
            mask=mask,
            is_causal=is_causal,
            scale=mla.scale,
        )
        heads, heads_err = heads.transpose(1, 2), heads_err + err.transpose(1, 2)  # (B, T, H, dv)
    if "absorbed" in paths:
        w_up = mla.kv_up.weight.detach().double().view(H, nope + dv, r)
        m_up = leaves["kv_up.weight"].view(H, nope + dv, r)
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_up[:, :nope])
        e_lat = torch.einsum(
            "bhtn,hnr->bhtr", q_nope.abs() * own["projections"] + e_nope, m_up[:, :nope]
        )
        out, err = attention_err(
            torch.cat([q_lat, q_rope], -1),
            torch.cat([latent, k_rope], -1),
            latent,
            torch.cat([e_lat, e_rope], -1),
            torch.cat([e_latent, ek_rope], -1),
            e_latent,
            mask=mask,
            is_causal=is_causal,
            scale=mla.scale,
        )
        heads = torch.einsum("bhtr,hvr->bthv", out, w_up[:, nope:])
        own_out = out.abs() * own["projections"]
        heads_err = heads_err + torch.einsum("bhtr,hvr->bthv", own_out + err, m_up[:, nope:])
    _, out_err = linear("out_proj", heads.reshape(B, T, H * dv), heads_err.reshape(B, T, H * dv))
    return out_err, leaves


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
    scale, _ = mla_mag(mla, x, **kwargs)
    assert_within(mla.forward_absorbed(x, **kwargs), mla(x, **kwargs), scale=scale)


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
    scale, _ = mla_mag(mla, x, is_causal=True, paths=("expanded",))
    assert_within(mla(x, is_causal=True), expected, scale=scale)


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
    scale, _ = mla_mag(mla, x, is_causal=True)  # row t of the causal forward sees keys 0..t
    assert_within(torch.cat(steps, dim=1), full[:, 6:], scale=scale[:, 6:])
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
    # transformers normalises and rotates in float32 (view_as_complex) and takes the softmax
    # in float32; its projections are float64 like ours, 2^29 times finer.
    for path, fn in (("expanded", mla), ("absorbed", mla.forward_absorbed)):
        scale, _ = mla_mag(mla, x, is_causal=True, paths=(path,), rounded={"norm", "rope"})
        assert_within(fn(x, is_causal=True), expected, scale=scale, dtype=torch.float32, what=path)


def test_both_paths_give_the_same_gradients():
    mla = make_mla(q_lora_rank=10)
    x = torch.randn(2, 6, 48, dtype=torch.float64)
    grads = []
    for path in (mla.forward, mla.forward_absorbed):
        mla.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = path(xi, is_causal=True)
        out.square().sum().backward()
        grads.append([xi.grad, *(p.grad.clone() for p in mla.parameters())])
    err, leaves = mla_mag(mla, x, is_causal=True, grad=True)
    names = ["x", *(n for n, _ in mla.named_parameters())]
    scales = grad_scales(err, 2 * out, [leaves[n] for n in names])  # d(sum out^2) = 2 out
    for a, b, scale, name in zip(*grads, scales, names, strict=True):
        assert_within(a, b, scale=scale, what=f"grad of {name}")


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
    scale, _ = mla_mag(mla, x, is_causal=True, paths=("absorbed",))
    assert_within(out, expected, scale=scale)
    mla(x, is_causal=True)  # the expanded path (equal widths per head) keeps SDPA
    assert calls == ["chunked", "sdpa"]
