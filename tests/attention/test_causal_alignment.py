"""causal_alignment: top-left (SDPA's) and bottom-right (FlashAttention's) causal masks.

The contract suite (tests/testing/test_attention_contracts.py) runs every backend against
the float64 reference with ``causal_alignment="bottom_right"``; here: the option equals
``causal_mask(T, S, offset=S - T)``, PyTorch's own ``causal_lower_right`` agrees, the
chunked kernel skips the hidden tiles, and bad names are refused.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from llmref.attention import (
    ATTENTION,
    AttentionBackendSpec,
    attention,
    causal_mask,
    chunked,
    naive_attention,
)
from llmref.attention.functional import resolve_backend
from llmref.attention.masks import causal_offset
from llmref.testing import assert_identical, assert_within, attention_scale
from tests.attention.reference import textbook_attention

BACKENDS = ("naive", "sdpa", "chunked", "flex")
SIZES = [(1, 37), (5, 23), (23, 23), (30, 9)]  # decode, chunked prefill, square, T > S


def qkv(T, S, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 6, T, 16, generator=g, dtype=dtype)
    k, v = (torch.randn(2, 2, S, 16, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,S", SIZES)
def test_bottom_right_is_the_offset_causal_mask(backend, T, S):
    q, k, v = qkv(T, S)
    mask = causal_mask(T, S, offset=S - T)
    out = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend=backend)
    ref = textbook_attention(q, k, v, mask=mask)  # independent float64 reference
    assert_within(out, ref, scale=attention_scale(q, k, v), what=f"{backend} {T}x{S}")
    if T > S:  # the first T - S queries sit before every key
        assert bool((out[:, :, : T - S] == 0).all())


@pytest.mark.parametrize("T,S", SIZES)
def test_naive_option_is_bit_for_bit_the_mask(T, S):
    q, k, v = qkv(T, S, dtype=torch.float32)
    got = naive_attention(q, k, v, is_causal=True, causal_alignment="bottom_right")
    want = naive_attention(q, k, v, mask=causal_mask(T, S, offset=S - T))
    assert_identical(got, want, what="bottom-right vs its mask")


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_left_is_the_default_and_sdpas(backend):
    q, k, v = qkv(5, 23)
    default = attention(q, k, v, is_causal=True, backend=backend)
    named = attention(q, k, v, is_causal=True, causal_alignment="top_left", backend=backend)
    assert_identical(named, default, what=f"{backend} top_left")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert_within(default, ref, scale=attention_scale(q, k, v), what=f"{backend} vs SDPA")
    upper = F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal_upper_left(5, 23), enable_gqa=True
    )
    assert_within(default, upper, scale=attention_scale(q, k, v), what="vs UPPER_LEFT")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bottom_right_equals_pytorchs_lower_right(backend):
    q, k, v = qkv(5, 23)
    out = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend=backend)
    ref = F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal_lower_right(5, 23), enable_gqa=True
    )
    assert_within(out, ref, scale=attention_scale(q, k, v), what=f"{backend} vs LOWER_RIGHT")


def test_alignments_differ_only_when_lengths_differ():
    q, k, v = qkv(23, 23)
    top = attention(q, k, v, is_causal=True, backend="chunked")
    bottom = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend="chunked")
    assert_identical(bottom, top, what="T == S")
    q, k, v = qkv(5, 23)
    top = attention(q, k, v, is_causal=True, backend="chunked")
    bottom = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend="chunked")
    assert float((top - bottom).abs().max()) > 0.1
    # one query decoding after a cache sees every key: bottom-right is no mask at all
    q, k, v = qkv(1, 37)
    bottom = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend="naive")
    assert_within(bottom, textbook_attention(q, k, v), scale=attention_scale(q, k, v))


def test_bottom_right_with_a_mask_ands_them():
    q, k, v = qkv(9, 20)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 1, 9, 20, generator=g) > 0.4
    want = textbook_attention(q, k, v, mask=mask & causal_mask(9, 20, offset=11))
    for backend in BACKENDS:
        out = attention(
            q, k, v, mask=mask, is_causal=True, causal_alignment="bottom_right", backend=backend
        )
        assert_within(out, want, scale=attention_scale(q, k, v), what=backend)


def expected_tiles(T, S, block, offset):
    """Tiles a causal tiling computes: key blocks starting at or before the block's last
    visible key ``qe - 1 + offset``."""
    n_k = -(-S // block)
    total = 0
    for qs in range(0, T, block):
        qe = min(qs + block, T)
        last = qe - 1 + offset
        total += 0 if last < 0 else min(n_k, last // block + 1)
    return total


@pytest.mark.parametrize("T,S", [(16, 64), (64, 64), (40, 13)])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_chunked_skips_the_hidden_tiles(monkeypatch, T, S, alignment):
    calls = []
    original = chunked._Tiles.scores

    def counting(self, qb, kb, qs, qe, ks, ke, *args, **kwargs):
        calls.append((qs, ks))
        return original(self, qb, kb, qs, qe, ks, ke, *args, **kwargs)

    monkeypatch.setattr(chunked._Tiles, "scores", counting)
    q, k, v = qkv(T, S)
    block = 8
    out = chunked.chunked_attention(
        q, k, v, is_causal=True, causal_alignment=alignment, block_size=block
    )
    offset = causal_offset(alignment, T, S)
    want_tiles = expected_tiles(T, S, block, offset)
    every_tile = -(-T // block) * -(-S // block)
    assert len(calls) == want_tiles
    if offset < S - 1:  # some key is in some query's future: tiles were skipped
        assert want_tiles < every_tile
    ref = textbook_attention(q, k, v, mask=causal_mask(T, S, offset=offset))
    assert_within(out, ref, scale=attention_scale(q, k, v))
    # the backward walks the same tiles
    calls.clear()
    q.requires_grad_(True)
    chunked.chunked_attention(
        q, k, v, is_causal=True, causal_alignment=alignment, block_size=block
    ).sum().backward()
    assert len(calls) == 2 * want_tiles  # forward + backward


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_bad_alignment_is_refused_by_name(backend):
    q, k, v = qkv(3, 5)
    with pytest.raises(ValueError, match=r"causal_alignment must be one of .*'lower_right'"):
        attention(q, k, v, is_causal=True, causal_alignment="lower_right", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_alignment_is_refused_by_each_function(backend):
    q, k, v = qkv(3, 5)
    with pytest.raises(ValueError, match="causal_alignment must be one of"):
        ATTENTION[backend].fn(q, k, v, is_causal=True, causal_alignment="LOWER_RIGHT")


def test_a_backend_without_the_feature_is_refused_for_bottom_right(monkeypatch):
    def plain(q, k, v, *, mask=None, is_causal=False, scale=None):
        return naive_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)

    spec = AttentionBackendSpec(name="plain_test_backend", fn=plain)
    monkeypatch.setitem(ATTENTION._entries, spec.name, spec)
    q, k, v = qkv(3, 5)
    with pytest.raises(ValueError, match=r"'plain_test_backend'.*'causal_alignment'"):
        attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend=spec.name)
    # the default alignment is every backend's, so it is not a feature to declare
    attention(q, k, v, is_causal=True, causal_alignment="top_left", backend=spec.name)
    assert resolve_backend("auto", {"causal_alignment"}) == "sdpa"
