"""varlen_attention: a packed batch equals running each sequence alone, on every backend."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmref.attention import document_mask, varlen_attention
from llmref.testing import assert_within, attention_scale
from tests.attention.reference import textbook_attention

BACKENDS = ("naive", "chunked", "flex")


def packed(q_lengths, k_lengths, *, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    cq = torch.tensor([0, *itertools.accumulate(q_lengths)])
    ck = torch.tensor([0, *itertools.accumulate(k_lengths)])
    q = torch.randn(1, 6, int(cq[-1]), 16, generator=g, dtype=dtype)
    k, v = (torch.randn(1, 2, int(ck[-1]), 16, generator=g, dtype=dtype) for _ in "kv")
    return q, k, v, cq, ck


def each_alone(q, k, v, cq, ck, **options):
    """The reference: every sequence through the float64 textbook attention by itself."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for b in range(len(cq) - 1):
        qs, qe, ks, ke = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
        if qe == qs:
            continue
        mask = None
        if options.get("is_causal"):
            offset = (ke - ks) - (qe - qs) if options.get("bottom_right") else 0
            i = torch.arange(qe - qs).unsqueeze(-1)
            mask = torch.arange(ke - ks) <= i + offset
        out[:, :, qs:qe] = textbook_attention(
            q[:, :, qs:qe],
            k[:, :, ks:ke],
            v[:, :, ks:ke],
            mask=mask,
            softcap=options.get("softcap"),
        )
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal,bottom_right", [(False, False), (True, False), (True, True)])
def test_packed_equals_each_sequence_alone(backend, causal, bottom_right):
    q_lengths, k_lengths = [3, 0, 17, 2, 9], [7, 4, 17, 1, 30]  # empty, T < S, T > S
    q, k, v, cq, ck = packed(q_lengths, k_lengths)
    out = varlen_attention(
        q,
        k,
        v,
        cq,
        ck,
        max_seqlen_q=17,
        max_seqlen_k=30,
        is_causal=causal,
        causal_alignment="bottom_right" if bottom_right else "top_left",
        backend=backend,
    )
    ref = each_alone(q, k, v, cq, ck, is_causal=causal, bottom_right=bottom_right)
    assert_within(out, ref, scale=attention_scale(q, k, v), what=backend)
    if causal and bottom_right:  # sequence 3: 2 queries, 1 key, the first query sees nothing
        assert bool((out[:, :, 20] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_attention_is_the_document_mask(backend):
    q, k, v, cq, _ = packed([5, 11, 4], [5, 11, 4], seed=2)
    out = varlen_attention(q, k, v, cq, is_causal=True, softcap=2.0, backend=backend)
    ids = torch.repeat_interleave(torch.arange(3), cq.diff())
    ref = textbook_attention(q, k, v, mask=document_mask(ids, causal=True), softcap=2.0)
    assert_within(out, ref, scale=attention_scale(q, k, v), what=backend)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"cu_seqlens_q": torch.tensor([0, 3, 9])},
            ValueError,
            r"end at the packed length of q \(10\)",
        ),
        ({"cu_seqlens_q": torch.tensor([1, 3, 10])}, ValueError, "must start at 0"),
        ({"cu_seqlens_q": torch.tensor([0, 6, 3, 10])}, ValueError, "must be non-decreasing"),
        (
            {"cu_seqlens_q": torch.tensor([0.0, 10.0])},
            TypeError,
            "integer offsets, got torch.float32",
        ),
        ({"cu_seqlens_q": [0, 10]}, TypeError, "cu_seqlens_q"),
        ({"cu_seqlens_q": torch.tensor([[0, 10]])}, ValueError, "must be 1-D"),
        (
            {"cu_seqlens_q": torch.tensor([0, 10]), "cu_seqlens_k": torch.tensor([0, 4, 10])},
            ValueError,
            "same number of sequences, got 1 and 2",
        ),
        (
            {"cu_seqlens_q": torch.tensor([0, 4, 10]), "max_seqlen_q": 5},
            ValueError,
            r"max_seqlen_q must be >= the longest sequence \(6\), got 5",
        ),
        (
            {"cu_seqlens_q": torch.tensor([0, 4, 10]), "max_seqlen_k": 6.0},
            TypeError,
            "max_seqlen_k must be an int, got float",
        ),
        (
            {"cu_seqlens_q": torch.tensor([0, 10]), "backend": "sdpa"},
            ValueError,
            r"backend must be one of \('naive', 'chunked', 'flex'\), got 'sdpa'",
        ),
        (
            {"cu_seqlens_q": torch.tensor([0, 10]), "is_causal": True, "causal_alignment": "x"},
            ValueError,
            "causal_alignment must be one of",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    q, k, v, _, _ = packed([10], [10])
    with pytest.raises(error, match=match):
        varlen_attention(q, k, v, **kwargs)


def test_batch_must_be_one():
    q, k, v, cq, _ = packed([4], [4])
    with pytest.raises(ValueError, match=r"a packed batch has batch size 1.*got 2"):
        varlen_attention(
            q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), cq
        )
