"""The RoPE-rule contract, run over every entry of ROPE_SCALING (worked examples included).

Registering a rule is what makes it tested: the ids are the ``rope_type`` names.
"""

from __future__ import annotations

import pytest
import torch

from llmref.position import ROPE_SCALING, RopeRuleSpec
from llmref.position.rope_scaling import default_frequencies, linear_frequencies
from llmref.testing.contracts.position import (
    check_against_transformers,
    check_declaration,
    check_frequencies,
    check_refusals,
    transformers_has,
)

RULES = list(ROPE_SCALING)


@pytest.mark.parametrize("name", RULES)
def test_rule_declares_the_parameters_it_takes(name):
    check_declaration(ROPE_SCALING[name])


@pytest.mark.parametrize("name", RULES)
def test_rule_frequencies_and_attention_factor(name):
    check_frequencies(ROPE_SCALING[name])


@pytest.mark.parametrize("name", RULES)
def test_rule_refuses_bad_parameters_by_name(name):
    check_refusals(ROPE_SCALING[name])


@pytest.mark.xcheck
@pytest.mark.parametrize("name", [n for n in RULES if transformers_has(ROPE_SCALING[n])])
def test_rule_equals_transformers(name):
    pytest.importorskip("transformers")
    check_against_transformers(ROPE_SCALING[name])


# -- the contract fails a rule that breaks it -------------------------------------------


def _rule(fn, **fields):
    return RopeRuleSpec(name="broken", paper="su2024roformer", fn=fn, **fields)


def test_contract_catches_an_undeclared_parameter():
    spec = _rule(linear_frequencies, required=("factor",), example={"factor": 2.0})
    with pytest.raises(AssertionError, match=r"undeclared \['partial_rotary_factor'\]"):
        check_declaration(spec)


def test_contract_catches_an_attention_factor_the_spec_does_not_declare():
    def scaled(head_dim, *, factor=None, base=1e4, device=None, dtype=torch.float32):
        return default_frequencies(head_dim, base=base, device=device, dtype=dtype)[0], 1.5

    spec = _rule(scaled, required=("factor",), example={"factor": 2.0})
    with pytest.raises(AssertionError, match=r"attention_factor 1\.5 != 1\.0"):
        check_frequencies(spec)


def test_contract_catches_a_required_parameter_silently_defaulted():
    def lenient(head_dim, *, factor=2.0, base=1e4, device=None, dtype=torch.float32):
        inv_freq, _ = default_frequencies(head_dim, base=base, device=device, dtype=dtype)
        return inv_freq / factor, 1.0

    spec = _rule(lenient, required=("factor",), example={"factor": 2.0})
    with pytest.raises(AssertionError, match="without 'factor': no ValueError raised"):
        check_refusals(spec)


def test_contract_catches_a_wrong_shape():
    def short(head_dim, *, base=1e4, device=None, dtype=torch.float32):
        return default_frequencies(head_dim, base=base, device=device, dtype=dtype)[0][:-1], 1.0

    with pytest.raises(AssertionError, match=r"inv_freq shape \(31,\), expected \(32,\)"):
        check_frequencies(_rule(short))
