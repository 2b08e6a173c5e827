"""Benchmark helpers shared by ``benchmarks/`` (pytest-benchmark) and the gallery.

* :mod:`llmref.bench.cases` — the sweep: what is measured, on which inputs.
* :mod:`llmref.bench.measure` — a small timer for quick in-process sweeps.
* :mod:`llmref.bench.results` — measurements as :class:`Record` objects,
  loaded from pytest-benchmark JSON; ratios to a baseline.
* :mod:`llmref.bench.plot` — matplotlib figures (imported on demand).
* :mod:`llmref.bench.report` — ``python -m llmref.bench.report RESULTS_DIR``.
* :mod:`llmref.bench.paths` — locating the repository and its ``results/``.

Importing this package imports neither matplotlib nor the plotting and
report modules.
"""

from .cases import BASELINES, SWEEPS, Case, Sweep, attention_cases, sweep
from .measure import Timing, plan_rounds, run_cases, time_callable
from .results import Record, load_dir, load_json, ratios

__all__ = [
    "BASELINES",
    "SWEEPS",
    "Case",
    "Record",
    "Sweep",
    "Timing",
    "attention_cases",
    "load_dir",
    "load_json",
    "plan_rounds",
    "ratios",
    "run_cases",
    "sweep",
    "time_callable",
]
