"""Penalties: repetition against transformers' processor (bit for bit), presence and
frequency against a float64 transcription of OpenAI's formula, properties and errors."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from llmref.inference import presence_frequency_penalty, repetition_penalty
from llmref.testing import assert_identical, assert_within


def case(seed=0, B=4, V=30, L=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    logits[0, :3] = 0.0  # zero logits: neither multiplied nor divided matters
    ids = torch.randint(0, V, (B, L), generator=g)
    ids[1, :6] = ids[1, 0]  # a token seen many times
    return logits, ids


@pytest.mark.xcheck
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repetition_penalty_equals_transformers(penalty, dtype):
    lp = pytest.importorskip("transformers.generation.logits_process")
    for seed in range(3):
        logits, ids = case(seed, dtype=dtype)
        expected = lp.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        assert_identical(repetition_penalty(logits, ids, penalty), expected)


@pytest.mark.xcheck
def test_repetition_penalty_skips_padding_as_transformers_generate_does():
    """generate passes the left-padding lengths as prompt_ignore_length; the attention
    mask says the same thing."""
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits, ids = case(1)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    ignore = (mask != 0).int().argmax(dim=1)
    expected = lp.RepetitionPenaltyLogitsProcessor(1.7, prompt_ignore_length=ignore)(
        ids, logits.clone()
    )
    assert_identical(repetition_penalty(logits, ids, 1.7, attention_mask=mask), expected)


@pytest.mark.xcheck
def test_repetition_penalty_ignores_ids_beyond_the_vocabulary_as_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits, ids = case(2)
    ids[:, -3:] = 30 + torch.arange(3)  # an embedding larger than the head
    expected = lp.RepetitionPenaltyLogitsProcessor(2.0)(ids, logits.clone())
    assert_identical(repetition_penalty(logits, ids, 2.0), expected)


def test_repetition_penalty_case_from_transformers():
    scores = torch.full((2, 10), 0.1)
    scores[0, 0] = -0.1
    scores[1, 5] = 0.4
    out = repetition_penalty(scores, torch.tensor([[0, 1], [5, 0]]), 2.0)
    assert out[0, 0] == -0.2 and out[0, 1] == 0.05 and out[1, 0] == 0.05 and out[1, 5] == 0.2
    assert bool((out[0, 2:] == 0.1).all())


def test_repetition_penalty_counts_each_token_once_and_always_lowers():
    logits, ids = case(3, dtype=torch.float64)
    out = repetition_penalty(logits, ids, 1.5)
    for b in range(ids.shape[0]):
        seen = set(ids[b].tolist())
        for i in range(logits.shape[1]):
            z = float(logits[b, i])
            want = (z * 1.5 if z < 0 else z / 1.5) if i in seen else z
            assert float(out[b, i]) == want
            assert float(out[b, i]) <= z


def _openai_reference(logits, ids, mask, presence, frequency):
    """OpenAI's documented formula, row by row in float64 with a Counter."""
    out = logits.double().clone()
    for b in range(logits.shape[0]):
        counts = Counter(
            t
            for t, m in zip(ids[b].tolist(), mask[b].tolist(), strict=True)
            if m and t < logits.shape[1]
        )
        for token, c in counts.items():
            out[b, token] -= c * frequency + (c > 0) * presence
    return out


@pytest.mark.parametrize("presence,frequency", [(0.0, 0.0), (0.6, 0.0), (0.0, 0.4), (-0.5, 1.2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_presence_frequency_equal_openai_formula(presence, frequency, dtype):
    logits, ids = case(4, dtype=dtype)
    mask = torch.ones_like(ids)
    mask[3, -5:] = 0  # tokens after a sequence finished
    ids[2, -1] = 33  # beyond the vocabulary: ignored
    got = presence_frequency_penalty(
        logits, ids, presence_penalty=presence, frequency_penalty=frequency, attention_mask=mask
    )
    ref = _openai_reference(logits, ids, mask, presence, frequency)
    # a few roundings per logit (the penalties held in the dtype, a product, two
    # subtractions), each at most the magnitude of what is combined
    scale = logits.double().abs() + ids.shape[1] * abs(frequency) + abs(presence)
    assert got.dtype == dtype
    assert_within(got, ref, scale=scale)
    if dtype == torch.float64 and presence == 0.0 and frequency == 0.0:
        assert_identical(got, logits)


def test_presence_frequency_change_only_what_was_generated():
    logits = torch.zeros(1, 6)
    out = presence_frequency_penalty(
        logits, torch.tensor([[2, 2, 2, 5]]), presence_penalty=1.0, frequency_penalty=0.5
    )
    assert out.tolist() == [[0.0, 0.0, -2.5, 0.0, 0.0, -1.5]]


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda: repetition_penalty(torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), 0.0),
            ValueError,
            r"penalty must be in \(0, inf\), got 0.0",
        ),
        (
            lambda: repetition_penalty(
                torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), math.inf
            ),
            ValueError,
            "penalty must be a finite number",
        ),
        (
            lambda: repetition_penalty(torch.zeros(2, 5), torch.zeros(3, 3, dtype=torch.long), 1.2),
            ValueError,
            r"input_ids must have one row per row of logits \(2\), got shape \(3, 3\)",
        ),
        (
            lambda: repetition_penalty(torch.zeros(2, 5), torch.zeros(2, 3), 1.2),
            TypeError,
            "input_ids must be an integer tensor, got torch.float32",
        ),
        (
            lambda: repetition_penalty(torch.zeros(2, 5), -torch.ones(2, 3, dtype=torch.long), 1.2),
            ValueError,
            "input_ids must hold token ids >= 0, got -1",
        ),
        (
            lambda: repetition_penalty(torch.zeros(5), torch.zeros(1, 3, dtype=torch.long), 1.2),
            ValueError,
            r"logits must be 2-D \(B, V\), got shape \(5,\)",
        ),
        (
            lambda: repetition_penalty(
                torch.zeros(2, 5),
                torch.zeros(2, 3, dtype=torch.long),
                1.2,
                attention_mask=torch.ones(2, 4),
            ),
            ValueError,
            r"attention_mask must have the shape of the ids \(2, 3\), got \(2, 4\)",
        ),
        (
            lambda: presence_frequency_penalty(
                torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), presence_penalty=2.5
            ),
            ValueError,
            r"presence_penalty must be in \[-2, 2\], got 2.5",
        ),
        (
            lambda: presence_frequency_penalty(
                torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), frequency_penalty="x"
            ),
            TypeError,
            "frequency_penalty must be a float, got str",
        ),
        (
            lambda: presence_frequency_penalty(torch.zeros(2, 5), [[1]]),
            TypeError,
            "output_ids must be a torch.Tensor, got list",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
