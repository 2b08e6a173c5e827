"""Turn pytest-benchmark JSON files into PNG plots and a Markdown summary.

Usage::

    python -m llmref.bench.report RESULTS_DIR [--out OUT_DIR]

reads every ``*.json`` in ``RESULTS_DIR`` (the newest measurement of each
case wins), writes ``<group>.png`` for each benchmark group and
``summary.md`` (one table per group: median time per implementation per
sequence length, and the ratio to the group's baseline — SDPA for functional
attention, :class:`torch.nn.MultiheadAttention` for modules) into
``OUT_DIR`` (default ``RESULTS_DIR``), and prints the paths it wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import Record, baseline_of, groups, implementations, load_dir, ratios, seq_lens

__all__ = [
    "describe_shapes",
    "format_ms",
    "group_table",
    "main",
    "summary_markdown",
    "write_report",
]

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
    ("decode_tokens", "decode_tokens"),
)


def format_ms(seconds: float) -> str:
    """Format a duration in milliseconds with about three significant digits.

    Examples
    --------
    >>> format_ms(0.000251), format_ms(0.0168), format_ms(0.5889)
    ('0.251', '16.8', '589')
    """
    if not math.isfinite(seconds):
        return "—"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def group_table(records: Sequence[Record], group: str, *, transpose: bool | None = None) -> str:
    """Markdown table of one group: medians (ms) per ``T``, then ratios to the baseline.

    Parameters
    ----------
    records : sequence of Record
    group : str
    transpose : bool, optional
        ``False``: one row per ``T``, one column per implementation (then one
        ratio column per non-baseline implementation). ``True``: one row per
        implementation, columns per ``T``. By default the table is transposed
        when the group has more than six implementations and fewer lengths,
        so that it stays narrow.

    Returns
    -------
    str
        A Markdown table; ``—`` marks cases that were not measured.

    Examples
    --------
    >>> from llmref.bench.results import Record
    >>> recs = [Record("g", "base", 128, 2e-3, 0.0, 5, baseline="base"),
    ...         Record("g", "new", 128, 3e-3, 0.0, 5, baseline="base")]
    >>> print(group_table(recs, "g"))
    | T | base [ms] | new [ms] | new / base |
    |---:|---:|---:|---:|
    | 128 | 2.00 | 3.00 | 1.50 |
    >>> print(group_table(recs, "g", transpose=True))
    | implementation | T=128 [ms] | T=128: / base |
    |---|---:|---:|
    | base | 2.00 | 1.00 |
    | new | 3.00 | 1.50 |
    """
    recs = [r for r in records if r.group == group]
    names = implementations(recs, group)
    lens = seq_lens(recs, group)
    base = baseline_of(recs, group)
    table = ratios(recs, group, base) if base is not None else {}
    median = {(r.implementation, r.seq_len): r.median for r in recs}

    def ratio(name: str, t: int) -> str:
        return f"{table[(name, t)]:.2f}" if (name, t) in table else "—"

    if transpose is None:
        transpose = len(names) > 6 and len(names) > len(lens)
    if transpose:
        header = ["implementation", *(f"T={t} [ms]" for t in lens)]
        if table:
            header += [f"T={t}: / {base}" for t in lens]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name in names:
            cells = [name, *(format_ms(median.get((name, t), math.nan)) for t in lens)]
            if table:
                cells += [ratio(name, t) for t in lens]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    others = [n for n in names if n != base] if table else []
    header = ["T", *(f"{n} [ms]" for n in names), *(f"{n} / {base}" for n in others)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header) + "|",
    ]
    for t in lens:
        cells = [str(t)]
        cells += [format_ms(median.get((n, t), math.nan)) for n in names]
        cells += [ratio(n, t) for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_shapes(infos: Sequence[Mapping[str, Any]]) -> str:
    """One line stating the shapes of a group's cases, from their ``extra_info``.

    Values shared by every implementation of the group are stated once; the
    others are listed per implementation.

    Parameters
    ----------
    infos : sequence of mapping
        The ``extra_info`` of the group's benchmarks (each with an
        ``"implementation"``).

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
    per_impl: dict[str, dict[str, Any]] = {}
    for info in infos:
        impl = str(info.get("implementation", ""))
        values = per_impl.setdefault(impl, {})
        for key, _ in _SHAPE_KEYS:
            if key in info:
                values.setdefault(key, info[key])
    label = dict(_SHAPE_KEYS)
    common = [
        key
        for key, _ in _SHAPE_KEYS
        if per_impl
        and all(key in v for v in per_impl.values())
        and len({json.dumps(v[key]) for v in per_impl.values()}) == 1
    ]
    first = next(iter(per_impl.values()), {})
    parts = [", ".join(f"{label[k]}={first[k]}" for k in common)] if common else []
    for impl, values in per_impl.items():
        own = [f"{label[k]}={v}" for k, v in values.items() if k not in common]
        if own:
            parts.append(f"{impl}: " + ", ".join(own))
    return "; ".join(parts)


def _shapes_by_group(paths: Sequence[Path]) -> dict[str, str]:
    """``describe_shapes`` of every group found in pytest-benchmark JSON files."""
    infos: dict[str, list[Mapping[str, Any]]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for bench in data.get("benchmarks") or []:
            group = str(bench.get("group") or "")
            infos.setdefault(group, []).append(bench.get("extra_info") or {})
    return {group: describe_shapes(group_infos) for group, group_infos in infos.items()}


def _describe_sources(paths: Sequence[Path]) -> list[str]:
    """One line per JSON file: when, where and with which pytest-benchmark it ran."""
    lines = []
    for path in paths:
        try:
            with path.open(encoding="utf-8") as fh:
                data: Any = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "benchmarks" not in data:
            continue
        info = data.get("machine_info") or {}
        cpu = (info.get("cpu") or {}).get("brand_raw") or info.get("processor") or "?"
        lines.append(
            f"- `{path.name}`: {data.get('datetime', '?')}, {len(data['benchmarks'])} benchmarks, "
            f"CPU {cpu}, Python {info.get('python_version', '?')}, "
            f"pytest-benchmark {data.get('version', '?')}"
        )
    return lines


def summary_markdown(
    records: Sequence[Record],
    sources: Sequence[str] = (),
    shapes: Mapping[str, str] | None = None,
) -> str:
    """The whole ``summary.md``: a heading, the setup, one table per group.

    Parameters
    ----------
    records : sequence of Record
    sources : sequence of str, optional
        Markdown lines describing where the records came from.
    shapes : mapping of str to str, optional
        Per group, the line stating its shapes (see :func:`describe_shapes`);
        groups have different shapes (the decode-step group is not the
        ``B=1, H=8, D=64`` of the attention sweeps), so each states its own.

    Returns
    -------
    str
    """
    dtypes = sorted({r.dtype for r in records if r.dtype})
    devices = sorted({r.device for r in records if r.device})
    threads = sorted({r.threads for r in records if r.threads is not None})
    out = [
        "# Benchmark summary",
        "",
        f"Setup: dtype {', '.join(dtypes) or '?'}; device {', '.join(devices) or '?'}"
        + (f"; torch threads {', '.join(map(str, threads))}." if threads else "."),
        "Times are the median of the timed rounds, in milliseconds; a ratio is "
        "median / median of the group's baseline (< 1 is faster than the baseline). "
        "IQR and round counts are in the JSON. Each group states its own shapes; attention "
        "cases are causal self-attention unless a mask is named, and in the decode-step "
        "group T is the length of the cache one new token attends to.",
    ]
    if sources:
        out += ["", "Sources:", "", *sources]
    for group in groups(records):
        base = baseline_of(records, group)
        out += ["", f"## {group}", ""]
        shape = (shapes or {}).get(group)
        if shape:
            out += [f"Shapes: {shape}.", ""]
        if base is not None:
            out += [f"Baseline: `{base}`.", ""]
        out.append(group_table(records, group))
    return "\n".join(out) + "\n"


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Read the JSON in ``results_dir``; write one PNG per group and ``summary.md``.

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
        If it holds no benchmark results.
    """
    from matplotlib.figure import Figure

    from .plot import plot_group

    results_dir = Path(results_dir)
    records = load_dir(results_dir)
    if not records:
        raise ValueError(f"no pytest-benchmark results (*.json) in {results_dir}")
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group in groups(records):
        fig = plot_group(records, group, fig=Figure())
        path = out / f"{group}.png"
        fig.savefig(path, dpi=120)
        written.append(path)
    summary = out / "summary.md"
    paths = sorted(results_dir.glob("*.json"))
    sources = _describe_sources(paths)
    summary.write_text(
        summary_markdown(records, sources, _shapes_by_group(paths)), encoding="utf-8"
    )
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
        0 on success, 1 if there was nothing to report.
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
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
