"""Linear layers measured as a model runs them: weights streamed from memory, not cache.

Timing one 4096 x 4096 layer over and over flatters every quantized kernel: its 8-16 MB
of int4/int8 weights stay in a 32 MiB last-level cache while the 64 MB float32 weight
does not. Here each implementation cycles through a rotating set of *distinct* copies of
its weight that together hold at least :data:`LLC_MULTIPLE` times the last-level cache
(:func:`rotating_layers`), so every call reads its weight from DRAM, and the achieved
bytes per second are compared with the machine's measured read bandwidth
(:func:`read_bandwidth`). The single-weight, cache-resident time is kept alongside and
labelled as such.

``python -m llmref.bench.stream`` prints the table (see :func:`main`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..quant import QuantizedTensor, QuantLinear, quantize

__all__ = [
    "LLC_MULTIPLE",
    "StreamResult",
    "last_level_cache_bytes",
    "layer_bytes",
    "main",
    "measure_stream",
    "read_bandwidth",
    "rotating_layers",
]

LLC_MULTIPLE = 4
"""A rotating set holds at least this many times the last-level cache."""

_CLOCK: list[Callable[[], float]] = [time.perf_counter]
"""The clock of every timing here: wall time, or with ``--clock thread`` (one thread
only) the calling thread's CPU time, which a busy machine's preemptions do not inflate."""


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """Size of the largest CPU cache (Linux sysfs), else ``default``.

    Parameters
    ----------
    default : int, default 32 MiB
        Returned where sysfs does not say.

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> from llmref.bench.stream import last_level_cache_bytes
    >>> last_level_cache_bytes() > 0
    True
    """
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=default)


def read_bandwidth(nbytes: int | None = None, *, repeats: int = 7) -> float:
    """The machine's read bandwidth in bytes per second, as PyTorch's threads see it.

    Sums a float32 buffer of ``nbytes`` (default: 8 times the last-level cache, at
    least 256 MiB) with ``torch.sum`` on all of torch's threads and keeps the fastest
    of ``repeats`` passes (a pass reads every byte once from DRAM).

    Parameters
    ----------
    nbytes : int, optional
        Buffer size.
    repeats : int, default 7
        Timed passes after one warm-up.

    Returns
    -------
    float
        Bytes per second.

    Examples
    --------
    >>> from llmref.bench.stream import read_bandwidth
    >>> read_bandwidth(16 << 20, repeats=2) > 0
    True
    """
    nbytes = nbytes or max(256 << 20, 8 * last_level_cache_bytes())
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    best = math.inf
    clock = _CLOCK[0]
    for _ in range(repeats):
        t = clock()
        buf.sum()
        best = min(best, clock() - t)
    return nbytes / best


def layer_bytes(layer: nn.Module) -> int:
    """Bytes of the weight a layer reads per call (codes and scales; float weights).

    Parameters
    ----------
    layer : torch.nn.Module
        A :class:`~llmref.quant.QuantLinear` (its ``weight_*`` buffers) or an
        ``nn.Linear`` (its weight).

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from llmref.bench.stream import layer_bytes
    >>> layer_bytes(torch.nn.Linear(64, 32, bias=False))
    8192
    """
    if isinstance(layer, QuantLinear):
        return sum(b.numel() * b.element_size() for b in layer.buffers())
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.numel() * weight.element_size()


def rotating_layers(
    make: Callable[[], nn.Module], *, total_bytes: int | None = None, minimum: int = 2
) -> list[nn.Module]:
    """Distinct copies of one layer, together at least ``total_bytes`` of weights.

    Parameters
    ----------
    make : callable
        Returns the layer; it is called once and the copies get their own storage
        (same values, different memory, so no copy is in cache when its turn comes).
    total_bytes : int, optional
        Default: :data:`LLC_MULTIPLE` times :func:`last_level_cache_bytes`.
    minimum : int, default 2
        At least this many copies.

    Returns
    -------
    list of torch.nn.Module

    Examples
    --------
    >>> import torch
    >>> from llmref.bench.stream import rotating_layers
    >>> len(rotating_layers(lambda: torch.nn.Linear(64, 64), total_bytes=50_000))
    4
    """
    first = make()
    total_bytes = total_bytes or LLC_MULTIPLE * last_level_cache_bytes()
    count = max(minimum, -(-total_bytes // max(1, layer_bytes(first))))
    layers = [first]
    for _ in range(count - 1):
        layers.append(_copy(first))
    return layers


def _copy(layer: nn.Module) -> nn.Module:
    if isinstance(layer, QuantLinear):
        qw = layer.qweight
        tensors = {k: v.clone() for k, v in qw.tensors.items()}
        qt = QuantizedTensor(qw.fmt, qw.shape, qw.dtype, tensors, qw.options)
        return QuantLinear(qt, layer.bias, backend=layer.backend)
    assert isinstance(layer, nn.Linear)
    clone = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    clone.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    return clone.requires_grad_(False)


@dataclass(frozen=True)
class StreamResult:
    """One implementation timed on a rotating set and on one cache-resident weight.

    Parameters
    ----------
    name : str
        The implementation.
    tokens : int
        Rows of activations ``M``.
    layer_bytes : int
        Weight bytes read per call.
    layers : int
        Copies in the rotating set.
    stream_s : float
        Median seconds per call, streaming (each call a different copy).
    cached_s : float
        Median seconds per call on one weight (cache-resident when it fits).

    Examples
    --------
    >>> from llmref.bench.stream import StreamResult
    >>> r = StreamResult("fp32", 1, 64 << 20, 2, 4e-3, 3e-3)
    >>> round(r.stream_gbps, 1)
    16.8
    """

    name: str
    tokens: int
    layer_bytes: int
    layers: int
    stream_s: float
    cached_s: float

    @property
    def stream_gbps(self) -> float:
        """Weight bytes per second while streaming, in GB/s (1e9 bytes)."""
        return self.layer_bytes / self.stream_s / 1e9


def _median_time(calls: Sequence[Callable[[], object]], rounds: int) -> float:
    for call in calls[: min(len(calls), 2)]:
        call()  # warm up (kernels repack on first use)
    times = []
    clock = _CLOCK[0]
    for i in range(rounds):
        call = calls[i % len(calls)]
        t = clock()
        call()
        times.append(clock() - t)
    return statistics.median(times)


def measure_stream(
    name: str,
    make: Callable[[], nn.Module] | None,
    tokens: int,
    *,
    in_features: int,
    rounds: int | None = None,
    total_bytes: int | None = None,
    seed: int = 0,
    layers: Sequence[nn.Module] | None = None,
) -> StreamResult:
    """Time one implementation on a rotating set and on its first weight alone.

    Parameters
    ----------
    name : str
        Label of the result.
    make : callable or None
        Returns the layer (see :func:`rotating_layers`); None with ``layers``.
    tokens : int
        Rows of the input ``x`` of shape ``(tokens, in_features)``.
    in_features : int
        The layer's input size.
    rounds : int, optional
        Timed calls of each kind; default three passes over the rotating set (at
        least 24).
    total_bytes : int, optional
        See :func:`rotating_layers`.
    seed : int, default 0
        Seed of the input.
    layers : sequence of torch.nn.Module, optional
        A rotating set built before (then ``make`` and ``total_bytes`` are unused).

    Returns
    -------
    StreamResult

    Examples
    --------
    >>> import torch
    >>> from llmref.bench.stream import measure_stream
    >>> r = measure_stream("fp32", lambda: torch.nn.Linear(64, 64), 1, in_features=64,
    ...                    total_bytes=1 << 16, rounds=4)
    >>> r.layers, r.tokens
    (4, 1)
    """
    if layers is None:
        if make is None:
            raise ValueError("measure_stream needs make or layers, got neither")
        layers = rotating_layers(make, total_bytes=total_bytes)
    x = torch.randn(tokens, in_features, generator=torch.Generator().manual_seed(seed))
    rounds = rounds or max(24, 3 * len(layers))
    with torch.inference_mode():
        calls = [lambda layer=layer: layer(x) for layer in layers]
        stream = _median_time(calls, rounds)
        cached = _median_time(calls[:1], rounds)
    return StreamResult(name, tokens, layer_bytes(layers[0]), len(layers), stream, cached)


def _float_linear(n: int, k: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(k, n, bias=False).requires_grad_(False)

    return make


def _quant_linear(
    n: int, k: int, fmt: str, backend: str, **options: object
) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
        return QuantLinear(quantize(w, fmt, **options), backend=backend)

    return make


IMPLEMENTATIONS: dict[str, tuple[str, str, dict[str, object]]] = {
    "int4 g128 (auto)": ("int4", "auto", {"group_size": 128}),
    "int4 g32 (auto)": ("int4", "auto", {"group_size": 32}),
    "q4_1 (auto)": ("q4_1", "auto", {}),
    "int8 (auto)": ("int8", "auto", {}),
    "q8_0 (auto)": ("q8_0", "auto", {}),
    "int4 g128 (int4_tinygemm_bf16)": ("int4", "int4_tinygemm_bf16", {"group_size": 128}),
    "int8 (int8_weight_bf16)": ("int8", "int8_weight_bf16", {}),
    "int4 g128 (int4_w4a8)": ("int4", "int4_w4a8", {"group_size": 128}),
}
"""The quantized layers :func:`main` measures: label -> (format, backend, options)."""


def main(argv: Sequence[str] | None = None) -> list[StreamResult]:
    """Print streaming and cache-resident times of float32 and quantized layers.

    ``python -m llmref.bench.stream [--size 4096] [--tokens 1 128] [--only int4 ...]``.
    The first lines name the machine (CPU model and flags, threads, load average) and
    the measured read bandwidth; each row gives the streaming median, the achieved
    GB/s and its share of the read bandwidth, the speed-up over float32 ``nn.Linear``
    on the same kind of stream, and the cache-resident speed-up.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    list of StreamResult
    """
    from .._cpu import machine_info
    from ..quant.kernels import kernel_status

    parser = argparse.ArgumentParser(prog="python -m llmref.bench.stream")
    parser.add_argument("--size", type=int, default=4096, help="N = K of the layer")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--only", nargs="*", default=None, help="labels containing any of these")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--isa",
        nargs="+",
        default=["native"],
        help="ISA paths of llmref's kernels to measure side by side: native, avx512, avx2",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="thread: the calling thread's CPU time (needs --threads 1), steady on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        parser.error("--clock thread times one thread only: add --threads 1")
    _CLOCK[0] = time.thread_time if args.clock == "thread" else time.perf_counter
    info = machine_info()
    print(info.line())
    print(f"load average {info.load_average}; clock: {args.clock}")
    status = kernel_status()
    print("kernels: " + ", ".join(f"{k}: {v.detail}" for k, v in status.items()))
    bandwidth = read_bandwidth()
    llc = last_level_cache_bytes()
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s (torch.sum, "
        f"{torch.get_num_threads()} threads); last-level cache {llc >> 20} MiB; "
        f"rotating sets >= {LLC_MULTIPLE * llc >> 20} MiB"
    )
    n = k = args.size
    sets: dict[str, list[nn.Module]] = {"float32 nn.Linear": rotating_layers(_float_linear(n, k))}
    saved = os.environ.get("LLMREF_CPU_ISA")
    try:
        for isa in args.isa:
            if isa == "native":
                os.environ.pop("LLMREF_CPU_ISA", None)
            else:
                os.environ["LLMREF_CPU_ISA"] = isa
            for label, (fmt, backend, options) in IMPLEMENTATIONS.items():
                if args.only and not any(s in label for s in args.only):
                    continue
                if isa != args.isa[0] and backend != "auto":
                    continue  # PyTorch's kernels do not depend on LLMREF_CPU_ISA
                layers = rotating_layers(_quant_linear(n, k, fmt, backend, **options))
                try:
                    with torch.inference_mode():
                        for layer in layers:  # pack under this ISA path, outside the timing
                            layer(torch.zeros(1, k))
                except ValueError as err:  # a kernel named explicitly is unavailable here
                    print(f"skipped {label} [{isa}]: {err}")
                    continue
                kernel = layers[0].kernel.name  # type: ignore[union-attr]
                sets[f"{label} {kernel} [{isa}]"] = layers
    finally:
        if saved is None:
            os.environ.pop("LLMREF_CPU_ISA", None)
        else:
            os.environ["LLMREF_CPU_ISA"] = saved
    results = []
    for tokens in args.tokens:
        print(f"\nM = {tokens}, {n} x {k}:")
        print(
            f"{'layer':48} {'layers':>6} {'stream ms':>10} {'GB/s':>6} {'% bw':>5} "
            f"{'vs fp32':>8} {'cached vs fp32':>15}"
        )
        base = None
        for label, layers in sets.items():
            r = measure_stream(label, None, tokens, in_features=k, layers=layers)
            base = base or r
            results.append(r)
            _row(r, base, bandwidth)
    return results


def _row(r: StreamResult, base: StreamResult, bandwidth: float) -> None:
    print(
        f"{r.name:48} {r.layers:>6} {r.stream_s * 1e3:>10.3f} {r.stream_gbps:>6.1f} "
        f"{100 * r.stream_gbps * 1e9 / bandwidth:>4.0f}% {base.stream_s / r.stream_s:>7.2f}x "
        f"{base.cached_s / r.cached_s:>14.2f}x"
    )


if __name__ == "__main__":
    main()
