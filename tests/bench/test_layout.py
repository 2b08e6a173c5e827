"""Tests of llmref.bench.layout (the declarations) and llmref.bench.machine."""

from __future__ import annotations

import json

import pytest

from llmref.bench import machine
from llmref.bench.layout import TIME_PER_CALL, Axis, Extra, Layout, Metric


def test_layout_round_trips_through_json() -> None:
    layout = Layout(
        Axis("tokens", "tokens M", "tokens", scale="log10", symbol="M"),
        Metric("throughput", "Mweights/s", per="elements", scale=1e-6, higher_is_better=True),
        series="format",
        guide="linear",
        extras=(Extra("bits_per_weight", "bits per weight"),),
        description="d",
    )
    assert Layout.from_dict(json.loads(json.dumps(layout.as_dict()))) == layout
    assert layout.metric.source == "throughput"
    assert TIME_PER_CALL.source == "time"
    assert Metric("rate", "tokens/s", key="rate").source == "stored"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Axis("", "label"), "Axis key"),
        (lambda: Axis("k", "label", scale="cubic"), "Axis scale"),
        (lambda: Metric("m", ""), "Metric unit"),
        (lambda: Metric("m", "s", key="a", per="b"), "not both"),
        (lambda: Metric("m", "s", scale=0.0), "scale"),
        (lambda: Layout(Axis("k", "l"), TIME_PER_CALL, guide="cubic"), "guide"),
        (lambda: Layout(Axis("k", "l"), TIME_PER_CALL, series=""), "series"),
        (lambda: Layout("x", TIME_PER_CALL), "must be an Axis"),  # type: ignore[arg-type]
        (lambda: Layout.from_dict({"x": {}}), "not a stored layout"),
    ],
)
def test_declarations_reject_bad_values(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


CPUINFO = """processor\t: 0
model name\t: Example EPYC 9000
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8
"""


def test_machine_reads_the_cpu_model_and_features() -> None:
    assert machine.cpu_model(CPUINFO) == "Example EPYC 9000"
    assert machine.cpu_flags(CPUINFO) == [
        "AVX2",
        "AVX-512F",
        "AVX512-VNNI",
        "AVX512-BF16",
        "AMX",
        "AMX-INT8",
    ]
    assert machine.cpu_flags("") == []


def test_machine_info_of_this_process() -> None:
    import torch

    info = machine.machine_info()
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__
    assert info["cores"] >= 1 and info["cpu"]
    json.dumps(info)  # stored in the benchmark JSON


def test_describe_machine_and_the_load_warning() -> None:
    info = {
        "cpu": "C",
        "isa": ["AVX2", "AMX-INT8"],
        "cores": 4,
        "threads": 4,
        "torch": "2.13.0",
        "load_average": [6.0, 1.0, 1.0],
    }
    line = machine.describe_machine(info)
    assert line.startswith("C (AVX2, AMX-INT8; no AVX-512F, AVX512-VNNI), 4 cores")
    assert "load average 6 at start" in line
    assert "exceeded the 4 cores" in (machine.load_warning(info) or "")
    assert machine.load_warning({**info, "load_average": [3.9, 1.0, 1.0]}) is None
    assert machine.load_warning({"cores": 2}) is None
    assert "unknown" in machine.describe_machine({})
