"""Sigmoid attention: an independent float64 formula, the -log(S) bias property, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention.sigmoid import sigmoid_attention
from llmref.attention.variants import VARIANTS
from llmref.testing import (
    LOW_PRECISION,
    assert_identical,
    assert_low_precision,
    assert_within,
)
from tests.attention.reference import mag
from tests.attention.test_functional import CONFIGS, make_qkv, random_mask
from tests.attention.test_linear import bib_keys

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def textbook_sigmoid(
    q,
    k,
    v,
    *,
    mask=None,
    is_causal=False,
    scale=None,
    bias=None,
    b=None,
    dtype=torch.float64,
    return_weights=False,
):
    """The paper's definition, written out with copied K/V heads, every step in ``dtype``
    (float64: the reference; 16-bit: the naive low-precision one)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    T, S = q.shape[2], k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    b = -math.log(S) if b is None else b
    logits = torch.einsum("bhtd,bhsd->bhts", q, k) * scale + b
    if bias is not None:
        logits = logits + bias.to(dtype)
    weights = 1 / (1 + torch.exp(-logits))
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask
    weights = weights * allowed
    out = torch.einsum("bhts,bhsd->bhtd", weights, v)
    return (out, weights) if return_weights else out


def sigmoid_bound(q, k, v, *, b=None, scale=None, bias=None, **kwargs):
    """The rounding scale of ``sum_j sigma(l_ij) v_j``: a logit's error is what it summed,
    ``scale |q_i| . |k_j| + |b| + |bias_ij|``, and ``sigma' <= sigma`` passes it on
    relative to the weight; the sigmoid and the product add about one rounding each:
    ``sum_j sigma_ij (|l|_ij + 2) |v_j|``."""
    _, weights = textbook_sigmoid(
        q, k, v, b=b, scale=scale, bias=bias, return_weights=True, **kwargs
    )
    group = q.shape[1] // k.shape[1]
    k, v = (mag(t).repeat_interleave(group, dim=1) for t in (k, v))
    S = k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = scale * (mag(q) @ k.transpose(-1, -2)) + abs(-math.log(S) if b is None else b)
    if bias is not None:
        logits = logits + mag(bias)
    return (weights * (logits + 2)) @ v


def assert_sigmoid(out, expected, q, k, v, *, what="result", **kwargs):
    """Within :func:`sigmoid_bound` (float32/64), or FlashAttention's rule against
    :func:`textbook_sigmoid` run in the low dtype (16-bit)."""
    if out.dtype in LOW_PRECISION:
        ref_lp = textbook_sigmoid(q, k, v, dtype=out.dtype, **kwargs)
        assert_low_precision(out, expected, ref_lp, what=what)
    else:
        assert_within(out, expected, scale=sigmoid_bound(q, k, v, **kwargs), what=what)


# Every config in float64; the 16-bit and float32 paths on the configs that differ most.
CASES = [(torch.float64, name) for name in CONFIGS] + [
    (dtype, name) for dtype in DTYPES[1:] for name in ("gqa", "cross", "value-dim")
]


@pytest.mark.parametrize(
    "dtype,config_name", CASES, ids=[f"{name}-{str(dtype)[6:]}" for dtype, name in CASES]
)
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask", "both"])
def test_matches_textbook_formula(dtype, config_name, masking):
    config = CONFIGS[config_name]
    q, k, v = make_qkv(config, dtype)
    B, H, _, T, S, _, Dv = config
    mask = random_mask((B, 1, T, S)) if masking in ("bool-mask", "both") else None
    is_causal = masking in ("causal", "both")
    expected = textbook_sigmoid(q, k, v, mask=mask, is_causal=is_causal)  # same rounded inputs
    out = sigmoid_attention(q, k, v, mask=mask, is_causal=is_causal)
    assert out.dtype == dtype and out.shape == (B, H, T, Dv)
    assert_sigmoid(out, expected, q, k, v, mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("S", [1, 5, 64])
def test_zero_scores_weight_every_key_one_over_one_plus_s(S):
    """Defining property of b = -log(S): sigma(0 - log S) = 1 / (1 + S) for every key, so
    the output is S / (1 + S) times the mean of the values (close to the mean for large S)."""
    q = torch.zeros(2, 4, 3, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(S)
    k = torch.randn(2, 2, S, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, S, 5, generator=g, dtype=torch.float64)
    out = sigmoid_attention(q, k, v)
    mean_v = v.mean(dim=2, keepdim=True).repeat_interleave(2, dim=1).expand(2, 4, 3, 5)
    assert_sigmoid(out, mean_v * S / (1 + S), q, k, v)


def test_weights_are_not_normalised():
    """Each weight depends only on its own score: listing every key/value twice doubles the
    output (with a fixed bias), where softmax attention's output would not change."""
    q, k, v = make_qkv(CONFIGS["mha"])
    once = sigmoid_attention(q, k, v, sigmoid_bias=-1.0)
    kk, vv = torch.cat([k, k], 2), torch.cat([v, v], 2)
    twice = sigmoid_attention(q, kk, vv, sigmoid_bias=-1.0)
    assert_within(twice, 2 * once, scale=sigmoid_bound(q, kk, vv, b=-1.0))


def test_sigmoid_bias_and_scale_options():
    q, k, v = make_qkv(CONFIGS["gqa"])
    for b in (0.0, 2.5, -7):
        expected = textbook_sigmoid(q, k, v, b=b, scale=0.2)
        out = sigmoid_attention(q, k, v, sigmoid_bias=b, scale=0.2)
        assert_sigmoid(out, expected, q, k, v, b=b, scale=0.2, what=f"{b=}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias_shape", [(9, 9), (1, 8, 9, 9), (2, 1, 1, 9)])
def test_additive_bias(dtype, bias_shape):
    q, k, v = make_qkv(CONFIGS["gqa"], dtype)
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(bias_shape, generator=g, dtype=torch.float64).to(dtype)
    expected = textbook_sigmoid(q, k, v, bias=bias, is_causal=True)  # same rounded inputs
    out = sigmoid_attention(q, k, v, bias=bias, is_causal=True)
    assert_sigmoid(out, expected, q, k, v, bias=bias, is_causal=True)


def test_fully_masked_rows_are_zero():
    q, k, v = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    mask[3] = False
    out = sigmoid_attention(q, k, v, mask=mask)
    assert torch.all(out[:, :, 3] == 0) and not out.isnan().any()
    assert torch.any(out[:, :, 4] != 0)


def test_causal_output_ignores_future_keys():
    q, k, v = make_qkv(CONFIGS["gqa"])
    out = sigmoid_attention(q, k, v, is_causal=True, sigmoid_bias=-2.0)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 3.0
    v2[:, :, 5:] -= 2.0
    out2 = sigmoid_attention(q, k2, v2, is_causal=True, sigmoid_bias=-2.0)
    # Same shapes, same operations: the changed keys and values reach rows 0..4 only
    # through weights the mask makes exactly 0, so those rows are the same bits.
    assert_identical(out[:, :, :5], out2[:, :, :5])


def test_gqa_equals_repeated_heads():
    q, k, v = make_qkv(CONFIGS["gqa"])
    grouped = sigmoid_attention(q, k, v, is_causal=True)
    repeated = sigmoid_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), is_causal=True
    )
    assert_sigmoid(grouped, repeated, q, k, v, is_causal=True)  # another GEMM shape


def test_gradcheck():
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, 4, 5, 3, 3)))
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(1, 4, 4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = random_mask((4, 5))
    assert torch.autograd.gradcheck(
        lambda q, k, v, bias: sigmoid_attention(q, k, v, mask=mask, bias=bias, is_causal=True),
        (q, k, v, bias),
    )


def test_registered_as_variant():
    entry = VARIANTS["sigmoid"]
    assert entry.fn is sigmoid_attention
    assert entry.paper in bib_keys()
    assert {"mask", "is_causal", "scale", "bias"} <= entry.features


def test_device_follows_inputs():
    """No tensor is created on a fixed device (checked on the meta device, which has no data)."""
    q, k, v = (t.to("meta") for t in make_qkv(CONFIGS["cross"], torch.float32))
    mask = torch.ones(3, 11, dtype=torch.bool, device="meta")
    assert sigmoid_attention(q, k, v, mask=mask, is_causal=True).device == q.device


# -- bad input --------------------------------------------------------------------------

GOOD = make_qkv(CONFIGS["gqa"], torch.float32)


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((GOOD[0][0], *GOOD[1:]), {}, ValueError, "q must be 4-D"),
        ((GOOD[0], GOOD[1][..., :16], GOOD[2]), {}, ValueError, "k head dim"),
        ((GOOD[0], GOOD[1], GOOD[2].long()), {}, TypeError, "v must have a floating dtype"),
        (GOOD, {"mask": torch.zeros(9, 9)}, TypeError, "mask must be a torch.bool"),
        (GOOD, {"mask": torch.ones(9, 8, dtype=torch.bool)}, ValueError, "broadcast"),
        (GOOD, {"bias": torch.zeros(3, 9, 9)}, ValueError, "bias of shape"),
        (GOOD, {"bias": torch.zeros(9, 9, dtype=torch.long)}, TypeError, "bias must have"),
        (GOOD, {"scale": -1.0}, ValueError, "scale must be a finite number > 0"),
        (GOOD, {"sigmoid_bias": "x"}, TypeError, "sigmoid_bias must be a float or None"),
        (GOOD, {"sigmoid_bias": True}, TypeError, "sigmoid_bias must be a float or None"),
        (GOOD, {"sigmoid_bias": -math.inf}, ValueError, "sigmoid_bias must be finite"),
    ],
)
def test_bad_input_raises_clear_error(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        sigmoid_attention(*args, **kwargs)
