"""Benchmark results as records placed by their declared layout; loading, ratios.

A :class:`Record` is one measured case: its group, the series it belongs to,
its x value and its metric value (with quartiles), all read through the
:class:`~llmref.bench.layout.Layout` the benchmark declared. Records come
from pytest-benchmark JSON (:func:`load_json`, :func:`load_dir`) or from the
gallery's own timer (:func:`llmref.bench.measure.run_cases`); plots and the
summary take either.

Nothing is dropped silently: :func:`load_dir` returns a :class:`Results`
that lists every file it could not read (a foreign or old JSON file, by
name) and every record it could not place (by id), each with the reason,
beside the records it could.

This module needs neither torch nor matplotlib.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import LAYOUT_KEY, STOP_KEY, Layout

__all__ = [
    "RUN_KEY",
    "Record",
    "Results",
    "Skipped",
    "Source",
    "baseline_of",
    "groups",
    "latest",
    "layout_of",
    "load_dir",
    "load_json",
    "ratios",
    "read_document",
    "record_from_benchmark",
    "series_of",
    "stopped_series",
    "x_values",
]

RUN_KEY = "llmref"
"""Top-level key of the pytest-benchmark JSON under which ``benchmarks/conftest.py``
stores the run: the machine (:func:`llmref.bench.machine.machine_info`, taken at the
start), the sweep, its wall time and the suites collected."""


@dataclass(frozen=True)
class Record:
    """One measured case, placed by its layout.

    Parameters
    ----------
    group : str
        Benchmark group, e.g. ``"attention-functional"``.
    series : str
        The series the case belongs to (the value of ``extra_info[layout.series]``),
        e.g. ``"sdpa"``.
    x : float
        The case's x value (``extra_info[layout.x.key]``).
    value : float
        The metric, in ``layout.metric.unit`` (e.g. the median time in ms).
    layout : Layout
        The declaration the value was read through.
    low, high : float, default nan
        First and third quartile of the metric, in its unit (``nan`` if
        unknown); the interquartile range is ``high - low``.
    rounds : int, default 0
        Number of timed calls.
    baseline : str or None, default None
        Series the group is compared with.
    name : str, default ""
        Benchmark name (pytest-benchmark's test name, or the case id).
    source : str, default ""
        Where the record came from (a JSON path, or ``"measure"``).
    datetime : str, default ""
        When the run was measured (ISO format; empty if unknown).
    info : mapping, default {}
        The benchmark's whole ``extra_info`` (shapes, dtype, device, threads,
        extras).

    Examples
    --------
    >>> from llmref.bench.layout import Axis, Layout, Metric
    >>> from llmref.bench.results import Record
    >>> layout = Layout(Axis("seq_len", "sequence length T"), Metric("time", "ms", scale=1e3))
    >>> rec = Record("attention", "sdpa", 1024, 2.0, layout, low=1.9, high=2.2)
    >>> rec.series, rec.x, round(rec.spread, 3)
    ('sdpa', 1024, 0.3)
    """

    group: str
    series: str
    x: float
    value: float
    layout: Layout
    low: float = math.nan
    high: float = math.nan
    rounds: int = 0
    baseline: str | None = None
    name: str = ""
    source: str = ""
    datetime: str = ""
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def spread(self) -> float:
        """Interquartile range ``high - low`` (``nan`` if unknown)."""
        return self.high - self.low

    @property
    def dtype(self) -> str:
        """Compute dtype recorded in ``info`` (empty if none)."""
        return str(self.info.get("dtype", ""))

    @property
    def device(self) -> str:
        """Device recorded in ``info`` (empty if none)."""
        return str(self.info.get("device", ""))

    @property
    def threads(self) -> int | None:
        """torch intra-op threads recorded in ``info``, if any."""
        threads = self.info.get("threads")
        return int(threads) if threads is not None else None


@dataclass(frozen=True)
class Skipped:
    """A file or a record that could not be reported, and why.

    Parameters
    ----------
    what : str
        The file's path, or the record's id (``"<file>::<benchmark name>"``).
    reason : str
        Why it was skipped.
    """

    what: str
    reason: str


@dataclass(frozen=True)
class Source:
    """One JSON file that records were read from.

    Parameters
    ----------
    path : str
        The file.
    datetime : str
        When pytest-benchmark wrote it.
    benchmarks : int
        Number of benchmarks in it.
    run : mapping
        What ``benchmarks/conftest.py`` stored under :data:`RUN_KEY` (the
        machine, sweep, wall time, suites); empty if absent.
    """

    path: str
    datetime: str
    benchmarks: int
    run: Mapping[str, Any] = field(default_factory=dict)

    @property
    def machine(self) -> Mapping[str, Any]:
        """The machine info stored with the run (empty if none)."""
        found = self.run.get("machine")
        return found if isinstance(found, Mapping) else {}


@dataclass(frozen=True)
class Results:
    """Everything read from a set of JSON files.

    Parameters
    ----------
    records : list of Record
        The newest record of each (group, series, x), sorted (:func:`latest`).
    sources : list of Source
        The files the records came from.
    skipped_files : list of Skipped
        Files that were not pytest-benchmark output of llmref's suites.
    skipped_records : list of Skipped
        Records that could not be placed, by id.

    Examples
    --------
    >>> from llmref.bench.results import Results
    >>> empty = Results()
    >>> empty.records, empty.skipped_files, empty.skipped_records
    ([], [], [])
    """

    records: list[Record] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    skipped_files: list[Skipped] = field(default_factory=list)
    skipped_records: list[Skipped] = field(default_factory=list)

    @property
    def skipped(self) -> list[Skipped]:
        """Skipped files, then skipped records."""
        return [*self.skipped_files, *self.skipped_records]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _metric(layout: Layout, stats: Mapping[str, Any], info: Mapping[str, Any]) -> tuple[float, ...]:
    """``(value, low, high)`` of the layout's metric, in its unit; raises ValueError."""
    metric = layout.metric
    nan = math.nan
    if metric.source == "stored":
        value = _number(info.get(metric.key))
        if value is None:
            raise ValueError(f"extra_info[{metric.key!r}] (the metric) is missing or not a number")
        low, high = (_number(info.get(f"{metric.key}_{q}")) for q in ("q1", "q3"))
        return (
            value * metric.scale,
            nan if low is None else low * metric.scale,
            nan if high is None else high * metric.scale,
        )
    median = _number(stats.get("median"))
    if median is None or median <= 0:
        raise ValueError(f"stats median {stats.get('median')!r} is not a positive time")
    q1, q3 = _number(stats.get("q1")), _number(stats.get("q3"))
    if metric.source == "time":
        return (
            median * metric.scale,
            nan if q1 is None else q1 * metric.scale,
            nan if q3 is None else q3 * metric.scale,
        )
    work = _number(info.get(metric.per))
    if work is None:
        raise ValueError(f"extra_info[{metric.per!r}] (work per call) is missing or not a number")
    return (
        work / median * metric.scale,
        nan if not q3 else work / q3 * metric.scale,
        nan if not q1 else work / q1 * metric.scale,
    )


def record_from_benchmark(bench: Mapping[str, Any], source: str = "", when: str = "") -> Record:
    """Place one pytest-benchmark entry through the layout stored in its ``extra_info``.

    Parameters
    ----------
    bench : mapping
        One element of the JSON's ``benchmarks`` list.
    source : str, optional
        Stored in the record's ``source``.
    when : str, optional
        Stored in the record's ``datetime``.

    Returns
    -------
    Record

    Raises
    ------
    ValueError
        If the entry has no group, no layout, or lacks a value its layout
        names (the message says which).
    """
    if not isinstance(bench, Mapping):
        raise ValueError(f"a benchmark entry must be a mapping, got {type(bench).__name__}")
    info = bench.get("extra_info") or {}
    stats = bench.get("stats") or {}
    group = str(bench.get("group") or "")
    if not group:
        raise ValueError("it has no group (benchmark.group was not set)")
    if LAYOUT_KEY not in info:
        raise ValueError(
            f"its extra_info has no {LAYOUT_KEY!r}: the test declares no layout "
            "(@pytest.mark.bench(...))"
        )
    layout = Layout.from_dict(info[LAYOUT_KEY])
    x = _number(info.get(layout.x.key))
    if x is None:
        raise ValueError(f"extra_info[{layout.x.key!r}] (the x axis) is missing or not a number")
    series = info.get(layout.series)
    if series is None or series == "":
        raise ValueError(f"extra_info[{layout.series!r}] (the series name) is missing")
    value, low, high = _metric(layout, stats, info)
    baseline = info.get("baseline")
    return Record(
        group=group,
        series=str(series),
        x=int(x) if x.is_integer() else x,
        value=value,
        layout=layout,
        low=low,
        high=high,
        rounds=int(stats.get("rounds", 0) or 0),
        baseline=str(baseline) if baseline else None,
        name=str(bench.get("name", "")),
        source=source,
        datetime=when,
        info=dict(info),
    )


def read_document(data: Any, source: str = "") -> tuple[list[Record], list[Skipped], Source]:
    """Read a parsed pytest-benchmark JSON document of llmref's suites.

    Parameters
    ----------
    data : Any
        The parsed document, as written by ``pytest --benchmark-json``.
    source : str, optional
        Its path, stored in each record and used in the skipped ids.

    Returns
    -------
    records : list of Record
        The entries that could be placed, in file order.
    skipped : list of Skipped
        The others, by id (``"<source>::<name>"``) with the reason.
    info : Source
        The file's date, size and run information.

    Raises
    ------
    ValueError
        If ``data`` is not pytest-benchmark output, or none of its entries
        declares a layout (a file from an older llmref or another project).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("benchmarks"), list):
        raise ValueError("not pytest-benchmark output (no 'benchmarks' list)")
    benches = data["benchmarks"]
    run = data.get(RUN_KEY)
    declared = any(LAYOUT_KEY in ((b or {}).get("extra_info") or {}) for b in benches)
    if benches and run is None and not declared:
        raise ValueError(
            "no benchmark in it declares a layout: written by an older llmref "
            "(before layouts) or by another project"
        )
    when = str(data.get("datetime", ""))
    records, skipped = [], []
    for bench in benches:
        try:
            records.append(record_from_benchmark(bench, source, when))
        except ValueError as exc:
            name = (bench or {}).get("fullname") or (bench or {}).get("name") or "?"
            skipped.append(Skipped(f"{source}::{name}", str(exc)))
    info = Source(source, when, len(benches), run if isinstance(run, Mapping) else {})
    return records, skipped, info


def load_json(path: str | Path) -> Results:
    """Load one pytest-benchmark JSON file.

    Parameters
    ----------
    path : str or Path
        File written by ``pytest --benchmark-json=PATH`` over llmref's suites.

    Returns
    -------
    Results
        Its records, or — if it cannot be read or is not llmref's output —
        no records and the file in ``skipped_files`` with the reason.

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from llmref.bench import load_json
    >>> path = Path(tempfile.mkdtemp()) / "other.json"
    >>> _ = path.write_text(json.dumps({"not": "benchmarks"}))
    >>> found = load_json(path)
    >>> found.records, found.skipped_files[0].reason
    ([], "not pytest-benchmark output (no 'benchmarks' list)")
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        records, skipped, source = read_document(data, str(path))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return Results(skipped_files=[Skipped(str(path), str(exc))])
    return Results(latest(records), [source], [], skipped)


def latest(records: Iterable[Record]) -> list[Record]:
    """Keep the most recent record of each (group, series, x).

    Parameters
    ----------
    records : iterable of Record

    Returns
    -------
    list of Record
        Sorted by group, series and x. Ties in ``datetime`` keep the later
        record.
    """
    best: dict[tuple[str, str, float], Record] = {}
    for rec in records:
        key = (rec.group, rec.series, rec.x)
        if key not in best or rec.datetime >= best[key].datetime:
            best[key] = rec
    return [best[k] for k in sorted(best)]


def load_dir(directory: str | Path) -> Results:
    """Load every ``*.json`` in a directory, newest measurement of each case winning.

    Parameters
    ----------
    directory : str or Path

    Returns
    -------
    Results
        Records as :func:`latest`; files and records that could not be read
        are listed with the reason, never dropped silently.

    Raises
    ------
    FileNotFoundError
        If ``directory`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from llmref.bench import load_dir
    >>> load_dir(tempfile.mkdtemp()).records  # no JSON files yet
    []
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"results directory not found: {directory}")
    records: list[Record] = []
    sources: list[Source] = []
    skipped_files: list[Skipped] = []
    skipped_records: list[Skipped] = []
    for path in sorted(directory.glob("*.json")):
        found = load_json(path)
        records += found.records
        sources += found.sources
        skipped_files += found.skipped_files
        skipped_records += found.skipped_records
    return Results(latest(records), sources, skipped_files, skipped_records)


def groups(records: Iterable[Record]) -> list[str]:
    """Groups present in ``records``, sorted."""
    return sorted({r.group for r in records})


def layout_of(records: Iterable[Record], group: str) -> Layout:
    """The layout of ``group``: the one most of its records declare.

    Parameters
    ----------
    records : iterable of Record
    group : str

    Returns
    -------
    Layout

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.
    """
    counts: dict[Layout, int] = {}
    for rec in records:
        if rec.group == group:
            counts[rec.layout] = counts.get(rec.layout, 0) + 1
    if not counts:
        raise ValueError(f"no records for group {group!r}")
    return max(counts, key=lambda layout: counts[layout])


def baseline_of(records: Iterable[Record], group: str) -> str | None:
    """The baseline series of ``group`` (from its records' ``baseline``), or ``None``."""
    for rec in records:
        if rec.group == group and rec.baseline:
            return rec.baseline
    return None


def series_of(records: Iterable[Record], group: str) -> list[str]:
    """Series measured in ``group``.

    The baseline comes first, then llmref's own (names starting with
    ``llmref``), then the rest, each by name.
    """
    recs = [r for r in records if r.group == group]
    base = baseline_of(recs, group)
    names = {r.series for r in recs}
    return sorted(names, key=lambda n: (n != base, not n.startswith("llmref"), n))


def x_values(records: Iterable[Record], group: str) -> list[float]:
    """x values measured in ``group``, ascending."""
    return sorted({r.x for r in records if r.group == group})


def ratios(
    records: Iterable[Record], group: str, baseline: str | None = None
) -> dict[tuple[str, float], float]:
    """Each series' value divided by the baseline's at the same x.

    For a time that is ``time / baseline time`` (below 1 is faster); for a
    throughput ``rate / baseline rate`` (above 1 is faster): the layout's
    ``metric.higher_is_better`` says which.

    Parameters
    ----------
    records : iterable of Record
    group : str
        Group to compare within.
    baseline : str, optional
        Series to divide by; default :func:`baseline_of`.

    Returns
    -------
    dict
        ``{(series, x): value / baseline_value}`` for every record of the
        group whose x the baseline was also measured at (the baseline's own
        ratio is 1). Empty if there is no baseline.

    Examples
    --------
    >>> from llmref.bench.layout import Axis, Layout, Metric
    >>> from llmref.bench.results import Record, ratios
    >>> lay = Layout(Axis("n", "n"), Metric("time", "ms"))
    >>> recs = [Record("g", "base", 8, 2.0, lay), Record("g", "fast", 8, 1.0, lay)]
    >>> ratios(recs, "g", "base")
    {('base', 8): 1.0, ('fast', 8): 0.5}
    """
    recs = [r for r in records if r.group == group]
    base = baseline if baseline is not None else baseline_of(recs, group)
    ref = {r.x: r.value for r in recs if r.series == base}
    return {(r.series, r.x): r.value / ref[r.x] for r in recs if r.x in ref and ref[r.x] > 0}


def stopped_series(records: Iterable[Record], group: str) -> dict[str, tuple[float, str]]:
    """Series of ``group`` that end before its largest x, with their last x and why.

    Parameters
    ----------
    records : iterable of Record
    group : str

    Returns
    -------
    dict
        ``{series: (last_x, reason)}``; the reason is what the series' last
        record stored under :data:`~llmref.bench.layout.STOP_KEY`, or a note
        that none was recorded (the longer cases were skipped or failed).

    Examples
    --------
    >>> from llmref.bench.layout import Axis, Layout, Metric
    >>> from llmref.bench.results import Record, stopped_series
    >>> lay = Layout(Axis("n", "n"), Metric("time", "ms"))
    >>> recs = [Record("g", "a", 1, 1.0, lay), Record("g", "a", 2, 1.0, lay),
    ...         Record("g", "b", 1, 1.0, lay, info={"stop_reason": "too slow"})]
    >>> stopped_series(recs, "g")
    {'b': (1, 'too slow')}
    """
    recs = [r for r in records if r.group == group]
    if not recs:
        return {}
    end = max(r.x for r in recs)
    last: dict[str, Record] = {}
    for rec in recs:
        if rec.series not in last or rec.x > last[rec.series].x:
            last[rec.series] = rec
    return {
        name: (
            rec.x,
            str(
                rec.info.get(STOP_KEY)
                or "no reason recorded: its larger cases were skipped, failed or not run"
            ),
        )
        for name, rec in sorted(last.items())
        if rec.x < end
    }
