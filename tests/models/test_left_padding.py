"""Left padding with every cache kind: batched generation equals each sequence generated alone.

Models are float64 (tests/models/helpers.py), where greedy token sequences may be compared
exactly; the teacher-forced logits are compared too, within the rounding of the sums they
are made of (``forward_scale``). Padding never changes what a real token is computed from:
stream caches keep padding slots at position -1 (masked), and the kinds whose layout depends
on the tokens (paged blocks, KIVI groups, StreamingLLM sinks) do not store it. So even the
lossy KIVI cache is bound by rounding only here: a padded row quantizes exactly the groups
it quantizes alone (same op sequence, bit for bit, ``test_kivi_groups_ignore_padding``).
"""

from __future__ import annotations

import pytest
import torch

from llmref.cache import CACHES, QuantizedCache, SinkCache
from llmref.models import DecoderLM, generate, make_caches
from llmref.testing import assert_identical, assert_within
from tests.models.helpers import VOCAB, forward_scale, make_model

NEW = 8


def prompts(B=3, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, :1] = 0
    return ids, mask


def kivi(i):
    return QuantizedCache(bits=4, group_size=2, residual_length=1)  # quantizes from step 1


def sink_for(model):
    return lambda i: SinkCache(2, 3, rope=model.layers[i].attn.rope)  # evicts from step 1


# cache kind -> (model variant, cache argument of generate/make_caches, or a model -> factory)
KINDS = {
    "dynamic": ("gqa-rope", "dynamic"),
    "static": ("mha-alibi", "static"),
    "sliding_window": ("gqa-window", "sliding_window"),
    "paged": ("gqa-llama3-bias", "paged"),
    "latent": ("mla-dense", "latent"),
    "quantized": ("gqa-rope", kivi),
    "sink": ("gqa-rope", sink_for),
}


def _model(variant):
    """A variant of tests/models/helpers.py; "mla-dense" is mla-moe without its MoE layer, whose
    float32 router (as transformers') rounds per batch shape at float32 eps, which would hide a
    float64-sized error behind the router's (test_the_moe_router_rounds_in_float32)."""
    if variant != "mla-dense":
        return make_model(variant)
    cfg = make_model("mla-moe").config.replace(mlp="dense", moe=None)
    torch.manual_seed(0)
    return DecoderLM(cfg, dtype=torch.float64).eval()


def test_every_registered_kind_is_covered():
    assert set(KINDS) == {n for n in CACHES if not n.startswith("toy_")}


def _cache_arg(kind, model):
    arg = KINDS[kind][1]
    return arg(model) if arg is sink_for else arg


def _teacher_forced(model, ids, mask, cache, prompt):
    """Logits of a prefill of ``prompt`` tokens, then one token per step, through the caches."""
    caches = make_caches(model, cache, batch_size=ids.shape[0], max_len=ids.shape[1])
    m = None if mask is None else mask[:, :prompt]
    out = [model(ids[:, :prompt], attention_mask=m, caches=caches)]
    for t in range(prompt, ids.shape[1]):
        m = None if mask is None else mask[:, : t + 1]
        out.append(model(ids[:, t : t + 1], attention_mask=m, caches=caches))
    return torch.cat(out, dim=1), caches


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batched_generation_equals_each_sequence_alone(kind):
    model = _model(KINDS[kind][0])
    cache = _cache_arg(kind, model)
    ids, mask = prompts()
    T = ids.shape[1]
    batched = generate(model, ids, NEW, attention_mask=mask, cache=cache)
    full_mask = torch.cat([mask, mask.new_ones(3, NEW)], dim=1)
    logits, _ = _teacher_forced(model, batched, full_mask, cache, T)
    for b in range(3):
        start = int((mask[b] == 0).sum())
        alone = generate(model, ids[b : b + 1, start:], NEW, cache=cache)
        assert torch.equal(batched[b, start:], alone[0]), (kind, b)
        ref, _ = _teacher_forced(model, alone, None, cache, T - start)
        # the same sums over the same real keys (plus masked padding): rounding only
        scale = forward_scale(model, alone)
        assert_within(logits[b : b + 1, start:], ref, scale=scale, what=f"{kind} row {b}")


def test_sink_cache_keeps_each_rows_first_real_tokens():
    model = make_model("gqa-rope")
    ids, mask = prompts()
    _, caches = _teacher_forced(model, ids, mask, sink_for(model), 3)
    for b in range(3):
        row = caches[0]._rows[b]
        real = int(mask[b].sum())
        # 2 sinks (the first real tokens, 0 and 1) and the 2 newest, by sequence position
        assert row.positions.tolist() == sorted({0, 1, real - 2, real - 1}), b


def test_kivi_groups_ignore_padding():
    """A padded row's quantized chunks are, bit for bit, those of the row alone."""
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 2, 7, 4, generator=g), torch.randn(2, 2, 7, 4, generator=g)
    batched = QuantizedCache(bits=2, group_size=2, residual_length=1)
    lengths = torch.tensor([7, 4])
    k_all, v_all = batched.update(k, v, lengths=lengths)
    k_all, v_all = batched.update(k[:, :, :1], v[:, :, :1])  # read back the quantized chunks
    assert batched.key_positions.tolist() == [list(range(8)), [0, 1, 2, 3, 4, -1, -1, -1]]
    for b, n in enumerate(lengths.tolist()):
        alone = QuantizedCache(bits=2, group_size=2, residual_length=1)
        alone.update(k[b : b + 1, :, 7 - n :], v[b : b + 1, :, 7 - n :])
        k_ref, v_ref = alone.update(k[b : b + 1, :, :1], v[b : b + 1, :, :1])
        assert_identical(k_all[b : b + 1, :, : n + 1], k_ref)
        assert_identical(v_all[b : b + 1, :, : n + 1], v_ref)
        assert alone.n_quantized > 0  # the groups were quantized: the check can fail
    # the padding tail of the short row is zeros at position -1 (masked by the model)
    assert_identical(k_all[1, :, 5:], torch.zeros_like(k_all[1, :, 5:]))


def test_kivi_padding_would_shift_the_groups_if_it_were_stored():
    """What the per-row groups avoid: quantizing the padded stream groups other tokens."""
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 2, 6, 4, generator=g)
    padded = torch.cat([torch.zeros(1, 2, 1, 4), k], dim=2)  # one padding token in front
    stored, alone = (QuantizedCache(bits=2, group_size=2, residual_length=0) for _ in range(2))
    stored.update(padded, padded)
    alone.update(k, k)
    shifted, _ = stored.update(k[:, :, :0], k[:, :, :0])
    ref, _ = alone.update(k[:, :, :0], k[:, :, :0])
    assert not torch.equal(shifted[:, :, 1:], ref)


def test_the_moe_router_rounds_in_float32():
    """Why the latent case above leaves the MoE out: one sequence decoded alone through its
    caches differs from its full forward by float32 roundings of the router only."""
    model = make_model("mla-moe")
    ids = prompts()[0][2:]  # the unpadded row
    cached, _ = _teacher_forced(model, ids, None, "latent", 3)
    scale = forward_scale(model, ids)
    assert_within(cached, model(ids), scale=scale, dtype=torch.float32)
