"""Turn pytest-benchmark JSON files into PNG plots and a Markdown summary.

Usage::

    python -m llmref.bench.report RESULTS_DIR [--out OUT_DIR]

reads every ``*.json`` in ``RESULTS_DIR`` (the newest measurement of each
case wins), writes ``<group>.png`` for each benchmark group and
``summary.md`` into ``OUT_DIR`` (default ``RESULTS_DIR``), and prints what it
read and the paths it wrote. Each group is tabulated and plotted on the axis, metric and
units its benchmark declared (:class:`~llmref.bench.layout.Layout`), with
the ratio to the group's baseline. The summary opens with the machine the
run measured (CPU, ISA features, cores, threads, torch, load average at the
start) and warns when the machine was busy.

Nothing is lost silently: a JSON file that is not llmref's benchmark output
is skipped with a message that names it, and a record that cannot be placed
is listed by id with the reason — in the summary and on stderr — while the
rest is still reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .layout import LAYOUT_KEY
from .machine import describe_machine, load_warning
from .plot import format_x
from .results import (
    Record,
    Results,
    Skipped,
    Source,
    baseline_of,
    groups,
    layout_of,
    load_dir,
    ratios,
    series_of,
    stopped_series,
    x_values,
)

__all__ = [
    "NOISY",
    "describe_shapes",
    "format_number",
    "group_section",
    "group_table",
    "main",
    "summary_markdown",
    "write_report",
]

NOISY = 0.1
"""A cell shows its interquartile range (as ``±%`` of the value) when it exceeds this
fraction of the value: the runs behind it were noisy."""

# extra_info keys that describe a case's shapes, and how the summary names them.
_SHAPE_KEYS = (
    ("batch", "B"),
    ("heads", "H"),
    ("kv_heads", "H_kv"),
    ("head_dim", "D"),
    ("d_model", "d_model"),
    ("kv_lora_rank", "kv_lora_rank"),
    ("qk_nope_head_dim", "qk_nope_head_dim"),
    ("qk_rope_head_dim", "qk_rope_head_dim"),
    ("v_head_dim", "v_head_dim"),
    ("mask", "mask"),
    ("window", "window"),
    ("in_features", "in_features"),
    ("out_features", "out_features"),
    ("tokens", "tokens"),
    ("shape", "shape"),
    ("model", "model"),
    ("prompt_tokens", "prompt"),
    ("decode_tokens", "new tokens"),
    ("calibration_rows", "calibration rows"),
    ("calibration_tokens", "calibration tokens"),
    ("blocks", "blocks"),
)


def format_number(value: float) -> str:
    """Format a number with about three significant digits (``—`` if not finite).

    Examples
    --------
    >>> format_number(0.000251), format_number(16.83), format_number(588.9), format_number(12345.6)
    ('0.000251', '16.8', '589', '12346')
    """
    if not math.isfinite(value):
        return "—"
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:#.3g}"


def _cell(rec: Record | None) -> str:
    if rec is None:
        return "—"
    text = format_number(rec.value)
    if math.isfinite(rec.spread) and rec.value > 0 and rec.spread > NOISY * rec.value:
        text += f" ±{rec.spread / rec.value / 2:.0%}"
    return text


def _extra_value(rec: Record, key: str, scale: float) -> str:
    value = rec.info.get(key)
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return format_number(value * scale)
    return str(value)


def group_table(records: Sequence[Record], group: str, *, transpose: bool | None = None) -> str:
    """Markdown table of one group: the metric per x and series, then ratios to the baseline.

    Parameters
    ----------
    records : sequence of Record
    group : str
    transpose : bool, optional
        ``False``: one row per x, one column per series (then one ratio
        column per non-baseline series). ``True``: one row per series,
        columns per x. By default the table is transposed when the group has
        more than six series and fewer x values, so that it stays narrow. A
        group measured at a single x is always one row per series, with its
        declared extras as further columns.

    Returns
    -------
    str
        A Markdown table; ``—`` marks cases that were not measured, ``±N%``
        follows a value whose runs were noisy (half its interquartile range,
        relative, above :data:`NOISY` / 2).

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.

    Examples
    --------
    >>> from llmref.bench.cases import ATTENTION_LAYOUT as lay
    >>> from llmref.bench.results import Record
    >>> recs = [Record("g", "base", 128, 2.0, lay, baseline="base"),
    ...         Record("g", "new", 128, 3.0, lay, baseline="base"),
    ...         Record("g", "base", 256, 8.0, lay, low=6.0, high=10.0, baseline="base")]
    >>> print(group_table(recs, "g"))
    | T | base [ms] | new [ms] | new / base |
    |---:|---:|---:|---:|
    | 128 | 2.00 | 3.00 | 1.50 |
    | 256 | 8.00 ±25% | — | — |
    >>> print(group_table(recs, "g", transpose=True))
    | series | T=128 [ms] | T=256 [ms] | T=128: / base | T=256: / base |
    |---|---:|---:|---:|---:|
    | base | 2.00 | 8.00 ±25% | 1.00 | 1.00 |
    | new | 3.00 | — | 1.50 | — |
    """
    recs = [r for r in records if r.group == group]
    layout = layout_of(recs, group)
    names = series_of(recs, group)
    xs = x_values(recs, group)
    base = baseline_of(recs, group)
    table = ratios(recs, group, base) if base is not None else {}
    found = {(r.series, r.x): r for r in recs}
    unit, sym = layout.metric.unit, layout.x.short

    def ratio(name: str, x: float) -> str:
        return f"{table[(name, x)]:.2f}" if (name, x) in table else "—"

    if len(xs) == 1:
        (x,) = xs
        header = ["series", f"{layout.metric.label} [{unit}]"]
        header += [f"/ {base}"] if table else []
        header += [e.title for e in layout.extras]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name in names:
            rec = found.get((name, x))
            cells = [name, _cell(rec)] + ([ratio(name, x)] if table else [])
            cells += [
                "—" if rec is None else _extra_value(rec, e.key, e.scale) for e in layout.extras
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if transpose is None:
        transpose = len(names) > 6 and len(names) > len(xs)
    if transpose:
        header = ["series", *(f"{sym}={format_x(x)} [{unit}]" for x in xs)]
        if table:
            header += [f"{sym}={format_x(x)}: / {base}" for x in xs]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name in names:
            cells = [name, *(_cell(found.get((name, x))) for x in xs)]
            if table:
                cells += [ratio(name, x) for x in xs]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    others = [n for n in names if n != base] if table else []
    header = [sym, *(f"{n} [{unit}]" for n in names), *(f"{n} / {base}" for n in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for x in xs:
        cells = [format_x(x)]
        cells += [_cell(found.get((n, x))) for n in names]
        cells += [ratio(n, x) for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _extras_table(records: Sequence[Record], group: str) -> str:
    """The declared extras of a group swept over several x, one row per case."""
    recs = [r for r in records if r.group == group]
    layout = layout_of(recs, group)
    if not layout.extras or len(x_values(recs, group)) == 1:
        return ""
    header = ["series", layout.x.short, *(e.title for e in layout.extras)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    order = {name: i for i, name in enumerate(series_of(recs, group))}
    for rec in sorted(recs, key=lambda r: (order[r.series], r.x)):
        cells = [rec.series, format_x(rec.x)]
        cells += [_extra_value(rec, e.key, e.scale) for e in layout.extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_shapes(infos: Sequence[Mapping[str, Any]], exclude: Sequence[str] = ()) -> str:
    """One line stating the shapes of a group's cases, from their ``extra_info``.

    Values shared by every series of the group are stated once; the others
    are listed per series.

    Parameters
    ----------
    infos : sequence of mapping
        The ``extra_info`` of the group's benchmarks (each with an
        ``"implementation"``, or the key named by its layout's series).
    exclude : sequence of str, optional
        Keys not to state (the group's x axis, which the table shows).

    Returns
    -------
    str
        E.g. ``"B=1, H=16, D=128; gqa: H_kv=4; mla: kv_lora_rank=512"``; empty
        if no shape is recorded.

    Examples
    --------
    >>> describe_shapes([
    ...     {"implementation": "gqa", "batch": 1, "heads": 16, "kv_heads": 4},
    ...     {"implementation": "mla", "batch": 1, "heads": 16, "kv_lora_rank": 512},
    ... ])
    'B=1, H=16; gqa: H_kv=4; mla: kv_lora_rank=512'
    """
    keys = [(k, label) for k, label in _SHAPE_KEYS if k not in exclude]
    per_series: dict[str, dict[str, Any]] = {}
    for info in infos:
        stored = info.get(LAYOUT_KEY)
        series_key = stored.get("series", "implementation") if isinstance(stored, dict) else ""
        name = str(info.get(series_key or "implementation", ""))
        values = per_series.setdefault(name, {})
        for key, _ in keys:
            if key in info:
                values.setdefault(key, info[key])
    label = dict(keys)
    common = [
        key
        for key, _ in keys
        if per_series
        and all(key in v for v in per_series.values())
        and len({json.dumps(v[key]) for v in per_series.values()}) == 1
    ]
    first = next(iter(per_series.values()), {})
    parts = [", ".join(f"{label[k]}={first[k]}" for k in common)] if common else []
    for name, values in per_series.items():
        own = [f"{label[k]}={v}" for k, v in values.items() if k not in common]
        if own:
            parts.append(f"{name}: " + ", ".join(own))
    return "; ".join(parts)


def group_section(records: Sequence[Record], group: str) -> list[str]:
    """The summary's lines for one group: heading, what is measured, notes, table.

    Parameters
    ----------
    records : sequence of Record
    group : str

    Returns
    -------
    list of str
        Markdown lines, starting with ``## <group>``.

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.
    """
    recs = [r for r in records if r.group == group]
    layout = layout_of(recs, group)
    base = baseline_of(recs, group)
    metric, axis = layout.metric, layout.x
    out = [f"## {group}", ""]
    if layout.description:
        out += [layout.description, ""]
    measured = f"Metric: {metric.title} against {axis.title}; one series per {layout.series}."
    if base is not None:
        better = "above 1 is faster" if metric.higher_is_better else "below 1 is faster"
        measured += f" Ratios are to the baseline `{base}` ({better})."
    xs = x_values(recs, group)
    if len(xs) == 1:
        measured += f" Every case at {axis.short} = {format_x(xs[0])}" + (
            f" {axis.unit}." if axis.unit else "."
        )
    out += [measured, ""]
    shapes = describe_shapes([r.info for r in recs], exclude=(axis.key,))
    if shapes:
        out += [f"Shapes: {shapes}.", ""]
    stops = stopped_series(recs, group)
    for name, (last, why) in stops.items():
        out.append(f"- `{name}` stops at {axis.short} = {format_x(last)}: {why}.")
    if stops:
        out.append("")
    out.append(group_table(recs, group))
    extras = _extras_table(recs, group)
    if extras:
        out += ["", extras]
    return out


def _machine_lines(sources: Sequence[Source]) -> list[str]:
    """The summary's first lines: which machine, and a warning if it was busy."""
    lines: list[str] = []
    seen: set[str] = set()
    for source in sources:
        machine = source.machine
        if not machine:
            continue
        line = describe_machine(machine)
        if line in seen:
            continue
        seen.add(line)
        lines.append(f"Machine: {line}.")
        warning = load_warning(machine)
        if warning:
            lines.append(f"**Warning:** {warning}.")
    return lines or ["Machine: not recorded in the JSON."]


def _run_lines(sources: Sequence[Source]) -> list[str]:
    lines = []
    for source in sources:
        run = source.run
        parts = [f"`{Path(source.path).name}`: {source.datetime or '?'}"]
        parts.append(f"{source.benchmarks} benchmarks")
        if run.get("sweep"):
            parts.append(f"sweep `{run['sweep']}`")
        wall = run.get("wall_s")
        if isinstance(wall, (int, float)):
            parts.append(f"wall time {wall / 60:.1f} min")
        if run.get("expected"):
            parts.append(f"expected {run['expected']}")
        lines.append("- " + ", ".join(parts))
    return lines


def _skipped_lines(skipped: Sequence[Skipped]) -> list[str]:
    return [f"- `{s.what}`: {s.reason}" for s in skipped]


def summary_markdown(results: Results) -> str:
    """The whole ``summary.md``: the machine, the runs, anything skipped, one section per group.

    Parameters
    ----------
    results : Results
        As returned by :func:`~llmref.bench.results.load_dir`.

    Returns
    -------
    str
    """
    records = results.records
    out = ["# Benchmark summary", "", *_machine_lines(results.sources), ""]
    out += [
        "Each group is shown on its own axis and metric. A value is the median of the "
        "timed rounds; `±N%` marks one whose runs were noisy (half the interquartile "
        "range, relative). Ratios divide by the group's baseline at the same x. Round "
        "counts, quartiles and every recorded fact are in the JSON.",
    ]
    runs = _run_lines(results.sources)
    if runs:
        out += ["", "Runs:", "", *runs]
    if results.skipped:
        out += ["", f"## Skipped ({len(results.skipped)})", ""]
        out += ["Not reported, and why:", "", *_skipped_lines(results.skipped)]
    for group in groups(records):
        out += ["", *group_section(records, group)]
    return "\n".join(out) + "\n"


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Read the JSON in ``results_dir``; write one PNG per group and ``summary.md``.

    Files and records that cannot be reported are listed in the summary and
    printed on stderr; the rest is still reported.

    Parameters
    ----------
    results_dir : str or Path
        Directory holding pytest-benchmark ``*.json`` files.
    out_dir : str or Path, optional
        Where to write; default ``results_dir``.

    Returns
    -------
    list of Path
        The files written: ``<group>.png`` for each group, then ``summary.md``.

    Raises
    ------
    FileNotFoundError
        If ``results_dir`` does not exist.
    ValueError
        If it holds no benchmark results that can be reported.
    """
    from matplotlib.figure import Figure

    from .plot import plot_group

    results_dir = Path(results_dir)
    results = load_dir(results_dir)
    for skipped in results.skipped:
        print(f"llmref.bench.report: skipped {skipped.what}: {skipped.reason}", file=sys.stderr)
    if not results.records:
        raise ValueError(f"no reportable benchmark results (*.json) in {results_dir}")
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group in groups(results.records):
        fig = plot_group(results.records, group, fig=Figure())
        path = out / f"{group}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(results), encoding="utf-8")
    written.append(summary)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``): ``RESULTS_DIR [--out OUT_DIR]``.

    Returns
    -------
    int
        0 on success (skipped files or records are reported, not fatal), 1
        if there was nothing to report.
    """
    parser = argparse.ArgumentParser(
        prog="python -m llmref.bench.report",
        description="Plot pytest-benchmark JSON results and write a Markdown summary.",
    )
    parser.add_argument("results_dir", type=Path, help="directory of pytest-benchmark *.json")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"llmref.bench.report: {exc}", file=sys.stderr)
        return 1
    results = load_dir(args.results_dir)
    read = ", ".join(str(s.path) for s in results.sources)
    print(
        f"llmref.bench.report: {len(results.records)} records in "
        f"{len(groups(results.records))} groups from {read}"
        + (f"; {len(results.skipped)} skipped (see summary.md)" if results.skipped else "")
    )
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
