"""naive_attention, sdpa_attention and attention(): exactness, equivalence, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmref.attention import ATTENTION, attention, causal_mask, naive_attention, sdpa_attention
from tests.attention.reference import textbook_attention
from tests.tolerances import LOW_PRECISION, TOLERANCES, assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Backends with a backward pass on CPU (registry metadata says which do not).
DIFFERENTIABLE = [n for n, e in ATTENTION.items() if e.meta.get("backward_on_cpu", True)]

# (B, H, H_kv, T, S, D, Dv): MHA, GQA, MQA, cross-attention lengths, Dv != D.
CONFIGS = {
    "mha": (2, 4, 4, 7, 7, 16, 16),
    "gqa": (2, 8, 2, 9, 9, 32, 32),
    "mqa": (1, 6, 1, 5, 5, 8, 8),
    "cross": (2, 4, 2, 3, 11, 16, 16),
    "value-dim": (1, 4, 4, 6, 6, 16, 24),
    "single-token": (3, 4, 2, 1, 13, 64, 64),
}


def make_qkv(config, dtype=torch.float64, seed=0):
    B, H, H_kv, T, S, D, Dv = config
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H_kv, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H_kv, S, Dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_mask(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) > 0.4
    m[..., 0] = True  # keep every row attendable; fully masked rows are tested separately
    return m


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("is_causal", [False, True])
def test_naive_float64_equals_independent_textbook_attention(config, is_causal):
    q, k, v = make_qkv(config)
    out = naive_attention(q, k, v, is_causal=is_causal)
    expected = textbook_attention(q, k, v, is_causal=is_causal)
    assert_close(out, expected, torch.float64)


@pytest.mark.parametrize("backend", list(ATTENTION))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask", "both"])
def test_every_backend_matches_float64_reference(backend, dtype, config, masking):
    q64, k64, v64 = make_qkv(config)
    B, H, _, T, S, _, _ = config
    mask = random_mask((B, 1, T, S)) if masking in ("bool-mask", "both") else None
    is_causal = masking in ("causal", "both")
    expected = naive_attention(q64, k64, v64, mask=mask, is_causal=is_causal)
    q, k, v = (t.to(dtype) for t in (q64, k64, v64))
    out = attention(q, k, v, mask=mask, is_causal=is_causal, backend=backend)
    assert out.dtype == dtype
    assert out.shape == (B, H, T, config[-1])
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask"])
def test_naive_matches_torch_sdpa(dtype, config, masking):
    """The third-party check: PyTorch's own fused SDPA, called directly."""
    q, k, v = make_qkv(config, dtype)
    B, H, _, T, S, _, _ = config
    mask = random_mask((B, H, T, S)) if masking == "bool-mask" else None
    is_causal = masking == "causal"
    expected = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
    )
    out = naive_attention(q, k, v, mask=mask, is_causal=is_causal)
    # Both sides carry rounding in `dtype`, so allow twice the one-sided tolerance.
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, expected, atol=2 * atol, rtol=2 * rtol)


@pytest.mark.parametrize("shape", [(7, 7), (1, 7, 7), (2, 1, 7, 7), (2, 4, 7, 7), (1, 4, 1, 7)])
def test_mask_broadcast_shapes(shape):
    q, k, v = make_qkv(CONFIGS["mha"])
    mask = random_mask(shape)
    expected = textbook_attention(q, k, v, mask=mask)
    for backend in ATTENTION:
        assert_close(attention(q, k, v, mask=mask, backend=backend), expected, torch.float64)


def test_explicit_scale_and_default_scale():
    q, k, v = make_qkv(CONFIGS["gqa"])
    for backend in ATTENTION:
        out = attention(q, k, v, scale=0.3, backend=backend)
        assert_close(out, textbook_attention(q, k, v, scale=0.3), torch.float64)
    default = naive_attention(q, k, v)
    explicit = naive_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))
    assert torch.equal(default, explicit)


def test_causal_output_ignores_future_keys():
    """Defining property of causal attention: changing key/value j > i leaves row i alone."""
    q, k, v = make_qkv(CONFIGS["gqa"])
    for backend in ATTENTION:
        out = attention(q, k, v, is_causal=True, backend=backend)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 5:] += 10.0
        v2[:, :, 5:] -= 3.0
        out2 = attention(q, k2, v2, is_causal=True, backend=backend)
        assert torch.equal(out[:, :, :5], out2[:, :, :5])
        assert not torch.allclose(out[:, :, 5:], out2[:, :, 5:])


def test_is_causal_equals_causal_mask_and_top_left_alignment():
    q, k, v = make_qkv(CONFIGS["cross"])  # T=3 < S=11: top-left means row i sees keys 0..i
    T, S = q.shape[2], k.shape[2]
    via_flag = naive_attention(q, k, v, is_causal=True)
    via_mask = naive_attention(q, k, v, mask=causal_mask(T, S))
    assert torch.equal(via_flag, via_mask)
    torch.testing.assert_close(
        via_flag, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    )


def test_weights_are_a_distribution_and_match_output():
    q, k, v = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    out, w = naive_attention(q, k, v, mask=mask, return_weights=True)
    assert w.shape == (2, 8, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 8, 9, dtype=torch.float64))
    assert torch.all(w[..., ~mask] == 0)
    v_rep = v.repeat_interleave(4, dim=1)
    torch.testing.assert_close(out, w @ v_rep)


@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES], ids=str)
@pytest.mark.parametrize("backend", list(ATTENTION))
def test_fully_masked_rows_are_zero_not_nan(dtype, backend):
    q, k, v = make_qkv(CONFIGS["gqa"], dtype)
    mask = random_mask((9, 9))
    mask[2] = False
    mask[6] = False
    out = attention(q, k, v, mask=mask, backend=backend)
    assert not out.isnan().any()
    assert torch.all(out[:, :, [2, 6]] == 0)
    assert torch.any(out[:, :, 3] != 0)


@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES], ids=str)
@pytest.mark.parametrize("backend", DIFFERENTIABLE)
def test_fully_masked_rows_have_zero_gradients(dtype, backend):
    q, k, v = make_qkv(CONFIGS["gqa"], dtype)
    mask = random_mask((9, 9))
    mask[2] = False
    mask[6] = False
    q.requires_grad_(True)
    out = attention(q, k, v, mask=mask, backend=backend)
    out.float().square().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert torch.all(q.grad[:, :, [2, 6]] == 0)


def test_negative_causal_offset_rows_are_zero():
    q, k, v = make_qkv(CONFIGS["mha"])
    out = naive_attention(q, k, v, mask=causal_mask(7, 7, offset=-2))
    assert torch.all(out[:, :, :2] == 0) and not out.isnan().any()


def test_softcap_matches_manual_formula():
    q, k, v = make_qkv(CONFIGS["mha"])
    q = q * 10  # large logits so the cap matters
    cap = 5.0
    s = q @ k.transpose(-1, -2) / math.sqrt(16)
    expected = torch.softmax(cap * torch.tanh(s / cap), dim=-1) @ v
    out = naive_attention(q, k, v, softcap=cap)
    assert_close(out, expected, torch.float64)
    assert not torch.allclose(out, naive_attention(q, k, v))


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
def test_gradients_match_float64_reference(backend):
    q64, k64, v64 = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    grads = {}
    for name, fn in (
        ("ref", lambda q, k, v: textbook_attention(q, k, v, mask=mask, is_causal=True)),
        ("impl", lambda q, k, v: attention(q, k, v, mask=mask, is_causal=True, backend=backend)),
    ):
        inputs = [t.clone().float().requires_grad_(True) for t in (q64, k64, v64)]
        if name == "ref":
            inputs = [t.clone().requires_grad_(True) for t in (q64, k64, v64)]
        out = fn(*inputs)
        (
            out.to(torch.float64) * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)
        ).sum().backward()
        grads[name] = [t.grad for t in inputs]
    for g_impl, g_ref in zip(grads["impl"], grads["ref"], strict=True):
        torch.testing.assert_close(g_impl.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_naive_gradcheck_float64():
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, 4, 5, 3, 3)))
    mask = random_mask((4, 5))
    assert torch.autograd.gradcheck(
        lambda q, k, v: naive_attention(q, k, v, mask=mask, softcap=2.0), (q, k, v)
    )


def test_sdpa_attention_is_registered_and_equals_direct_call():
    q, k, v = make_qkv(CONFIGS["gqa"], torch.float32)
    direct = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(sdpa_attention(q, k, v, is_causal=True), direct)
    assert torch.equal(attention(q, k, v, is_causal=True), direct)  # "auto" is SDPA
    assert ATTENTION["sdpa"].fn is sdpa_attention
    assert ATTENTION["naive"].fn is naive_attention


# -- bad input --------------------------------------------------------------------------

GOOD = make_qkv(CONFIGS["gqa"], torch.float32)


def _with(**changes):
    q, k, v = GOOD
    return changes.get("q", q), changes.get("k", k), changes.get("v", v)


BAD_INPUTS = {
    "q-not-tensor": (_with(q=[[1.0]]), {}, TypeError, "q must be a torch.Tensor"),
    "q-3d": (_with(q=GOOD[0][0]), {}, ValueError, "q must be 4-D"),
    "k-5d": (_with(k=GOOD[1][None]), {}, ValueError, "k must be 4-D"),
    "int-dtype": (_with(v=GOOD[2].long()), {}, TypeError, "v must have a floating dtype"),
    "mixed-dtype": (_with(k=GOOD[1].double()), {}, TypeError, "share one dtype"),
    "batch": (_with(k=GOOD[1][:1], v=GOOD[2][:1]), {}, ValueError, "batch size"),
    "head-dim": (_with(k=GOOD[1][..., :16]), {}, ValueError, "k head dim"),
    "kv-heads-differ": (_with(v=GOOD[2][:, :1]), {}, ValueError, "k and v must have"),
    "kv-len-differ": (_with(v=GOOD[2][:, :, :3]), {}, ValueError, "k and v must have"),
    "heads-not-divisible": (
        _with(k=torch.randn(2, 3, 9, 32), v=torch.randn(2, 3, 9, 32)),
        {},
        ValueError,
        r"H % H_kv == 0\), got H=8 and H_kv=3",
    ),
    "mask-float": (GOOD, {"mask": torch.zeros(9, 9)}, TypeError, "mask must be a torch.bool"),
    "mask-not-tensor": (GOOD, {"mask": True}, TypeError, "mask must be a torch.Tensor"),
    "mask-shape": (GOOD, {"mask": torch.ones(9, 8, dtype=torch.bool)}, ValueError, "broadcast"),
    "mask-5d": (
        GOOD,
        {"mask": torch.ones(1, 2, 8, 9, 9, dtype=torch.bool)},
        ValueError,
        "broadcast",
    ),
    "mask-heads": (
        GOOD,
        {"mask": torch.ones(2, 3, 9, 9, dtype=torch.bool)},
        ValueError,
        "broadcast",
    ),
    "scale-zero": (GOOD, {"scale": 0.0}, ValueError, "scale must be a finite number > 0"),
    "scale-negative": (GOOD, {"scale": -1.0}, ValueError, "scale must be a finite number > 0"),
    "scale-nan": (GOOD, {"scale": float("nan")}, ValueError, "scale must be a finite number > 0"),
    "scale-str": (GOOD, {"scale": "0.1"}, TypeError, "scale must be a float"),
}


@pytest.mark.parametrize("backend", list(ATTENTION))
@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_clear_error(backend, case):
    (q, k, v), kwargs, exc, message = case
    with pytest.raises(exc, match=message):
        attention(q, k, v, backend=backend, **kwargs)


@pytest.mark.parametrize("softcap", [0.0, -2.0, float("inf")])
def test_bad_softcap(softcap):
    with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
        naive_attention(*GOOD, softcap=softcap)


@pytest.mark.parametrize("backend", ["flash", "", None, "SDPA"])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'naive', 'sdpa'"):
        attention(*GOOD, backend=backend)


def test_low_precision_is_computed_in_float32():
    """fp16 logits that overflow in fp16 arithmetic (|s| > 65504) still give a finite result."""
    q = torch.full((1, 1, 2, 64), 40.0, dtype=torch.float16)
    k = torch.full((1, 1, 2, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 1, 2, 64).to(torch.float16)
    out = naive_attention(q, k, v, scale=1.0)  # raw scores 102400 > fp16 max
    assert torch.isfinite(out).all()
    assert out.dtype in LOW_PRECISION


@pytest.mark.parametrize("backend", list(ATTENTION))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias_shape", [(9, 9), (1, 8, 9, 9), (2, 1, 1, 9)])
def test_every_backend_adds_a_float_bias(backend, dtype, bias_shape):
    """Additive bias (ALiBi, relative positions) against the reference and SDPA's float mask."""
    config = CONFIGS["gqa"]
    q64, k64, v64 = make_qkv(config)
    bias = torch.randn(bias_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = random_mask((9, 9))
    k_rep, v_rep = k64.repeat_interleave(4, dim=1), v64.repeat_interleave(4, dim=1)
    scores = q64 @ k_rep.transpose(-1, -2) / math.sqrt(32) + bias
    expected = torch.softmax(scores.masked_fill(~(mask & causal_mask(9)), -math.inf), -1) @ v_rep
    q, k, v = (t.to(dtype) for t in (q64, k64, v64))
    out = attention(q, k, v, bias=bias.to(dtype), mask=mask, is_causal=True, backend=backend)
    assert_close(out, expected, dtype)
