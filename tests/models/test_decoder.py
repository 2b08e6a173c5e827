"""DecoderLM: padding, cached decoding through every cache kind that fits, dtypes, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from llmref.cache import CACHES, DynamicCache, LatentCache, SinkCache
from llmref.models import DecoderConfig, DecoderLM, make_caches
from llmref.testing import assert_low_precision, assert_within
from tests.models.helpers import VARIANTS, VOCAB, forward_scale, make_model

T_PROMPT, T_TOTAL = 4, 11
LIBRARY = {n for n in CACHES if not n.startswith("toy_")}  # worked examples: their own suite


def ids_and_mask(B=3, T=T_TOTAL, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    mask[min(1, B - 1), :1] = 0
    return ids, mask


def fitting_kinds(variant):
    """The CACHES kinds make_caches builds for this model by name (sink: its own tests)."""
    model = make_model(variant)
    kinds = []
    for kind in LIBRARY:
        try:
            make_caches(model, kind, batch_size=1, max_len=T_TOTAL)
        except (TypeError, ValueError):
            continue
        kinds.append(kind)
    return kinds


CASES = [(v, k) for v in VARIANTS for k in fitting_kinds(v)]


def test_every_variant_has_caches_and_every_kind_is_used():
    used = {k for _, k in CASES}
    assert {"dynamic", "static", "paged", "quantized", "latent", "sliding_window"} <= used
    assert LIBRARY - used <= {"sink"}  # a new kind is exercised here as soon as it registers


@pytest.mark.parametrize("variant,kind", CASES, ids=[f"{v}-{k}" for v, k in CASES])
def test_cached_decoding_equals_full_forward(variant, kind):
    """Prefill, then one token at a time through the caches: the logits of a full forward."""
    model = make_model(variant)
    ids, _ = ids_and_mask()
    full = model(ids)
    caches = make_caches(model, kind, batch_size=3, max_len=T_TOTAL)
    steps = [model(ids[:, :T_PROMPT], caches=caches)]
    for t in range(T_PROMPT, T_TOTAL):
        steps.append(model(ids[:, t : t + 1], caches=caches))
    # other GEMM shapes and attention splits: the same sums to rounding (forward_scale)
    assert_within(torch.cat(steps, dim=1), full, scale=forward_scale(model, ids))


@pytest.mark.parametrize("variant,kind", CASES, ids=[f"{v}-{k}" for v, k in CASES])
def test_left_padded_cached_decoding_equals_each_sequence_alone(variant, kind):
    model = make_model(variant)
    ids, mask = ids_and_mask()
    caches = make_caches(model, kind, batch_size=3, max_len=T_TOTAL)
    out = [model(ids[:, :T_PROMPT], attention_mask=mask[:, :T_PROMPT], caches=caches)]
    for t in range(T_PROMPT, T_TOTAL):
        out.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], caches=caches))
    batched = torch.cat(out, dim=1)
    for b in range(3):
        start = int((mask[b] == 0).sum())
        alone = model(ids[b : b + 1, start:])
        scale = forward_scale(model, ids[b : b + 1, start:])
        assert_within(batched[b : b + 1, start:], alone, scale=scale)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_full_forward_equals_each_sequence_alone(variant):
    """Padding is never attended to and positions count real tokens only."""
    model = make_model(variant)
    ids, mask = ids_and_mask()
    batched = model(ids, attention_mask=mask)
    for b in range(3):
        start = int((mask[b] == 0).sum())
        alone = ids[b : b + 1, start:]
        assert_within(batched[b : b + 1, start:], model(alone), scale=forward_scale(model, alone))
    assert torch.isfinite(batched).all()  # padding rows are fully masked: zeros, not NaN


def test_padding_in_the_middle_is_skipped():
    model = make_model("gqa-rope")
    ids, _ = ids_and_mask(B=1, T=8)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1]])
    kept = ids[:, [0, 1, 4, 5, 6, 7]]
    out = model(ids, attention_mask=mask)[:, [0, 1, 4, 5, 6, 7]]
    assert_within(out, model(kept), scale=forward_scale(model, kept))


def test_sink_cache_decoding_before_any_eviction_equals_full_forward():
    model = make_model("gqa-rope")
    ids, _ = ids_and_mask()
    caches = make_caches(
        model, lambda i: SinkCache(2, 64, rope=model.layers[i].attn.rope), batch_size=3, max_len=11
    )
    steps = [model(ids[:, :T_PROMPT], caches=caches)]
    for t in range(T_PROMPT, T_TOTAL):
        steps.append(model(ids[:, t : t + 1], caches=caches))
    assert_within(torch.cat(steps, 1), model(ids), scale=forward_scale(model, ids))


SINK_VARIANTS = [v for v in VARIANTS if "mla" not in v and "window" not in v]
"""Every position encoding (RoPE, scaled RoPE, ALiBi, none) on the MHA family."""


@pytest.mark.parametrize("variant", SINK_VARIANTS)
def test_sink_cache_renumbers_positions_after_eviction(variant):
    """StreamingLLM: each step equals a fresh forward over the kept tokens at positions 0..n-1.

    (One layer: deeper, the kept tokens' hidden states still carry what evicted tokens told them.)
    """
    torch.manual_seed(0)
    model = DecoderLM(make_model(variant).config.replace(n_layers=1), dtype=torch.float64)
    ids, _ = ids_and_mask(B=1)
    caches = make_caches(
        model, lambda i: SinkCache(2, 3, rope=model.layers[i].attn.rope), batch_size=1, max_len=11
    )
    model(ids[:, :2], caches=caches)
    for t in range(2, T_TOTAL):
        step = model(ids[:, t : t + 1], caches=caches)
        kept = [j for j in range(t + 1) if j < 2 or t - j < 3]
        # the model's RoPE tables are float32 (as transformers'), so re-rotating a cached key
        # by -shift equals rotating it to its new position only to float32 rounding: the
        # float64 forward's magnitudes, in float32 roundings
        fresh = ids[:, kept]
        scale = forward_scale(model, fresh)
        assert_within(step, model(fresh)[:, -1:], scale=scale, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["gqa-rope", "mla-moe"])
def test_dtype_is_preserved(variant, dtype):
    model = make_model(variant).to(dtype)
    ids, mask = ids_and_mask(T=5)
    out = model(ids, attention_mask=mask)
    assert out.dtype == dtype and out.shape == (3, 5, VOCAB)
    if variant == "gqa-rope":  # (rounding may route a token to other experts in the MoE)
        ref = copy.deepcopy(model).double()  # the same (rounded) weights, in float64
        expected = ref(ids, attention_mask=mask)
        if dtype == torch.float32:
            scale = forward_scale(ref, ids, attention_mask=mask)
            assert_within(out, expected, scale=scale)
        else:  # FlashAttention's rule against the naive forward in bfloat16
            naive = copy.deepcopy(model)
            for layer in naive.layers:
                layer.attn.backend = "naive"
            assert_low_precision(out, expected, naive(ids, attention_mask=mask))


def test_tied_embeddings_share_one_tensor():
    cfg = DecoderConfig(
        vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, tie_embeddings=True
    )
    model = DecoderLM(cfg)
    assert model.lm_head.weight is model.embed.weight
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n != "lm_head.weight"
    )


def test_bad_input():
    model = make_model("gqa-rope")
    ids, mask = ids_and_mask()
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=96\)"):
        model(ids + VOCAB)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        model(ids[0])
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, past \+ T\) = \(3, 11\)"):
        model(ids, attention_mask=mask[:2])
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="position_ids must be"):
        model(ids, position_ids=torch.arange(5))
    with pytest.raises(ValueError, match="one KVCache per layer"):
        model(ids, caches=[DynamicCache()])
    with pytest.raises(TypeError, match=r"caches\[1\] must be a KVCache"):
        model(ids, caches=[DynamicCache(), "dynamic"])


def test_wrong_cache_for_the_attention_kind():
    gqa, mla = make_model("gqa-rope"), make_model("mla-moe")
    ids, _ = ids_and_mask()
    with pytest.raises(TypeError, match=r"layer 0 uses 'gqa' attention, which needs .* 'kv'"):
        gqa(ids, caches=[LatentCache(), LatentCache()])
    with pytest.raises(TypeError, match=r"layer 0 uses 'mla' attention, which needs .* 'latent'"):
        mla(ids, caches=[DynamicCache(), DynamicCache()])
    with pytest.raises(TypeError, match="stores 'kv', but layer 0 uses 'mla'"):
        make_caches(mla, "dynamic", batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="needs a layer with a window"):
        make_caches(gqa, "sliding_window", batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="pass a factory"):
        make_caches(gqa, "sink", batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="cache must be one of"):
        make_caches(gqa, "ring", batch_size=1, max_len=8)
    with pytest.raises(TypeError, match="the cache factory must return"):
        make_caches(gqa, lambda i: None, batch_size=1, max_len=8)


def test_sink_caches_must_number_positions_alike_in_every_layer():
    model = make_model("gqa-rope")
    ids, mask = ids_and_mask()
    with pytest.raises(ValueError, match=r"renumber positions .* must be used, with the same"):
        model(ids, attention_mask=mask, caches=[SinkCache(2, 4), DynamicCache()])
    with pytest.raises(ValueError, match=r"renumber positions .* must be used, with the same"):
        model(ids, attention_mask=mask, caches=[SinkCache(2, 4), SinkCache(2, 5)])


def test_with_caches_padding_must_come_first():
    model = make_model("gqa-rope")
    ids, _ = ids_and_mask()
    mask = torch.ones_like(ids)
    mask[0, 5] = 0
    caches = make_caches(model, None, batch_size=3, max_len=T_TOTAL)
    with pytest.raises(ValueError, match="padding of the new tokens must come first"):
        model(ids, attention_mask=mask, caches=caches)


def test_a_cache_kind_per_layer_from_a_factory():
    """A model with one windowed and one full layer: a ring buffer where it fits."""
    from llmref.cache import SlidingWindowCache

    cfg = make_model("gqa-window").config.replace(window=[3, None])
    torch.manual_seed(0)
    model = DecoderLM(cfg, dtype=torch.float64)
    ids, _ = ids_and_mask()

    def factory(i):
        window = model.config.layer(i).window
        return DynamicCache() if window is None else SlidingWindowCache(window)

    caches = make_caches(model, factory, batch_size=3, max_len=T_TOTAL)
    steps = [model(ids[:, :T_PROMPT], caches=caches)]
    for t in range(T_PROMPT, T_TOTAL):
        steps.append(model(ids[:, t : t + 1], caches=caches))
    assert_within(torch.cat(steps, 1), model(ids), scale=forward_scale(model, ids))
    assert len(caches[0]) <= 3 < len(caches[1]) == T_TOTAL  # the ring holds at most its window


@pytest.mark.parametrize("kind", ["dynamic", "static", "paged", "quantized", "sink"])
def test_a_batch_that_does_not_match_the_caches_is_refused(kind):
    model = make_model("gqa-rope")
    ids, _ = ids_and_mask()
    factory = (lambda i: SinkCache(2, 4)) if kind == "sink" else kind
    caches = make_caches(model, factory, batch_size=3, max_len=T_TOTAL)
    model(ids[:, :T_PROMPT], caches=caches)
    message = r"caches hold 3 sequences|k must match the cached \(B, H_kv, \*, D\) = \(3,"
    with pytest.raises(ValueError, match=message):
        model(ids[:2, T_PROMPT : T_PROMPT + 1], caches=caches)


def _cross_configs():
    """Every attention kind x every decoder position encoding x (full causal, sliding window),
    as far as DecoderConfig accepts the combination."""
    from llmref.models import ATTENTION_KINDS
    from llmref.models.config import POSITIONS
    from tests.models.helpers import MLA

    out = {}
    for attention in ATTENTION_KINDS:
        for position in POSITIONS:
            for window in (None, 3):
                kw = dict(attention=attention, position=position, window=window)
                kw.update(ATTENTION_KINDS[attention].example)  # n_kv_heads, its section
                if attention == "mla":
                    kw.update(mla=MLA, rope_layout="interleaved")
                try:
                    cfg = DecoderConfig(
                        vocab_size=VOCAB,
                        d_model=32,
                        n_layers=2,
                        n_heads=4,
                        d_ff=48,
                        init_std=0.2,
                        **kw,
                    )
                except ValueError:  # e.g. MLA with ALiBi or a window
                    continue
                out[f"{attention}-{position}" + ("-window" if window else "")] = cfg
    return out


def _cross_cases():
    cases = []
    for name, cfg in _cross_configs().items():
        model = DecoderLM(cfg)
        for kind in LIBRARY:
            try:
                make_caches(model, kind, batch_size=1, max_len=T_TOTAL)
            except (TypeError, ValueError):
                continue
            cases.append((name, kind))
    return cases


CROSS_CASES = _cross_cases()


def test_the_cross_product_covers_every_kind_and_encoding():
    names = {name for name, _ in CROSS_CASES}
    assert {"mha-alibi", "gqa-nope", "mqa-rope-window", "mla-rope"} <= names
    assert {kind for _, kind in CROSS_CASES} == LIBRARY - {"sink"}


@pytest.mark.parametrize("name,kind", CROSS_CASES, ids=[f"{n}-{k}" for n, k in CROSS_CASES])
def test_cached_decoding_equals_full_forward_for_every_combination(name, kind):
    """attention kind x position encoding x window x cache kind, from the registries."""
    torch.manual_seed(0)
    model = DecoderLM(_cross_configs()[name], dtype=torch.float64).eval()
    ids, _ = ids_and_mask()
    caches = make_caches(model, kind, batch_size=3, max_len=T_TOTAL)
    steps = [model(ids[:, :T_PROMPT], caches=caches)]
    for t in range(T_PROMPT, T_TOTAL):
        steps.append(model(ids[:, t : t + 1], caches=caches))
    assert_within(torch.cat(steps, dim=1), model(ids), scale=forward_scale(model, ids))
