"""Attention benchmarks: llmref's attention against PyTorch's, over sequence length.

The cases (what runs, on which inputs, at which sequence lengths) come from
:mod:`llmref.bench.cases`, the same list the gallery's reduced sweep uses.
Each case is timed with ``benchmark.pedantic``: a warmup call and up to three
probe calls (:func:`llmref.bench.measure.plan_rounds`) size the run, then it
runs as many rounds as fit in ``--benchmark-max-time`` (default 1 s), but at
least ``--benchmark-min-rounds`` (default 5), so long sequences stay
affordable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmref.bench.cases import Case, sweep
from llmref.bench.measure import plan_rounds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = sweep(metafunc.config.getoption("sweep"))
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def test_attention(
    benchmark: Any,
    case: Case,
    bench_device: Any,
    bench_options: dict[str, float],
    bench_log: Callable[[str], None],
) -> None:
    fn = case.make(bench_device)
    benchmark.group = case.group
    benchmark.extra_info.update(case.extra_info(bench_device))
    if benchmark.disabled:  # --benchmark-disable: run once, as a smoke test
        assert benchmark.pedantic(fn) is not None
        return
    rounds = plan_rounds(
        fn, max_time=bench_options["max_time"], min_rounds=int(bench_options["min_rounds"])
    )
    out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)
    assert out is not None
    stats = benchmark.stats.stats
    bench_log(f"median {stats.median * 1e3:.3f} ms, iqr {stats.iqr * 1e3:.3f} ms, {rounds} rounds")
