"""pytest configuration of the benchmark suites (run by ``tox -e bench``).

* Options: ``--device`` (where the cases run; default ``cpu``), ``--threads``
  (torch intra-op threads; default torch's choice), ``--sweep`` (``quick``,
  ``default`` or ``full``; default ``$LLMREF_BENCH_SWEEP`` or ``default``) and
  ``--with-opt-in`` (also run suites that declare ``OPT_IN``).
* Declarations: every benchmark (a test that takes the ``benchmark`` fixture)
  must declare its :class:`~llmref.bench.layout.Layout` with the ``bench``
  marker — ``@pytest.mark.bench(layout)`` on the test, or
  ``pytestmark = pytest.mark.bench(layout)`` for the module. Collection fails,
  naming the tests, when one does not. The layout is stored in each result's
  ``extra_info``, with the suite's file name.
* A suite that needs something the ``bench`` extra does not install sets a
  module constant ``OPT_IN = "<what it needs>"``: its cases are skipped with
  that reason unless ``--with-opt-in`` is given.
* The run: the machine (:func:`llmref.bench.machine.machine_info`, with the
  load average *at the start*), the sweep and its expected duration are
  printed in the header and stored with the wall time and the suites under the
  JSON's ``"llmref"`` key.
* Progress: a line names each case when it starts and gets its result when it
  ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from llmref.bench.cases import SWEEP_ENV, SWEEPS, resolve_device, sweep_name
from llmref.bench.layout import LAYOUT_KEY, Layout
from llmref.bench.machine import describe_machine, load_warning, machine_info
from llmref.bench.results import RUN_KEY

MARKER = "bench"
"""Name of the marker that carries a benchmark's layout."""
SUITE_KEY = "suite"
"""``extra_info`` key holding the file name of the suite a result came from."""

_run: dict[str, Any] = {}
"""The run: machine at start, sweep, start time, suites (filled as the session goes)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmref", "llmref benchmarks")
    group.addoption(
        "--device",
        default="cpu",
        help="torch device the benchmark cases run on (default: cpu), e.g. cuda, cuda:1, mps",
    )
    group.addoption(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the run (default: torch's choice); 1 gives steadier "
        "numbers on a busy machine",
    )
    group.addoption(
        "--sweep",
        default=None,
        choices=sorted(SWEEPS),
        help=f"sizes to run (default: ${SWEEP_ENV}, else 'default')",
    )
    group.addoption(
        "--with-opt-in",
        action="store_true",
        default=False,
        help="also run the suites that declare OPT_IN (they need extra installs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(layout): the llmref.bench.layout.Layout of a benchmark (its x axis, "
        "metric and series); required on every benchmark",
    )
    try:
        name = sweep_name(config.getoption("sweep"))
        resolve_device(config.getoption("device"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    threads = config.getoption("threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    # pytest-benchmark does not create the folder of --benchmark-json (results/).
    json_path = config.getoption("benchmark_json", default=None)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    _run.clear()
    _run.update(
        machine=machine_info(),  # the load average now, before the benchmarks add to it
        sweep=name,
        expected=SWEEPS[name].expected,
        device=str(config.getoption("device")),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        suites={},
        _start=time.perf_counter(),
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # pytest collects only test_*.py by default; the suites here are bench_*.py.
    # A file named on the command line is collected by pytest itself already.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    options = _options(config)
    lines = [
        f"llmref bench: sweep {_run['sweep']!r} on {_run['device']}: "
        f"expected {_run['expected'] or 'duration unknown'}; up to {options['max_time']:g} s "
        f"of timed calls per case, at least {options['min_rounds']} rounds",
        f"llmref bench: machine {describe_machine(_run['machine'])}",
    ]
    warning = load_warning(_run["machine"])
    if warning:
        lines.append(f"llmref bench: WARNING: {warning}")
    return lines


def _declared(item: pytest.Item) -> Layout | str:
    """The item's layout, or why it has none."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return f"no @pytest.mark.{MARKER}(layout) on the test or its module"
    layout = marker.args[0] if marker.args else marker.kwargs.get("layout")
    if not isinstance(layout, Layout):
        return f"@pytest.mark.{MARKER} needs a llmref.bench.layout.Layout, got {layout!r}"
    return layout


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    missing = []
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()):
            continue
        found = _declared(item)
        if isinstance(found, str):
            missing.append(f"  {item.nodeid}: {found}")
        module = getattr(item, "module", None)
        suite = _run["suites"].setdefault(
            item.path.name, {"collected": 0, "opt_in": getattr(module, "OPT_IN", "") or ""}
        )
        suite["collected"] += 1
        if suite["opt_in"] and not config.getoption("with_opt_in"):
            reason = f"opt-in suite (needs {suite['opt_in']}); run with --with-opt-in"
            item.add_marker(pytest.mark.skip(reason=reason))
    if missing:
        raise pytest.UsageError(
            "benchmarks without a layout declaration (what their x axis, metric and series "
            "are; see llmref.bench.layout):\n" + "\n".join(missing)
        )


@pytest.fixture(autouse=True)
def _store_declaration(request: pytest.FixtureRequest) -> None:
    """Store the benchmark's layout and suite in its ``extra_info``."""
    if "benchmark" not in request.fixturenames:
        return
    layout = _declared(request.node)
    assert isinstance(layout, Layout)  # checked at collection
    benchmark = request.getfixturevalue("benchmark")
    benchmark.extra_info[LAYOUT_KEY] = layout.as_dict()
    benchmark.extra_info[SUITE_KEY] = request.node.path.name


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: Any) -> None:
    """Store the run (machine at start, sweep, wall time, suites) in the JSON."""
    run = {k: v for k, v in _run.items() if not k.startswith("_")}
    run["wall_s"] = round(time.perf_counter() - _run["_start"], 1)
    output_json[RUN_KEY] = run


@pytest.fixture(scope="session")
def bench_device(pytestconfig: pytest.Config) -> Any:
    """The ``torch.device`` selected with ``--device``."""
    return resolve_device(pytestconfig.getoption("device"))


def _given(config: pytest.Config, flag: str) -> bool:
    """Whether ``flag`` was passed on the command line (not just defaulted)."""
    return any(a == flag or a.startswith(flag + "=") for a in config.invocation_params.args)


def _options(config: pytest.Config) -> dict[str, float]:
    """Seconds of timed calls and fewest rounds per case.

    ``--benchmark-max-time`` and ``--benchmark-min-rounds`` when given, else the
    sweep's own (:class:`llmref.bench.cases.Sweep`: short in ``quick``).
    """
    spec = SWEEPS[_run["sweep"]]
    max_time, min_rounds = spec.max_time, spec.min_rounds
    if _given(config, "--benchmark-max-time"):
        max_time = float(config.getoption("benchmark_max_time"))
    if _given(config, "--benchmark-min-rounds"):
        min_rounds = int(config.getoption("benchmark_min_rounds"))
    return {"max_time": max_time, "min_rounds": min_rounds}


@pytest.fixture
def bench_options(pytestconfig: pytest.Config) -> dict[str, float]:
    """The run's timing budget per case (see ``_options``)."""
    return _options(pytestconfig)


_PROGRESS = "llmref_bench_progress"
MAX_ROUNDS = 200
"""Most timed rounds of one case: enough for a steady median and quartiles, and a bound
on a case's time when the probe calls were luckier than the rest (a busy machine)."""


@pytest.fixture
def bench_log(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a result message; it ends the case's progress line."""

    def log(message: str) -> None:
        request.node.user_properties.append((_PROGRESS, message))

    return log


@pytest.fixture
def bench_time(
    benchmark: Any, bench_options: dict[str, float], bench_log: Callable[[str], None]
) -> Callable[[Callable[[], Any]], Any]:
    """Time a zero-argument callable the way every suite does; returns its output.

    One warmup and up to three probe calls size the run
    (:func:`llmref.bench.measure.plan_rounds`): as many rounds as fit in
    ``--benchmark-max-time``, at least ``--benchmark-min-rounds``, at most
    :data:`MAX_ROUNDS`. With ``--benchmark-disable`` the callable runs once.
    """
    from llmref.bench.measure import plan_rounds

    def run(fn: Callable[[], Any]) -> Any:
        if benchmark.disabled:  # --benchmark-disable: run once, as a smoke test
            return benchmark.pedantic(fn)
        rounds = plan_rounds(
            fn,
            max_time=bench_options["max_time"],
            min_rounds=int(bench_options["min_rounds"]),
            max_rounds=MAX_ROUNDS,
        )
        out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)
        stats = benchmark.stats.stats
        bench_log(
            f"median {stats.median * 1e3:.3f} ms, iqr {stats.iqr * 1e3:.3f} ms, {rounds} rounds"
        )
        return out

    return run


# -- progress: one line per case, named when it starts ------------------------------------

_progress: dict[str, Any] = {"done": 0, "total": 0, "started": {}, "reporter": None, "own": False}


def _write(text: str, *, end: bool) -> None:
    reporter = _progress["reporter"]
    if reporter is None:
        print(text, end="\n" if end else " ", flush=True)
    elif end:
        reporter.write_line(text)
    elif _progress["own"]:
        reporter.write(text + " ", flush=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    _progress["reporter"] = reporter
    # Unless pytest is verbose (it then names each test itself), the progress lines
    # replace pytest's file names, status letters and percentages.
    if reporter is not None and reporter.verbosity <= 0:
        _progress["own"] = True
        reporter.showfspath = False
        if hasattr(reporter, "_show_progress_info"):
            reporter._show_progress_info = False


def pytest_collection_finish(session: pytest.Session) -> None:
    _progress["total"] = len(session.items)
    if session.config.option.collectonly or not session.items:
        return
    suites = len({item.path.name for item in session.items})
    _write(
        f"llmref bench: {len(session.items)} cases from {suites} suites, sweep "
        f"{_run['sweep']!r}; expected {_run['expected'] or 'duration unknown'}",
        end=True,
    )


@pytest.hookimpl(trylast=True)
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _progress["done"] += 1
    _progress["started"][nodeid] = time.perf_counter()
    total = _progress["total"]
    minutes = (time.perf_counter() - _run.get("_start", time.perf_counter())) / 60
    name = f"{Path(location[0]).name}::{location[2]}"
    _write(f"[{_progress['done']:>{len(str(total))}}/{total} {minutes:4.1f} min] {name}", end=False)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    # The progress line says how a case ended; no pytest status letters in between.
    if report.when == "call" and report.passed:
        return "passed", "", "PASSED"
    if report.skipped:
        return "skipped", "", "SKIPPED"
    return None


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    ended = (report.when == "call") or (report.when == "setup" and not report.passed)
    if not ended:
        return
    seconds = time.perf_counter() - _progress["started"].pop(report.nodeid, time.perf_counter())
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _write(f"skipped: {reason.removeprefix('Skipped: ')}", end=True)
        return
    if report.failed:
        _write(f"FAILED ({report.when}) [{seconds:.1f} s]", end=True)
        return
    messages = [str(v) for k, v in report.user_properties if k == _PROGRESS]
    _write(f"{'; '.join(messages) or 'done'} [{seconds:.1f} s]", end=True)
