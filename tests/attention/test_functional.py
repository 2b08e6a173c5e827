"""naive_attention, sdpa_attention and attention(): exactness, equivalence, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmref.attention import ATTENTION, attention, causal_mask, naive_attention, sdpa_attention
from llmref.testing import (
    LOW_PRECISION,
    assert_identical,
    assert_within,
    attention_scale,
    matmul_scale,
)
from tests.attention.reference import (
    assert_attention,
    assert_beyond_rounding,
    attention_err,
    exact,
    grad_scales,
    textbook_attention,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Backends with a backward pass on CPU (their specs say which do not).
DIFFERENTIABLE = [n for n, e in ATTENTION.items() if e.backward_on_cpu]

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
    assert_within(out, expected, scale=attention_scale(q, k, v))


@pytest.mark.parametrize("backend", list(ATTENTION))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask", "both"])
def test_every_backend_matches_float64_reference(backend, dtype, config, masking):
    q, k, v = make_qkv(config, dtype)
    B, H, _, T, S, _, _ = config
    mask = random_mask((B, 1, T, S)) if masking in ("bool-mask", "both") else None
    is_causal = masking in ("causal", "both")
    expected = textbook_attention(q, k, v, mask, is_causal)  # float64, same rounded inputs
    out = attention(q, k, v, mask=mask, is_causal=is_causal, backend=backend)
    assert out.dtype == dtype
    assert out.shape == (B, H, T, config[-1])
    assert_attention(out, expected, q, k, v, mask, is_causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask"])
def test_naive_matches_torch_sdpa(dtype, config, masking):
    """The third-party check: PyTorch's own fused SDPA, called directly. Each side is
    held to the float64 reference on the same inputs (its own rounding, no more)."""
    q, k, v = make_qkv(config, dtype)
    B, H, _, T, S, _, _ = config
    mask = random_mask((B, H, T, S)) if masking == "bool-mask" else None
    is_causal = masking == "causal"
    expected = textbook_attention(q, k, v, mask, is_causal)
    sdpa = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
    )
    out = naive_attention(q, k, v, mask=mask, is_causal=is_causal)
    assert_attention(sdpa, expected, q, k, v, mask, is_causal, what="torch SDPA")
    assert_attention(out, expected, q, k, v, mask, is_causal, what="naive_attention")


@pytest.mark.parametrize("shape", [(7, 7), (1, 7, 7), (2, 1, 7, 7), (2, 4, 7, 7), (1, 4, 1, 7)])
def test_mask_broadcast_shapes(shape):
    q, k, v = make_qkv(CONFIGS["mha"])
    mask = random_mask(shape)
    expected = textbook_attention(q, k, v, mask=mask)
    for backend in ATTENTION:
        out = attention(q, k, v, mask=mask, backend=backend)
        assert_within(out, expected, scale=attention_scale(q, k, v), what=backend)


def test_explicit_scale_and_default_scale():
    q, k, v = make_qkv(CONFIGS["gqa"])
    for backend in ATTENTION:
        out = attention(q, k, v, scale=0.3, backend=backend)
        expected = textbook_attention(q, k, v, scale=0.3)
        assert_within(out, expected, scale=attention_scale(q, k, v, scale=0.3), what=backend)
    # The default is this very float, so both calls run the identical operations.
    default = naive_attention(q, k, v)
    explicit = naive_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))
    assert_identical(default, explicit)


def test_causal_output_ignores_future_keys():
    """Defining property of causal attention: changing key/value j > i leaves row i alone."""
    q, k, v = make_qkv(CONFIGS["gqa"])
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 10.0
    v2[:, :, 5:] -= 3.0
    for backend in ATTENTION:
        out = attention(q, k, v, is_causal=True, backend=backend)
        out2 = attention(q, k2, v2, is_causal=True, backend=backend)
        # Same shapes, same kernels (too few rows here for chunked's data-dependent fixed
        # shift): the changed keys and values reach rows 0..4 only through weights that
        # are exactly 0, so those rows are the same bits.
        assert_identical(out[:, :, :5], out2[:, :, :5], what=backend)
        later = attention_scale(q, k2, v2)[:, :, 5:]
        assert_beyond_rounding(out[:, :, 5:], out2[:, :, 5:], scale=later)


def test_is_causal_equals_causal_mask_and_top_left_alignment():
    q, k, v = make_qkv(CONFIGS["cross"])  # T=3 < S=11: top-left means row i sees keys 0..i
    T, S = q.shape[2], k.shape[2]
    via_flag = naive_attention(q, k, v, is_causal=True)
    via_mask = naive_attention(q, k, v, mask=causal_mask(T, S))
    assert_identical(via_flag, via_mask)  # is_causal builds this very mask
    expected = textbook_attention(q, k, v, causal_mask(T, S))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert_within(via_flag, expected, scale=attention_scale(q, k, v))
    assert_within(sdpa, expected, scale=attention_scale(q, k, v), what="torch SDPA")


def test_weights_are_a_distribution_and_match_output():
    q, k, v = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    out, w = naive_attention(q, k, v, mask=mask, return_weights=True)
    assert w.shape == (2, 8, 9, 9)
    # A row sum of the weights is attention over values of 1.
    ones = torch.ones(2, 2, 9, 1, dtype=torch.float64)
    row_sums = torch.ones(2, 8, 9, 1, dtype=torch.float64)
    assert_within(w.sum(-1, keepdim=True), row_sums, scale=attention_scale(q, k, ones))
    assert torch.all(w[..., ~mask] == 0)
    v_rep = v.repeat_interleave(4, dim=1)
    # naive_attention multiplies by V with grouped heads as rows: another GEMM shape.
    assert_within(out, w @ v_rep, scale=matmul_scale(w, v_rep))


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
    # The raw scores bound the capped ones' rounding too (the cap's slope is at most 1).
    assert_within(out, expected, scale=attention_scale(q, k, v))
    assert_beyond_rounding(naive_attention(q, k, v), expected, scale=attention_scale(q, k, v))


@pytest.mark.parametrize("backend", DIFFERENTIABLE)
def test_gradients_match_float64_reference(backend):
    q32, k32, v32 = make_qkv(CONFIGS["gqa"], torch.float32)
    mask = random_mask((9, 9))
    dout = torch.linspace(-1, 1, v32.shape[-1], dtype=torch.float64).expand(2, 8, 9, -1)
    grads = {}
    for name, fn, dtype in (
        ("ref", lambda q, k, v: textbook_attention(q, k, v, mask, True), torch.float64),
        (
            "impl",
            lambda q, k, v: attention(q, k, v, mask=mask, is_causal=True, backend=backend),
            torch.float32,
        ),
    ):
        inputs = [t.clone().to(dtype).requires_grad_(True) for t in (q32, k32, v32)]
        (fn(*inputs).to(torch.float64) * dout).sum().backward()
        grads[name] = [t.grad for t in inputs]
    errors = [exact(t) for t in (q32, k32, v32)]
    _, err = attention_err(q32, k32, v32, *errors, mask=mask, is_causal=True)
    scales = grad_scales(err, dout, errors)
    for g_impl, g_ref, scale, name in zip(grads["impl"], grads["ref"], scales, "qkv", strict=True):
        assert_within(g_impl, g_ref, scale=scale, what=f"d{name}")


def test_naive_gradcheck_float64():
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, 4, 5, 3, 3)))
    mask = random_mask((4, 5))
    assert torch.autograd.gradcheck(
        lambda q, k, v: naive_attention(q, k, v, mask=mask, softcap=2.0), (q, k, v)
    )


def test_sdpa_attention_is_registered_and_equals_direct_call():
    q, k, v = make_qkv(CONFIGS["gqa"], torch.float32)
    direct = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    # sdpa_attention passes scale=1/sqrt(D), the very float SDPA defaults to: the same call.
    assert_identical(sdpa_attention(q, k, v, is_causal=True), direct)
    assert_identical(attention(q, k, v, is_causal=True), direct)  # "auto" is SDPA
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
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'fast', 'naive', 'sdpa'"):
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
    q, k, v = make_qkv(config, dtype)
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(bias_shape, generator=g, dtype=torch.float64).to(dtype)
    mask = random_mask((9, 9))
    k_rep, v_rep = (t.double().repeat_interleave(4, dim=1) for t in (k, v))
    scores = q.double() @ k_rep.transpose(-1, -2) / math.sqrt(32) + bias.double()
    expected = torch.softmax(scores.masked_fill(~(mask & causal_mask(9)), -math.inf), -1) @ v_rep
    out = attention(q, k, v, bias=bias, mask=mask, is_causal=True, backend=backend)
    assert_attention(out, expected, q, k, v, mask, True, bias=bias)
