"""Mask builders: every registered mask against an independently written dense reference,
and through ``as_mask_mod`` with FlexAttention against the same."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from llmref.attention import (
    MASKS,
    as_mask_mod,
    block_sparse_mask,
    block_topk_layout,
    causal_mask,
    dilated_mask,
    document_mask,
    local_window_mask,
    prefix_lm_mask,
    sink_mask,
    sliding_window_mask,
)
from llmref.testing import BOUND_FACTOR, assert_within, attention_scale, eps, matmul_scale
from tests.attention.reference import textbook_attention

# -- independent references: explicit loops over (i, j), written from each definition ------


def loop_mask(T, S, allowed):
    return torch.tensor([[allowed(i, j) for j in range(S)] for i in range(T)], dtype=torch.bool)


def ref_causal(T, S, offset=0):
    return loop_mask(T, S, lambda i, j: j <= i + offset)


def ref_sliding(T, S, window, offset=0):
    # "a query sees `window` keys including itself": keys p-window+1 .. p for query position p
    return loop_mask(T, S, lambda i, j: i + offset - window + 1 <= j <= i + offset)


def ref_dilated(T, S, window, dilation, offset=0):
    def allowed(i, j):
        p = i + offset
        return j in {p - n * dilation for n in range(window)}

    return loop_mask(T, S, allowed)


def ref_local(T, S, left, right, offset=0):
    # keys from `left` before to `right` after the query's position; -1 = no bound
    def allowed(i, j):
        p = i + offset
        return (left == -1 or j >= p - left) and (right == -1 or j <= p + right)

    return loop_mask(T, S, allowed)


def ref_local_flash(T, S, left, right):
    """FlashAttention's ``construct_local_mask`` (tests/test_flash_attn.py, no padding):
    it returns the *hidden* entries, bottom-right aligned (``sk - sq = S - T``). Its kernels
    (flash_api.cpp) read a side of -1 as ``seqlen_k`` when the other side is >= 0; the test
    function does not, so that reading is applied here first."""
    if left >= 0 and right < 0:
        right = S
    if left < 0 and right >= 0:
        left = S

    def hidden(i, j):
        if left < 0:  # both unbounded: the kernels' (-1, -1), the test's `col > row + sk - sq - 1`
            return False
        return j > min(i + S - T + right, S) or j < i + S - T - left

    return loop_mask(T, S, lambda i, j: not hidden(i, j))


def ref_prefix(T, S, prefix_len, offset=0):
    return loop_mask(T, S, lambda i, j: j < prefix_len or j <= i + offset)


def ref_sink(T, S, n_sink, window, offset=0):
    def allowed(i, j):
        p = i + offset
        return j <= p and (j < n_sink or p - j < window)

    return loop_mask(T, S, allowed)


def ref_document(q_ids, kv_ids, causal):
    T, S = len(q_ids), len(kv_ids)
    return loop_mask(T, S, lambda i, j: q_ids[i] == kv_ids[j] and (not causal or j <= i + S - T))


def ref_block(layout, block_size, T, S):
    return loop_mask(T, S, lambda i, j: bool(layout[i // block_size, j // block_size]))


DOCS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
LAYOUT = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)

# name -> list of (T, S, params, reference)
CASES = {
    "causal": [
        (T, S, {"offset": o}, ref_causal(T, S, o))
        for T, S, o in [(5, 5, 0), (3, 8, 5), (3, 8, 0), (6, 4, -1), (1, 9, 8)]
    ],
    "sliding_window": [
        (T, S, {"window": w, "offset": o}, ref_sliding(T, S, w, o))
        for T, S, w, o in [(8, 8, 1, 0), (8, 8, 3, 0), (8, 8, 8, 0), (8, 8, 20, 0), (3, 10, 4, 7)]
    ],
    "dilated": [
        (T, S, {"window": w, "dilation": d, "offset": o}, ref_dilated(T, S, w, d, o))
        for T, S, w, d, o in [(9, 9, 3, 2, 0), (9, 9, 2, 1, 0), (4, 12, 3, 3, 8)]
    ],
    "local_window": [
        (T, S, {"window_size": (a, b), "offset": o}, ref_local(T, S, a, b, o))
        for T, S, a, b, o in [
            (8, 8, 2, 1, 0),
            (8, 8, 0, 0, 0),
            (8, 8, -1, 2, 0),
            (3, 10, 4, -1, 7),
            (6, 9, 1, 1, -2),
            (6, 6, -1, -1, 0),
        ]
    ]
    + [  # FlashAttention's window_size=(a, b) is bottom-right aligned: offset = S - T
        (T, S, {"window_size": (a, b), "offset": S - T}, ref_local_flash(T, S, a, b))
        for T, S, a, b in [
            (4, 10, 3, -1),
            (4, 10, -1, 2),
            (4, 10, 2, 0),
            (10, 10, 3, 3),
            (10, 4, 1, 2),
            (10, 4, 0, 0),
            (5, 12, -1, -1),
            (7, 3, 2, 5),
            (1, 16, 4, 0),
        ]
    ],
    "prefix_lm": [
        (T, S, {"prefix_len": p, "offset": o}, ref_prefix(T, S, p, o))
        for T, S, p, o in [(6, 6, 0, 0), (6, 6, 3, 0), (6, 6, 6, 0), (2, 7, 3, 5)]
    ],
    "sink": [
        (T, S, {"n_sink": n, "window": w, "offset": o}, ref_sink(T, S, n, w, o))
        for T, S, n, w, o in [(10, 10, 2, 3, 0), (10, 10, 0, 3, 0), (4, 12, 1, 2, 8)]
    ],
}


def all_cases():
    for name, cases in CASES.items():
        for T, S, params, ref in cases:
            yield pytest.param(name, T, S, params, ref, id=f"{name}-{T}x{S}-{params}")


@pytest.mark.parametrize("name,T,S,params,ref", list(all_cases()))
def test_dense_builder_equals_loop_reference(name, T, S, params, ref):
    mask = MASKS[name](T, S, **params)
    assert mask.dtype == torch.bool and mask.shape == (T, S)
    assert torch.equal(mask, ref)


@pytest.mark.parametrize("name,T,S,params,ref", list(all_cases()))
def test_mask_mod_with_flex_create_mask_equals_reference(name, T, S, params, ref):
    dense = create_mask(as_mask_mod(name, **params), None, None, T, S, device="cpu")
    assert torch.equal(dense[0, 0], ref)


def test_registry_covers_every_mask():
    assert set(MASKS) == {*CASES, "document", "block_sparse"}
    for entry in MASKS.values():
        assert callable(entry.mask_mod)


def test_document_mask_against_reference():
    for causal in (False, True):
        assert torch.equal(document_mask(DOCS, causal=causal), ref_document(DOCS, DOCS, causal))
    kv = torch.tensor([0, 0, 1, 1, 1, 1])
    q = kv[-2:]
    assert torch.equal(document_mask(q, kv, causal=True), ref_document(q, kv, True))
    batched = torch.stack([DOCS, DOCS.flip(0)])
    out = document_mask(batched, causal=True)
    assert out.shape == (2, 1, 11, 11)
    assert torch.equal(out[1, 0], ref_document(DOCS.flip(0), DOCS.flip(0), True))
    mod = as_mask_mod("document", document_ids=batched, causal=True)
    dense = create_mask(mod, 2, None, 11, 11, device="cpu")
    assert torch.equal(dense[:, 0], out[:, 0])


def test_block_sparse_mask_against_reference():
    assert torch.equal(block_sparse_mask(LAYOUT, block_size=2), ref_block(LAYOUT, 2, 6, 6))
    assert torch.equal(
        block_sparse_mask(LAYOUT, block_size=3, T=7, S=9), ref_block(LAYOUT, 3, 7, 9)
    )
    per_head = torch.stack([LAYOUT, ~LAYOUT]).unsqueeze(0)  # (1, 2, 3, 3)
    out = block_sparse_mask(per_head, block_size=2)
    assert out.shape == (1, 2, 6, 6)
    assert torch.equal(out[0, 1], ref_block(~LAYOUT, 2, 6, 6))


def test_block_topk_layout_picks_highest_pooled_scores():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 10, 8)
    layout = block_topk_layout(q, k, block_size=4, topk=2)
    assert layout.shape == (2, 4, 3, 3) and torch.all(layout.sum(-1) == 2)
    # reference: explicit pooling (last block has 2 tokens) and scoring, head 5 -> kv head 1
    qp = torch.stack([q[1, 3, s : s + 4].mean(0) for s in (0, 4, 8)])
    kp = torch.stack([k[1, 1, s : s + 4].mean(0) for s in (0, 4, 8)])
    scores = qp @ kp.T
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected.scatter_(-1, scores.topk(2, dim=-1).indices, True)
    # The layout is a decision on float32 scores, reproducible across op orders only where
    # the 2nd and 3rd score of a row differ by more than their rounding: check the data.
    third, second = scores.double().sort(-1).values[:, :2].unbind(-1)
    qm = torch.stack([q[1, 3, s : s + 4].abs().mean(0) for s in (0, 4, 8)])
    km = torch.stack([k[1, 1, s : s + 4].abs().mean(0) for s in (0, 4, 8)])
    rounding = BOUND_FACTOR * eps(torch.float32) * matmul_scale(qm, km.T)  # pooled |q| |k|
    assert bool((second - third > rounding.amax(-1)).all()), "a near-tie: pick other data"
    assert torch.equal(layout[1, 3], expected)
    causal = block_topk_layout(q, k, block_size=4, topk=2, causal=True)
    assert torch.all(causal.diagonal(dim1=-2, dim2=-1))
    assert not torch.any(causal & ~causal_mask(3, 3))
    assert causal.sum(-1)[0, 0].tolist() == [1, 2, 2]


def test_flex_attention_with_every_mask_matches_naive():
    """The mask_mod drives FlexAttention's block-sparse kernel to the same output as dense."""
    torch.manual_seed(0)
    T = S = 200
    q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
    layout = block_topk_layout(q, k, block_size=32, topk=3, causal=True)
    params = {
        "causal": {},
        "sliding_window": {"window": 37},
        "local_window": {"window_size": (30, 9)},
        "dilated": {"window": 20, "dilation": 3},
        "prefix_lm": {"prefix_len": 50},
        "sink": {"n_sink": 4, "window": 40},
        "document": {"document_ids": torch.arange(T) // 70, "causal": True},
        "block_sparse": {"layout": layout, "block_size": 32},
    }
    assert set(params) == set(MASKS)
    for name, p in params.items():
        mod = as_mask_mod(name, **p)
        dense = create_mask(mod, 1, 2, T, S, device="cpu")
        block_mask = create_block_mask(mod, 1, 2, T, S, device="cpu", BLOCK_SIZE=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = flex_attention(q, k, v, block_mask=block_mask)
        # flex's float32 kernel against the float64 reference with the dense mask
        expected = textbook_attention(q, k, v, dense)
        assert_within(out, expected, scale=attention_scale(q, k, v), what=name)


def test_sliding_window_matches_transformers_convention():
    masking_utils = pytest.importorskip("transformers.masking_utils")
    overlay = masking_utils.sliding_window_overlay(4)
    causal = masking_utils.causal_mask_function
    ref = loop_mask(9, 9, lambda i, j: bool(overlay(0, 0, i, j) and causal(0, 0, i, j)))
    assert torch.equal(sliding_window_mask(9, window=4), ref)


def test_causal_mask_torch_equivalents():
    assert torch.equal(causal_mask(5), torch.ones(5, 5, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(3, 8, offset=5), torch.ones(3, 8, dtype=torch.bool).tril(5))
    assert causal_mask(2, device=torch.device("meta")).device.type == "meta"


BAD = [
    (causal_mask, (-1,), {}, ValueError, "T must be >= 0, got -1"),
    (causal_mask, (3, -2), {}, ValueError, "S must be >= 0, got -2"),
    (causal_mask, (2.0,), {}, TypeError, "T must be an int, got float"),
    (causal_mask, (True,), {}, TypeError, "T must be an int, got bool"),
    (causal_mask, (3,), {"offset": 0.5}, TypeError, "offset must be an int"),
    (sliding_window_mask, (4,), {"window": 0}, ValueError, "window must be >= 1, got 0"),
    (dilated_mask, (4,), {"window": 2, "dilation": 0}, ValueError, "dilation must be >= 1"),
    (prefix_lm_mask, (4,), {"prefix_len": -1}, ValueError, "prefix_len must be >= 0"),
    (sink_mask, (4,), {"n_sink": -1, "window": 2}, ValueError, "n_sink must be >= 0, got -1"),
    (sink_mask, (4,), {"n_sink": 1, "window": 0}, ValueError, "window must be >= 1"),
    (document_mask, (torch.rand(4),), {}, TypeError, "document_ids must hold integer"),
    (document_mask, (torch.zeros(1, 2, 3, dtype=torch.long),), {}, ValueError, r"\(T,\) or"),
    (document_mask, (DOCS, torch.zeros(2, 11, dtype=torch.long)), {}, ValueError, "both"),
    (document_mask, (DOCS,), {"causal": 1}, TypeError, "causal must be a bool"),
    (block_sparse_mask, (LAYOUT.int(),), {"block_size": 2}, TypeError, "layout must be a"),
    (block_sparse_mask, (LAYOUT[0],), {"block_size": 2}, ValueError, "layout must be"),
    (block_sparse_mask, (LAYOUT,), {"block_size": 0}, ValueError, "block_size must be >= 1"),
    (block_sparse_mask, (LAYOUT,), {"block_size": 2, "T": 7}, ValueError, "T=7 needs 4 blocks"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,message", BAD)
def test_bad_input(fn, args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        fn(*args, **kwargs)


def test_bad_mask_mod_name_and_topk():
    with pytest.raises(ValueError, match="name must be one of 'causal'"):
        as_mask_mod("tril")
    with pytest.raises(ValueError, match="topk must be >= 1"):
        block_topk_layout(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2), block_size=2, topk=0)


# -- local_window: FlashAttention's window_size=(left, right) -----------------------------


@pytest.mark.parametrize("T,S,window", [(8, 8, 1), (8, 8, 3), (4, 11, 5), (6, 6, 10)])
def test_local_window_left_only_is_the_sliding_window(T, S, window):
    offset = S - T
    got = local_window_mask(T, S, window_size=(window - 1, 0), offset=offset)
    assert torch.equal(got, sliding_window_mask(T, S, window=window, offset=offset))
    # (-1, 0) is FlashAttention's causal=True: bottom-right causal
    causal = local_window_mask(T, S, window_size=(-1, 0), offset=offset)
    assert torch.equal(causal, causal_mask(T, S, offset=offset))


@pytest.mark.parametrize("T,S,left,right", [(4, 10, 3, 1), (10, 10, 2, 2), (10, 4, 1, 2)])
def test_local_window_attention_against_flash_rule_in_float64(T, S, left, right):
    """Attention through the mask, the flex mask_mod and the chunked kernel equals the float64
    reference that masks by FlashAttention's own rule; rows the window leaves empty are 0."""
    from llmref.attention import attention, flex_attention

    g = torch.Generator().manual_seed(T * S + left)
    q = torch.randn(2, 4, T, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, S, 16, generator=g, dtype=torch.float64) for _ in range(2))
    ref = textbook_attention(q, k, v, mask=ref_local_flash(T, S, left, right))
    bound = attention_scale(q, k, v)
    mask = local_window_mask(T, S, window_size=(left, right), offset=S - T)
    for backend in ("naive", "sdpa", "chunked", "flex"):
        out = attention(q, k, v, mask=mask, backend=backend)
        assert_within(out, ref, scale=bound, what=backend)
    mod = as_mask_mod("local_window", window_size=(left, right), offset=S - T)
    assert_within(flex_attention(q, k, v, mask_mod=mod), ref, scale=bound, what="mask_mod")
    empty = ~ref_local_flash(T, S, left, right).any(-1)
    assert bool((ref[:, :, empty] == 0).all()) and bool((out[:, :, empty] == 0).all())


@pytest.mark.parametrize(
    "window_size,error,match",
    [
        ((2,), ValueError, r"window_size must be a pair \(left, right\), got \(2,\)"),
        (3, ValueError, r"window_size must be a pair"),
        ((-2, 0), ValueError, r"window_size\[0\] must be >= -1, got -2"),
        ((0, -5), ValueError, r"window_size\[1\] must be >= -1, got -5"),
        ((1.5, 0), TypeError, r"window_size\[0\] must be an int, got float"),
    ],
)
def test_local_window_bad_input(window_size, error, match):
    with pytest.raises(error, match=match):
        local_window_mask(4, window_size=window_size)
    with pytest.raises(error, match=match):
        as_mask_mod("local_window", window_size=window_size)
