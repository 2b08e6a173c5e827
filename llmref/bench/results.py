"""Benchmark results as simple records: loading pytest-benchmark JSON, ratios.

A :class:`Record` is one measured case (group, implementation, sequence
length and timing statistics in seconds). Records come from pytest-benchmark
JSON files (:func:`load_json`, :func:`load_dir`) or from the gallery's own
timer (:func:`llmref.bench.measure.run_cases`); plots and the summary table
take either. This module needs neither torch nor matplotlib.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Record",
    "baseline_of",
    "groups",
    "implementations",
    "latest",
    "load_dir",
    "load_json",
    "ratios",
    "records_from_json",
    "seq_lens",
]

_ID = re.compile(r"\[(?P<impl>[^\[\]]+)-T(?P<seq_len>\d+)\]$")


@dataclass(frozen=True)
class Record:
    """One measured benchmark case; times are in seconds.

    Parameters
    ----------
    group : str
        Benchmark group, e.g. ``"attention-functional"``.
    implementation : str
        Implementation name, e.g. ``"sdpa"``.
    seq_len : int
        Sequence length ``T``.
    median : float
        Median time of one call.
    iqr : float
        Interquartile range of the call times.
    rounds : int
        Number of timed calls.
    mean : float
        Mean time of one call.
    min : float
        Fastest call.
    baseline : str or None
        Implementation the group is compared with.
    dtype : str
        Compute dtype name.
    device : str
        Device the case ran on.
    threads : int or None
        torch intra-op threads during the run, if recorded.
    name : str
        Benchmark name (pytest-benchmark's test name, or the case id).
    source : str
        Where the record came from (a JSON path, or ``"measure"``).
    datetime : str
        When it was measured (ISO format; empty if unknown).

    Examples
    --------
    >>> from llmref.bench import Record
    >>> rec = Record("attention-functional", "sdpa", 1024, median=2e-3, iqr=1e-4, rounds=9)
    >>> rec.implementation, rec.seq_len
    ('sdpa', 1024)
    """

    group: str
    implementation: str
    seq_len: int
    median: float
    iqr: float
    rounds: int
    mean: float = math.nan
    min: float = math.nan
    baseline: str | None = None
    dtype: str = ""
    device: str = ""
    threads: int | None = None
    name: str = ""
    source: str = ""
    datetime: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a plain ``dict``."""
        return asdict(self)


def _record(bench: Mapping[str, Any], source: str, when: str) -> Record:
    extra = bench.get("extra_info") or {}
    stats = bench["stats"]
    name = str(bench.get("name", ""))
    impl = extra.get("implementation")
    seq_len = extra.get("seq_len")
    if impl is None or seq_len is None:
        # Fall back to the test id, ``test_x[<implementation>-T<seq_len>]``.
        match = _ID.search(name)
        if match is None:
            raise ValueError(
                f"benchmark {name!r} in {source} has no extra_info implementation/seq_len "
                "and its name does not end in [<implementation>-T<seq_len>]"
            )
        impl = impl if impl is not None else match["impl"]
        seq_len = seq_len if seq_len is not None else int(match["seq_len"])
    return Record(
        group=str(bench.get("group") or ""),
        implementation=str(impl),
        seq_len=int(seq_len),
        median=float(stats["median"]),
        iqr=float(stats.get("iqr", math.nan)),
        rounds=int(stats.get("rounds", 0)),
        mean=float(stats.get("mean", math.nan)),
        min=float(stats.get("min", math.nan)),
        baseline=extra.get("baseline"),
        dtype=str(extra.get("dtype", "")),
        device=str(extra.get("device", "")),
        threads=int(extra["threads"]) if extra.get("threads") is not None else None,
        name=name,
        source=source,
        datetime=when,
    )


def records_from_json(data: Mapping[str, Any], source: str = "") -> list[Record]:
    """Convert a parsed pytest-benchmark JSON document into records.

    Parameters
    ----------
    data : mapping
        The document, as written by ``pytest --benchmark-json``.
    source : str, optional
        Stored in each record's ``source``.

    Returns
    -------
    list of Record
        One per benchmark, in file order.

    Raises
    ------
    ValueError
        If the document has no ``benchmarks`` list, or a benchmark names
        neither its implementation and sequence length in ``extra_info`` nor
        in its test id.
    """
    benches = data.get("benchmarks")
    if not isinstance(benches, list):
        raise ValueError(f"not a pytest-benchmark JSON document (no 'benchmarks' list): {source}")
    when = str(data.get("datetime", ""))
    return [_record(b, source, when) for b in benches]


def load_json(path: str | Path) -> list[Record]:
    """Load one pytest-benchmark JSON file.

    Parameters
    ----------
    path : str or Path
        File written by ``pytest --benchmark-json=PATH``.

    Returns
    -------
    list of Record

    Raises
    ------
    ValueError
        If the file is not pytest-benchmark JSON.

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from llmref.bench import load_json
    >>> doc = {"benchmarks": []}  # what pytest-benchmark writes for an empty run
    >>> path = Path(tempfile.mkdtemp()) / "empty.json"
    >>> _ = path.write_text(json.dumps(doc))
    >>> load_json(path)
    []
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"not a pytest-benchmark JSON document: {path}")
    return records_from_json(data, str(path))


def latest(records: Iterable[Record]) -> list[Record]:
    """Keep the most recent record of each (group, implementation, seq_len).

    Parameters
    ----------
    records : iterable of Record

    Returns
    -------
    list of Record
        Sorted by group, implementation and sequence length. Ties in
        ``datetime`` keep the later record.
    """
    best: dict[tuple[str, str, int], Record] = {}
    for rec in records:
        key = (rec.group, rec.implementation, rec.seq_len)
        if key not in best or rec.datetime >= best[key].datetime:
            best[key] = rec
    return [best[k] for k in sorted(best)]


def load_dir(directory: str | Path) -> list[Record]:
    """Load every ``*.json`` in a directory, newest measurement of each case winning.

    Parameters
    ----------
    directory : str or Path

    Returns
    -------
    list of Record
        As :func:`latest`. JSON files that are not pytest-benchmark output
        are skipped.

    Raises
    ------
    FileNotFoundError
        If ``directory`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from llmref.bench import load_dir
    >>> load_dir(tempfile.mkdtemp())  # no JSON files yet
    []
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"results directory not found: {directory}")
    found: list[Record] = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.extend(load_json(path))
        except (ValueError, KeyError, json.JSONDecodeError):
            continue
    return latest(found)


def groups(records: Iterable[Record]) -> list[str]:
    """Groups present in ``records``, sorted."""
    return sorted({r.group for r in records})


def implementations(records: Iterable[Record], group: str) -> list[str]:
    """Implementations measured in ``group``.

    The baseline comes first, then llmref's public entry points (names
    starting with ``llmref-``), then the rest, each by name.
    """
    recs = [r for r in records if r.group == group]
    base = baseline_of(recs, group)
    names = {r.implementation for r in recs}
    return sorted(names, key=lambda n: (n != base, not n.startswith("llmref-"), n))


def seq_lens(records: Iterable[Record], group: str) -> list[int]:
    """Sequence lengths measured in ``group``, ascending."""
    return sorted({r.seq_len for r in records if r.group == group})


def baseline_of(records: Iterable[Record], group: str) -> str | None:
    """The baseline implementation of ``group``.

    Taken from the records' ``baseline`` field; when absent there, from
    :data:`llmref.bench.cases.BASELINES`.

    Parameters
    ----------
    records : iterable of Record
    group : str

    Returns
    -------
    str or None
        ``None`` if the group has no known baseline.
    """
    for rec in records:
        if rec.group == group and rec.baseline:
            return rec.baseline
    from .cases import BASELINES

    return BASELINES.get(group)


def ratios(
    records: Iterable[Record], group: str, baseline: str | None = None
) -> dict[tuple[str, int], float]:
    """Median time of each implementation divided by the baseline's, per ``T``.

    Parameters
    ----------
    records : iterable of Record
    group : str
        Group to compare within.
    baseline : str, optional
        Implementation to divide by; default :func:`baseline_of`.

    Returns
    -------
    dict
        ``{(implementation, seq_len): median / baseline_median}`` for every
        record of the group whose ``T`` the baseline was also measured at
        (the baseline's own ratio is 1). Empty if there is no baseline.

    Examples
    --------
    >>> from llmref.bench.results import Record, ratios
    >>> recs = [Record("g", "base", 8, 2.0, 0.0, 5), Record("g", "fast", 8, 1.0, 0.0, 5)]
    >>> ratios(recs, "g", "base")
    {('base', 8): 1.0, ('fast', 8): 0.5}
    """
    recs = [r for r in records if r.group == group]
    base = baseline if baseline is not None else baseline_of(recs, group)
    ref = {r.seq_len: r.median for r in recs if r.implementation == base}
    return {
        (r.implementation, r.seq_len): r.median / ref[r.seq_len]
        for r in recs
        if r.seq_len in ref and ref[r.seq_len] > 0
    }
