"""The KV-cache contract, run over every entry of CACHES (worked examples included).

Registering a cache kind is what makes it tested: the ids are the kinds' names.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmref.cache import CACHES, CacheSpec, DynamicCache, QuantizedCache
from llmref.testing.contracts.cache import (
    check_cached_decoding,
    check_left_padding,
    check_memory,
    check_positions,
    check_traces,
)

CHECKS = {
    "decoding": check_cached_decoding,  # equals the full sequence under the declared rule
    "positions": check_positions,  # next_key_positions predicts update
    "left_padding": check_left_padding,  # padding changes no real token
    "memory": check_memory,
    "traces": check_traces,  # as declared: a compiled decoding step equals eager, or breaks
}
CASES = [(check, name) for check in CHECKS for name in CACHES]


@pytest.mark.parametrize("check,name", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_cache_contract(check, name):
    CHECKS[check](CACHES[name])


def test_the_worked_example_is_registered():
    assert "toy_recent" in CACHES  # by the one import line in tests/conftest.py


# -- the contract fails a cache that breaks it ----------------------------------------------


class _ForgetfulCache(DynamicCache):
    """Returns only the new tokens: decoding then misses every earlier key."""

    def update(self, k, v, *, lengths=None):
        super().update(k, v, lengths=lengths)
        self.key_positions = self.key_positions[:, -k.shape[2] :]
        return k, v


class _MisplacedCache(DynamicCache):
    """Predicts positions one off from what it stores."""

    def next_key_positions(self, T, *, batch_size=1, lengths=None):
        return super().next_key_positions(T, batch_size=batch_size, lengths=lengths) + 1


class _PaddedKivi(QuantizedCache):
    """Stores the padding too, so it joins the real tokens' quantization groups."""

    def update(self, k, v, *, lengths=None):
        return super().update(k, v)


def _spec(cls, **kw):
    return CacheSpec(name=cls.__name__, fn=cls, **kw)


def test_a_cache_that_forgets_fails_decoding():
    with pytest.raises(AssertionError, match="_ForgetfulCache: tokens"):
        check_cached_decoding(_spec(_ForgetfulCache))


def test_a_cache_that_misplaces_positions_fails():
    with pytest.raises(
        AssertionError, match="_MisplacedCache step 0: row 0's new tokens are not keys"
    ):
        check_positions(_spec(_MisplacedCache))


def test_a_cache_whose_padding_joins_the_groups_fails():
    make = lambda: _PaddedKivi(bits=2, group_size=2, residual_length=1)  # noqa: E731
    with pytest.raises(AssertionError, match="_PaddedKivi"):
        check_left_padding(_spec(_PaddedKivi, exact=False, example=make))


def test_a_lossy_cache_declared_exact_fails_and_an_exact_one_declared_lossy_too():
    make = lambda: QuantizedCache(bits=2, group_size=2, residual_length=1)  # noqa: E731
    with pytest.raises(AssertionError, match="outside c\\*eps"):
        check_cached_decoding(_spec(QuantizedCache, example=make))
    with pytest.raises(AssertionError, match="declared exact=False but decodes within rounding"):
        check_cached_decoding(_spec(DynamicCache, exact=False))


@pytest.mark.parametrize(
    "name,traces,message",
    [
        ("static", False, "declared traces=False, but fullgraph capture succeeded"),
        ("sink", True, "declared traces=True, but fullgraph capture failed"),
    ],
)
def test_a_stale_traces_declaration_fails(name, traces, message):
    with pytest.raises(AssertionError, match=f"cache '{name}': a decoding step: {message}"):
        check_traces(dataclasses.replace(CACHES[name], traces=traces))


def test_a_traced_step_that_leaves_other_positions_fails(monkeypatch):
    """The compiled step must leave the cache as the eager one does (here the traced
    copy of the caches is made to skip an update)."""
    import llmref.testing.contracts.cache as contract

    real = contract.capture_as_declared

    def skipping(what, traces, model, step, *, caches):
        caches[1].update = lambda k, v, **kw: (k, v)  # layer 1 forgets the step
        return real(what, traces, model, step, caches=caches)

    monkeypatch.setattr(contract, "capture_as_declared", skipping)
    with pytest.raises(AssertionError, match="cache 'dynamic': a decoding step, traced"):
        check_traces(CACHES["dynamic"])


def test_a_model_decodes_through_the_worked_example():
    """The spec's declared rule is all the model needs: left-padded generation through it
    equals generation through the library's ring buffer, token for token (float64)."""
    from llmref.cache import SlidingWindowCache
    from llmref.models import generate
    from tests.extending.toy_cache import RecentCache
    from tests.models.helpers import make_model

    model = make_model("gqa-rope")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    toy = generate(model, ids, 6, attention_mask=mask, cache=lambda i: RecentCache(3))
    ring = generate(model, ids, 6, attention_mask=mask, cache=lambda i: SlidingWindowCache(3))
    assert torch.equal(toy, ring)
