"""split_kv_attention (Flash-Decoding) and merge_partial_attention: the split result equals
the unsplit one and the float64 reference, for any split count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmref.attention import (
    causal_mask,
    chunked_attention,
    merge_partial_attention,
    naive_attention,
    split_kv_attention,
)
from llmref.testing import assert_low_precision, assert_within, attention_scale
from tests.attention.reference import attention_bound, textbook_attention


def decode_inputs(S, *, H=8, H_kv=2, T=1, D=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, H, T, D, generator=g, dtype=torch.float64).to(dtype)
    k, v = (torch.randn(2, H_kv, S, D, generator=g, dtype=torch.float64).to(dtype) for _ in "kv")
    return q, k, v


@pytest.mark.parametrize(
    "S,num_splits", [(1000, 1), (1000, 4), (1000, 8), (1001, 7), (37, 37), (5, 3), (300, 64)]
)
@pytest.mark.parametrize("H_kv", [1, 2, 8])
def test_equals_the_float64_reference(S, num_splits, H_kv):
    q, k, v = decode_inputs(S, H_kv=H_kv)
    out, lse = split_kv_attention(q, k, v, num_splits=num_splits, block_size=32, return_lse=True)
    assert_within(out, textbook_attention(q, k, v), scale=attention_scale(q, k, v))
    scores = (q @ k.repeat_interleave(8 // H_kv, 1).transpose(-1, -2)) / 4.0
    want_lse = torch.logsumexp(scores, dim=-1)
    assert_within(lse, want_lse, scale=scores.abs().amax(-1) + torch.log(torch.tensor(S)))


@pytest.mark.parametrize("num_splits", [2, 5, 16])
def test_equals_unsplit_chunked_in_float32(num_splits):
    """The defining property: splitting the keys and merging by LSE changes nothing but
    rounding (both against float64, and against each other within their two bounds)."""
    q, k, v = decode_inputs(4096, dtype=torch.float32)
    split, split_lse = split_kv_attention(q, k, v, num_splits=num_splits, return_lse=True)
    whole, whole_lse = chunked_attention(q, k, v, return_lse=True)
    q64, k64, v64 = (t.double() for t in (q, k, v))
    ref = textbook_attention(q64, k64, v64)
    bound = attention_scale(q64, k64, v64)
    assert_within(split, ref, scale=bound, dtype=torch.float32, what="split")
    assert_within(whole, ref, scale=bound, dtype=torch.float32, what="unsplit")
    assert_within(split, whole, scale=2 * bound, dtype=torch.float32, what="split vs unsplit")
    lse_scale = 4.0 + torch.log(torch.tensor(4096.0))
    assert_within(split_lse, whole_lse, scale=2 * lse_scale, dtype=torch.float32, what="lse")


def test_against_sdpa():
    q, k, v = decode_inputs(2000, H_kv=2)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    out = split_kv_attention(q, k, v, num_splits=6)
    assert_within(out, ref, scale=attention_scale(q, k, v))


def test_options_mask_causal_softcap_sinks():
    q, k, v = decode_inputs(203, T=5)
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 1, 5, 203, generator=g) > 0.5
    mask[0, :, 2] = False  # a fully masked row
    sinks = torch.randn(8, generator=g, dtype=torch.float64)
    out = split_kv_attention(
        q,
        k,
        v,
        num_splits=9,
        mask=mask,
        is_causal=True,
        causal_alignment="bottom_right",
        softcap=3.0,
        sinks=sinks,
        block_size=16,
    )
    full = mask & causal_mask(5, 203, offset=198)
    ref = textbook_attention(q, k, v, mask=full, softcap=3.0, sinks=sinks)
    assert_within(out, ref, scale=attention_bound(q, k, v, sinks=sinks))
    assert bool((out[0, :, 2] == 0).all())
    # top-left causal with 5 queries: query i sees keys 0..i, most splits see nothing
    out = split_kv_attention(q, k, v, num_splits=9, is_causal=True)
    ref = textbook_attention(q, k, v, is_causal=True)
    assert_within(out, ref, scale=attention_scale(q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    q, k, v = decode_inputs(3000, dtype=dtype)
    out = split_kv_attention(q, k, v, num_splits=12)
    assert out.dtype == dtype
    wide = [t.double() for t in (q, k, v)]
    ref_lp = textbook_attention(q, k, v, dtype=dtype)
    assert_low_precision(out, textbook_attention(*wide), ref_lp)


def test_merge_of_any_partition_is_the_whole():
    q, k, v = decode_inputs(50, T=3)
    g = torch.Generator().manual_seed(7)
    owner = torch.randint(0, 4, (50,), generator=g)  # an arbitrary split, not contiguous
    owner[:4] = torch.arange(4)  # every split non-empty
    parts = [
        chunked_attention(q, k[:, :, owner == i], v[:, :, owner == i], return_lse=True)
        for i in range(4)
    ]
    out, lse = merge_partial_attention(
        torch.stack([o for o, _ in parts], 1), torch.stack([s for _, s in parts], 1), dim=1
    )
    _, ref_lse = chunked_attention(q, k, v, return_lse=True)
    assert_within(out, naive_attention(q, k, v), scale=attention_scale(q, k, v))
    assert_within(lse, ref_lse, scale=8.0)


def test_merge_with_nothing_visible_is_zero_and_minus_inf():
    outs = torch.zeros(3, 2, 4, 5)
    lses = torch.full((3, 2, 4), float("-inf"))
    lses[1, 0, 0], outs[1, 0, 0] = 0.5, torch.arange(5.0)
    out, lse = merge_partial_attention(outs, lses)
    assert torch.equal(out[0, 0], torch.arange(5.0)) and float(lse[0, 0]) == 0.5
    assert bool((out[1:] == 0).all() and (out[0, 1:] == 0).all())
    assert bool(torch.isneginf(lse[1:]).all())


def test_merge_with_a_sink_only():
    # one visible split with lse 0 and a sink logit 0: the sink takes half the mass
    out, lse = merge_partial_attention(
        torch.ones(1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1), sinks=torch.zeros(1, 1)
    )
    assert torch.allclose(out, torch.full((1, 1, 1, 2), 0.5))
    assert torch.allclose(lse, torch.log(torch.tensor(2.0)))


@pytest.mark.parametrize(
    "num_splits,error,match",
    [
        (0, ValueError, "num_splits must be >= 1, got 0"),
        (11, ValueError, r"num_splits must be <= S \(the number of keys\) = 10, got 11"),
        (2.0, TypeError, "num_splits must be an int, got float"),
        (True, TypeError, "num_splits must be an int, got bool"),
    ],
)
def test_bad_num_splits(num_splits, error, match):
    q, k, v = decode_inputs(10)
    with pytest.raises(error, match=match):
        split_kv_attention(q, k, v, num_splits=num_splits)


def test_bad_inputs_are_named():
    q, k, v = decode_inputs(10)
    with pytest.raises(ValueError, match="causal_alignment must be one of"):
        split_kv_attention(q, k, v, num_splits=2, is_causal=True, causal_alignment="bottom")
    with pytest.raises(TypeError, match="mask"):
        split_kv_attention(q, k, v, num_splits=2, mask=torch.ones(1, 10))
    with pytest.raises(ValueError, match="sinks"):
        split_kv_attention(q, k, v, num_splits=2, sinks=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"lses must have outs's shape without the last dim"):
        merge_partial_attention(torch.zeros(2, 3, 4), torch.zeros(2, 4))


def test_empty_cache():
    q, k, v = decode_inputs(0)
    out, lse = split_kv_attention(q, k, v, num_splits=1, return_lse=True)
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
