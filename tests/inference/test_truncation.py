"""Truncation rules: against transformers' warpers (bit for bit), against float64 set
definitions, on transformers' own test cases, for their properties and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.inference import (
    TRUNCATION,
    epsilon_filter,
    eta_filter,
    min_p_filter,
    top_k_filter,
    top_p_filter,
    typical_filter,
)
from llmref.testing import assert_identical

# rule name -> values exercised (each rule's own scale)
VALUES = {
    "top_k": [1, 3, 20, 500],
    "top_p": [0.05, 0.5, 0.9, 1.0],
    "min_p": [0.0, 0.05, 0.3, 1.0],
    "typical": [0.05, 0.5, 0.95],
    "epsilon": [1e-4, 0.01, 0.2],
    "eta": [1e-4, 3e-3, 0.2],
}
WARPERS = {name: spec.third_party.split(".")[-1] for name, spec in TRUNCATION.items()}


def random_logits(seed=0, B=6, V=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(B, V, generator=g, dtype=torch.float64)
        * torch.tensor([[0.3], [1.0], [3.0], [10.0], [1.0], [2.0]])[:B].double()
    )
    x[4, :12] = 1.5  # ties
    x[5, 40:] = -math.inf  # tokens already removed by an earlier rule
    return x.to(dtype)


def test_registry_lists_every_rule_in_transformers_order():
    assert list(TRUNCATION) == ["top_k", "top_p", "min_p", "typical", "epsilon", "eta"]
    fns = [top_k_filter, top_p_filter, min_p_filter, typical_filter, epsilon_filter, eta_filter]
    assert [spec.fn for spec in TRUNCATION.values()] == fns


# -- against transformers ------------------------------------------------------------------


@pytest.mark.xcheck
@pytest.mark.parametrize("name", list(TRUNCATION))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("keep,fill", [(1, -math.inf), (3, 0.0), (7, -1e4)])
def test_rules_equal_transformers_warpers(name, dtype, keep, fill):
    """Same operations as the warper, so the same bits, kept-or-removed decisions included
    (eta in float64 excepted: transformers holds epsilon in float32 there, see below)."""
    lp = pytest.importorskip("transformers.generation.logits_process")
    warper_cls = getattr(lp, WARPERS[name])
    fn = TRUNCATION[name].fn
    for seed in range(3):
        logits = random_logits(seed, dtype=dtype)
        for value in VALUES[name]:
            if name == "eta" and dtype == torch.float64:
                continue
            warper = warper_cls(value, filter_value=fill, min_tokens_to_keep=keep)
            expected = warper(None, logits.clone())
            got = fn(logits, value, min_tokens_to_keep=keep, filter_value=fill)
            assert_identical(got, expected, what=f"{name}={value} keep={keep} seed={seed}")


@pytest.mark.xcheck
def test_eta_in_float64_differs_from_transformers_only_by_its_float32_epsilon():
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits = random_logits(1, dtype=torch.float64)
    for value in VALUES["eta"]:
        f32_eps = float(torch.tensor(value, dtype=torch.float32))
        expected = lp.EtaLogitsWarper(value)(None, logits.clone())
        assert_identical(eta_filter(logits, f32_eps), expected)


# -- against the float64 definitions -----------------------------------------------------
# Each rule's kept set written from its paper's definition, row by row, in float64, with
# Python sorting; compared on logits whose probabilities are all distinct.


def _kept_reference(name, probs, value, keep):
    """Indices a rule keeps in one row of probabilities (a list of floats)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    if name == "top_k":
        return set(order[: max(value, keep)])
    if name == "top_p":
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += probs[i]
            if mass >= value:
                break
        return set(kept) | set(order[:keep])
    if name == "min_p":
        top = max(probs)
        return {i for i, p in enumerate(probs) if p >= value * top} | set(order[:keep])
    if name == "typical":
        entropy = -sum(p * math.log(p) for p in probs if p > 0)
        by_typicality = sorted(range(len(probs)), key=lambda i: abs(-math.log(probs[i]) - entropy))
        kept, mass = [], 0.0
        for i in by_typicality:
            kept.append(i)
            mass += probs[i]
            if mass >= value:
                break
        return set(kept) | set(by_typicality[:keep])
    if name in ("epsilon", "eta"):
        cut = value
        if name == "eta":
            entropy = -sum(p * math.log(p) for p in probs if p > 0)
            cut = min(value, math.sqrt(value) * math.exp(-entropy))
        return {i for i, p in enumerate(probs) if p >= cut} | set(order[:keep])
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(TRUNCATION))
@pytest.mark.parametrize("keep", [1, 4])
def test_rules_keep_the_sets_their_definitions_name(name, keep):
    g = torch.Generator().manual_seed(7)
    logits = (
        torch.randn(8, 40, generator=g, dtype=torch.float64) * torch.linspace(0.2, 6, 8)[:, None]
    )
    probs = logits.softmax(-1)
    for value in VALUES[name]:
        kept = TRUNCATION[name].fn(logits, value, min_tokens_to_keep=keep).isfinite()
        for row in range(8):
            expected = _kept_reference(name, probs[row].tolist(), value, keep)
            got = set(torch.nonzero(kept[row]).flatten().tolist())
            assert got == expected, f"{name}={value} keep={keep} row {row}"


# -- transformers' own test cases (tests/generation/test_logits_process.py) ---------------


def _kept(x, fill=-math.inf):
    return (x != fill).tolist()


def test_top_k_cases_from_transformers():
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1)
    ramp[1:, :5] += 10
    assert torch.isinf(top_k_filter(ramp, 3)).tolist() == [
        [True] * 7 + [False] * 3,
        [True] * 2 + [False] * 3 + [True] * 5,
    ]
    uniform = torch.full((2, 5), 0.2)
    out = top_k_filter(uniform, 1, filter_value=0.0, min_tokens_to_keep=3)
    assert (out == 0.0).sum(-1).tolist() == [0, 0]  # ties with the kept ones stay
    out = top_k_filter(torch.arange(5.0).repeat(2, 1), 1, filter_value=0.0, min_tokens_to_keep=3)
    assert (out == 0.0).sum(-1).tolist() == [2, 2]  # min_tokens_to_keep overrides k


def test_top_p_cases_from_transformers():
    dist = torch.tensor([[0.3, 0.1, 0.1, 0.5], [0.15, 0.3, 0.3, 0.25]]).log()
    assert _kept(top_p_filter(dist, 0.8)) == [[True, False, False, True], [False, True, True, True]]
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1) - 5
    ramp[1] *= 100
    out = top_p_filter(ramp, 0.9, min_tokens_to_keep=2, filter_value=0.0)
    assert (out != 0.0).sum(-1).tolist() == [3, 2]


def test_min_p_cases_from_transformers():
    dist = torch.tensor(
        [[0.9, 0.0274, 0.047, 0.0274], [0.15, 0.3, 0.3, 0.25], [0.97, 0.01, 0.01, 0.01]]
    ).log()
    assert _kept(min_p_filter(dist, 0.05)) == [
        [True, False, True, False],
        [True, True, True, True],
        [True, False, False, False],
    ]
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1) - 5
    ramp[1] *= 100
    out = min_p_filter(ramp, 0.9, min_tokens_to_keep=2, filter_value=0.0)
    assert (out != 0.0).sum(-1).tolist() == [2, 2]


def test_typical_cases_from_transformers():
    dist = torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.2]]).log()
    assert _kept(typical_filter(dist, 0.5)) == [
        [True, False, False, False],
        [False, True, True, True],
    ]
    uniform = torch.full((2, 5), 0.2)
    out = typical_filter(uniform, 0.5, filter_value=0.0, min_tokens_to_keep=3)
    assert (out == 0.0).sum(-1).tolist() == [0, 0]
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1) - 5
    ramp[1] *= 100
    out = typical_filter(ramp, 0.7, min_tokens_to_keep=2, filter_value=0.0)
    assert (out != 0.0).sum(-1).tolist() == [2, 2]


def test_epsilon_cases_from_transformers():
    dist = torch.tensor([[0.87, 0.099, 0.001, 0.03], [0.4, 0.299, 0.101, 0.2]]).log()
    assert _kept(epsilon_filter(dist, 0.1)) == [
        [True, False, False, False],
        [True, True, True, True],
    ]
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1) - 5
    ramp[1] *= 100
    out = epsilon_filter(ramp, 5e-2, min_tokens_to_keep=2, filter_value=0.0)
    assert (out != 0.0).sum(-1).tolist() == [3, 2]


def test_eta_cases_from_transformers():
    dist = torch.tensor([[0.0, 0.1, 0.8, 0.1], [0.01, 0.04, 0.9, 0.05]]).log()
    # cut-offs min(0.0625, 0.25 e^-H): 0.0625 in both rows
    assert _kept(eta_filter(dist, 0.0625)) == [
        [False, True, True, True],
        [False, False, True, False],
    ]
    ramp = torch.arange(10, dtype=torch.float).repeat(2, 1) - 5
    ramp[1] *= 100
    out = eta_filter(ramp, 0.1, min_tokens_to_keep=2, filter_value=0.0)
    assert (out != 0.0).sum(-1).tolist() == [2, 2]


# -- properties --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRUNCATION))
def test_rules_keep_values_leave_the_input_and_batch_rows_alone(name):
    fn = TRUNCATION[name].fn
    logits = random_logits(3)
    before = logits.clone()
    for value in VALUES[name]:
        for keep in (1, 5):
            out = fn(logits, value, min_tokens_to_keep=keep)
            assert out.shape == logits.shape and out.dtype == logits.dtype
            assert_identical(logits, before, what="input after the call")  # not in place
            kept = out.isfinite()
            assert_identical(out[kept], logits[kept], what="kept logits")
            assert bool((kept.sum(-1) >= keep).all()), f"{name}: fewer than {keep} kept"
            # (..., V): a 3-D batch gives the rows' results
            stacked = fn(logits.reshape(2, 3, -1), value, min_tokens_to_keep=keep)
            assert_identical(stacked.reshape(logits.shape), out)
            assert_identical(fn(logits[2], value, min_tokens_to_keep=keep), out[2])


@pytest.mark.parametrize("name", [n for n in TRUNCATION if n != "typical"])
def test_rules_other_than_typical_keep_a_top_set(name):
    """Every kept token is at least as likely as every removed one (typical may drop the
    most likely token, see its own case above)."""
    logits = random_logits(4)
    for value in VALUES[name]:
        out = TRUNCATION[name].fn(logits, value)
        for row in range(logits.shape[0]):
            kept, dropped = logits[row][out[row].isfinite()], logits[row][~out[row].isfinite()]
            dropped = dropped[dropped.isfinite()]
            if dropped.numel():
                assert float(kept.min()) >= float(dropped.max())


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: top_k_filter(torch.zeros(3), 0), ValueError, "k must be >= 1, got 0"),
        (lambda: top_k_filter(torch.zeros(3), 1.5), TypeError, "k must be an int, got float"),
        (
            lambda: top_p_filter(torch.zeros(3), 0.0),
            ValueError,
            r"top_p must be in \(0, 1\], got 0.0",
        ),
        (
            lambda: top_p_filter(torch.zeros(3), 1.2),
            ValueError,
            r"top_p must be in \(0, 1\], got 1.2",
        ),
        (lambda: top_p_filter(torch.zeros(3), "a"), TypeError, "top_p must be a float, got str"),
        (lambda: min_p_filter(torch.zeros(3), -0.1), ValueError, r"min_p must be in \[0, 1\]"),
        (
            lambda: typical_filter(torch.zeros(3), 1.0),
            ValueError,
            r"mass must be in \(0, 1\), got 1.0",
        ),
        (lambda: epsilon_filter(torch.zeros(3), 0.0), ValueError, r"epsilon must be in \(0, 1\)"),
        (lambda: eta_filter(torch.zeros(3), 1.0), ValueError, r"epsilon must be in \(0, 1\)"),
        (lambda: eta_filter(torch.zeros(3), math.nan), ValueError, "epsilon must be a finite"),
        (
            lambda: top_k_filter(torch.zeros(3), 1, min_tokens_to_keep=0),
            ValueError,
            "min_tokens_to_keep must be >= 1, got 0",
        ),
        (
            lambda: top_p_filter(torch.zeros(3), 0.5, filter_value=math.nan),
            ValueError,
            "filter_value must be a real number or -inf, got nan",
        ),
        (lambda: min_p_filter(torch.zeros(3, dtype=torch.long), 0.1), TypeError, "floating"),
        (lambda: eta_filter([1.0, 2.0], 0.1), TypeError, "logits must be a torch.Tensor, got list"),
        (lambda: typical_filter(torch.tensor(1.0), 0.5), ValueError, "0-D"),
        (lambda: epsilon_filter(torch.zeros(2, 0), 0.5), ValueError, "V >= 1"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
