"""MultiHeadAttention: against torch.nn.MultiheadAttention, GQA/MQA semantics, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmref.attention import MultiHeadAttention, causal_mask
from tests.attention.reference import textbook_attention
from tests.tolerances import assert_close


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
    mha = MultiHeadAttention.from_torch(ref)
    mha.backend = backend
    x = torch.randn(3, 10, 48, dtype=torch.float64)
    assert_close(
        mha(x, is_causal=is_causal), torch_reference(ref, x, is_causal=is_causal), torch.float64
    )


def test_matches_torch_with_mask_and_cross_attention():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(32, 4, batch_first=True).double()
    mha = MultiHeadAttention.from_torch(ref)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    ctx = torch.randn(2, 9, 32, dtype=torch.float64)
    mask = torch.rand(5, 9) > 0.3
    mask[:, 0] = True
    assert_close(mha(x, ctx, mask=mask), torch_reference(ref, x, ctx, mask=mask), torch.float64)


def test_float32_and_gradients_match_torch():
    torch.manual_seed(2)
    ref = nn.MultiheadAttention(64, 8, batch_first=True)
    mha = MultiHeadAttention.from_torch(ref)
    x1 = torch.randn(2, 16, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out_ref = torch_reference(ref, x1, is_causal=True)
    out = mha(x2, is_causal=True)
    assert_close(out, out_ref, torch.float32)
    g = torch.randn_like(out)
    out_ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        mha.qkv_proj.weight.grad, ref.in_proj_weight.grad, atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        mha.out_proj.weight.grad, ref.out_proj.weight.grad, atol=1e-5, rtol=1e-4
    )


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
    assert_close(mha(x, is_causal=True), expected, torch.float64)
    assert mha.qkv_proj.weight.shape == ((H + 2 * n_kv_heads) * D, d_model)


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
