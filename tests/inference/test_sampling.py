"""SamplingConfig, process_logits (against transformers' generate, step by step) and sample."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch

from llmref.inference import (
    SamplingConfig,
    apply_temperature,
    min_p_filter,
    presence_frequency_penalty,
    process_logits,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
    typical_filter,
)
from llmref.testing import assert_identical

# -- temperature -------------------------------------------------------------------------


@pytest.mark.xcheck
@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temperature_equals_transformers_warper(temperature, dtype):
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = lp.TemperatureLogitsWarper(temperature)(None, logits.clone())
    assert_identical(apply_temperature(logits, temperature), expected)


def test_temperature_case_from_transformers():
    """Uniform stays uniform; below 1 peaks rise and valleys fall, above 1 the reverse."""
    scores = torch.full((2, 20), 1 / 20)
    scores[1, 5] += 0.1
    scores[1, 10] -= 0.4
    probs = scores.softmax(-1)
    sharp = apply_temperature(scores, 0.5).softmax(-1)
    smooth = apply_temperature(scores, 1.3).softmax(-1)
    assert bool(torch.allclose(sharp[0], probs[0])) and bool(torch.allclose(smooth[0], probs[0]))
    assert sharp[1].max() > probs[1].max() and sharp[1].min() < probs[1].min()
    assert smooth[1].max() < probs[1].max() and smooth[1].min() > probs[1].min()
    order = probs.argsort(dim=-1, stable=True)  # the order of the tokens never changes
    assert torch.equal(sharp.argsort(dim=-1, stable=True), order)
    assert torch.equal(smooth.argsort(dim=-1, stable=True), order)


@pytest.mark.parametrize(
    "temperature,error,message",
    [
        (-0.5, ValueError, r"temperature must be in \(0, inf\), got -0.5"),
        (0.0, ValueError, r"temperature must be in \(0, inf\), got 0.0"),
        (math.inf, ValueError, "temperature must be a finite number, got inf"),
        ("1", TypeError, "temperature must be a float, got str"),
    ],
)
def test_temperature_errors(temperature, error, message):
    with pytest.raises(error, match=message):
        apply_temperature(torch.zeros(2, 3), temperature)


# -- SamplingConfig ----------------------------------------------------------------------


def test_config_is_frozen_and_normalises_numbers():
    cfg = SamplingConfig(temperature=1, top_p=1, min_p=0)
    assert isinstance(cfg.temperature, float) and cfg.top_p == 1.0 and cfg.min_p == 0.0
    with pytest.raises(FrozenInstanceError):
        cfg.top_p = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(temperature=-1.0), ValueError, "temperature must be a finite number > 0, got -1.0"),
        (dict(temperature=0.0), ValueError, "greedy"),
        (dict(temperature="hot"), TypeError, "temperature must be a float, got str"),
        (dict(top_k=-1), ValueError, "top_k must be >= 0, got -1"),
        (dict(top_k=2.5), TypeError, "top_k must be an int, got float"),
        (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.01), ValueError, r"top_p must be in \(0, 1\], got 1.01"),
        (dict(min_p=1.5), ValueError, r"min_p must be in \[0, 1\], got 1.5"),
        (dict(typical_p=0.0), ValueError, r"typical_p must be in \(0, 1\]"),
        (dict(epsilon_cutoff=1.0), ValueError, r"epsilon_cutoff must be in \[0, 1\)"),
        (dict(eta_cutoff=-0.1), ValueError, r"eta_cutoff must be in \[0, 1\)"),
        (dict(repetition_penalty=0.0), ValueError, r"repetition_penalty must be in \(0, inf\)"),
        (dict(presence_penalty=3.0), ValueError, r"presence_penalty must be in \[-2, 2\]"),
        (dict(frequency_penalty=math.nan), ValueError, "frequency_penalty must be a finite"),
        (dict(min_tokens_to_keep=0), ValueError, "min_tokens_to_keep must be >= 1, got 0"),
        (dict(filter_value=math.inf), ValueError, "filter_value must be a real number or -inf"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, error, message):
    with pytest.raises(error, match=message):
        SamplingConfig(**kwargs)


# -- process_logits ----------------------------------------------------------------------


def logits_and_ids(seed=0, B=3, V=50, T=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * 3, torch.randint(0, V, (B, T), generator=g)


def test_process_logits_applies_the_rules_in_transformers_order():
    logits, ids = logits_and_ids()
    cfg = SamplingConfig(
        temperature=0.7,
        top_k=20,
        top_p=0.9,
        min_p=0.02,
        typical_p=0.95,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        min_tokens_to_keep=2,
    )
    x = repetition_penalty(logits, ids, 1.3)
    x = presence_frequency_penalty(x, ids[:, 4:], presence_penalty=0.5, frequency_penalty=0.25)
    x = apply_temperature(x, 0.7)
    x = top_k_filter(x, 20, min_tokens_to_keep=2)
    x = top_p_filter(x, 0.9, min_tokens_to_keep=2)
    x = min_p_filter(x, 0.02, min_tokens_to_keep=2)
    x = typical_filter(x, 0.95, min_tokens_to_keep=2)
    assert_identical(process_logits(logits, cfg, input_ids=ids, prompt_length=4), x)


def test_process_logits_skips_the_values_transformers_treats_as_off():
    logits, _ = logits_and_ids(1)
    off = SamplingConfig(top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    assert_identical(process_logits(logits, off), logits)
    assert_identical(process_logits(logits, SamplingConfig()), logits)


def test_process_logits_order_matters():
    """Temperature before min-p (transformers, vLLM) is not min-p before temperature
    (llama.cpp): the order is part of the semantics."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0]])
    cfg = SamplingConfig(temperature=0.5, min_p=0.3)
    tempered_first = process_logits(logits, cfg).isfinite()  # ratios 1, e^-1, e^-2, e^-4
    min_p_first = apply_temperature(min_p_filter(logits, 0.3), 0.5).isfinite()  # 1, e^-.5, e^-1
    assert int(tempered_first.sum()) == 2 and int(min_p_first.sum()) == 3


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda x, ids: process_logits(x, {"top_k": 2}),
            TypeError,
            "config must be a SamplingConfig",
        ),
        (
            lambda x, ids: process_logits(x, SamplingConfig(repetition_penalty=1.2)),
            ValueError,
            "input_ids is required when a penalty is on",
        ),
        (
            lambda x, ids: process_logits(
                x, SamplingConfig(frequency_penalty=1.0), input_ids=ids, prompt_length=10
            ),
            ValueError,
            "prompt_length must be <= input_ids' length 9, got 10",
        ),
        (lambda x, ids: process_logits(x[0], SamplingConfig()), ValueError, "2-D"),
        (lambda x, ids: sample(x[0]), ValueError, "2-D"),
    ],
)
def test_process_logits_errors(call, error, message):
    logits, ids = logits_and_ids()
    with pytest.raises(error, match=message):
        call(logits, ids)


@pytest.mark.xcheck
@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3),
        dict(top_k=0, min_p=0.1, typical_p=0.9, repetition_penalty=0.8),
        dict(temperature=1.4, top_k=0, epsilon_cutoff=3e-3, eta_cutoff=1e-2),
        dict(
            temperature=0.9,
            top_k=10,
            top_p=0.95,
            min_p=0.05,
            typical_p=0.99,
            epsilon_cutoff=1e-4,
            eta_cutoff=1e-4,
            repetition_penalty=1.1,
        ),
    ],
)
def test_process_logits_equals_transformers_generate_step_by_step(settings):
    """transformers' generate returns each step's raw logits and the scores its processors
    made of them (public outputs); process_logits, given the same sequence so far, makes
    the same scores bit for bit (generate processes float32 logits with the same ops)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.generation_config.eos_token_id = None  # six steps for every row
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding: the repetition penalty must not count it
    out = hf.generate(
        ids,
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=6,
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
        **settings,
    )
    cfg = SamplingConfig(**settings)
    seq = out.sequences
    assert len(out.scores) == 6
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores, strict=True)):
        so_far = seq[:, : 7 + step]
        full_mask = torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], dim=1)
        got = process_logits(raw, cfg, input_ids=so_far, prompt_length=7, attention_mask=full_mask)
        assert_identical(got, processed, what=f"step {step}")


# -- sample ------------------------------------------------------------------------------


def test_sample_draws_what_multinomial_draws_from_the_processed_softmax():
    logits, ids = logits_and_ids(2)
    cfg = SamplingConfig(temperature=0.8, top_p=0.8, frequency_penalty=0.5)
    got = sample(
        logits, cfg, input_ids=ids, prompt_length=3, generator=torch.Generator().manual_seed(5)
    )
    probs = process_logits(logits, cfg, input_ids=ids, prompt_length=3).softmax(-1)
    want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    assert_identical(got, want)
    assert got.dtype == torch.int64 and got.shape == (3,)


def test_sample_never_draws_a_removed_token_and_follows_the_distribution():
    """2000 draws from a 4-token distribution truncated to 3 tokens: the removed token
    never appears, and the counts pass a chi-square test at significance 1e-4 (the false
    failure rate of this fixed-seed test, were the seed changed)."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(2000, 4)
    drawn = sample(logits, SamplingConfig(top_p=0.9), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4).double()
    assert counts[3] == 0
    expected = 2000 * torch.tensor([0.5, 0.3, 0.15]) / 0.95
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < 18.42  # chi-square quantile 1 - 1e-4 with 2 degrees of freedom
