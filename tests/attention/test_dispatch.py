"""attention()'s dispatch: exact by default, a static order, "fast" by name, typed specs."""

from __future__ import annotations

import warnings

import pytest
import torch

from llmref.attention import (
    ATTENTION,
    AttentionBackendSpec,
    attention,
    naive_attention,
    sdpa_attention,
)
from llmref.attention.functional import resolve_backend
from llmref.position import alibi_bias
from llmref.testing import assert_identical, assert_low_precision
from llmref.testing.contracts.attention import low_precision_reference

LOW = [torch.float16, torch.bfloat16]


def alibi_case(dtype, seed=0):
    """The issue's case: T=113 queries after 90 cached keys (S=203), B=2, H=4, D=64, and a
    float32 ALiBi bias shifted and scaled to span -60 .. 0 (its large entries are where a
    16-bit rounding, 2**-5 between 32 and 64 in float16, moves the scores)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, n, 64, generator=g, dtype=torch.float64) for n in (113, 203, 203))
    a = alibi_bias(4, 113, 203, offset=90, dtype=torch.float64)
    a = a - a.max()
    bias = (a * (60.0 / a.abs().max())).float()
    return q.to(dtype), k.to(dtype), v.to(dtype), bias


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_auto_keeps_a_wide_bias_exact_where_sdpa_rounds_it(dtype):
    """Regression (issue 15): auto picked SDPA, which casts a float32 bias to the inputs'
    16-bit dtype. Measured here (seed 0, max error against float64): float16 auto 9.5e-4,
    SDPA 7.4e-3; bfloat16 auto 7.6e-3, SDPA 5.5e-2.

    FlashAttention's rule against the naive 16-bit computation (whose own error is 1.8e-3
    with the bias kept in float32) holds either way here, its floor of two 16-bit ulps of
    the output being 5.9e-3; so auto is also held to the policy's factor 2 against the
    naive *backend* without a floor: the reference computation itself, in float32 with
    the float32 bias, then rounded once to the 16-bit output."""
    q, k, v, bias = alibi_case(dtype)
    reference = naive_attention(q.double(), k.double(), v.double(), bias=bias.double())
    reference_lp = low_precision_reference({"q": q, "k": k, "v": v, "bias": bias}, dtype)
    assert resolve_backend("auto", {"bias"}, dtype=dtype, bias_dtype=bias.dtype) == "chunked"
    out = attention(q, k, v, bias=bias)
    assert_low_precision(out, reference, reference_lp, what="auto")
    naive = naive_attention(q, k, v, bias=bias)
    assert_low_precision(out, reference, naive, floor=0.0, what="auto against naive")
    # The old choice fails the second check: the test tells the defect from the fix.
    with pytest.raises(AssertionError, match=r"max\|error\|"):
        assert_low_precision(sdpa_attention(q, k, v, bias=bias), reference, naive, floor=0.0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_fast_is_sdpa_rounding_the_bias(dtype):
    q, k, v, bias = alibi_case(dtype)
    assert resolve_backend("fast", {"bias"}, dtype=dtype, bias_dtype=bias.dtype) == "sdpa"
    # the very same call: bit for bit
    assert_identical(
        attention(q, k, v, bias=bias, backend="fast"), sdpa_attention(q, k, v, bias=bias)
    )


def test_named_backend_that_would_round_the_bias_is_refused():
    q, k, v, bias = alibi_case(torch.float16)
    with pytest.raises(ValueError, match=r"backend 'sdpa' would round the torch.float32 bias"):
        attention(q, k, v, bias=bias, backend="sdpa")
    # A bias already in the inputs' dtype is not rounded by anyone: SDPA runs.
    out = attention(q, k, v, bias=bias.half(), backend="sdpa")
    assert_identical(out, sdpa_attention(q, k, v, bias=bias.half()))


@pytest.mark.parametrize(
    "dtype,bias_dtype",
    [
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float64),  # rounded to float32 by every backend alike
        (torch.float32, torch.float16),  # widened exactly
    ],
)
def test_auto_keeps_sdpa_when_nothing_is_rounded(dtype, bias_dtype):
    assert resolve_backend("auto", {"bias"}, dtype=dtype, bias_dtype=bias_dtype) == "sdpa"


def test_static_order_and_feature_fallback():
    ordered = sorted(
        (s for s in ATTENTION.values() if s.auto_order is not None), key=lambda s: s.auto_order
    )
    assert [s.name for s in ordered][:3] == ["sdpa", "chunked", "naive"]
    assert ATTENTION["flex"].auto_order is None  # compiles per shape: by name only
    assert resolve_backend("auto", set()) == "sdpa"
    assert resolve_backend("auto", {"softcap"}) == "chunked"
    assert resolve_backend("auto", {"sinks", "bias"}) == "chunked"
    assert resolve_backend("fast", {"softcap"}) == "chunked"


def test_softcap_and_sinks_through_the_dispatcher():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sinks = torch.randn(4, generator=g, dtype=torch.float64)
    out = attention(q, k, v, softcap=3.0, sinks=sinks, is_causal=True)
    expected = ATTENTION["chunked"].fn(q, k, v, softcap=3.0, sinks=sinks, is_causal=True)
    assert_identical(out, expected)  # auto ran the chunked kernel: the same call
    with pytest.raises(ValueError, match=r"backend 'sdpa' does not support \['softcap'\]"):
        attention(q, k, v, softcap=3.0, backend="sdpa")
    with pytest.raises(ValueError, match=r"backend 'flex' does not support \['sinks'\]"):
        attention(q, k, v, sinks=sinks, backend="flex")


def test_spec_validates_itself():
    def fn(q, k, v, **_):
        return q

    with pytest.raises(ValueError, match=r"'x': features must be a frozenset of .*'dropout'"):
        AttentionBackendSpec(name="x", fn=fn, features=frozenset({"dropout"}))
    with pytest.raises(ValueError, match=r"bias_precision must be one of .* got 'half'"):
        AttentionBackendSpec(name="x", fn=fn, bias_precision="half")
    with pytest.raises(TypeError, match="fn must be callable"):
        AttentionBackendSpec(name="x", fn=None)
    with pytest.raises(TypeError, match="auto_order must be an int or None"):
        AttentionBackendSpec(name="x", fn=fn, auto_order="first")


def test_legacy_meta_reads_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"AttentionBackendSpec.meta is deprecated"):
        assert ATTENTION["flex"].meta["backward_on_cpu"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ATTENTION["flex"].backward_on_cpu is False  # the typed field does not warn
