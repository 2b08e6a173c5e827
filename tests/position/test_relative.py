"""T5 buckets and bias (against transformers), KERPLE and FIRE (against loops), errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.position import (
    FireBias,
    KerpleBias,
    T5RelativeBias,
    alibi_bias,
    alibi_slopes,
    fire_bias,
    kerple_bias,
    t5_bias,
    t5_relative_position_bucket,
)
from llmref.testing import assert_identical, assert_within

from .reference import loop_bias


def mlp_magnitude(mlp, x):
    """What FIRE's Linear-ReLU-Linear sums for inputs ``x``: the MLP with |weights| on |x|."""
    first, last = mlp[0], mlp[2]
    with torch.no_grad():
        hidden = torch.nn.functional.linear(
            x.double().abs(), first.weight.double().abs(), first.bias.double().abs()
        )
        return torch.nn.functional.linear(
            hidden, last.weight.double().abs(), last.bias.double().abs()
        )


BUCKET_GRID = [
    (bidirectional, num_buckets, max_distance)
    for bidirectional in (True, False)
    for num_buckets, max_distance in (
        (32, 128),
        (32, 64),
        (16, 128),
        (64, 256),
        (8, 20),
        (32, 1000),
    )
]


@pytest.mark.xcheck
@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", BUCKET_GRID)
def test_buckets_equal_transformers_t5(bidirectional, num_buckets, max_distance):
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-3000, 3001)
    expected = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    got = t5_relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", BUCKET_GRID)
def test_bucket_properties(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-3000, 3001)
    b = t5_relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert int(b.min()) == 0 and int(b.max()) == num_buckets - 1
    past = b[rel <= 0].flip(0)  # distance 0, 1, 2, ... into the past
    assert bool((past.diff() >= 0).all())  # coarser and coarser, never back
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    exact = per_direction // 2
    assert torch.equal(past[:exact], torch.arange(exact))  # one bucket per distance near by
    assert bool((past[max_distance:] == per_direction - 1).all())  # all far ones share one
    if bidirectional:
        future = b[rel >= 0]
        assert torch.equal(future[1:], past[1 : len(future)] + per_direction)
    else:
        assert bool((b[rel > 0] == 0).all())


def _t5_attention(n_heads, num_buckets, max_distance, is_decoder):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    config = T5Config(
        d_model=32,
        d_kv=8,
        num_heads=n_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
        is_decoder=is_decoder,
    )
    return T5Attention(config, has_relative_attention_bias=True, layer_idx=0)


@pytest.mark.xcheck
@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("T,S,past", [(7, 7, 0), (1, 50, 49), (5, 300, 295), (40, 40, 0)])
def test_bias_equals_transformers_t5_compute_bias(is_decoder, T, S, past):
    pytest.importorskip("transformers")
    hf = _t5_attention(4, 32, 128, is_decoder)
    mine = T5RelativeBias(4, num_buckets=32, max_distance=128, bidirectional=not is_decoder)
    mine.load_state_dict({"relative_attention_bias.weight": hf.relative_attention_bias.weight})
    expected = hf.compute_bias(T, S, past_seen_tokens=past)  # (1, H, T, S)
    # a lookup of the same table at the same (integer-checked) buckets: no arithmetic
    assert_identical(mine(T, S, offset=past), expected[0].detach())


def test_t5_bias_equals_table_lookup_loop():
    weight = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bias = t5_bias(weight, 6, 60, offset=40, bidirectional=False, max_distance=20)
    for h in range(3):

        def value(i, j, h=h):
            bucket = t5_relative_position_bucket(
                torch.tensor(j - i), bidirectional=False, max_distance=20
            )
            return weight[bucket, h]

        assert_identical(bias[h], loop_bias(6, 60, value, offset=40))  # a table lookup


@pytest.mark.parametrize("kernel", ["log", "power"])
def test_kerple_equals_loop_reference(kernel):
    r1 = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    r2 = torch.tensor([0.1, 1.0, 1.9], dtype=torch.float64)
    bias = kerple_bias(5, 8, r1=r1, r2=r2, kernel=kernel, offset=3)
    for h in range(3):
        a, b = float(r1[h]), float(r2[h])
        if kernel == "log":

            def fn(i, j, a=a, b=b):
                return -a * math.log(1 + b * abs(i - j))
        else:

            def fn(i, j, a=a, b=b):
                return -a * abs(i - j) ** b

        expected = loop_bias(5, 8, fn, offset=3)
        # a few roundings of the value, and log(1 + r2 d)'s argument rounded: r1 * eps absolute
        assert_within(bias[h], expected, scale=expected.abs() + a)


def test_kerple_power_with_exponent_one_is_symmetric_alibi():
    slopes = alibi_slopes(8, dtype=torch.float64)
    bias = kerple_bias(6, r1=slopes, r2=torch.ones(8, dtype=torch.float64), kernel="power")
    expected = alibi_bias(8, 6, symmetric=True, dtype=torch.float64)
    assert_within(bias, expected, scale=expected.abs())  # slope * d ** 1: a rounding or two


def test_kerple_module_clamps_and_learns():
    torch.manual_seed(0)
    kerple = KerpleBias(4, kernel="power")
    with torch.no_grad():
        kerple.r1[0] = -1.0
        kerple.r2[1] = 5.0
    bias = kerple(4, 4)
    assert bool(torch.isfinite(bias).all()) and bias.shape == (4, 4, 4)
    bias.sum().backward()
    assert kerple.r1.grad is not None and kerple.r2.grad is not None


def test_fire_equals_loop_reference():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    ).double()
    c, L, eps = 0.3, 4.0, 1e-6
    bias = fire_bias(7, 9, mlp=mlp, c=c, threshold=L, offset=2, eps=eps, dtype=torch.float64)
    assert bias.shape == (3, 7, 9)
    # the MLP's sums over |weights| at the normalised distances in [0, 1] (x = 1 bounds them)
    scale = mlp_magnitude(mlp, torch.ones(1, 1))[0]

    def psi(x):
        return math.log(c * x + 1)

    for h in range(3):

        def fn(i, j, h=h):
            x = psi(abs(i - j)) / (psi(max(L, i)) + eps)
            with torch.no_grad():
                return float(mlp(torch.tensor([[x]], dtype=torch.float64))[0, h])

        assert_within(bias[h], loop_bias(7, 9, fn, offset=2), scale=float(scale[h]))


def test_fire_normalised_distances_stay_in_unit_interval():
    seen = []

    def probe(x):
        seen.append(x)
        return x.expand(*x.shape[:2], 2)

    fire_bias(300, mlp=probe, threshold=16.0, dtype=torch.float64)
    x = seen[0][..., 0]
    causal = torch.ones(300, 300, dtype=torch.bool).tril()
    assert float(x[causal].max()) <= 1.0 and float(x[causal].min()) == 0.0


def test_fire_module_learns_c_and_threshold():
    fire = FireBias(2, hidden=4, threshold=3.0)
    bias = fire(6, 6)
    bias.sum().backward()
    assert fire.c.grad is not None and fire.threshold_multiplier.grad is not None
    assert bias.shape == (2, 6, 6)
    # one row through the MLP instead of 36: another GEMM shape, the same sums to rounding
    scale = mlp_magnitude(fire.mlp, torch.ones(1, 1))[0, :, None, None]
    assert_within(fire(1, 6, offset=5), bias[:, 5:6], scale=scale)


def test_t5_module_repr_and_state():
    t5 = T5RelativeBias(4, num_buckets=16)
    assert list(t5.state_dict()) == ["relative_attention_bias.weight"]
    assert "num_buckets=16" in repr(t5)


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda: t5_relative_position_bucket(torch.arange(3.0)), TypeError, "integer tensor"),
        (
            lambda: t5_relative_position_bucket(torch.arange(3), num_buckets=2),
            ValueError,
            "num_buckets must be >= 4",
        ),
        (
            lambda: t5_relative_position_bucket(torch.arange(3), max_distance=8),
            ValueError,
            "max_distance must exceed the exact range",
        ),
        (
            lambda: t5_relative_position_bucket(torch.arange(3), bidirectional=1),
            TypeError,
            "bidirectional must be a bool",
        ),
        (lambda: t5_bias(torch.ones(32), 3), ValueError, "weight must be 2-D"),
        (lambda: t5_bias(torch.ones(32, 2), 3, offset=0.5), TypeError, "offset must be an int"),
        (
            lambda: kerple_bias(3, r1=torch.ones(2), r2=torch.ones(3)),
            ValueError,
            "r1 and r2 must have one shape",
        ),
        (lambda: kerple_bias(3, r1=torch.zeros(2), r2=torch.ones(2)), ValueError, "must be > 0"),
        (
            lambda: kerple_bias(3, r1=torch.ones(2), r2=torch.full((2,), 3.0), kernel="power"),
            ValueError,
            "r2 must be <= 2",
        ),
        (
            lambda: kerple_bias(3, r1=torch.ones(2), r2=torch.ones(2), kernel="exp"),
            ValueError,
            "kernel must be 'log' or 'power'",
        ),
        (lambda: KerpleBias(2, kernel="exp"), ValueError, "kernel must be"),
        (lambda: fire_bias(3, mlp=None), TypeError, "mlp must be callable"),
        (lambda: fire_bias(3, mlp=lambda x: x[..., 0]), ValueError, r"mlp must map \(T, S, 1\)"),
        (lambda: fire_bias(3, mlp=lambda x: x, c=0.0), ValueError, "c must be a finite number > 0"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
