"""The equality policy's helpers: each bound holds for correct results and catches wrong ones."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention import naive_attention
from llmref.testing import (
    assert_identical,
    assert_low_precision,
    assert_lower,
    assert_within,
    attention_scale,
    decisive_steps,
    eps,
    matmul_scale,
)


def test_eps_is_the_dtype_machine_epsilon():
    assert eps(torch.float64) == 2.0**-52
    assert eps(torch.float32) == 2.0**-23
    assert eps(torch.bfloat16) == 2.0**-7
    assert eps(torch.float16) == 2.0**-10
    with pytest.raises(TypeError, match="floating-point"):
        eps(torch.int8)


@pytest.mark.parametrize("k", [1, 7, 64, 4096])
def test_matmul_bound_holds_for_every_length_and_catches_an_error(k):
    g = torch.Generator().manual_seed(k)
    a, b = torch.randn(16, k, generator=g), torch.randn(k, 24, generator=g)
    ref = a.double() @ b.double()
    scale = matmul_scale(a, b)
    assert_within(a @ b, ref, scale=scale)
    # The bound is tight enough to see a single wrong product term of moderate size.
    wrong = a @ b
    wrong[3, 5] += 1e-3 * float(scale[3, 5])
    with pytest.raises(AssertionError, match=r"worst at \(3, 5\)"):
        assert_within(wrong, ref, scale=scale)


def test_attention_bound_covers_scores_of_hundreds_of_nats():
    # The case that a fixed float32 tolerance (2e-6) got wrong on AVX-512 without AMX:
    # scores of a few hundred nats make the softmax's rounding about |s| * eps.
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-64, 65, (1, 2, 32, 16), generator=g).float()
    k = torch.randint(-4, 5, (1, 2, 48, 16), generator=g).float()
    v = torch.randn(1, 2, 48, 16, generator=g)
    ref = naive_attention(q.double(), k.double(), v.double(), scale=0.25)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
    bound = attention_scale(q, k, v, scale=0.25)
    assert float(bound.max()) > 100  # the magnitude is the scores', not the output's
    assert_within(out, ref, scale=bound)
    # A 1 % wrong softmax scale is far outside it.
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.2525)
    with pytest.raises(AssertionError):
        assert_within(wrong, ref, scale=bound)


def test_attention_scale_accounts_for_grouped_heads_and_bias():
    q, k, v = torch.ones(1, 4, 3, 8), torch.ones(1, 2, 5, 8), 2 * torch.ones(1, 2, 5, 8)
    bias = torch.full((3, 5), -7.0)
    bias[0, 0] = -math.inf
    got = attention_scale(q, k, v, scale=0.5, bias=bias)
    assert got.shape == (1, 4, 3, 1)
    torch.testing.assert_close(got, torch.full_like(got, (0.5 * 8 + 7 + math.log(5) + 1) * 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rule_is_relative_to_the_naive_low_precision_error(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, generator=g).to(dtype)
    w = torch.randn(128, 32, generator=g).to(dtype)
    ref = x.double() @ w.double()
    naive_lp = x @ w
    assert_low_precision(x.float() @ w.float(), ref, naive_lp)  # more accurate: passes
    # The threshold is k * (naive error) + floor, floor = 2 eps(dtype) max|ref|.
    err = float((naive_lp.double() - ref).abs().max())
    limit = 2 * err + 2 * eps(dtype) * float(ref.abs().max())
    just_inside, just_outside = ref.clone(), ref.clone()
    just_inside[0, 0] += 0.99 * limit
    just_outside[0, 0] += 1.01 * limit
    assert_low_precision(just_inside, ref, naive_lp)
    with pytest.raises(AssertionError, match="naive"):
        assert_low_precision(just_outside, ref, naive_lp)


def test_identical_is_bitwise_and_says_why_it_may_fail():
    x = torch.randn(32, 32)
    assert_identical(x @ x, x @ x)
    assert_identical(torch.tensor([math.nan]), torch.tensor([math.nan]))
    with pytest.raises(AssertionError, match="identical operation sequences"):
        assert_identical(x, torch.nextafter(x, x + 1))
    with pytest.raises(AssertionError, match="dtype"):
        assert_identical(x, x.double())
    with pytest.raises(AssertionError, match="shape"):
        assert_identical(x, x[:1])
    with pytest.raises(AssertionError, match="elements differ"):
        assert_identical(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_within_treats_non_finite_values_strictly():
    inf = torch.tensor([math.inf, 1.0])
    assert_within(inf, inf.double(), scale=1.0)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within(torch.tensor([math.nan, 1.0]), torch.tensor([0.0, 1.0]), scale=1.0)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within(torch.tensor([1.0]), torch.tensor([math.inf]), scale=1.0)
    with pytest.raises(TypeError, match="tensors"):
        assert_within([1.0], torch.tensor([1.0]), scale=1.0)  # type: ignore[arg-type]


def test_decisive_steps_stops_at_the_first_near_tie():
    logits = torch.tensor([[5.0, 1.0, 0.0], [2.0, 1.95, 0.0], [9.0, 0.0, 0.0]])
    assert decisive_steps(logits, tolerance=0.01) == 3
    assert decisive_steps(logits, tolerance=0.1) == 1
    assert decisive_steps(logits, tolerance=10.0) == 0
    with pytest.raises(ValueError, match="logits must have shape"):
        decisive_steps(torch.zeros(3), tolerance=0.1)
    with pytest.raises(ValueError, match="tolerance"):
        decisive_steps(logits, tolerance=-1.0)


def test_lower_needs_the_stated_margin():
    assert_lower(1.0, 1.5, margin=0.5)
    with pytest.raises(AssertionError, match="by at least"):
        assert_lower(1.0, 1.4, margin=0.5)
    with pytest.raises(AssertionError):
        assert_lower(math.nan, 1.0, margin=0.0)
    with pytest.raises(ValueError, match="margin"):
        assert_lower(1.0, 2.0, margin=-1.0)
