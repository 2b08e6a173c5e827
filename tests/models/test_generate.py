"""generate: greedy and sampled decoding, left padding, filters against transformers, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.cache import StaticCache
from llmref.inference import (
    SamplingConfig,
    beam_search,
    process_logits,
    sample,
    top_k_filter,
    top_p_filter,
)
from llmref.models import DecoderConfig, DecoderLM, generate, make_caches
from llmref.testing import assert_identical
from tests.models.helpers import VARIANTS, VOCAB, make_model


def prompts(B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    mask[min(1, B - 1), :1] = 0
    return ids, mask


# -- filters ---------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest_and_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert top_k_filter(logits, 1).isfinite().tolist() == [[False, True, False, True, False]]
    assert top_k_filter(logits, 3).isfinite().sum() == 3
    assert_identical(top_k_filter(logits, 99), logits)  # nothing filtered, nothing computed


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    kept = lambda p: top_p_filter(logits, p).isfinite().tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.51) == [False, True, False, True]
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(1e-9) == [False, True, False, False]  # the most likely token always stays


@pytest.mark.xcheck
@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("p", [0.1, 0.7, 0.95, 1.0])
def test_filters_match_transformers_warpers(k, p):
    gen = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(4, 100, generator=g) * 3
    logits[0, :10] = 2.5  # ties
    ids = torch.zeros(4, 1, dtype=torch.long)
    # the warpers' own op sequences (topk and compare; ascending sort, softmax, cumsum,
    # compare with 1 - p, scatter), so bit for bit, the kept-or-dropped decisions included
    assert_identical(top_k_filter(logits, k), gen.TopKLogitsWarper(k)(ids, logits.clone()))
    assert_identical(top_p_filter(logits, p), gen.TopPLogitsWarper(p)(ids, logits.clone()))


# -- decoding ----------------------------------------------------------------------------
# make_model builds float64 models, where greedy token sequences may be compared exactly.


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_left_padded_generation_equals_each_sequence_alone(variant):
    model = make_model(variant)
    ids, mask = prompts()
    batched = generate(model, ids, 8, attention_mask=mask)
    assert batched.shape == (3, 14)
    for b in range(3):
        start = int((mask[b] == 0).sum())
        assert torch.equal(batched[b, start:], generate(model, ids[b : b + 1, start:], 8)[0])


@pytest.mark.parametrize("kind", ["static", "paged", "quantized"])
def test_greedy_tokens_do_not_depend_on_the_exact_cache_kind(kind):
    model = make_model("gqa-rope")
    ids, mask = prompts()
    assert torch.equal(
        generate(model, ids, 8, attention_mask=mask, cache=kind),
        generate(model, ids, 8, attention_mask=mask),
    )


def test_greedy_is_the_argmax_of_the_full_forward():
    model = make_model("mla-moe")
    ids, _ = prompts(B=2)
    out = generate(model, ids, 6)
    for t in range(6, 12):
        assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_sampling_is_deterministic_with_a_seed_and_leaves_the_global_rng_alone():
    model = make_model("gqa-rope")
    ids, mask = prompts()
    kw = dict(attention_mask=mask, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    state = torch.get_rng_state()
    a = generate(model, ids, 10, seed=3, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, generate(model, ids, 10, seed=3, **kw))
    assert not torch.equal(a, generate(model, ids, 10, seed=4, **kw))
    torch.manual_seed(0)
    b = generate(model, ids, 10, **kw)
    torch.manual_seed(0)
    assert torch.equal(b, generate(model, ids, 10, **kw))  # without a seed: the global RNG


def test_sampling_respects_the_filters():
    model = make_model("gqa-rope")
    ids, _ = prompts(B=1)
    greedy = generate(model, ids, 6)
    for seed in range(3):  # top_k=1 (or a tiny top_p) leaves only the argmax
        assert torch.equal(generate(model, ids, 6, do_sample=True, top_k=1, seed=seed), greedy)
        assert torch.equal(generate(model, ids, 6, do_sample=True, top_p=1e-6, seed=seed), greedy)
    # sampled tokens always come from the top-3 of the model's distribution
    out = generate(model, ids.repeat(16, 1), 4, do_sample=True, top_k=3, temperature=5.0, seed=0)
    logits = torch.stack([model(out[:, : 6 + i])[:, -1] for i in range(4)], dim=1)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == out[:, 6:, None]).any(-1).all()


def test_eos_stops_and_pads_finished_sequences():
    model = make_model("gqa-rope")
    ids, mask = prompts()
    free = generate(model, ids, 8, attention_mask=mask)
    eos = int(free[0, 7])  # the second token row 0 generates
    out = generate(model, ids, 8, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, 6:].tolist()
    assert row0[:2] == free[0, 6:8].tolist() and set(row0[2:]) <= {0}
    for b in range(3):  # each row equals the free run up to and including its first eos
        gen = free[b, 6:].tolist()
        n = gen.index(eos) + 1 if eos in gen else len(gen)
        assert out[b, 6 : 6 + n].tolist() == gen[:n]
    everyone = generate(model, ids[:1, 3:], 8, eos_token_id=eos)
    assert everyone.shape[1] == 3 + 2  # stops as soon as every sequence is finished


def test_streamer_gets_the_prompt_then_each_token():
    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.clone())

        def end(self):
            self.calls.append("end")

    model = make_model("gqa-rope")
    ids, mask = prompts()
    rec = Recorder()
    out = generate(model, ids, 4, attention_mask=mask, streamer=rec)
    assert torch.equal(rec.calls[0], ids) and rec.calls[-1] == "end"
    assert torch.equal(torch.stack(rec.calls[1:-1], dim=1), out[:, 6:])


@pytest.mark.xcheck
def test_transformers_text_streamer_works():
    transformers = pytest.importorskip("transformers")

    class Tok:  # the two methods TextStreamer needs
        def decode(self, ids, **kw):
            return " ".join(str(int(i)) for i in ids)

    streamer = transformers.TextStreamer(Tok(), skip_prompt=True)
    printed = []
    streamer.on_finalized_text = lambda text, stream_end=False: printed.append(text)
    ids, _ = prompts(B=1)
    out = generate(make_model("gqa-rope"), ids, 3, streamer=streamer)
    assert "".join(printed).split() == [str(int(t)) for t in out[0, 6:]]


def test_max_new_tokens_zero_returns_the_prompt():
    ids, _ = prompts(B=2)
    assert torch.equal(generate(make_model("gqa-rope"), ids, 0), ids)


def test_bad_input():
    model = make_model("gqa-rope")
    ids, mask = prompts()
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        generate(model, ids, 2, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        generate(model, ids, 2, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        top_p_filter(torch.zeros(3), -0.1)
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got 0\.0"):
        generate(model, ids, 2, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got -1\.0"):
        generate(model, ids, 2, do_sample=True, temperature=-1.0)
    generate(model, ids, 1, temperature=0.0)  # greedy ignores the temperature
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        generate(model, ids, 2, do_sample=True, top_k=-1)  # 0 is off, as in transformers
    with pytest.raises(ValueError, match="min_p must be in"):
        generate(model, ids, 2, do_sample=True, min_p=2.0)
    with pytest.raises(ValueError, match="beam search, which takes no do_sample=True, a seed"):
        generate(model, ids, 2, num_beams=2, do_sample=True, seed=0)
    with pytest.raises(ValueError, match="beam search, which takes no sampling rules"):
        generate(model, ids, 2, num_beams=2, repetition_penalty=1.2)
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        generate(model, ids, 2, num_beams=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_filter(torch.zeros(3), 0)
    with pytest.raises(
        ValueError, match=r"attention_mask must have the shape of input_ids \(3, 6\)"
    ):
        generate(model, ids, 2, attention_mask=mask[:2])  # mismatched batch
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, 2, attention_mask=mask.flip(1))
    with pytest.raises(ValueError, match="at least one real token"):
        generate(model, ids, 2, attention_mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, ids, -1)
    with pytest.raises(TypeError, match=r"model must be a llmref\.models\.DecoderLM"):
        generate(torch.nn.Linear(2, 2), ids, 2)
    with pytest.raises(TypeError, match="streamer must have put"):
        generate(model, ids, 2, streamer=object())
    with pytest.raises(ValueError, match=r"eos_token_id must be < vocab_size=96"):
        generate(model, ids, 2, eos_token_id=[1, 500])


def test_wrong_cache_for_the_attention_kind_and_a_full_static_cache():
    mla = make_model("mla-moe")
    ids, _ = prompts()
    with pytest.raises(TypeError, match="needs a cache that stores 'latent'"):
        generate(mla, ids, 2, cache="dynamic")
    with pytest.raises(TypeError, match="needs a cache that stores 'kv'"):
        generate(make_model("gqa-rope"), ids, 2, cache="latent")
    with pytest.raises(ValueError, match="static cache is full"):
        generate(make_model("gqa-rope"), ids, 8, cache=lambda i: StaticCache(10))
    caches = make_caches(mla, None, batch_size=3, max_len=10)
    assert [type(c).__name__ for c in caches] == ["LatentCache", "LatentCache"]


@pytest.mark.parametrize("kind", ["sliding_window", "sink"])
def test_cache_memory_stays_constant_over_a_4000_token_generation(kind):
    """Measured through generate(): the caches' bytes after 100, 1000, 2000 and 4000 tokens."""
    from llmref.cache import SinkCache, SlidingWindowCache

    window = 16
    cfg = DecoderConfig(
        vocab_size=32,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=16,
        window=window if kind == "sliding_window" else None,
    )
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    made: list = []

    def factory(i):
        made.append(
            SlidingWindowCache(window) if kind == "sliding_window" else SinkCache(4, window)
        )
        return made[-1]

    class Meter:
        def __init__(self):
            self.n, self.sizes = 0, {}

        def put(self, value):
            self.n += 1
            if self.n - 1 in (100, 1000, 2000, 4000):
                self.sizes[self.n - 1] = sum(c.nbytes for c in made)

        def end(self):
            pass

    meter = Meter()
    out = generate(model, torch.tensor([[1, 2, 3]]), 4000, cache=factory, streamer=meter)
    assert out.shape == (1, 4003) and len(made) == 1
    expected = 2 * cfg.n_kv_heads * window * cfg.head_dim * 4  # keys and values, float32
    if kind == "sink":
        expected = 2 * cfg.n_kv_heads * (4 + window - 1) * cfg.head_dim * 4
    assert list(meter.sizes) == [100, 1000, 2000, 4000]
    assert set(meter.sizes.values()) == {expected}, meter.sizes  # a dynamic cache: 250x more


# -- the sampling toolbox and beam search through generate ---------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"repetition_penalty": 1.5},
        {"presence_penalty": 1.0, "frequency_penalty": 0.5},
        {"repetition_penalty": 1.3, "top_k": 3, "min_p": 0.1},  # rules do not change greedy
    ],
)
def test_greedy_with_penalties_takes_each_steps_processed_argmax(options):
    """Teacher-forced: each generated token is the argmax of the full forward's last logits
    after process_logits over the tokens so far (the penalties count padding never)."""
    model = make_model("gqa-rope")
    ids, mask = prompts()
    out = generate(model, ids, 5, attention_mask=mask, **options)
    config = SamplingConfig(**options)
    T = ids.shape[1]
    for step in range(5):
        seen = out[:, : T + step]
        full_mask = torch.cat([mask, mask.new_ones(3, step)], dim=1)
        with torch.no_grad():
            logits = model(seen, attention_mask=full_mask)[:, -1].float()
        processed = process_logits(
            logits, config, input_ids=seen, prompt_length=T, attention_mask=full_mask.bool()
        )
        assert torch.equal(out[:, T + step], processed.argmax(dim=-1)), f"step {step}"


def test_sampling_draws_as_inference_sample_with_the_same_generator():
    """generate(do_sample=True, seed=s) draws each token with llmref.inference.sample from a
    generator seeded with s, after the same rules (a cached step's logits, so compared
    through the teacher-forced tokens: each drawn token must have been kept by the rules)."""
    model = make_model("gqa-rope")
    ids, mask = prompts()
    options = {"temperature": 0.7, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.2}
    a = generate(model, ids, 6, attention_mask=mask, do_sample=True, seed=3, **options)
    b = generate(model, ids, 6, attention_mask=mask, do_sample=True, seed=3, **options)
    assert torch.equal(a, b)
    config = SamplingConfig(**options)
    T = ids.shape[1]
    g = torch.Generator().manual_seed(3)
    for step in range(6):
        seen = a[:, : T + step]
        full_mask = torch.cat([mask, mask.new_ones(3, step)], dim=1)
        with torch.no_grad():
            logits = model(seen, attention_mask=full_mask)[:, -1].float()
        kw = {"input_ids": seen, "prompt_length": T, "attention_mask": full_mask.bool()}
        kept = process_logits(logits, config, **kw).isfinite()
        assert kept.gather(1, a[:, T + step, None]).all(), f"step {step}: a filtered token"
        assert torch.equal(sample(logits, config, **kw, generator=g), a[:, T + step])


def test_num_beams_runs_beam_search():
    model = make_model("gqa-rope")
    ids, mask = prompts()
    kw = {"length_penalty": 0.5, "early_stopping": True, "eos_token_id": 7}
    expected = beam_search(model, ids, num_beams=3, max_new_tokens=4, attention_mask=mask, **kw)
    out = generate(model, ids, 4, num_beams=3, attention_mask=mask, **kw)
    assert torch.equal(out, expected)
    assert torch.equal(generate(model, ids, 0, num_beams=3), ids)
