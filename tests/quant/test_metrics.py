"""sqnr, mse, max_abs_error, cosine_similarity, model_size_bytes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from llmref.quant import (
    cosine_similarity,
    dequantize,
    max_abs_error,
    model_size_bytes,
    mse,
    quantize,
    quantize_model,
    sqnr,
)
from llmref.testing import assert_lower, assert_within
from tests.quant.helpers import randn


def assert_value(got, expected, scale, what):
    """Two float64 numbers within c eps(float64) scale (llmref's metrics run in float64)."""
    g, e = torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
    assert_within(g, e, scale=scale, what=what)


def test_metrics_against_float64_formulas():
    x, y = randn(100, seed=1), randn(100, seed=2) * 0.1
    a = x + y
    xd, ad = x.double(), a.double()
    # sums of non-negative terms in float64 (x - a is exact there): rounding relative to
    # the value; SQNR = 10 log10(S / N) moves by 10 / ln 10 dB per unit relative error of
    # each sum; the cosine has three sums (a dot product and two norms) of magnitude 1
    expected = float(((xd - ad) ** 2).mean())
    assert_value(mse(x, a), expected, expected, "mse")
    expected = float((xd - ad).abs().max())
    assert_value(max_abs_error(x, a), expected, expected, "max_abs_error")
    expected = 10 * math.log10(float((xd**2).sum() / ((xd - ad) ** 2).sum()))
    assert_value(sqnr(x, a), expected, 2 * 10 / math.log(10), "sqnr")
    cos = float(xd @ ad / (xd.norm() * ad.norm()))
    assert_value(cosine_similarity(x, a), cos, 3.0, "cosine_similarity")


def test_metric_edge_cases():
    z = torch.zeros(4)
    assert sqnr(torch.ones(4), torch.ones(4)) == math.inf
    assert sqnr(z, torch.ones(4)) == -math.inf
    assert cosine_similarity(z, z) == 1.0 and cosine_similarity(z, torch.ones(4)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        sqnr(torch.ones(0), torch.ones(0))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        mse([1.0], torch.ones(1))


def test_sqnr_grows_about_6db_per_bit():
    # uniform noise Δ²/12: each extra bit halves Δ, +6.02 dB (a little more at low bit
    # widths, where the step amax/(2^(b-1) - 1) more than halves)
    x = randn(64, 512, seed=3)
    s = [sqnr(x, dequantize(quantize(x, "int", bits=b, group_size=32))) for b in range(3, 9)]
    slopes = [b - a for a, b in itertools.pairwise(s)]
    # theory 6.02 dB; measured 6.07-6.32 over seeds 0-2 x {native, avx2} x {1, 2 threads}
    assert all(5.8 < d < 6.5 for d in slopes[2:]), slopes
    # smallest gaps over the same runs: 0.70 and 0.29 dB; asserted at half
    assert_lower(slopes[1], slopes[0], margin=0.35, what="3->4 bits vs 4->5 bits")
    assert_lower(slopes[2], slopes[1], margin=0.14, what="4->5 bits vs 5->6 bits")


def test_model_size_bytes():
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64, bias=False))
    assert model_size_bytes(model) == 4 * (64 * 128 + 128 + 128 * 64)
    tied = nn.Sequential(model[1], model[1])
    assert model_size_bytes(tied) == 4 * 128 * 64  # shared weight counted once
    quantize_model(model, "int8")
    assert model_size_bytes(model) == (64 * 128 + 128 * 4 + 128 * 4) + (128 * 64 + 64 * 4)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        model_size_bytes(torch.ones(3))
