"""A tiny wall-clock timer, for quick sweeps outside pytest-benchmark.

The gallery's reduced sweep uses it to time the same cases as
``benchmarks/`` (see :mod:`llmref.bench.cases`) when no benchmark JSON is
available: warm up, then time repeated calls with :func:`time.perf_counter`
and keep the median. It also chooses round counts for the pytest-benchmark
suite (:func:`plan_rounds`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .layout import Layout
from .results import Record

__all__ = ["Timing", "plan_rounds", "run_cases", "time_callable"]


@dataclass(frozen=True)
class Timing:
    """Times of repeated calls of one function, in seconds.

    Parameters
    ----------
    times : tuple of float
        Duration of each timed call, in call order.

    Examples
    --------
    >>> from llmref.bench import Timing
    >>> t = Timing((0.3, 0.1, 0.2))
    >>> t.rounds, t.median
    (3, 0.2)
    """

    times: tuple[float, ...]

    @property
    def rounds(self) -> int:
        """Number of timed calls."""
        return len(self.times)

    @property
    def median(self) -> float:
        """Median call time."""
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        """Mean call time."""
        return statistics.fmean(self.times)

    @property
    def min(self) -> float:
        """Fastest call."""
        return min(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartile (both the one time with a single call)."""
        if len(self.times) < 2:
            return self.times[0], self.times[0]
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q3

    @property
    def iqr(self) -> float:
        """Interquartile range (0 with fewer than two calls)."""
        q1, q3 = self.quartiles
        return q3 - q1


def time_callable(
    fn: Callable[[], Any], *, rounds: int = 5, warmup: int = 1, max_time: float | None = None
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``rounds`` timed ones.

    Parameters
    ----------
    fn : callable
        Zero-argument function; for accelerator work it must synchronize
        before returning (the callables of :class:`~llmref.bench.cases.Case`
        do).
    rounds : int, default 5
        Number of timed calls (at least one is always made).
    warmup : int, default 1
        Untimed calls first (lazy initialisation, caches, allocator).
    max_time : float, optional
        Stop early once the timed calls have taken this many seconds.

    Returns
    -------
    Timing

    Raises
    ------
    ValueError
        If ``rounds < 1`` or ``warmup < 0``.

    Examples
    --------
    >>> from llmref.bench.measure import time_callable
    >>> t = time_callable(lambda: sum(range(1000)), rounds=7)
    >>> t.rounds, t.median > 0
    (7, True)
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    clock = time.perf_counter
    for _ in range(rounds):
        start = clock()
        fn()
        elapsed = clock() - start
        times.append(elapsed)
        spent += elapsed
        if max_time is not None and spent >= max_time:
            break
    return Timing(tuple(times))


def plan_rounds(
    fn: Callable[[], Any],
    *,
    max_time: float = 1.0,
    min_rounds: int = 5,
    max_rounds: int | None = None,
    warmup: int = 1,
    probes: int = 3,
) -> int:
    """Choose how many timed calls of ``fn`` fit in ``max_time`` seconds.

    Calls ``fn`` ``warmup`` times untimed, then times up to ``probes`` calls
    (stopping early once they have taken a fifth of ``max_time``), and returns
    ``ceil(max_time / t)`` for their median ``t``, clipped to
    ``[min_rounds, max_rounds]``. So a 0.3 ms call gets thousands of rounds
    and a 1 s call gets ``min_rounds``, which keeps large sequence lengths
    from taking forever. The calls made here also warm up the measurement
    that follows.

    Parameters
    ----------
    fn : callable
        Zero-argument function to be timed.
    max_time : float, default 1.0
        Target total time of the timed calls, in seconds.
    min_rounds : int, default 5
        Never fewer rounds.
    max_rounds : int, optional
        Never more rounds.
    warmup : int, default 1
        Untimed calls before the probes.
    probes : int, default 3
        Most timed probe calls; the median resists one lucky or unlucky call.

    Returns
    -------
    int
        Number of rounds, at least 1.

    Examples
    --------
    >>> from llmref.bench.measure import plan_rounds
    >>> plan_rounds(lambda: None, max_time=1.0, min_rounds=5, max_rounds=100)
    100
    """
    probe = time_callable(fn, rounds=max(probes, 1), warmup=warmup, max_time=max_time / 5)
    t = max(probe.median, 1e-9)
    rounds = max(math.ceil(max_time / t), min_rounds, 1)
    if max_rounds is not None:
        rounds = min(rounds, max_rounds)
    return rounds


def run_cases(
    cases: Iterable[Any],
    *,
    device: Any = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    max_time: float | None = 0.5,
    progress: Callable[[str], object] | None = None,
    layout: Layout | None = None,
) -> list[Record]:
    """Build and time each case; the in-process equivalent of ``benchmarks/``.

    Parameters
    ----------
    cases : iterable of Case
        From :mod:`llmref.bench.cases`, e.g. ``sweep("quick")``.
    device : str or torch.device, default "cpu"
        Device to run on.
    rounds : int, default 5
        Timed calls per case (fewer if ``max_time`` runs out).
    warmup : int, default 1
        Untimed calls per case.
    max_time : float or None, default 0.5
        Time budget per case, in seconds.
    progress : callable, optional
        Called with one line of text per finished case (e.g. :func:`print`).
    layout : Layout, optional
        The records' declaration; default
        :data:`~llmref.bench.cases.ATTENTION_LAYOUT` (time per call against
        ``T``, which is what a :class:`~llmref.bench.cases.Case` sweeps).

    Returns
    -------
    list of Record
        One per case (series = implementation, x = sequence length), with
        ``source="measure"``.

    Examples
    --------
    >>> from llmref.bench import attention_cases, run_cases
    >>> cases = attention_cases(seq_lens=(64,), implementations=["sdpa"])
    >>> [rec] = run_cases(cases, rounds=2, max_time=0.2)
    >>> rec.series, rec.x, rec.rounds >= 1
    ('sdpa', 64, True)
    """
    from datetime import datetime, timezone

    from .cases import ATTENTION_LAYOUT, resolve_device

    layout = ATTENTION_LAYOUT if layout is None else layout
    scale = layout.metric.scale
    dev = str(resolve_device(device))
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = []
    for case in cases:
        timing = time_callable(case.make(dev), rounds=rounds, warmup=warmup, max_time=max_time)
        q1, q3 = timing.quartiles
        out.append(
            Record(
                group=case.group,
                series=case.implementation,
                x=case.seq_len,
                value=timing.median * scale,
                layout=layout,
                low=q1 * scale,
                high=q3 * scale,
                rounds=timing.rounds,
                baseline=case.baseline,
                name=case.id,
                source="measure",
                datetime=when,
                info=case.extra_info(dev),
            )
        )
        if progress is not None:
            progress(
                f"{case.group:22s} {case.id:18s} median {timing.median * 1e3:9.3f} ms "
                f"({timing.rounds} rounds)"
            )
    return out
