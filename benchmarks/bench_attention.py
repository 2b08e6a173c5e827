"""Attention benchmarks: llmref's attention against PyTorch's, over sequence length.

The cases (what runs, on which inputs, at which sequence lengths) come from
:mod:`llmref.bench.cases`, the same list the gallery's reduced sweep uses, and
so does the declaration (:data:`llmref.bench.cases.ATTENTION_LAYOUT`: time per
call against ``T``). Each case is timed by the ``bench_time`` fixture of
``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmref.bench.cases import ATTENTION_LAYOUT, Case, sweep


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = sweep(metafunc.config.getoption("sweep"))
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.mark.bench(ATTENTION_LAYOUT)
def test_attention(
    benchmark: Any, case: Case, bench_device: Any, bench_time: Callable[..., Any]
) -> None:
    fn = case.make(bench_device)
    benchmark.group = case.group
    benchmark.extra_info.update(case.extra_info(bench_device))
    assert bench_time(fn) is not None
