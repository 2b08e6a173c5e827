"""pytest configuration of the benchmark suites (run by ``tox -e bench``).

Adds ``--device`` (where the cases run; default ``cpu``), ``--threads`` (torch
intra-op threads; default torch's choice) and ``--sweep`` (``quick``,
``default`` or ``full``; default ``$LLMREF_BENCH_SWEEP`` or ``default``),
collects ``bench_*.py`` files, prints the setup in the header and one progress
line per finished case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmref.bench.cases import (
    BATCH,
    DTYPE,
    HEAD_DIM,
    HEADS,
    SWEEP_ENV,
    SWEEPS,
    resolve_device,
    sweep_name,
)


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
        help=f"sweep of sequence lengths to run (default: ${SWEEP_ENV}, else 'default')",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        sweep_name(config.getoption("sweep"))
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
    import torch

    name = sweep_name(config.getoption("sweep"))
    spec = SWEEPS[name]
    caps = ", ".join(f"{k} up to T={v}" for k, v in spec.max_seq_len.items()) or "none"
    return [
        f"llmref bench: device={config.getoption('device')}, sweep={name!r}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads",
        f"llmref bench: attention cases {DTYPE}, B={BATCH}, H={HEADS}, D={HEAD_DIM}, causal, "
        f"T in {list(spec.seq_lens)} (caps: {caps})",
    ]


@pytest.fixture(scope="session")
def bench_device(pytestconfig: pytest.Config) -> Any:
    """The ``torch.device`` selected with ``--device``."""
    return resolve_device(pytestconfig.getoption("device"))


@pytest.fixture
def bench_options(pytestconfig: pytest.Config) -> dict[str, float]:
    """pytest-benchmark's ``--benchmark-max-time`` and ``--benchmark-min-rounds``."""
    return {
        "max_time": float(pytestconfig.getoption("benchmark_max_time")),
        "min_rounds": int(pytestconfig.getoption("benchmark_min_rounds")),
    }


@pytest.fixture
def bench_log(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a progress message; it is printed after the test's own status line."""
    start = time.perf_counter()

    def log(message: str) -> None:
        elapsed = time.perf_counter() - start
        request.node.user_properties.append((_PROGRESS, f"{message} [{elapsed:.1f} s]"))

    return log


_PROGRESS = "llmref_bench_progress"
_counter = {"done": 0, "total": 0}


def pytest_collection_finish(session: pytest.Session) -> None:
    _counter["total"] = len(session.items)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    messages = [str(v) for k, v in report.user_properties if k == _PROGRESS]
    if not messages:
        return
    _counter["done"] += 1
    width = len(str(_counter["total"]))
    reporter = _reporter
    line = f"[{_counter['done']:>{width}}/{_counter['total']}] {report.head_line}: " + "; ".join(
        messages
    )
    if reporter is None:
        print(line, flush=True)
    else:
        reporter.ensure_newline()
        reporter.write_line(line)


_reporter: Any = None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    global _reporter
    _reporter = session.config.pluginmanager.get_plugin("terminalreporter")
