"""DecoderLM's forward: one mask and one RoPE table per forward, a traced forward, empty_model."""

from __future__ import annotations

import pytest
import torch

from llmref.cache import DynamicCache, StaticCache
from llmref.models import DecoderLM, make_caches
from llmref.models.decoder import empty_model
from llmref.position import RotaryEmbedding
from llmref.testing import assert_identical, assert_within
from llmref.testing.contracts.tracing import compiled_call
from tests.models.helpers import VOCAB, forward_scale, make_model


def ids_and_mask(B=2, T=6):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :2] = 0
    return ids, mask


# variant -> dense masks built per forward: (no padding, padding, a padded cached step)
DENSE = {"gqa-rope": (0, 1, 1), "gqa-window": (2, 2, 2), "mla-moe": (0, 1, 1)}


@pytest.mark.parametrize("variant", DENSE)
def test_rope_tables_and_masks_are_built_once_per_forward(variant, monkeypatch):
    """One cos/sin computation per rotary module and one dense mask per group of layers
    (the two windowed layers of gqa-window differ; the others share one), none in the layers."""
    import llmref.attention.masking as masking
    import llmref.models.decoder as decoder

    model = make_model(variant)
    ids, mask = ids_and_mask()
    calls = {"tables": 0, "masks": 0, "lookups": 0}

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        RotaryEmbedding, "position_embeddings", count("tables", RotaryEmbedding.position_embeddings)
    )
    monkeypatch.setattr(RotaryEmbedding, "cos_sin", count("lookups", RotaryEmbedding.cos_sin))
    dense = count("masks", masking.positions_mask)
    monkeypatch.setattr(masking, "positions_mask", dense)
    monkeypatch.setattr(decoder, "positions_mask", dense)
    caches = make_caches(model, None, batch_size=2, max_len=8)
    model(ids, attention_mask=mask, caches=caches)
    runs = [
        lambda: model(ids),
        lambda: model(ids, attention_mask=mask),
        lambda: model(ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1), caches=caches),
    ]
    for run, expected in zip(runs, DENSE[variant], strict=True):
        calls.update(tables=0, masks=0)
        run()
        assert calls["tables"] == 1  # one rotary module per model (MLA: its own, alone)
        assert calls["masks"] == expected
    assert calls["lookups"] == 0  # the layers never look positions up themselves


@pytest.mark.parametrize("variant", ["gqa-rope", "mha-alibi", "gqa-window"])
def test_compile_captures_the_forward_in_one_graph(variant):
    """fullgraph=True raises on any graph break (a host value, an unsupported call)."""
    model = make_model(variant)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            out = compiled_call(model, ids, **kwargs)
            eager = model(ids, **kwargs)
            # aot_eager runs the same aten ops as eager, decomposed: rounding at most
            assert_within(out, eager, scale=forward_scale(model, ids, **kwargs))


@pytest.mark.parametrize(
    "make_cache", [DynamicCache, lambda: StaticCache(16)], ids=["dynamic", "static"]
)
def test_compile_captures_the_cached_decoding_step(make_cache):
    model = make_model("gqa-rope")
    ids, _ = ids_and_mask(T=7)
    eager_caches = [make_cache() for _ in range(2)]
    traced_caches = [make_cache() for _ in range(2)]
    with torch.no_grad():
        model(ids[:, :6], caches=eager_caches)
        model(ids[:, :6], caches=traced_caches)
        step = ids[:, 6:7]
        eager = model(step, caches=eager_caches)
        out = compiled_call(model, step, caches=traced_caches)
    assert_within(out, eager, scale=forward_scale(model, ids))
    assert traced_caches[0].seen_tokens == 7  # the traced step updated the caches
    assert_identical(traced_caches[1].key_positions, eager_caches[1].key_positions)


def test_the_mixture_of_experts_is_the_declared_exemption():
    """MoE's expert loop reads how many tokens each expert got: a host value, a graph break."""
    model = make_model("mla-moe")
    ids, _ = ids_and_mask()
    with pytest.raises(Exception, match=r"(?i)graph break|data-dependent|tolist|unsupported"):
        with torch.no_grad():
            compiled_call(model, ids)


@pytest.mark.parametrize("variant", ["gqa-llama3-bias", "mha-alibi", "mla-moe"])
def test_empty_model_recomputes_derived_buffers_and_loads_the_same_logits(variant):
    model = make_model(variant)
    loaded = empty_model(model.config, dtype=torch.float64)
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        if not name.endswith(("cos_cached", "sin_cached")):  # tables grow lazily: not derived
            assert_identical(b, a, what=name)  # inv_freq, ALiBi slopes, routing biases
    loaded.load_state_dict(model.state_dict())
    ids, mask = ids_and_mask()
    assert_identical(loaded(ids, attention_mask=mask), model(ids, attention_mask=mask))


def test_empty_model_builds_on_the_meta_device_and_touches_no_global_init():
    before = torch.nn.init.normal_
    loaded = empty_model(make_model("gqa-rope").config)
    assert torch.nn.init.normal_ is before
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert isinstance(loaded, DecoderLM)
