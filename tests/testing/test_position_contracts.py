"""The RoPE-rule contract, run over every entry of ROPE_SCALING (worked examples included),
and the position-module contract, run over every entry of POSITION that names a module.

Registering a rule or an encoding is what makes it tested: the ids are the names.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmref.position import POSITION, ROPE_SCALING, AlibiBias, PositionSpec, RopeRuleSpec
from llmref.position.alibi import alibi_bias
from llmref.position.rope_scaling import default_frequencies, linear_frequencies
from llmref.testing.contracts.position import (
    check_against_transformers,
    check_declaration,
    check_frequencies,
    check_refusals,
    check_traces,
    transformers_has,
)

RULES = list(ROPE_SCALING)
MODULES = [name for name, spec in POSITION.items() if spec.module is not None]


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


@pytest.mark.parametrize("name", MODULES)
def test_position_module_traces_as_declared(name):
    check_traces(POSITION[name])  # one graph equal to eager, or (declared) a real break


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


# -- the module contract fails a stale declaration; the spec refuses a missing one ------


@pytest.mark.parametrize(
    "name,traces,message",
    [
        ("alibi", False, "declared traces=False, but fullgraph capture succeeded"),
        ("learned", True, "declared traces=True, but fullgraph capture failed"),
    ],
)
def test_module_contract_catches_a_stale_traces_declaration(name, traces, message):
    with pytest.raises(AssertionError, match=message):
        check_traces(dataclasses.replace(POSITION[name], traces=traces))


def test_module_contract_catches_an_example_of_another_module():
    wrong = dataclasses.replace(POSITION["t5"], example=POSITION["alibi"].example)
    with pytest.raises(AssertionError, match=r"'t5' \(T5RelativeBias\): the example is a Alibi"):
        check_traces(wrong)


def _encoding(**fields):
    return PositionSpec(name="broken", fn=alibi_bias, kind="bias", **fields)


def test_position_spec_requires_traces_and_an_example_with_a_module():
    example = lambda: (AlibiBias(2), (3,), {})  # noqa: E731
    with pytest.raises(TypeError, match=r"traces must be a bool .*AlibiBias.*got None"):
        _encoding(module="AlibiBias", example=example)
    with pytest.raises(TypeError, match=r"example must be a callable .*got None"):
        _encoding(module="AlibiBias", traces=True)
    with pytest.raises(ValueError, match="traces and example describe the module; module is None"):
        _encoding(traces=True, example=example)
    assert _encoding(module="AlibiBias", traces=True, example=example).traces
