"""The benchmark suites declare what they measure; the report can place all of them.

These tests collect ``benchmarks/`` (``--collect-only``: nothing is timed) in a
subprocess. Running the suites themselves is the CI smoke run's job
(``.ci/bench_smoke``), which also fails if the report skips any record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmref.bench import results
from llmref.bench.layout import Layout
from tests.bench.synthetic import document, entry

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

DUMP_PLUGIN = """
import json, os

def pytest_collection_finish(session):
    found = {}
    for item in session.items:
        marker = item.get_closest_marker("bench")
        found[item.nodeid] = None if marker is None else marker.args[0].as_dict()
    with open(os.environ["LLMREF_LAYOUT_DUMP"], "w") as fh:
        json.dump(found, fh)
"""


def _pytest(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Layout of every benchmark collected from ``benchmarks/`` in the quick sweep."""
    folder = tmp_path_factory.mktemp("collect")
    (folder / "llmref_layout_dump.py").write_text(DUMP_PLUGIN)
    dump = folder / "layouts.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
        "LLMREF_LAYOUT_DUMP": str(dump),
    }
    proc = _pytest(["-p", "llmref_layout_dump", "benchmarks", "--sweep", "quick"], ROOT, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, Any] = json.loads(dump.read_text())
    return found


def test_every_collected_benchmark_declares_a_layout(collected: dict[str, Any]) -> None:
    assert collected
    undeclared = [nodeid for nodeid, layout in collected.items() if layout is None]
    assert undeclared == []
    for stored in collected.values():
        layout = Layout.from_dict(stored)
        assert Layout.from_dict(json.loads(json.dumps(layout.as_dict()))) == layout


def test_every_suite_has_a_case_in_the_quick_sweep(collected: dict[str, Any]) -> None:
    suites = {nodeid.split("::")[0] for nodeid in collected}
    assert suites == {f"benchmarks/{p.name}" for p in BENCHMARKS.glob("bench_*.py")}


def test_the_report_places_a_record_of_every_declared_layout(
    collected: dict[str, Any],
) -> None:
    benches = []
    for nodeid, stored in collected.items():
        layout = Layout.from_dict(stored)
        name = nodeid.split("::", 1)[1]
        benches.append(entry("g-" + name, "s", 1, 1e-3, layout=layout, name=name))
    recs, skipped, _ = results.read_document(document(benches), "synthetic.json")
    assert skipped == []
    assert len(recs) == len(collected)


def _suite_folder(tmp_path: Path, test_source: str) -> Path:
    shutil.copy(BENCHMARKS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "bench_new.py").write_text(test_source)
    return tmp_path


def test_a_suite_without_a_declaration_is_caught(tmp_path: Path) -> None:
    folder = _suite_folder(
        tmp_path,
        "def test_speed(benchmark):\n    benchmark(lambda: None)\n",
    )
    proc = _pytest(["-c", str(folder / "pytest.ini"), str(folder)], folder)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "without a layout declaration" in output
    assert "bench_new.py::test_speed: no @pytest.mark.bench(layout)" in output


def test_a_declared_suite_is_collected(tmp_path: Path) -> None:
    folder = _suite_folder(
        tmp_path,
        "import pytest\n"
        "from llmref.bench.cases import ATTENTION_LAYOUT\n\n"
        "@pytest.mark.bench(ATTENTION_LAYOUT)\n"
        "def test_speed(benchmark):\n    benchmark(lambda: None)\n",
    )
    proc = _pytest(["-c", str(folder / "pytest.ini"), str(folder)], folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bench_new.py::test_speed" in proc.stdout
