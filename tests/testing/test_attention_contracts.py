"""The attention-backend contract, run over every entry of ATTENTION (worked examples included).

Registering a backend is what makes it tested: the ids are ``<backend>-<case>``.
"""

from __future__ import annotations

import pytest

from llmref.attention import ATTENTION
from llmref.testing.contracts.attention import (
    CASES,
    check_case,
    check_gradients,
    check_refuses,
    supports,
)

SUPPORTED = [(n, c) for n, spec in ATTENTION.items() for c in CASES if supports(spec, c)]
REFUSED = [(n, c) for n, spec in ATTENTION.items() for c in CASES if not supports(spec, c)]


@pytest.mark.parametrize("name,case", SUPPORTED, ids=[f"{n}-{c.id}" for n, c in SUPPORTED])
def test_backend_equals_the_reference(name, case):
    check_case(ATTENTION[name], case)


@pytest.mark.parametrize("name,case", REFUSED, ids=[f"{n}-{c.id}" for n, c in REFUSED])
def test_dispatcher_refuses_what_the_backend_does_not_support(name, case):
    check_refuses(ATTENTION[name], case)


@pytest.mark.parametrize("name", [n for n, s in ATTENTION.items() if s.backward_on_cpu])
def test_gradients_equal_the_reference(name):
    check_gradients(ATTENTION[name])
