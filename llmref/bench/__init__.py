"""Benchmark helpers shared by ``benchmarks/`` (pytest-benchmark) and the gallery.

* :mod:`llmref.bench.layout` — what a benchmark declares: its x axis, metric
  and series (:class:`Layout`), which the report and plots read.
* :mod:`llmref.bench.cases` — the attention sweep: what is measured, on which
  inputs; the sweeps' names.
* :mod:`llmref.bench.measure` — a small timer for quick in-process sweeps.
* :mod:`llmref.bench.results` — measurements as :class:`Record` objects,
  loaded from pytest-benchmark JSON with nothing dropped silently; ratios.
* :mod:`llmref.bench.machine` — the CPU, its ISA features and the load.
* :mod:`llmref.bench.plot` — matplotlib figures (imported on demand).
* :mod:`llmref.bench.report` — ``python -m llmref.bench.report RESULTS_DIR``.
* :mod:`llmref.bench.check` — ``python -m llmref.bench.check RESULTS_DIR``,
  the CI smoke run's completeness check.
* :mod:`llmref.bench.paths` — locating the repository.

Importing this package imports neither matplotlib nor the plotting and
report modules.
"""

from .cases import BASELINES, SWEEPS, Case, Sweep, attention_cases, sweep
from .layout import Axis, Extra, Layout, Metric
from .machine import machine_info
from .measure import Timing, plan_rounds, run_cases, time_callable
from .results import Record, Results, load_dir, load_json, ratios

__all__ = [
    "BASELINES",
    "SWEEPS",
    "Axis",
    "Case",
    "Extra",
    "Layout",
    "Metric",
    "Record",
    "Results",
    "Sweep",
    "Timing",
    "attention_cases",
    "load_dir",
    "load_json",
    "machine_info",
    "plan_rounds",
    "ratios",
    "run_cases",
    "sweep",
    "time_callable",
]
