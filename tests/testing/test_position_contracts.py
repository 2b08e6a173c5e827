"""The RoPE-rule contract, run over every entry of ROPE_SCALING (worked examples included).

Registering a rule is what makes it tested: the ids are the ``rope_type`` names.
"""

from __future__ import annotations

import pytest

from llmref.position import ROPE_SCALING
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
