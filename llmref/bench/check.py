"""Check that a benchmark run produced a complete report (the CI smoke check).

Usage::

    python -m llmref.bench.check RESULTS_DIR [--suites benchmarks]

passes only if ``RESULTS_DIR`` holds pytest-benchmark JSON that the report
reads without skipping a single file or record, a ``<group>.png`` for every
group and a ``summary.md`` with a section per group, and if every suite of the
run (every ``bench_*.py`` of ``--suites``, when given) produced at least one
record — except suites that declare ``OPT_IN`` and were not asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .results import Results, groups, load_dir

__all__ = ["check_results", "main"]

_PNG = b"\x89PNG\r\n\x1a\n"


def _suite_problems(results: Results, suites_dir: Path | None) -> list[str]:
    problems = []
    collected: dict[str, dict[str, object]] = {}
    for source in results.sources:
        suites = source.run.get("suites")
        if isinstance(suites, dict):
            collected.update(suites)
    if suites_dir is not None:
        for path in sorted(suites_dir.glob("bench_*.py")):
            if path.name not in collected:
                problems.append(f"suite {path.name} was not collected in the run")
    measured = {str(r.info.get("suite", "")) for r in results.records}
    for name, facts in sorted(collected.items()):
        if name not in measured and not facts.get("opt_in"):
            problems.append(f"suite {name} produced no result")
    return problems


def check_results(results_dir: str | Path, *, suites: str | Path | None = None) -> list[str]:
    """Everything missing or skipped in a results folder; empty if the report is complete.

    Parameters
    ----------
    results_dir : str or Path
        Folder holding the run's JSON, the PNGs and ``summary.md``.
    suites : str or Path, optional
        Folder of the ``bench_*.py`` suites; each must have been collected.

    Returns
    -------
    list of str
        One line per problem.

    Examples
    --------
    >>> import tempfile
    >>> check_results(tempfile.mkdtemp())
    ['no pytest-benchmark JSON (*.json) in the folder']
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        return [f"results folder not found: {folder}"]
    if not any(folder.glob("*.json")):
        return ["no pytest-benchmark JSON (*.json) in the folder"]
    results = load_dir(folder)
    problems = [f"skipped {s.what}: {s.reason}" for s in results.skipped]
    if not results.records:
        problems.append("no reportable records")
    summary = folder / "summary.md"
    headings = set()
    if summary.is_file():
        headings = {
            line[3:].strip()
            for line in summary.read_text(encoding="utf-8").splitlines()
            if line.startswith("## ")
        }
    else:
        problems.append("summary.md was not written")
    for group in groups(results.records):
        png = folder / f"{group}.png"
        if not png.is_file() or png.read_bytes()[:8] != _PNG:
            problems.append(f"group {group}: no PNG plot {png.name}")
        if summary.is_file() and group not in headings:
            problems.append(f"group {group}: no section in summary.md")
    problems += _suite_problems(results, None if suites is None else Path(suites))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 if the report is complete, else 1.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``): ``RESULTS_DIR [--suites DIR]``.

    Returns
    -------
    int
    """
    parser = argparse.ArgumentParser(
        prog="python -m llmref.bench.check",
        description="Fail unless a benchmark run's JSON, plots and summary are complete.",
    )
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--suites", type=Path, default=None, help="folder of bench_*.py")
    args = parser.parse_args(argv)
    problems = check_results(args.results_dir, suites=args.suites)
    for problem in problems:
        print(f"llmref.bench.check: {problem}", file=sys.stderr)
    if problems:
        return 1
    results = load_dir(args.results_dir)
    print(
        f"llmref.bench.check: {len(results.records)} records in "
        f"{len(groups(results.records))} groups, none skipped; a plot and a summary "
        "section for each group"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
