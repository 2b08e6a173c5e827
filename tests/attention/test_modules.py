"""MultiHeadAttention: against torch.nn.MultiheadAttention, GQA/MQA semantics, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmref.attention import MultiHeadAttention, causal_mask, naive_attention, sliding_window_mask
from llmref.testing import assert_within
from tests.attention.reference import (
    attention_err,
    exact,
    grad_scales,
    linear_err,
    mag,
    rms_norm_err,
    rope_err,
    textbook_attention,
)

ROUNDED = frozenset({"projections", "norm", "rope"})


def mha_mag(
    mha, x, context=None, *, mask=None, is_causal=False, bias=None, grad=False, rounded=ROUNDED
):
    """The error scale of a MultiHeadAttention call (tests.attention.reference): the
    projections, QK-norm, RoPE, attention (window, softcap, sinks, bias) and the output
    projection. ``rounded``: the steps whose own rounding counts, all unless the other
    side runs only some steps in the dtype compared (attention always counts). Returns it
    and the leaves whose gradients scale the gradients (with ``grad``): "x" (its error,
    0) and every parameter's ``|p|`` by name."""
    own = {step: step in rounded for step in ROUNDED}
    ctx = x if context is None else context
    B, T, _ = x.shape
    S = ctx.shape[1]
    H, H_kv, D = mha.n_heads, mha.n_kv_heads, mha.head_dim
    leaves = {"x": exact(x)}
    leaves.update({n: mag(p, grad=grad) for n, p in mha.named_parameters()})
    ctx_err = leaves["x"] if context is None else 0.0
    rows = [H * D, H_kv * D, H_kv * D]
    weights = mha.qkv_proj.weight.split(rows)
    weight_mags = leaves["qkv_proj.weight"].split(rows)
    biases = bias_mags = [None] * 3
    if mha.qkv_proj.bias is not None:
        biases = mha.qkv_proj.bias.split(rows)
        bias_mags = leaves["qkv_proj.bias"].split(rows)
    sources = ((x, leaves["x"], H, T), (ctx, ctx_err, H_kv, S), (ctx, ctx_err, H_kv, S))
    acts, errs = [], []
    for i, (src, src_err, n, L) in enumerate(sources):
        y, e = linear_err(
            src,
            src_err,
            weights[i],
            biases[i],
            wm=weight_mags[i],
            bm=bias_mags[i],
            own=own["projections"],
        )
        acts.append(y.view(B, L, n, D).transpose(1, 2))
        errs.append(e.view(B, L, n, D).transpose(1, 2))
    for i, name in ((0, "q_norm"), (1, "k_norm")):
        norm = getattr(mha, name)
        if norm is not None:
            w = leaves[f"{name}.weight"]
            acts[i], errs[i] = rms_norm_err(
                acts[i], errs[i], norm.weight, eps=norm.eps, wm=w, own=own["norm"]
            )
        if mha.rope is not None:
            acts[i], errs[i] = rope_err(acts[i], errs[i], mha.rope, own=own["rope"])
    if mha.window is not None and is_causal:  # the window is one of the causal rules
        window = sliding_window_mask(T, S, window=mha.window, offset=S - T)
        mask = window if mask is None else mask & window
    options = {"softcap": mha.softcap, "bias": bias, "scale": mha.scale}
    if mha.sink_logits is not None:
        options.update(sinks=mha.sink_logits, es=0.0)
    heads, err = attention_err(*acts, *errs, mask=mask, is_causal=is_causal, **options)
    heads, err = (t.transpose(1, 2).reshape(B, T, H * D) for t in (heads, err))
    out = mha.out_proj
    _, out_err = linear_err(
        heads,
        err,
        out.weight,
        out.bias,
        wm=leaves["out_proj.weight"],
        bm=leaves.get("out_proj.bias"),
        own=own["projections"],
    )
    return out_err, leaves


def torch_reference(ref, x, context=None, mask=None, is_causal=False):
    context = x if context is None else context
    T, S = x.shape[1], context.shape[1]
    # torch's boolean attn_mask means True = NOT allowed: the opposite of llmref.
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed &= causal_mask(T, S)
    if mask is not None:
        allowed &= mask
    out, _ = ref(x, context, context, attn_mask=~allowed, need_weights=False)
    return out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("backend", ["auto", "naive", "sdpa"])
def test_matches_torch_multihead_attention(bias, is_causal, backend):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(48, 6, bias=bias, batch_first=True).double()
    mha = MultiHeadAttention.from_torch(ref, backend=backend)
    x = torch.randn(3, 10, 48, dtype=torch.float64)
    scale, _ = mha_mag(mha, x, is_causal=is_causal)
    expected = torch_reference(ref, x, is_causal=is_causal)
    assert_within(mha(x, is_causal=is_causal), expected, scale=scale)


def test_matches_torch_with_mask_and_cross_attention():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(32, 4, batch_first=True).double()
    mha = MultiHeadAttention.from_torch(ref)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    ctx = torch.randn(2, 9, 32, dtype=torch.float64)
    mask = torch.rand(5, 9) > 0.3
    mask[:, 0] = True
    scale, _ = mha_mag(mha, x, ctx, mask=mask)
    assert_within(mha(x, ctx, mask=mask), torch_reference(ref, x, ctx, mask=mask), scale=scale)


def test_float32_and_gradients_match_torch():
    torch.manual_seed(2)
    ref = nn.MultiheadAttention(64, 8, batch_first=True)
    mha = MultiHeadAttention.from_torch(ref)
    x1 = torch.randn(2, 16, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out_ref = torch_reference(ref, x1, is_causal=True)
    out = mha(x2, is_causal=True)
    # Two float32 computations in different op orders: the bound covers the rounding of both.
    out_mag, leaves = mha_mag(mha, x2, is_causal=True, grad=True)
    assert_within(out, out_ref, scale=out_mag.detach())
    g = torch.randn_like(out)
    out_ref.backward(g)
    out.backward(g)
    names = ["x", "qkv_proj.weight", "out_proj.weight"]
    scales = grad_scales(out_mag, g, [leaves[n] for n in names])
    pairs = [
        (x2.grad, x1.grad),
        (mha.qkv_proj.weight.grad, ref.in_proj_weight.grad),
        (mha.out_proj.weight.grad, ref.out_proj.weight.grad),
    ]
    for (got, want), scale, name in zip(pairs, scales, names, strict=True):
        assert_within(got, want, scale=scale, what=f"grad of {name}")


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4, 8])
def test_grouped_heads_match_textbook_computation(n_kv_heads):
    """GQA/MQA: query head h reads key/value head h // (H / H_kv), computed from scratch."""
    torch.manual_seed(3)
    H, D, d_model = 8, 4, 24
    mha = MultiHeadAttention(d_model, H, n_kv_heads=n_kv_heads, head_dim=D, bias=True).double()
    x = torch.randn(2, 7, d_model, dtype=torch.float64)
    W, b = mha.qkv_proj.weight, mha.qkv_proj.bias
    q_w, k_w, v_w = W.split([H * D, n_kv_heads * D, n_kv_heads * D])
    q_b, k_b, v_b = b.split([H * D, n_kv_heads * D, n_kv_heads * D])
    q = (x @ q_w.T + q_b).view(2, 7, H, D).transpose(1, 2)
    k = (x @ k_w.T + k_b).view(2, 7, n_kv_heads, D).transpose(1, 2)
    v = (x @ v_w.T + v_b).view(2, 7, n_kv_heads, D).transpose(1, 2)
    heads = textbook_attention(q, k, v, is_causal=True)
    expected = (
        heads.transpose(1, 2).reshape(2, 7, H * D) @ mha.out_proj.weight.T + mha.out_proj.bias
    )
    scale, _ = mha_mag(mha, x, is_causal=True)
    assert_within(mha(x, is_causal=True), expected, scale=scale)
    assert mha.qkv_proj.weight.shape == ((H + 2 * n_kv_heads) * D, d_model)


def test_out_bias_defaults_to_bias_and_can_differ():
    for bias, out_bias, expected in [
        (True, None, True),
        (False, None, False),
        (True, False, False),
        (False, True, True),
    ]:
        mha = MultiHeadAttention(32, 4, bias=bias, out_bias=out_bias)
        assert (mha.qkv_proj.bias is not None) == bias
        assert (mha.out_proj.bias is not None) == expected


def test_kv_projection_shrinks_with_fewer_kv_heads():
    mha = MultiHeadAttention(64, 8)
    mqa = MultiHeadAttention(64, 8, n_kv_heads=1)
    assert mha.qkv_proj.out_features == 3 * 64
    assert mqa.qkv_proj.out_features == 64 + 2 * 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dtype_is_preserved(dtype):
    mha = MultiHeadAttention(32, 4, n_kv_heads=2, dtype=dtype)
    out = mha(torch.randn(1, 3, 32, dtype=dtype))
    assert out.dtype == dtype and out.shape == (1, 3, 32)


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((64, 8), {"n_kv_heads": 3}, ValueError, "n_heads must be a multiple of n_kv_heads"),
        ((60, 8), {}, ValueError, "d_model must be divisible by n_heads"),
        ((64, 0), {}, ValueError, "n_heads must be >= 1"),
        ((64, 8.0), {}, TypeError, "n_heads must be an int"),
        ((64, 8), {"n_kv_heads": 0}, ValueError, "n_kv_heads must be >= 1"),
        ((64, 8), {"backend": "flash"}, ValueError, "backend must be one of"),
        ((64, 8), {"out_bias": 1}, TypeError, "out_bias must be a bool, got int"),
    ],
)
def test_bad_config(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        MultiHeadAttention(*args, **kwargs)


def test_bad_forward_input():
    mha = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match="x must be 3-D"):
        mha(torch.randn(2, 16))
    with pytest.raises(ValueError, match="x must have last dim d_model=16"):
        mha(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="context batch size must equal"):
        mha(torch.randn(2, 3, 16), torch.randn(1, 3, 16))
    with pytest.raises(TypeError, match=r"mask must be a torch\.bool"):
        mha(torch.randn(1, 3, 16), mask=torch.ones(3, 3))


def test_from_torch_rejects_unsupported():
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="kdim == vdim == embed_dim"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    with pytest.raises(ValueError, match="add_zero_attn"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


# -- options: QK-norm, softcap, window, sinks, injected position encodings -----------------


def split_heads(mha, x):
    """Projected q, k, v of a MultiHeadAttention, computed here from its weights."""
    B, T, _ = x.shape
    H, H_kv, D = mha.n_heads, mha.n_kv_heads, mha.head_dim
    q, k, v = (x @ mha.qkv_proj.weight.T).split([H * D, H_kv * D, H_kv * D], dim=-1)
    return (
        q.view(B, T, H, D).transpose(1, 2),
        k.view(B, T, H_kv, D).transpose(1, 2),
        v.view(B, T, H_kv, D).transpose(1, 2),
    )


def merge_heads(mha, heads):
    B, _, T, _ = heads.shape
    return heads.transpose(1, 2).reshape(B, T, -1) @ mha.out_proj.weight.T


def test_options_against_hand_computation():
    torch.manual_seed(4)
    mha = MultiHeadAttention(
        32, 4, n_kv_heads=2, qk_norm=True, softcap=3.0, window=3, sinks=True, scale=0.2
    ).double()
    assert mha.backend == "chunked"  # SDPA cannot softcap or sink
    with torch.no_grad():
        mha.q_norm.weight.uniform_(0.5, 1.5)
        mha.k_norm.weight.uniform_(0.5, 1.5)
        mha.sink_logits.normal_()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    q, k, v = split_heads(mha, x)
    rms = lambda t, w: t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w  # noqa: E731
    q, k = rms(q, mha.q_norm.weight), rms(k, mha.k_norm.weight)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    s = 3.0 * torch.tanh(q @ k.transpose(-1, -2) * 0.2 / 3.0)
    i, j = torch.arange(6).view(6, 1), torch.arange(6)
    s = s.masked_fill(~((j <= i) & (i - j < 3)), float("-inf"))
    sink = mha.sink_logits.view(1, 4, 1, 1).expand(2, 4, 6, 1)
    w = torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :-1]
    scale, _ = mha_mag(mha, x, is_causal=True)
    assert_within(mha(x, is_causal=True), merge_heads(mha, w @ v), scale=scale)
    naive = MultiHeadAttention(
        32,
        4,
        n_kv_heads=2,
        qk_norm=True,
        softcap=3.0,
        window=3,
        sinks=True,
        scale=0.2,
        backend="naive",
    ).double()
    naive.load_state_dict(mha.state_dict())
    assert_within(naive(x, is_causal=True), mha(x, is_causal=True), scale=scale)


def test_backend_must_support_the_options():
    with pytest.raises(ValueError, match=r"backend 'sdpa' does not support \['sinks', 'softcap'\]"):
        MultiHeadAttention(16, 2, softcap=5.0, sinks=True, backend="sdpa")
    assert MultiHeadAttention(16, 2, window=4).backend == "sdpa"


def test_injected_position_bias():
    import llmref.position as position

    torch.manual_seed(5)
    alibi = position.AlibiBias(4)
    mha = MultiHeadAttention(32, 4, position_bias=alibi).double()
    x = torch.randn(1, 7, 32, dtype=torch.float64)
    q, k, v = split_heads(mha, x)
    bias = position.alibi_bias(4, 7, 7).double()
    expected = naive_attention(q, k, v, bias=bias, is_causal=True)
    scale, _ = mha_mag(mha, x, is_causal=True, bias=bias)
    assert_within(mha(x, is_causal=True), merge_heads(mha, expected), scale=scale)


def _hf_attention(name, config_cls, attn_cls, **config):
    cfg = config_cls(**config)
    cfg._attn_implementation = "eager"
    return cfg, attn_cls(cfg, layer_idx=0).double().eval()


def _load_hf(mha, hf):
    with torch.no_grad():
        mha.qkv_proj.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
        if hf.q_proj.bias is not None:
            mha.qkv_proj.bias.copy_(torch.cat([hf.q_proj.bias, hf.k_proj.bias, hf.v_proj.bias]))
        mha.out_proj.weight.copy_(hf.o_proj.weight)
        if getattr(hf, "q_norm", None) is not None:
            mha.q_norm.weight.copy_(hf.q_norm.weight)
            mha.k_norm.weight.copy_(hf.k_norm.weight)


def _causal_additive(T, window=None):
    i, j = torch.arange(T).view(T, 1), torch.arange(T)
    allowed = j <= i if window is None else (j <= i) & (i - j < window)
    return torch.zeros(T, T, dtype=torch.float64).masked_fill(~allowed, float("-inf"))[None, None]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2"])
def test_matches_transformers_attention_layers(arch):
    """GQA + RoPE (Llama), + q/k/v but no output bias (Qwen2), + QK-norm (Qwen3), + softcap,
    sliding window, scale (Gemma 2)."""
    pytest.importorskip("transformers")
    from transformers.models.gemma2 import modeling_gemma2 as gemma2
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen2 import modeling_qwen2 as qwen2
    from transformers.models.qwen3 import modeling_qwen3 as qwen3

    from llmref.position import RotaryEmbedding

    torch.manual_seed(6)
    common = dict(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        max_position_embeddings=64,
    )
    T = 12
    options, window = {}, None
    if arch == "llama":
        cfg, hf = _hf_attention(arch, llama.LlamaConfig, llama.LlamaAttention, **common)
        rotary = llama.LlamaRotaryEmbedding(cfg)
    elif arch == "qwen2":
        cfg, hf = _hf_attention(arch, qwen2.Qwen2Config, qwen2.Qwen2Attention, **common)
        rotary = qwen2.Qwen2RotaryEmbedding(cfg)
        assert hf.q_proj.bias is not None and hf.o_proj.bias is None
        options = {"out_bias": False}
    elif arch == "qwen3":
        cfg, hf = _hf_attention(arch, qwen3.Qwen3Config, qwen3.Qwen3Attention, **common)
        rotary = qwen3.Qwen3RotaryEmbedding(cfg)
        with torch.no_grad():
            hf.q_norm.weight.uniform_(0.5, 1.5)
            hf.k_norm.weight.uniform_(0.5, 1.5)
        options = {"qk_norm": True, "norm_eps": cfg.rms_norm_eps}
    else:
        window = 5
        cfg, hf = _hf_attention(
            arch,
            gemma2.Gemma2Config,
            gemma2.Gemma2Attention,
            **common,
            sliding_window=window,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            layer_types=["sliding_attention"],
            num_hidden_layers=1,
        )
        rotary = gemma2.Gemma2RotaryEmbedding(cfg)
        options = {"softcap": 2.0, "window": window, "scale": 24**-0.5}
    # float32 tables, as transformers computes them (then both sides cast them to float64)
    rope = RotaryEmbedding(16, base=10000.0, dtype=torch.float32)
    mha = MultiHeadAttention(
        64, 8, n_kv_heads=2, head_dim=16, bias=hf.q_proj.bias is not None, rope=rope, **options
    ).double()
    _load_hf(mha, hf)
    x = torch.randn(2, T, 64, dtype=torch.float64)
    cos, sin = rotary(x, torch.arange(T)[None])
    expected, _ = hf(x, (cos.double(), sin.double()), _causal_additive(T, window))
    # transformers' eager attention takes the softmax in float32 even for float64 inputs
    # (and Qwen3 its QK-norm), so its result carries float32 rounding from those steps; the
    # rest is float64 on both sides (with the same RoPE tables), 2^29 times finer.
    scale, _ = mha_mag(mha, x, is_causal=True, rounded={"norm"} if arch == "qwen3" else set())
    assert_within(mha(x, is_causal=True), expected, scale=scale, dtype=torch.float32)
