"""Peak memory of one call, measured honestly, and the attention memory sweep.

:mod:`tracemalloc` only sees allocations made through Python's allocator, and
PyTorch's CPU tensors are allocated by C++ (``posix_memalign``), so it reports
almost nothing for attention. What the operating system sees is the process's
*resident set size* (RSS) and its high-water mark. On Linux the high-water mark
can be reset (writing ``5`` to ``/proc/self/clear_refs``), so

    peak = (high-water mark after the call) - (RSS just before it)

is the largest amount of extra memory the call touched at any instant, its
output included: every tensor it allocated, every buffer of every kernel and
of the libraries below torch. On an accelerator :func:`measure_peak` uses the
device allocator's peak statistics instead.

Two effects could hide memory from RSS, and both are removed here:

* glibc keeps freed small blocks and may satisfy a later request from them
  without touching new pages. :func:`peak_memory` therefore measures in a fresh
  Python process started with ``MALLOC_MMAP_THRESHOLD_=65536``, so every
  allocation of 64 KiB or more is a fresh ``mmap`` that is returned to the
  system when freed, and :func:`measure_peak` calls ``malloc_trim(0)`` before
  reading the baseline.
* Work done once (``torch.compile``, lazy initialisation) is not the call's
  memory: ``warmup`` untimed calls come first, then the mark is reset.

The sweep part (:func:`attention_call`, :data:`MEMORY_SWEEPS`,
:func:`memory_sweep`, ``python -m llmref.bench.memory``) measures the attention
backends of ``benchmarks/bench_attention_variants.py`` -- the same callables,
which that suite times -- and writes ``results/attention_memory.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .cases import BATCH, HEAD_DIM, HEADS, SEED, resolve_device, synchronizer

__all__ = [
    "IMPLEMENTATIONS",
    "MEMORY_SWEEPS",
    "WINDOW",
    "MemoryRecord",
    "attention_call",
    "load_memory_json",
    "main",
    "measure_peak",
    "memory_sweep",
    "peak_memory",
    "rss_bytes",
    "supports_rss_reset",
]

WINDOW = 256
"""Sliding-window width of the ``"sliding_window"`` cases (keys seen, the query's own included)."""

IMPLEMENTATIONS: Mapping[str, str] = {
    "sdpa": "torch.nn.functional.scaled_dot_product_attention, called directly",
    "naive": "llmref.attention.naive_attention (materialises the T x T scores)",
    "chunked": "llmref.attention.chunked_attention (FlashAttention in PyTorch)",
    "flex": "llmref.attention.flex_attention run eagerly",
    "flex-compiled": "llmref.attention.flex_attention(compiled=True), compiled before timing",
    "linear": "llmref.attention.linear_attention (causal only)",
}
"""The attention implementations :func:`attention_call` can build, with what each one runs."""

MEMORY_SWEEPS: Mapping[str, Mapping[str, Any]] = {
    "quick": {
        "implementations": ("sdpa", "naive", "chunked", "linear"),
        "masks": ("causal",),
        "seq_lens": (256, 512, 1024, 2048),
    },
    "default": {
        "implementations": ("sdpa", "naive", "chunked", "flex-compiled", "linear"),
        "masks": ("causal", "sliding_window"),
        "seq_lens": (256, 1024, 4096, 8192),
    },
    "full": {
        "implementations": ("sdpa", "naive", "chunked", "flex-compiled", "linear"),
        "masks": ("causal", "sliding_window"),
        "seq_lens": (256, 1024, 2048, 4096, 8192, 16384),
        "max_seq_len": {"naive": 8192},
    },
}
"""Sweeps of :func:`memory_sweep`: ``"quick"`` (the gallery's, seconds), ``"default"``
(``python -m llmref.bench.memory``; naive reaches 8192, where its float32 scores alone
take 2 GiB) and ``"full"`` (to 16384; naive stops at 8192)."""

_TARGET = "llmref.bench.memory:attention_call"
_MMAP_THRESHOLD = 65536
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)}


# -- measuring ----------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def supports_rss_reset() -> bool:
    """Whether this process can read its RSS and reset its high-water mark (Linux).

    Returns
    -------
    bool
        True if ``/proc/self/status`` is readable and ``/proc/self/clear_refs``
        is writable.
    """
    try:
        _status_bytes("VmHWM")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except (OSError, RuntimeError):
        return False
    return True


def rss_bytes() -> tuple[int, int]:
    """The current resident set size and its high-water mark, in bytes.

    Returns
    -------
    rss, hwm : int
        ``VmRSS`` and ``VmHWM`` of ``/proc/self/status``.

    Raises
    ------
    RuntimeError
        If ``/proc/self/status`` cannot be read (not Linux).

    Examples
    --------
    >>> from llmref.bench.memory import rss_bytes
    >>> rss, hwm = rss_bytes()
    >>> 0 < rss <= hwm
    True
    """
    try:
        return _status_bytes("VmRSS"), _status_bytes("VmHWM")
    except OSError as exc:
        raise RuntimeError(f"cannot read /proc/self/status (RSS needs Linux): {exc}") from exc


def _malloc_trim() -> None:
    """Give memory freed to glibc back to the system, so it cannot hide a peak."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def measure_peak(
    fn: Callable[[], Any], *, device: str | torch.device = "cpu", warmup: int = 1
) -> int:
    """Peak extra memory of one call of ``fn``, in bytes, measured in this process.

    On the CPU: the RSS high-water mark during the call minus the RSS before
    it (Linux). On an accelerator: the allocator's peak minus what was
    allocated before. The value returned by ``fn`` is kept alive until the
    peak is read, so it counts.

    Parameters
    ----------
    fn : callable
        Zero-argument function to measure; on an accelerator it must
        synchronize before returning.
    device : str or torch.device, default "cpu"
        Where ``fn`` allocates.
    warmup : int, default 1
        Calls made first and not measured (compilation, lazy initialisation).

    Returns
    -------
    int
        Bytes, >= 0.

    Raises
    ------
    ValueError
        If ``warmup < 0``, or the device has no peak-memory statistics.
    RuntimeError
        On the CPU, if the RSS high-water mark cannot be reset (not Linux).

    Notes
    -----
    In a process that has run other work, memory glibc keeps after a
    ``free`` can be reused by ``fn`` without raising the RSS; ``malloc_trim``
    is called first to return it, but :func:`peak_memory`, which measures in a
    fresh process with a fixed ``mmap`` threshold, is the honest choice.

    Examples
    --------
    >>> import torch
    >>> from llmref.bench.memory import measure_peak
    >>> peak = measure_peak(lambda: torch.ones(4 * 2**20))  # one 16 MiB tensor
    >>> 16 <= peak / 2**20 < 24
    True
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    dev = resolve_device(device)
    for _ in range(warmup):
        fn()
    gc.collect()
    if dev.type == "cpu":
        if not supports_rss_reset():
            raise RuntimeError(
                "measuring CPU peak memory needs Linux's /proc/self/clear_refs to reset the "
                "RSS high-water mark; it is not available here"
            )
        _malloc_trim()
        _reset_rss_peak()
        before, _ = rss_bytes()
        out = fn()
        _, peak = rss_bytes()
        del out
        return max(0, peak - before)
    backend = getattr(torch, dev.type, None)
    stats = ("reset_peak_memory_stats", "max_memory_allocated", "memory_allocated")
    if backend is None or not all(hasattr(backend, name) for name in stats):
        raise ValueError(f"device {dev} has no peak-memory statistics in torch.{dev.type}")
    sync = synchronizer(dev)
    sync()
    backend.reset_peak_memory_stats(dev)
    before = backend.memory_allocated(dev)
    out = fn()
    sync()
    peak = backend.max_memory_allocated(dev)
    del out
    return max(0, int(peak) - int(before))


def _resolve_target(target: str) -> Callable[..., Callable[[], Any]]:
    import importlib

    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"target {target!r} is not callable")
    return obj


def _child() -> None:
    """Entry point of the measuring process: JSON job on stdin, one JSON line per case out."""
    job = json.loads(sys.stdin.read())
    build = _resolve_target(job["target"])
    for kwargs in job["cases"]:
        try:
            fn = build(**kwargs, device=job["device"])
            peak: int | None = measure_peak(fn, device=job["device"], warmup=job["warmup"])
            error = None
            del fn
        except Exception as exc:  # report it and go on with the next case
            peak, error = None, f"{type(exc).__name__}: {exc}"
        gc.collect()
        print(json.dumps({"peak_bytes": peak, "error": error}), flush=True)


def peak_memory(
    target: str,
    cases: Sequence[Mapping[str, Any]],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    isolate: bool = True,
    timeout: float | None = None,
) -> list[int | None]:
    """Measure peak memory of calls built by ``target``, in fresh Python processes.

    For each case, ``target(**case, device=device)`` builds a zero-argument
    callable in the child process (inputs and setup are not measured), which
    then runs ``warmup`` times and once more under :func:`measure_peak`.

    Parameters
    ----------
    target : str
        Importable builder, ``"package.module:function"``, e.g.
        ``"llmref.bench.memory:attention_call"``.
    cases : sequence of mapping
        Keyword arguments of each build (JSON-serialisable).
    device : str or torch.device, default "cpu"
        Passed to the builder and to :func:`measure_peak`.
    warmup : int, default 1
        Unmeasured calls before the measured one.
    isolate : bool, default True
        One process per case (nothing one case leaves behind can affect the
        next). With False, all cases run in one process, in order, the
        high-water mark reset before each: faster, and with the fixed
        ``mmap`` threshold nearly always the same numbers.
    timeout : float, optional
        Seconds to wait for each process.

    Returns
    -------
    list of int or None
        Bytes per case; None where the case failed (an exception, or the
        process was killed, e.g. out of memory), with a warning naming it.

    Raises
    ------
    ValueError
        If ``target`` is not of the form ``"module:function"``.

    Examples
    --------
    >>> from llmref.bench.memory import peak_memory
    >>> cases = [{"implementation": "sdpa", "seq_len": 64}]
    >>> [p > 0 for p in peak_memory("llmref.bench.memory:attention_call", cases)]
    [True]
    """
    import warnings

    if ":" not in target:
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    groups = [[c] for c in cases] if isolate else [list(cases)]
    env = {**os.environ, **_CHILD_ENV}
    code = "from llmref.bench.memory import _child; _child()"
    found: list[int | None] = []
    for group in groups:
        if not group:
            continue
        job = {
            "target": target,
            "cases": [dict(c) for c in group],
            "device": str(resolve_device(device)),
            "warmup": int(warmup),
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
            )
            stdout, stderr, code_ = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout
            stdout = out.decode() if isinstance(out, bytes) else (out or "")
            stderr, code_ = f"timed out after {timeout} s", None
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        for case, line in zip(group, lines, strict=False):
            if line["error"] is not None:
                warnings.warn(f"peak memory of {case} failed: {line['error']}", stacklevel=2)
            found.append(line["peak_bytes"])
        for case in group[len(lines) :]:
            tail = stderr.strip().splitlines()[-1:] or [""]
            warnings.warn(
                f"peak memory of {case} failed: process exited with {code_} ({tail[0]})",
                stacklevel=2,
            )
            found.append(None)
    return found


# -- the attention cases ------------------------------------------------------------------


def attention_call(
    implementation: str,
    seq_len: int,
    *,
    mask: str = "causal",
    window: int = WINDOW,
    device: str | torch.device = "cpu",
    batch: int = BATCH,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
) -> Callable[[], torch.Tensor]:
    """Build one attention call of the variants benchmark; return it as a zero-argument callable.

    Inputs are float32 ``q, k, v`` of shape ``(batch, heads, seq_len, head_dim)``
    drawn with seed :data:`~llmref.bench.cases.SEED` (the setup of
    :mod:`llmref.bench.cases`). Masks are built here, outside the call;
    ``"flex-compiled"`` is compiled here too, by one call.

    Parameters
    ----------
    implementation : str
        A key of :data:`IMPLEMENTATIONS`.
    seq_len : int
        Sequence length ``T`` (self-attention, ``S = T``).
    mask : {"causal", "sliding_window"}, default "causal"
        Causal attention, or a causal sliding window of ``window`` keys.
        ``"sdpa"``, ``"naive"`` and ``"flex"`` get the window as a dense
        boolean ``(T, T)`` mask; ``"chunked"`` gets the same mask plus
        ``is_causal=True``, which lets it skip the tiles above the diagonal;
        ``"flex-compiled"`` gets it as a ``mask_mod`` (its block mask is built
        inside each call). Linear attention has no windowed form.
    window : int, default :data:`WINDOW`
        Keys each query sees with ``mask="sliding_window"``.
    device : str or torch.device, default "cpu"
        Where to run; the callable synchronizes before returning.
    batch, heads, head_dim : int
        Shape of the inputs.

    Returns
    -------
    callable
        Runs the attention once and returns its ``(B, H, T, D)`` output.

    Raises
    ------
    ValueError
        For an unknown implementation or mask, or linear attention with a
        sliding window.

    Examples
    --------
    >>> from llmref.bench.memory import attention_call
    >>> run = attention_call("chunked", 128, mask="sliding_window", window=16)
    >>> tuple(run().shape)
    (1, 8, 128, 64)
    """
    import torch.nn.functional as F

    from ..attention import (
        as_mask_mod,
        chunked_attention,
        flex_attention,
        linear_attention,
        naive_attention,
        sliding_window_mask,
    )

    if implementation not in IMPLEMENTATIONS:
        known = ", ".join(map(repr, IMPLEMENTATIONS))
        raise ValueError(f"implementation must be one of {known}, got {implementation!r}")
    if mask not in ("causal", "sliding_window"):
        raise ValueError(f"mask must be 'causal' or 'sliding_window', got {mask!r}")
    if implementation == "linear" and mask != "causal":
        raise ValueError("linear attention has no sliding-window form; use mask='causal'")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(SEED)
    shape = (batch, heads, seq_len, head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dev) for _ in range(3))
    causal = mask == "causal"
    dense = None if causal else sliding_window_mask(seq_len, window=window, device=dev)
    sync = synchronizer(dev)

    def call() -> torch.Tensor:
        if implementation == "sdpa":
            if dense is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
        if implementation == "naive":
            return naive_attention(q, k, v, is_causal=causal, mask=dense)
        if implementation == "chunked":
            return chunked_attention(q, k, v, is_causal=True, mask=dense)
        if implementation == "flex":
            return flex_attention(q, k, v, is_causal=causal, mask=dense)
        if implementation == "flex-compiled":
            mod = None if causal else as_mask_mod("sliding_window", window=window)
            return flex_attention(q, k, v, is_causal=causal, mask_mod=mod, compiled=True)
        return linear_attention(q, k, v, is_causal=True)

    def run() -> torch.Tensor:
        out = call()
        sync()
        return out

    if implementation == "flex-compiled":
        run()  # compile for this shape now, outside any measurement
    return run


# -- the sweep and its JSON ---------------------------------------------------------------


@dataclass(frozen=True)
class MemoryRecord:
    """One peak-memory measurement of an attention case.

    Parameters
    ----------
    group : str
        ``"memory-causal"`` or ``"memory-sliding_window"``.
    implementation : str
        A key of :data:`IMPLEMENTATIONS`.
    seq_len : int
        Sequence length ``T``.
    peak_bytes : int or None
        Peak extra memory of one call; None if the case failed.
    device : str
        Device it ran on.
    """

    group: str
    implementation: str
    seq_len: int
    peak_bytes: int | None
    device: str = "cpu"


def memory_sweep(
    name: str = "default",
    *,
    device: str | torch.device = "cpu",
    implementations: Sequence[str] | None = None,
    seq_lens: Sequence[int] | None = None,
    isolate: bool = True,
    progress: Callable[[str], object] | None = None,
) -> list[MemoryRecord]:
    """Measure the peak memory of every case of a sweep with :func:`peak_memory`.

    Parameters
    ----------
    name : str, default "default"
        A key of :data:`MEMORY_SWEEPS`.
    device : str or torch.device, default "cpu"
        Device to run on.
    implementations : sequence of str, optional
        Only these (default: the sweep's).
    seq_lens : sequence of int, optional
        Only these lengths (default: the sweep's).
    isolate : bool, default True
        One process per case; with False one process for the whole sweep
        (the high-water mark is reset before each case).
    progress : callable, optional
        Called with one line of text per measured case.

    Returns
    -------
    list of MemoryRecord

    Raises
    ------
    ValueError
        If ``name`` is not a known sweep.
    """
    if name not in MEMORY_SWEEPS:
        raise ValueError(f"name must be one of {sorted(MEMORY_SWEEPS)}, got {name!r}")
    spec = MEMORY_SWEEPS[name]
    caps: Mapping[str, int] = spec.get("max_seq_len", {})
    impls = list(spec["implementations"] if implementations is None else implementations)
    lens = sorted(spec["seq_lens"] if seq_lens is None else seq_lens)
    dev = str(resolve_device(device))
    cases = [
        {"implementation": impl, "seq_len": t, "mask": mask}
        for mask in spec["masks"]
        for impl in impls
        if impl != "linear" or mask == "causal"
        for t in lens
        if t <= caps.get(impl, t)
    ]
    records = []
    if isolate:
        peaks: list[int | None] = []
        for case in cases:  # one process per case, reporting as it goes
            peaks += peak_memory(_TARGET, [case], device=dev, isolate=True)
            _report(progress, case, peaks[-1])
    else:
        peaks = peak_memory(_TARGET, cases, device=dev, isolate=False)
        for case, peak in zip(cases, peaks, strict=True):
            _report(progress, case, peak)
    for case, peak in zip(cases, peaks, strict=True):
        group = f"memory-{case['mask']}"
        records.append(MemoryRecord(group, case["implementation"], case["seq_len"], peak, dev))
    return records


def _report(
    progress: Callable[[str], object] | None, case: Mapping[str, Any], peak: int | None
) -> None:
    if progress is not None:
        shown = "failed" if peak is None else f"{peak / 2**20:10.1f} MiB"
        progress(
            f"memory-{case['mask']:16s} {case['implementation']:14s} "
            f"T={case['seq_len']:6d} peak {shown}"
        )


def load_memory_json(path: str | Path) -> list[MemoryRecord]:
    """Read the records of a JSON file written by ``python -m llmref.bench.memory``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of MemoryRecord

    Raises
    ------
    ValueError
        If the file is not such a document.
    """
    with Path(path).open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or data.get("kind") != "llmref-peak-memory":
        raise ValueError(f"not an llmref peak-memory JSON document: {path}")
    return [MemoryRecord(**rec) for rec in data["records"]]


def _document(records: Sequence[MemoryRecord], sweep: str, isolate: bool) -> dict[str, Any]:
    import platform

    return {
        "kind": "llmref-peak-memory",
        "datetime": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sweep": sweep,
        "method": (
            "peak extra memory of one call: RSS high-water mark minus RSS before it "
            "(CPU, /proc/self/clear_refs), or the device allocator's peak; fresh process "
            f"{'per case' if isolate else 'for the sweep'}, "
            f"MALLOC_MMAP_THRESHOLD_={_MMAP_THRESHOLD}, one warmup call"
        ),
        "setup": {
            "batch": BATCH,
            "heads": HEADS,
            "head_dim": HEAD_DIM,
            "dtype": "float32",
            "window": WINDOW,
            "seed": SEED,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
        "records": [asdict(r) for r in records],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m llmref.bench.memory [--sweep NAME] [--device D] [--out PATH]``.

    Measures :func:`memory_sweep` and writes the JSON (default
    ``results/attention_memory.json`` under the repository root, next to the
    pytest-benchmark files), printing one line per case.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if any case failed.
    """
    from .paths import results_dir

    parser = argparse.ArgumentParser(
        prog="python -m llmref.bench.memory",
        description="Peak memory of the attention backends against sequence length.",
    )
    parser.add_argument("--sweep", default="default", choices=sorted(MEMORY_SWEEPS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--implementations", nargs="*", default=None)
    parser.add_argument("--seq-lens", nargs="*", type=int, default=None)
    parser.add_argument(
        "--shared", action="store_true", help="one process for the whole sweep, not one per case"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    out = args.out
    if out is None:
        base = results_dir()
        out = (base if base is not None else Path("results")) / "attention_memory.json"
    records = memory_sweep(
        args.sweep,
        device=args.device,
        implementations=args.implementations,
        seq_lens=args.seq_lens,
        isolate=not args.shared,
        progress=print,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = _document(records, args.sweep, not args.shared)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(out)
    return 1 if any(r.peak_bytes is None for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
