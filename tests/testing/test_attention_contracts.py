"""The attention-backend contract, run over every entry of ATTENTION (worked examples included).

Registering a backend is what makes it tested: the ids are ``<backend>-<case>``.
"""

from __future__ import annotations

import pytest
import torch

from llmref.attention import ATTENTION, AttentionBackendSpec, naive_attention
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


# -- the contract fails a backend that breaks it ----------------------------------------


def _case(**want):
    return next(c for c in CASES if all(getattr(c, k) == v for k, v in want.items()))


def test_contract_catches_a_backend_that_drops_the_mask():
    def unmasked(q, k, v, *, mask=None, is_causal=False, scale=None):
        return naive_attention(q, k, v, is_causal=is_causal, scale=scale)

    spec = AttentionBackendSpec(name="unmasked", fn=unmasked)
    case = _case(dtype=torch.float32, mask=True, masked_rows=False)
    with pytest.raises(AssertionError, match=r"'unmasked' on .*-mask: outside"):
        check_case(spec, case)


def test_contract_catches_a_16_bit_backend_that_rounds_its_scores_too_far():
    def rounded(q, k, v, *, mask=None, is_causal=False, scale=None):
        # scores through float8 (3 mantissa bits): far past what a 16-bit computation rounds
        s = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
        p = s.to(torch.float8_e4m3fn).float().softmax(-1)
        return (p @ v.float()).to(q.dtype)

    spec = AttentionBackendSpec(name="rounded", fn=rounded)
    with pytest.raises(AssertionError, match=r"'rounded' on mha-float16: max\|error\|"):
        check_case(spec, _case(shape="mha", dtype=torch.float16, mask=False))


def test_contract_catches_a_dispatch_that_runs_what_the_spec_refuses():
    # chunked supports softcap; a case its spec refused would run, and the check says so
    with pytest.raises(AssertionError, match="ran, but its spec says it does not support"):
        check_refuses(ATTENTION["chunked"], _case(dtype=torch.float32, softcap=5.0))


class _DoubleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_contract_catches_a_wrong_gradient():
    def doubled(q, k, v, *, mask=None, is_causal=False, scale=None):
        return naive_attention(_DoubleGradient.apply(q), k, v, mask=mask, is_causal=is_causal)

    with pytest.raises(AssertionError, match="'doubled': dq: outside"):
        check_gradients(AttentionBackendSpec(name="doubled", fn=doubled))
