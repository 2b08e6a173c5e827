"""ALiBi: slopes and bias against the paper's formula and BLOOM, properties, errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention import naive_attention
from llmref.position import AlibiBias, alibi_bias, alibi_slopes

from ..tolerances import assert_close
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


@pytest.mark.parametrize(
    "n_heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 71, 96, 112, 128]
)
def test_slopes_equal_the_papers(n_heads):
    expected = torch.tensor(paper_slopes(n_heads), dtype=torch.float64)
    torch.testing.assert_close(
        alibi_slopes(n_heads, dtype=torch.float64), expected, rtol=1e-14, atol=0
    )
    assert torch.equal(alibi_slopes(n_heads), expected.float())  # correctly rounded


def test_power_of_two_slopes_are_exact_and_others_interleave():
    assert torch.equal(alibi_slopes(8), 2.0 ** -torch.arange(1.0, 9.0))
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
        torch.testing.assert_close(bias[h], loop_bias(T, S, fn, offset), rtol=1e-15, atol=0)


def test_decoding_rows_equal_the_full_bias():
    full = alibi_bias(4, 9, 9)
    for t in range(9):
        assert torch.equal(alibi_bias(4, 1, t + 1, offset=t)[:, 0], full[:, t, : t + 1])


def test_offset_only_shifts_rows_which_softmax_ignores():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 6, 16, generator=g, dtype=torch.float64) for _ in range(3))
    a = naive_attention(q, k, v, bias=alibi_bias(4, 6, dtype=torch.float64), is_causal=True)
    b = naive_attention(
        q, k, v, bias=alibi_bias(4, 6, offset=100, dtype=torch.float64), is_causal=True
    )
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.xcheck
@pytest.mark.parametrize("n_heads", [1, 4, 6, 8, 12, 16, 20, 32, 40, 64, 112, 128])
def test_slopes_and_bias_equal_bloom(n_heads):
    pytest.importorskip("transformers")
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    B, S = 2, 33
    bloom = build_alibi_tensor(torch.ones(B, S, dtype=torch.long), n_heads, torch.float32)
    bloom = bloom.view(B, n_heads, 1, S)  # slope * j: the key position, per head
    bloom_slopes = bloom[0, :, 0, 1]
    # BLOOM raises a rounded float32 base to integer powers: a few float32 ulps of drift
    torch.testing.assert_close(alibi_slopes(n_heads), bloom_slopes, rtol=1e-6, atol=0)
    mine = alibi_bias(n_heads, S, S, dtype=torch.float64)
    rows = torch.arange(S, dtype=torch.float64)[:, None]
    # -slope * (i - j) = slope * j - slope * i: BLOOM's bias up to a per-row constant
    shifted = mine + alibi_slopes(n_heads, dtype=torch.float64)[:, None, None] * rows
    torch.testing.assert_close(
        shifted.float(), bloom[0].expand(n_heads, S, S), rtol=1e-6, atol=1e-6
    )
    # ... so attention with either bias is the same
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, n_heads, S, 8, generator=g) for _ in range(3))
    out = naive_attention(q, k, v, bias=alibi_bias(n_heads, S), is_causal=True)
    expected = naive_attention(q, k, v, bias=bloom, is_causal=True)
    assert_close(out, expected, torch.float32)


def test_module():
    alibi = AlibiBias(12)
    assert alibi.state_dict() == {}
    assert torch.equal(alibi(3, 8, offset=5), alibi_bias(12, 3, 8, offset=5))
    assert alibi(2, dtype=torch.float16).dtype == torch.float16
    sym = AlibiBias(2, symmetric=True)
    assert torch.equal(sym(4), alibi_bias(2, 4, symmetric=True))
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
