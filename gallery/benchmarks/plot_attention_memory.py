"""
Attention peak memory
=====================

How much memory does one attention call need as the sequence grows? The naive
reference materialises the ``(B, H, T, T)`` scores, their exponentials and the
weights, so it grows like ``T**2``; the FlashAttention-style kernels --
PyTorch's fused SDPA and llmref's :func:`llmref.attention.chunked_attention`
-- hold one tile of scores at a time and grow like ``T``, as does
:func:`llmref.attention.linear_attention`, which never forms scores.

Measuring this on a CPU takes care: :mod:`tracemalloc` does not see PyTorch's
allocations at all. :mod:`llmref.bench.memory` reads the operating system's
resident-set high-water mark around one call, in a fresh Python process whose
allocator returns every large block to the system when it is freed (see
:func:`llmref.bench.memory.peak_memory`). The number is the call's peak
*extra* memory, its output included; the inputs already exist.

By default this script measures a reduced sweep -- four backends, causal
only, ``T`` up to 2048, all cases in one fresh process -- to stay within the
time budget of a documentation build, so the page does not depend on what ran
before it. To plot the full sweep (written by ``python -m llmref.bench.memory``
into ``results/attention_memory.json``: both masks, five backends, up to
``T = 8192``), name the file explicitly:
``LLMREF_MEMORY_JSON=results/attention_memory.json tox -e docs``.
"""

# %%
# Measure, or load a named results file
# -------------------------------------

import matplotlib.pyplot as plt

from llmref.bench import cases
from llmref.bench.memory import load_memory_json, memory_sweep
from llmref.bench.paths import MEMORY_JSON_ENV, explicit_results_file

json_path = explicit_results_file(MEMORY_JSON_ENV)
if json_path is not None:
    records = load_memory_json(json_path)
    source = f"JSON {json_path.name} (python -m llmref.bench.memory)"
else:
    records = memory_sweep("quick", isolate=False, progress=print)
    source = "reduced sweep measured by this script"
records = [r for r in records if r.peak_bytes is not None]
print("Source:", source)
print(f"Setup: float32, B={cases.BATCH}, H={cases.HEADS}, D={cases.HEAD_DIM}, self-attention")

# %%
# Peak memory against sequence length
# -----------------------------------
# Log-log axes: a line of slope 2 grows like ``T**2``, slope 1 like ``T``. The
# dashed grey line is the size of *one* float32 ``(1, 8, T, T)`` matrix, the
# dotted one the size of the output ``(1, 8, T, 64)``, which every backend must
# allocate.

MiB = 2**20
groups = sorted({r.group for r in records})
colours = {impl: f"C{i}" for i, impl in enumerate(sorted({r.implementation for r in records}))}
fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.8), squeeze=False)
for ax, group in zip(axes[0], groups, strict=True):
    recs = [r for r in records if r.group == group]
    lens = sorted({r.seq_len for r in recs})
    for impl in sorted({r.implementation for r in recs}):
        pts = sorted((r.seq_len, r.peak_bytes / MiB) for r in recs if r.implementation == impl)
        ax.loglog(*zip(*pts, strict=True), "o-", color=colours[impl], label=impl)
    B, H, D = cases.BATCH, cases.HEADS, cases.HEAD_DIM
    ax.loglog(
        lens, [4 * B * H * t * t / MiB for t in lens], "--", color="0.6", label="one T x T matrix"
    )
    ax.loglog(lens, [4 * B * H * t * D / MiB for t in lens], ":", color="0.6", label="the output")
    ax.set_xticks(lens, [str(t) for t in lens])
    ax.minorticks_off()
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak extra memory of one call (MiB)")
    ax.set_title(group.removeprefix("memory-").replace("_", " "))
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The numbers
# -----------
# MiB per call, and each backend's peak relative to the naive reference at the
# same ``T``.

for group in groups:
    recs = {(r.implementation, r.seq_len): r.peak_bytes for r in records if r.group == group}
    impls = sorted({i for i, _ in recs})
    lens = sorted({t for _, t in recs})
    print(f"\n{group}")
    print("     T " + "".join(f"{i:>15s}" for i in impls))
    for t in lens:
        row = f"{t:6d} "
        for i in impls:
            b = recs.get((i, t))
            naive = recs.get(("naive", t))
            ratio = f" ({b / naive:.3f})" if b is not None and naive else ""
            row += f"{'-' if b is None else f'{b / MiB:.1f}' + ratio:>15s}"
        print(row)

# %%
# Reading the numbers
# -------------------
# The naive reference holds several ``T x T`` buffers at once (the scores, their
# exponentials and the weights): about three times the dashed line. SDPA's
# fused CPU kernel and ``chunked_attention`` need little more than their output
# plus a few tiles (``chunked_attention`` works on 512 x 512 tiles per head by
# default, 8 MiB per buffer here), and linear attention keeps per-chunk states
# that grow linearly with ``T``.
#
# Everything a backend allocates *inside* the call counts, and with a sliding
# window (in the full sweep) that shows: SDPA is handed the window as a dense
# boolean ``T x T`` mask, built before the call, but its CPU kernel turns it
# into a float mask of the same shape inside the call (256 MiB at
# ``T = 8192``), so its peak grows like ``T**2`` again. llmref's FlexAttention
# backend builds its block mask inside every call by evaluating the
# ``mask_mod`` for every batch, head, query and key, and that, not the tiled
# kernel, sets its peak; a block mask built once and reused avoids it.
