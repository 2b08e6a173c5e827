"""ALiBi: slopes and bias against the paper's formula and BLOOM, properties, errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention import naive_attention
from llmref.position import AlibiBias, alibi_bias, alibi_slopes
from llmref.testing import assert_identical, assert_within, attention_scale

from .reference import loop_bias


def paper_slopes(n):
    """The ALiBi paper's get_slopes, in float64."""

    def power_of_two(m):
        start = 2.0 ** (-(2.0 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


def slope_powers(n):
    """The power ``k`` each slope raises its rounded base to, in the paper's get_slopes and in
    BLOOM's build_alibi_tensor: ``1 .. 2**floor(log2 n)``, then ``1, 3, 5, ...`` of the next
    power of two's base.

    A base rounded by ``u = eps / 2`` (relative) and raised to the ``k``-th power is off by
    ``k * u``; the power and a product add a rounding or two: at most ``(k + 1) * eps``.
    """
    closest = 2 ** math.floor(math.log2(n))
    powers = list(range(1, closest + 1)) + list(range(1, 2 * (n - closest), 2))
    return torch.tensor(powers, dtype=torch.float64)


@pytest.mark.parametrize(
    "n_heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 71, 96, 112, 128]
)
def test_slopes_equal_the_papers(n_heads):
    expected = torch.tensor(paper_slopes(n_heads), dtype=torch.float64)
    # the paper's slopes carry (k + 1) roundings (slope_powers), llmref's one: c = 2 covers both
    scale = expected.abs() * (slope_powers(n_heads) + 1)
    assert_within(alibi_slopes(n_heads, dtype=torch.float64), expected, scale=scale, c=2.0)
    # float32: the float64 slope rounded once (c = 1: within one float32 rounding)
    assert_within(alibi_slopes(n_heads), expected, scale=expected.abs(), c=1.0)


def test_power_of_two_slopes_are_exact_and_others_interleave():
    # powers of two: exact on both sides, no rounding anywhere
    assert_identical(alibi_slopes(8), 2.0 ** -torch.arange(1.0, 9.0))
    # the extra heads of a non-power-of-two count take every other 2n-head slope
    assert set(alibi_slopes(12).tolist()) <= set(alibi_slopes(16).tolist())
    assert set(alibi_slopes(8).tolist()) <= set(alibi_slopes(12).tolist())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("T,S,offset", [(5, 5, 0), (1, 9, 8), (4, 7, 3), (3, 3, 10)])
def test_bias_equals_loop_reference(T, S, offset, symmetric):
    slopes = alibi_slopes(6, dtype=torch.float64)
    bias = alibi_bias(6, T, S, offset=offset, symmetric=symmetric, dtype=torch.float64)
    assert bias.shape == (6, T, S)
    for h in range(6):
        m = float(slopes[h])
        fn = (lambda i, j, m=m: -m * abs(i - j)) if symmetric else (lambda i, j, m=m: -m * (i - j))
        expected = loop_bias(T, S, fn, offset)
        # -slope * distance, one rounding on each side (c = 1)
        assert_within(bias[h], expected, scale=expected.abs(), c=1.0)


def test_decoding_rows_equal_the_full_bias():
    full = alibi_bias(4, 9, 9)
    for t in range(9):
        # elementwise slope * distance of the same numbers: the same rounding per entry
        assert_identical(alibi_bias(4, 1, t + 1, offset=t)[:, 0], full[:, t, : t + 1])


def test_offset_only_shifts_rows_which_softmax_ignores():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 6, 16, generator=g, dtype=torch.float64) for _ in range(3))
    a = naive_attention(q, k, v, bias=alibi_bias(4, 6, dtype=torch.float64), is_causal=True)
    shifted = alibi_bias(4, 6, offset=100, dtype=torch.float64)
    b = naive_attention(q, k, v, bias=shifted, is_causal=True)
    # the shifted scores are up to 100 * slope larger: their rounding is what differs
    assert_within(b, a, scale=attention_scale(q, k, v, bias=shifted))


@pytest.mark.xcheck
@pytest.mark.parametrize("n_heads", [1, 4, 6, 8, 12, 16, 20, 32, 40, 64, 112, 128])
def test_slopes_and_bias_equal_bloom(n_heads):
    pytest.importorskip("transformers")
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    B, S = 2, 33
    bloom = build_alibi_tensor(torch.ones(B, S, dtype=torch.long), n_heads, torch.float32)
    bloom = bloom.view(B, n_heads, 1, S)  # slope * j: the key position, per head
    bloom_slopes = bloom[0, :, 0, 1]
    slopes64 = alibi_slopes(n_heads, dtype=torch.float64)
    # BLOOM raises a rounded float32 base to integer powers k: (k + 1) float32 roundings
    rounds = slope_powers(n_heads) + 1
    assert_within(bloom_slopes, slopes64, scale=slopes64 * rounds, c=1.0, what="BLOOM's slopes")
    assert_within(alibi_slopes(n_heads), slopes64, scale=slopes64, c=1.0)  # rounded once
    mine = alibi_bias(n_heads, S, S, dtype=torch.float64)
    rows = torch.arange(S, dtype=torch.float64)[:, None]
    # -slope * (i - j) = slope * j - slope * i: BLOOM's bias up to a per-row constant
    shifted = mine + slopes64[:, None, None] * rows
    # BLOOM's slope * j: its slope's roundings and one more for the product
    bloom_scale = shifted.abs() * (rounds + 1)[:, None, None]
    assert_within(bloom[0].expand(n_heads, S, S), shifted, scale=bloom_scale, c=1.0)
    # ... so attention with either bias is the attention with the exact bias
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, n_heads, S, 8, generator=g) for _ in range(3))
    bias64 = alibi_bias(n_heads, S, dtype=torch.float64)
    ref = naive_attention(q.double(), k.double(), v.double(), bias=bias64, is_causal=True)
    out = naive_attention(q, k, v, bias=alibi_bias(n_heads, S), is_causal=True)
    assert_within(out, ref, scale=attention_scale(q, k, v, bias=bias64))
    expected = naive_attention(q, k, v, bias=bloom, is_causal=True)
    # BLOOM's scores carry its bias's error (bloom_scale, in float32 roundings) besides their own
    scale = attention_scale(q, k, v, bias=bloom_scale.amax(0) + bloom.abs())
    assert_within(expected, ref, scale=scale, what="attention with BLOOM's bias")


def test_module():
    alibi = AlibiBias(12)
    assert alibi.state_dict() == {}
    assert_identical(alibi(3, 8, offset=5), alibi_bias(12, 3, 8, offset=5))  # the module's call
    assert alibi(2, dtype=torch.float16).dtype == torch.float16
    sym = AlibiBias(2, symmetric=True)
    assert_identical(sym(4), alibi_bias(2, 4, symmetric=True))
    assert "n_heads=12" in repr(alibi)


def test_dtype_and_device():
    assert alibi_bias(2, 3, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert alibi_slopes(4, device="meta").device.type == "meta"
    assert alibi_bias(2, 0, 3).shape == (2, 0, 3)


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda: alibi_slopes(0), ValueError, "n_heads must be >= 1, got 0"),
        (lambda: alibi_slopes(4.0), TypeError, "n_heads must be an int, got float"),
        (lambda: alibi_slopes(4, dtype=torch.int32), TypeError, "dtype must be a floating"),
        (lambda: alibi_bias(4, -1), ValueError, "T must be >= 0, got -1"),
        (
            lambda: alibi_bias(4, 3, slopes=torch.ones(3)),
            ValueError,
            r"slopes must have shape \(4,\)",
        ),
        (lambda: alibi_bias(4, 3, slopes=[1.0] * 4), TypeError, "slopes must be a floating"),
        (lambda: alibi_bias(4, 3, symmetric=1), TypeError, "symmetric must be a bool"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
