"""Tiny pytest-benchmark JSON documents for the report and loader tests."""

from __future__ import annotations

from typing import Any

from llmref.bench.cases import ATTENTION_LAYOUT
from llmref.bench.layout import LAYOUT_KEY, Layout

FUNC = "attention-functional"
MOD = "attention-module"
MACHINE = {
    "cpu": "Test CPU",
    "isa": ["AVX2"],
    "cores": 2,
    "threads": 2,
    "torch": "2.13.0",
    "load_average": [0.5, 0.4, 0.3],
}


def entry(
    group: str,
    series: str,
    x: float,
    median: float,
    *,
    layout: Layout = ATTENTION_LAYOUT,
    name: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One benchmark entry shaped like pytest-benchmark's JSON output."""
    info: dict[str, Any] = {
        LAYOUT_KEY: layout.as_dict(),
        layout.series: series,
        layout.x.key: x,
        "dtype": "float32",
        "device": "cpu",
        "threads": 2,
        "suite": "bench_attention.py",
    }
    if layout.metric.per:
        info[layout.metric.per] = 1000
    if layout.metric.key:
        info[layout.metric.key] = 1 / median
    info.update(extra)
    name = name or f"test_x[{series}-{x}]"
    return {
        "group": group,
        "name": name,
        "fullname": f"benchmarks/{info['suite']}::{name}",
        "params": {},
        "extra_info": info,
        "options": {"disable_gc": False, "timer": "perf_counter"},
        "stats": {
            "min": median * 0.9,
            "max": median * 1.5,
            "mean": median * 1.05,
            "stddev": median * 0.1,
            "rounds": 11,
            "median": median,
            "iqr": median * 0.05,
            "q1": median * 0.97,
            "q3": median * 1.02,
            "iterations": 1,
        },
    }


def document(
    benches: list[dict[str, Any]],
    when: str = "2025-01-01T00:00:00",
    suites: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole JSON document, with the run information benchmarks/conftest.py stores."""
    return {
        "machine_info": {"cpu": {"brand_raw": "Test CPU"}, "python_version": "3.11.7"},
        "commit_info": {},
        "benchmarks": benches,
        "datetime": when,
        "version": "5.3.1",
        "llmref": {
            "machine": MACHINE,
            "sweep": "quick",
            "expected": "a moment",
            "wall_s": 90.0,
            "suites": suites or {"bench_attention.py": {"collected": len(benches), "opt_in": ""}},
        },
    }


def attention_document() -> dict[str, Any]:
    """Two attention groups at two sequence lengths (times in seconds)."""
    benches = []
    for t, base in ((128, 2e-4), (1024, 8e-3)):
        benches.append(entry(FUNC, "sdpa", t, base, baseline="sdpa"))
        benches.append(entry(FUNC, "llmref-auto", t, base * 1.02, baseline="sdpa"))
        benches.append(entry(FUNC, "naive", t, base * 10, baseline="sdpa"))
        benches.append(entry(MOD, "torch-mha", t, base * 3, baseline="torch-mha"))
        benches.append(entry(MOD, "llmref-mha", t, base * 2.4, baseline="torch-mha"))
    return document(benches)
