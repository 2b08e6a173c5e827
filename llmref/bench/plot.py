"""Matplotlib plots of benchmark records: time vs sequence length, and ratio to a baseline.

matplotlib is imported inside the functions, so importing this module (or
``llmref``) stays light. Functions draw into the axes or figure they are
given; without one they create it with :mod:`matplotlib.pyplot` (which is what
sphinx-gallery captures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .results import Record, baseline_of, implementations, ratios, seq_lens

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_group", "plot_ratios", "plot_times"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A stable colour and marker per implementation (baseline first = C0)."""
    return {
        name: {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}
        for i, name in enumerate(names)
    }


def _format_seq_axis(ax: Axes, lens: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(lens)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in lens])
    ax.set_xlabel("sequence length T")


def _format_ratio_axis(ax: Axes) -> None:
    """Label a log ratio axis with plain numbers (0.5, 1, 2, 5, 10, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

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


def plot_times(
    records: Sequence[Record], group: str, *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Median time per call vs sequence length, one line per implementation (log-log).

    A dashed grey line of slope 2 (time proportional to ``T**2``) is drawn
    through the baseline's longest measurement, for reference.

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

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If ``records`` holds nothing for ``group``.
    """
    recs = [r for r in records if r.group == group]
    if not recs:
        raise ValueError(f"no records for group {group!r}")
    ax = _new_axes(ax)
    names = implementations(recs, group)
    styles = _styles(names)
    base = baseline_of(recs, group)
    for name in names:
        pts = sorted((r.seq_len, r.median) for r in recs if r.implementation == name)
        label = f"{name} (baseline)" if name == base else name
        ax.plot(
            [t for t, _ in pts],
            [m * 1e3 for _, m in pts],
            label=label,
            linewidth=2.2 if name == base else 1.6,
            **styles[name],
        )
    ref = sorted((r.seq_len, r.median) for r in recs if r.implementation == (base or names[0]))
    if len(ref) > 1:
        t_end, m_end = ref[-1]
        t_start = ref[0][0]
        ax.plot(
            [t_start, t_end],
            [m_end * 1e3 * (t_start / t_end) ** 2, m_end * 1e3],
            linestyle="--",
            color="0.6",
            linewidth=1,
            label=r"$\propto T^2$",
        )
    ax.set_yscale("log")
    _format_seq_axis(ax, seq_lens(recs, group))
    ax.set_ylabel("median time per call [ms]")
    ax.set_title(title if title is not None else group)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_ratios(
    records: Sequence[Record],
    group: str,
    *,
    baseline: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Median time relative to the baseline vs sequence length (log y).

    Parameters
    ----------
    records : sequence of Record
        Measurements (other groups are ignored).
    group : str
        Group to draw.
    baseline : str, optional
        Implementation to divide by; default: the group's baseline.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If the group has no baseline measurements.
    """
    recs = [r for r in records if r.group == group]
    base = baseline if baseline is not None else baseline_of(recs, group)
    table = ratios(recs, group, base)
    if not table or base is None:
        raise ValueError(f"group {group!r} has no measurements of its baseline {base!r}")
    ax = _new_axes(ax)
    names = implementations(recs, group)
    styles = _styles(names)
    ax.axhline(1.0, color=styles[base]["color"] if base in styles else "k", linewidth=2.2)
    for name in names:
        if name == base:
            continue
        pts = sorted((t, v) for (n, t), v in table.items() if n == name)
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=name, **styles[name])
    ax.set_yscale("log")
    _format_ratio_axis(ax)
    _format_seq_axis(ax, seq_lens(recs, group))
    ax.set_ylabel(f"time / time of {base}")
    ax.set_title(title if title is not None else f"{group}: relative to {base}")
    ax.grid(True, which="both", alpha=0.3)
    if len(names) > 1:
        ax.legend(fontsize="small")
    return ax


def plot_group(
    records: Sequence[Record], group: str, *, fig: Figure | None = None, suptitle: str | None = None
) -> Figure:
    """Both plots of one group side by side: times (left) and ratios (right).

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

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from llmref.bench.plot import plot_group
    >>> from llmref.bench.results import Record
    >>> recs = [Record("g", i, t, t * m * 1e-6, 0.0, 5, baseline="a")
    ...         for i, m in (("a", 1.0), ("b", 2.0)) for t in (128, 256)]
    >>> fig = plot_group(recs, "g", fig=Figure())
    >>> len(fig.axes)
    2
    """
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(11, 4.2), layout="constrained")
    else:
        fig.set_size_inches(11, 4.2)
        fig.set_layout_engine("constrained")
    left, right = fig.subplots(1, 2)
    plot_times(records, group, ax=left, title="median time per call")
    base = baseline_of(records, group)
    if base is not None and ratios(records, group, base):
        plot_ratios(records, group, baseline=base, ax=right, title=f"relative to {base}")
    else:
        right.set_axis_off()
    if suptitle is None:
        recs = [r for r in records if r.group == group]
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
