"""Measure the headline results shown on the landing page; write headlines.json.

Run from the repository root::

    python docs/_data/measure_headlines.py

It times, on this machine, in float32:

* exact attention, ``chunked_attention`` (FlashAttention's tiling and online
  softmax in PyTorch) against PyTorch's fused SDPA, causal, (B, H, T, D) =
  (1, 8, 2048, 64);
* one 4096 x 4096 linear layer at one token (M = 1): float32 ``nn.Linear``
  against llmref's int4 layer (groups of 128) with the exact ``auto`` kernel and
  with ``int4_w4a8`` (int8 activations);

each on one torch thread, as the median over interleaved repeats of the
calling thread's CPU time (``time.thread_time``; with one intra-op thread all the
work runs there) and of the wall time.  CPU time is what the landing page shows:
on a shared, loaded machine wall time mostly measures the other processes, CPU time
much less so (memory and cache contention still inflate it).  It also copies the
perplexities of SmolLM2-135M from ``docs/theory/quant/ptq-results.csv`` (with that
table's own provenance).  The JSON holds raw numbers; the landing page's
``llmref-headlines`` directive (docs/_ext/llmref_landing.py) turns them into ratios
at build time.  The machine line, load average and date are written with them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from llmref._cpu import machine_info  # noqa: E402
from llmref.attention import attention, chunked_attention  # noqa: E402
from llmref.quant import QuantLinear  # noqa: E402

# The CPU clock: the calling thread's with one torch thread, the whole process's otherwise
# (then it sums the CPU time of all threads and is not comparable with wall time).
CLOCK = time.thread_time


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, inner: int = 1
) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per call of each function, the functions taking turns."""
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (and first-call compilation)
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = CLOCK(), time.perf_counter()
            for _ in range(inner):
                fn()
            cpu[name].append((CLOCK() - c0) / inner)
            wall[name].append((time.perf_counter() - w0) / inner)
    return {
        "cpu_seconds": {name: statistics.median(t) for name, t in cpu.items()},
        "wall_seconds": {name: statistics.median(t) for name, t in wall.items()},
    }


def measure_attention() -> dict[str, object]:
    torch.manual_seed(0)
    shape = (1, 8, 2048, 64)
    q, k, v = (torch.randn(shape) for _ in range(3))
    with torch.inference_mode():
        times = interleaved_medians(
            {
                "sdpa": lambda: attention(q, k, v, is_causal=True, backend="sdpa"),
                "chunked": lambda: chunked_attention(q, k, v, is_causal=True),
            },
            repeats=9,
        )
    return {"shape": list(shape), "dtype": "float32", "is_causal": True, **times}


def measure_int4() -> dict[str, object]:
    torch.manual_seed(0)
    n = 4096
    lin = nn.Linear(n, n, bias=False).eval().requires_grad_(False)
    x = torch.randn(1, n)
    layers = {
        "float32": lin,
        "int4_auto": QuantLinear.from_linear(lin, "int4", group_size=128, backend="auto"),
        "int4_w4a8": QuantLinear.from_linear(lin, "int4", group_size=128, backend="int4_w4a8"),
    }
    with torch.inference_mode():
        times = interleaved_medians(
            {name: (lambda layer=layer: layer(x)) for name, layer in layers.items()},
            repeats=21,
            inner=10,
        )
    return {
        "layer": [n, n],
        "tokens": 1,
        "group_size": 128,
        "kernels": {
            name: getattr(getattr(layer, "kernel", None), "name", "torch.nn.Linear")
            for name, layer in layers.items()
        },
        **times,
    }


def ptq_rows() -> dict[str, object]:
    path = ROOT / "docs" / "theory" / "quant" / "ptq-results.csv"
    with path.open(newline="") as fh:
        rows = {row["method"]: row for row in csv.DictReader(fh)}
    keep = ["float32", "rtn int4 g64", "gptq int4 g64", "awq int4 g64", "smoothquant W8A8"]
    date = subprocess.run(
        ["git", "log", "-1", "--format=%cs", "--", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "file": "docs/theory/quant/ptq-results.csv",
        "command": "python benchmarks/ptq_table.py --eval-tokens 2048",
        # As stated in docs/theory/quant/ptq-results.md, which ptq_table.py writes.
        "machine": "Python 3.11.7, torch 2.13.0 on x86_64 CPU (torch threads: 1)",
        "date": date or "unknown",
        "smollm2_perplexity": {m: float(rows[m]["smollm2_perplexity"]) for m in keep},
        "smollm2_bits_per_weight": {m: float(rows[m]["smollm2_bits_per_weight"]) for m in keep},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.thread_time if args.threads == 1 else time.process_time
    before = machine_info()
    results = {
        "attention": measure_attention(),
        "int4_linear": measure_int4(),
    }
    after = machine_info()
    data = {
        "command": "python docs/_data/measure_headlines.py",
        "date": datetime.date.today().isoformat(),
        "machine": after.line(),
        "load_average": {"start": before.load_average, "end": after.load_average},
        "timer": f"median CPU time per call ({CLOCK.__module__}.{CLOCK.__name__})",
        **results,
        "ptq": ptq_rows(),
    }
    out = HERE / "headlines.json"
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
