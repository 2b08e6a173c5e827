"""The decoder attention-kind contract, run over every entry of ATTENTION_KINDS (worked
examples included): registering a kind is what makes it tested; the ids are its name."""

from __future__ import annotations

import dataclasses

import pytest

from llmref.models import ATTENTION_KINDS
from llmref.testing.contracts.decoder import (
    check_cached_decoding,
    check_float32,
    check_kv_heads_rule,
    check_traces,
)

CHECKS = {
    "cached_decoding": check_cached_decoding,  # prefill + steps equal the full forward
    "float32": check_float32,  # float32 within the policy's bound of float64
    "traces": check_traces,  # as declared: one graph equal to eager, or a real break
    "kv_heads_rule": check_kv_heads_rule,  # what the kind refuses, it names
}
CASES = [(check, name) for check in CHECKS for name in ATTENTION_KINDS]


@pytest.mark.parametrize("check,name", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_attention_kind_contract(check, name):
    CHECKS[check](ATTENTION_KINDS[name])


def test_the_worked_example_is_registered():
    assert "toy_single_kv" in ATTENTION_KINDS  # by the one import line in tests/conftest.py


# -- the contract fails a kind that breaks it ----------------------------------------------


def test_a_false_traces_declaration_fails():
    wrong = dataclasses.replace(ATTENTION_KINDS["gqa"], traces=False)
    with pytest.raises(AssertionError, match="declared traces=False, but fullgraph capture"):
        check_traces(wrong)


def test_a_rule_that_does_not_match_the_config_fails():
    wrong = dataclasses.replace(ATTENTION_KINDS["mqa"], kv_heads=lambda kv, h: kv == 2)
    with pytest.raises(AssertionError, match="mqa: n_kv_heads=1 breaks its rule but was built"):
        check_kv_heads_rule(wrong)


def test_a_cache_that_drops_a_step_fails(monkeypatch):
    import llmref.testing.contracts.decoder as contract

    real = contract.make_caches

    def forgetful(model, cache, **kw):  # each layer's cache forgets everything it saw
        from llmref.cache import DynamicCache

        class Forgetful(DynamicCache):
            def update(self, k, v, *, lengths=None):
                self.reset()
                return super().update(k, v, lengths=lengths)

        return [Forgetful() for _ in real(model, cache, **kw)]

    monkeypatch.setattr(contract, "make_caches", forgetful)
    with pytest.raises(AssertionError, match="gqa: cached decoding's logits"):
        check_cached_decoding(ATTENTION_KINDS["gqa"])
