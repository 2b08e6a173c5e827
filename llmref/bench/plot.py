"""Matplotlib plots of benchmark records, drawn from each group's declared layout.

Each group is drawn on its own axes and units
(:class:`~llmref.bench.layout.Layout`): the metric against the declared x axis,
one line per series with the interquartile range as a shaded band, each series
in a style no other series of the figure shares, and the ratio to the baseline
beside it. A group measured at a single x is drawn as bars instead of columns
of dots. Series that stop before the group's largest x say so in the legend.

matplotlib is imported inside the functions, so importing this module (or
``llmref``) stays light. Functions draw into the axes or figure they are
given; without one they create it with :mod:`matplotlib.pyplot` (which is what
sphinx-gallery captures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .layout import Axis, Layout
from .results import (
    Record,
    baseline_of,
    layout_of,
    ratios,
    series_of,
    stopped_series,
    x_values,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["format_x", "plot_group", "plot_ratios", "plot_values", "series_styles"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_LINESTYLES = ("-", "--", "-.", ":")


def series_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct colour, marker and line style per series, in order.

    Colours cycle through matplotlib's ten ``C0``-``C9``; the line style
    changes with each cycle and the marker with each series, so no two of
    the first 40 series look alike (two series of one colour differ in line
    style and marker).

    Parameters
    ----------
    names : sequence of str
        Series names, baseline first.

    Returns
    -------
    dict
        ``{name: {"color", "marker", "linestyle"}}``.

    Examples
    --------
    >>> styles = series_styles([f"s{i}" for i in range(12)])
    >>> styles["s0"]["color"] == styles["s10"]["color"], styles["s0"] == styles["s10"]
    (True, False)
    """
    return {
        name: {
            "color": f"C{i % 10}",
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)],
        }
        for i, name in enumerate(names)
    }


def format_x(value: float) -> str:
    """An x value as a short label (``1024``, ``0.5``, ``16384``).

    Examples
    --------
    >>> format_x(1024.0), format_x(0.5)
    ('1024', '0.5')
    """
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _format_x_axis(ax: Axes, axis: Axis, xs: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    if axis.scale != "linear":
        ax.set_xscale("log", base=2 if axis.scale == "log2" else 10)
    ax.xaxis.set_major_locator(FixedLocator(list(xs)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_x(x) for x in xs])
    ax.set_xlabel(axis.title)


def _format_log_y(ax: Axes) -> None:
    """Label a log y axis with plain numbers (0.5, 1, 2, 5, 10, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    low, high = ax.get_ylim()
    # Within one decade there are few major ticks: label the minor ones too.
    small = low > 0 and high / low < 10
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if small else ""))


def _new_axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=(6, 4), layout="constrained")
    return new


def _group(records: Sequence[Record], group: str) -> tuple[list[Record], Layout]:
    recs = [r for r in records if r.group == group]
    if not recs:
        raise ValueError(f"no records for group {group!r}")
    return recs, layout_of(recs, group)


def _label(name: str, base: str | None, stops: Mapping[str, tuple[float, str]], axis: Axis) -> str:
    label = f"{name} (baseline)" if name == base else name
    if name in stops:
        label += f" — stops at {axis.short} = {format_x(stops[name][0])}"
    return label


def _bars(
    ax: Axes,
    names: Sequence[str],
    values: Mapping[str, tuple[float, float, float]],
    styles: Mapping[str, Mapping[str, Any]],
    xlabel: str,
) -> None:
    """Horizontal bars (value, with its quartiles as error bars), first name on top.

    The value axis is logarithmic when the values span more than 30x.
    """
    ys = list(range(len(names)))[::-1]
    for y, name in zip(ys, names, strict=True):
        value, low, high = values[name]
        err = None
        if math.isfinite(low) and math.isfinite(high):
            err = [[max(value - low, 0.0)], [max(high - value, 0.0)]]
        ax.barh(y, value, xerr=err, color=styles[name]["color"], alpha=0.85, capsize=3)
        end = max(value, high) if math.isfinite(high) else value
        ax.annotate(f" {value:.3g}", (end, y), va="center", fontsize="small", annotation_clip=False)
    shown = [v for v, _, _ in values.values() if v > 0]
    if shown and max(shown) > 30 * min(shown):
        ax.set_xscale("log")
    ax.set_yticks(ys, list(names))
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", which="both", alpha=0.3)


def plot_values(
    records: Sequence[Record],
    group: str,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    legend: bool = True,
) -> Axes:
    """The group's metric against its x axis, one line per series (log y).

    The interquartile range of each point is a shaded band around its line.
    With ``guide`` declared, a dashed grey line of that slope runs through
    the baseline's largest x. A group measured at one x is drawn as bars.

    Parameters
    ----------
    records : sequence of Record
        Measurements (other groups are ignored).
    group : str
        Group to draw.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title; default: the group name.
    styles : mapping, optional
        Per series, keyword arguments of ``Axes.plot`` (colour, marker, line style);
        default :func:`series_styles` of the group's series.
    legend : bool, default True
        Draw a legend on these axes (:func:`plot_group` draws one for the
        figure instead).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.
    """
    recs, layout = _group(records, group)
    ax = _new_axes(ax)
    names = series_of(recs, group)
    styles = series_styles(names) if styles is None else styles
    base = baseline_of(recs, group)
    xs = x_values(recs, group)
    metric = layout.metric
    ax.set_title(title if title is not None else group)
    if len(xs) == 1:
        values = {r.series: (r.value, r.low, r.high) for r in recs}
        _bars(ax, names, values, styles, f"{metric.title} at {layout.x.short} = {format_x(xs[0])}")
        return ax
    stops = stopped_series(recs, group)
    for name in names:
        pts = sorted((r.x, r.value, r.low, r.high) for r in recs if r.series == name)
        px = [p[0] for p in pts]
        ax.plot(
            px,
            [p[1] for p in pts],
            label=_label(name, base, stops, layout.x),
            linewidth=2.4 if name == base else 1.5,
            markersize=5,
            **styles[name],
        )
        band = [(x, lo, hi) for x, _, lo, hi in pts if math.isfinite(lo) and math.isfinite(hi)]
        if band:
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=styles[name]["color"],
                alpha=0.15,
                linewidth=0,
            )
    ref = sorted((r.x, r.value) for r in recs if r.series == (base or names[0]))
    if layout.guide is not None and len(ref) > 1:
        power = 2 if layout.guide == "quadratic" else 1
        (x_start, _), (x_end, v_end) = ref[0], ref[-1]
        ax.plot(
            [x_start, x_end],
            [v_end * (x_start / x_end) ** power, v_end],
            linestyle="--",
            color="0.6",
            linewidth=1,
            label=rf"$\propto {layout.x.symbol or 'x'}^{power}$" if power > 1 else "linear",
        )
    _format_log_y(ax)
    _format_x_axis(ax, layout.x, xs)
    ax.set_ylabel(metric.title)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_ratios(
    records: Sequence[Record],
    group: str,
    *,
    baseline: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    legend: bool = True,
) -> Axes:
    """Each series' metric relative to the baseline's, against the x axis (log y).

    Parameters
    ----------
    records : sequence of Record
        Measurements (other groups are ignored).
    group : str
        Group to draw.
    baseline : str, optional
        Series to divide by; default: the group's baseline.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title.
    styles : mapping, optional
        As for :func:`plot_values`.
    legend : bool, default True
        Draw a legend on these axes.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If the group has no baseline measurements.
    """
    recs, layout = _group(records, group)
    base = baseline if baseline is not None else baseline_of(recs, group)
    table = ratios(recs, group, base)
    if not table or base is None:
        raise ValueError(f"group {group!r} has no measurements of its baseline {base!r}")
    ax = _new_axes(ax)
    names = series_of(recs, group)
    styles = series_styles(names) if styles is None else styles
    better = "higher is faster" if layout.metric.higher_is_better else "lower is faster"
    ylabel = f"{layout.metric.label} / {base}'s ({better})"
    ax.set_title(title if title is not None else f"{group}: relative to {base}")
    xs = x_values(recs, group)
    if len(xs) == 1:
        values = {n: (v, math.nan, math.nan) for (n, _), v in table.items()}
        _bars(ax, [n for n in names if n in values], values, styles, ylabel)
        ax.axvline(1.0, color="k", linewidth=1)
        return ax
    ax.axhline(1.0, color=styles[base]["color"] if base in styles else "k", linewidth=2.2)
    for name in names:
        if name == base:
            continue
        pts = sorted((x, v) for (n, x), v in table.items() if n == name)
        if pts:
            ax.plot([x for x, _ in pts], [v for _, v in pts], label=name, **styles[name])
    _format_log_y(ax)
    _format_x_axis(ax, layout.x, xs)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if legend and len(names) > 1:
        ax.legend(fontsize="small")
    return ax


def plot_group(
    records: Sequence[Record], group: str, *, fig: Figure | None = None, suptitle: str | None = None
) -> Figure:
    """Both plots of one group side by side, with one legend outside the data.

    Parameters
    ----------
    records : sequence of Record
        Measurements.
    group : str
        Group to draw.
    fig : matplotlib.figure.Figure, optional
        Empty figure to draw into; created with :mod:`matplotlib.pyplot` if
        omitted (pass a ``matplotlib.figure.Figure()`` to stay off pyplot).
    suptitle : str, optional
        Figure title; default: the group name plus dtype, device and torch
        threads.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from llmref.bench.cases import ATTENTION_LAYOUT
    >>> from llmref.bench.plot import plot_group
    >>> from llmref.bench.results import Record
    >>> recs = [Record("g", i, t, t * m * 1e-3, ATTENTION_LAYOUT, baseline="a")
    ...         for i, m in (("a", 1.0), ("b", 2.0)) for t in (128, 256)]
    >>> fig = plot_group(recs, "g", fig=Figure())
    >>> len(fig.axes), len(fig.legends)
    (2, 1)
    """
    recs, layout = _group(records, group)
    names = series_of(recs, group)
    single = len(x_values(recs, group)) == 1
    height = max(4.2, 0.32 * len(names) + 1.5) if single else 4.6
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(12, height), layout="constrained")
    else:
        fig.set_size_inches(12, height)
        fig.set_layout_engine("constrained")
    styles = series_styles(names)
    left, right = fig.subplots(1, 2)
    plot_values(recs, group, ax=left, title=layout.metric.label, styles=styles, legend=False)
    base = baseline_of(recs, group)
    if base is not None and ratios(recs, group, base):
        plot_ratios(recs, group, ax=right, title=f"relative to {base}", styles=styles, legend=False)
    else:
        right.set_axis_off()
    if not single:
        handles, labels = left.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    if suptitle is None:
        details = sorted(
            {
                ", ".join(
                    part
                    for part in (
                        r.dtype,
                        r.device,
                        f"{r.threads} thread{'s' * (r.threads != 1)}" if r.threads else "",
                    )
                    if part
                )
                for r in recs
            }
            - {""}
        )
        suptitle = group + (f"  ({'; '.join(details)})" if details else "")
    fig.suptitle(suptitle)
    return fig
