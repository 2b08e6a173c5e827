"""Every registered format, method and kernel against the quantization contract suites.

The parameters are read from the registries at collection time, so an entry
registered anywhere (the library, or a worked example of ``tests/extending/``
imported by ``tests/conftest.py``) is tested here without being listed.
"""

from __future__ import annotations

import pytest

from llmref.quant import FORMATS, METHODS
from llmref.quant.kernels import KERNELS
from llmref.testing.contracts import quant as contract

WEIGHT_METHODS = [n for n, s in METHODS.items() if s.applies_to == "weight"]
KV_METHODS = [n for n, s in METHODS.items() if s.applies_to == "kv"]


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_round_trip(name):
    contract.check_format_round_trip(FORMATS[name])


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_packing(name):
    contract.check_format_packing(FORMATS[name])


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_storage_round_trip(name):
    contract.check_format_storage(FORMATS[name])


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_bad_input(name):
    contract.check_format_bad_input(FORMATS[name])


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_rows_not_a_multiple_of_the_block(name):
    contract.check_format_ragged_rows(FORMATS[name])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_weight_method_no_worse_than_rtn_on_held_out_outliers(name, seed):
    contract.check_weight_method(METHODS[name], seed)


@pytest.mark.parametrize("name", KV_METHODS)
def test_kv_method_cache_contract(name):
    contract.check_kv_method(METHODS[name])


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_equals_reference(name):
    spec = KERNELS[name]
    checked = contract.check_kernel_matches_reference(spec)
    if checked == 0:  # a kernel this machine cannot run (no compiler, no CPU path, old torch)
        assert not any(spec.supports(qt, contract.CPU) for qt in contract.KERNEL_WEIGHTS.values())


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_refuses_what_it_does_not_support(name):
    contract.check_kernel_refuses_unsupported(KERNELS[name])


def test_contracts_fail_on_a_broken_entry():
    """The suites can fail: a format whose decoder is off by one step, a method worse than RTN."""
    from dataclasses import replace

    import torch

    spec = FORMATS["int4"]
    broken = replace(spec, dequantize=lambda qt: spec.dequantize(qt) * 1.5)
    with pytest.raises(AssertionError, match="int4"):
        contract.check_format_round_trip(broken)

    def worse(weight, inputs=None, *, fmt="int4", group_size="default"):
        return METHODS["rtn"].fn(weight + 0.02 * torch.randn_like(weight), fmt=fmt)

    with pytest.raises(AssertionError, match="exceeds RTN"):
        contract.check_weight_method(replace(METHODS["rtn"], name="worse", fn=worse))
