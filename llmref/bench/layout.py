"""What a benchmark group measures and how to show it: its axis, metric and series.

Every benchmark test in ``benchmarks/`` declares a :class:`Layout` with the
``bench`` marker (``@pytest.mark.bench(layout)``, or ``pytestmark`` for a
whole module); ``benchmarks/conftest.py`` refuses to collect a benchmark
without one, and stores the declaration in each result's ``extra_info``
(under :data:`LAYOUT_KEY`). The report and the plots read the axis names,
units, scales and the metric from there — never from a field name such as
``seq_len`` — so a suite with a new kind of axis (tokens, batch size, layer
size, ...) is reported correctly without changing them.

This module needs neither torch nor matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LAYOUT_KEY", "STOP_KEY", "TIME_PER_CALL", "Axis", "Extra", "Layout", "Metric"]

LAYOUT_KEY = "layout"
"""``extra_info`` key under which a benchmark's :class:`Layout` is stored (as a dict)."""

STOP_KEY = "stop_reason"
"""``extra_info`` key where the last case of a series that ends before the group's
largest x says why it goes no further (a cap, a memory limit); the summary prints it."""

_SCALES = ("log2", "log10", "linear")
_GUIDES = (None, "linear", "quadratic")


def _require_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, got {value!r}")
    return value


@dataclass(frozen=True)
class Axis:
    """The x axis of a group: which ``extra_info`` value it reads, its label and unit.

    Parameters
    ----------
    key : str
        ``extra_info`` key holding the case's x value (a number), e.g.
        ``"seq_len"``, ``"tokens"``, ``"batch"``.
    label : str
        What the axis shows, e.g. ``"sequence length T"``.
    unit : str, default ""
        Unit of the values (``"tokens"``, ``"sequences"``); empty for a count
        that the label names.
    scale : {"log2", "log10", "linear"}, default "log2"
        How the plot spaces the values.
    symbol : str, default ""
        Short name used in table headers and notes (``"T"``, ``"M"``); the
        label is used when empty.

    Raises
    ------
    ValueError
        If ``key`` or ``label`` is empty, or ``scale`` is unknown.

    Examples
    --------
    >>> from llmref.bench.layout import Axis
    >>> Axis("tokens", "tokens M (rows of x)", "tokens", symbol="M").title
    'tokens M (rows of x) [tokens]'
    """

    key: str
    label: str
    unit: str = ""
    scale: str = "log2"
    symbol: str = ""

    def __post_init__(self) -> None:
        _require_name(self.key, "Axis key")
        _require_name(self.label, "Axis label")
        if self.scale not in _SCALES:
            raise ValueError(f"Axis scale must be one of {_SCALES}, got {self.scale!r}")

    @property
    def title(self) -> str:
        """The axis label with its unit, for a plot."""
        return f"{self.label} [{self.unit}]" if self.unit else self.label

    @property
    def short(self) -> str:
        """The symbol, or the label when there is none."""
        return self.symbol or self.label


@dataclass(frozen=True)
class Metric:
    """The measured quantity of a group, in the unit it is shown in.

    Three sources, chosen by the fields:

    * ``key`` and ``per`` both empty: pytest-benchmark's time per call (its
      median and quartiles, in seconds) times ``scale``;
    * ``per`` set: a throughput, ``extra_info[per] / time`` times ``scale``
      (the quartiles of the time give the spread);
    * ``key`` set: a value the benchmark stored in ``extra_info[key]`` (with
      its quartiles in ``extra_info[key + "_q1"]`` and ``[key + "_q3"]`` if
      it recorded them) times ``scale``.

    Parameters
    ----------
    label : str
        E.g. ``"time per call"``, ``"decode throughput"``.
    unit : str
        Unit after scaling, e.g. ``"ms"``, ``"tokens/s"``.
    key : str, default ""
        ``extra_info`` key of a stored value.
    per : str, default ""
        ``extra_info`` key of the work done per call, for a throughput.
    scale : float, default 1.0
        Multiplies the raw value (seconds, items/s, ...) into ``unit``.
    higher_is_better : bool, default False
        ``True`` for throughputs; decides how ratios are read.

    Raises
    ------
    ValueError
        If ``label`` or ``unit`` is empty, both ``key`` and ``per`` are set,
        or ``scale`` is not a positive finite number.

    Examples
    --------
    >>> from llmref.bench.layout import Metric
    >>> Metric("time per call", "ms", scale=1e3).title
    'time per call [ms]'
    >>> Metric("throughput", "Melem/s", per="elements", scale=1e-6, higher_is_better=True).source
    'throughput'
    """

    label: str
    unit: str
    key: str = ""
    per: str = ""
    scale: float = 1.0
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        _require_name(self.label, "Metric label")
        _require_name(self.unit, "Metric unit")
        if self.key and self.per:
            raise ValueError(
                f"Metric takes key (a stored value) or per (a throughput), not both: "
                f"got key={self.key!r}, per={self.per!r}"
            )
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)) or (
            self.scale <= 0
        ):
            raise ValueError(f"Metric scale must be a positive finite number, got {self.scale!r}")

    @property
    def title(self) -> str:
        """The label with its unit."""
        return f"{self.label} [{self.unit}]"

    @property
    def source(self) -> str:
        """``"time"``, ``"throughput"`` or ``"stored"``: where values come from."""
        if self.per:
            return "throughput"
        return "stored" if self.key else "time"


@dataclass(frozen=True)
class Extra:
    """A per-case fact shown beside the metric in the summary (not plotted).

    Parameters
    ----------
    key : str
        ``extra_info`` key, e.g. ``"peak_bytes"``.
    label : str
        Column header, e.g. ``"peak memory"``.
    unit : str, default ""
        Unit after scaling.
    scale : float, default 1.0
        Multiplies the stored value.

    Raises
    ------
    ValueError
        If ``key`` or ``label`` is empty.

    Examples
    --------
    >>> from llmref.bench.layout import Extra
    >>> Extra("peak_bytes", "peak memory", "MiB", 2**-20).title
    'peak memory [MiB]'
    """

    key: str
    label: str
    unit: str = ""
    scale: float = 1.0

    def __post_init__(self) -> None:
        _require_name(self.key, "Extra key")
        _require_name(self.label, "Extra label")

    @property
    def title(self) -> str:
        """The label with its unit."""
        return f"{self.label} [{self.unit}]" if self.unit else self.label


@dataclass(frozen=True)
class Layout:
    """A benchmark's declaration: its x axis, its metric and what names a series.

    Parameters
    ----------
    x : Axis
        The axis the group is swept over.
    metric : Metric
        What is measured.
    series : str, default "implementation"
        ``extra_info`` key whose value names the series a case belongs to
        (a line in the plot, a column of the table).
    guide : {None, "linear", "quadratic"}, default None
        A reference slope drawn through the baseline (``"quadratic"``: time
        grows like ``x**2``, as exact attention does). Only meaningful where
        the complexity in ``x`` is known.
    extras : tuple of Extra, default ()
        Facts listed beside the metric in the summary.
    description : str, default ""
        One sentence the summary prints under the group's heading.

    Raises
    ------
    ValueError
        If a field has the wrong type, ``series`` is empty or ``guide`` is
        unknown.

    Examples
    --------
    >>> from llmref.bench.layout import Axis, Layout, Metric
    >>> layout = Layout(Axis("seq_len", "sequence length T", "tokens", symbol="T"),
    ...                 Metric("time per call", "ms", scale=1e3), guide="quadratic")
    >>> Layout.from_dict(layout.as_dict()) == layout
    True
    """

    x: Axis
    metric: Metric
    series: str = "implementation"
    guide: str | None = None
    extras: tuple[Extra, ...] = field(default=())
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.x, Axis):
            raise ValueError(f"Layout x must be an Axis, got {type(self.x).__name__}")
        if not isinstance(self.metric, Metric):
            raise ValueError(f"Layout metric must be a Metric, got {type(self.metric).__name__}")
        _require_name(self.series, "Layout series")
        if self.guide not in _GUIDES:
            raise ValueError(f"Layout guide must be one of {_GUIDES}, got {self.guide!r}")
        extras = tuple(self.extras)
        if not all(isinstance(e, Extra) for e in extras):
            raise ValueError(f"Layout extras must be Extra objects, got {extras!r}")
        object.__setattr__(self, "extras", extras)

    def as_dict(self) -> dict[str, Any]:
        """The declaration as plain JSON-compatible data (see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild a declaration stored by :meth:`as_dict`.

        Parameters
        ----------
        data : mapping
            As written into a result's ``extra_info``.

        Returns
        -------
        Layout

        Raises
        ------
        ValueError
            If ``data`` is not a stored layout.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a stored layout must be a mapping, got {type(data).__name__}")
        try:
            return cls(
                x=Axis(**data["x"]),
                metric=Metric(**data["metric"]),
                series=data.get("series", "implementation"),
                guide=data.get("guide"),
                extras=tuple(Extra(**e) for e in data.get("extras", ())),
                description=data.get("description", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a stored layout ({exc}): {dict(data)!r}") from exc


TIME_PER_CALL = Metric("median time per call", "ms", scale=1e3)
"""The usual metric: pytest-benchmark's median time of one call, in milliseconds."""
