"""
Attention benchmark
===================

How long does causal self-attention take as the sequence grows, and what does
llmref add on top of PyTorch? This example plots the attention benchmark of
``tox -e bench`` (``benchmarks/bench_attention.py``), which compares

* the functions: :func:`torch.nn.functional.scaled_dot_product_attention`
  (SDPA) called directly, :func:`llmref.attention.attention` with
  ``backend="auto"``, and every other backend registered in
  :data:`llmref.attention.ATTENTION` — the naive reference
  :func:`~llmref.attention.naive_attention`, and the others registered there
  (such as the tiled FlashAttention algorithm in plain PyTorch) — on
  ``q, k, v`` of shape ``(1, 8, T, 64)``;
* the layers: :class:`llmref.attention.MultiHeadAttention` and
  :class:`torch.nn.MultiheadAttention` with the same weights, on ``x`` of
  shape ``(1, T, 512)``,

all in float32 with a causal mask. If the JSON written by ``tox -e bench``
(``results/bench.json`` at the repository root) exists, its numbers
are plotted; otherwise a reduced sweep of the *same cases* from
:mod:`llmref.bench.cases` is timed right here, with fewer sequence lengths and
repeats.
"""

# %%
# Load the benchmark results, or measure a reduced sweep
# ------------------------------------------------------
# sphinx-gallery runs this script from its own folder, so the repository root
# is found by searching upwards (or from ``$LLMREF_ROOT``).

import matplotlib.pyplot as plt

from llmref.bench import cases, measure, results
from llmref.bench.paths import find_project_root
from llmref.bench.plot import plot_group
from llmref.bench.report import group_table

root = find_project_root()
json_path = None if root is None else root / "results" / "bench.json"

records: list[results.Record] = []
if json_path is not None and json_path.is_file():
    records = [r for r in results.load_json(json_path) if r.group.startswith("attention-")]
if records:
    when = records[0].datetime or "unknown time"
    source = f"pytest-benchmark JSON {json_path} (measured {when})"
else:
    sweep = cases.sweep("quick")
    print(f"no benchmark JSON found; timing the reduced 'quick' sweep ({len(sweep)} cases)")
    records = measure.run_cases(sweep, rounds=3, warmup=1, max_time=0.2, progress=print)
    source = "reduced sweep measured by this script with llmref.bench.measure"
print("Source:", source)
print(
    f"Setup: {cases.DTYPE}, B={cases.BATCH}, H={cases.HEADS}, D={cases.HEAD_DIM}, causal, "
    f"device {', '.join(sorted({r.device for r in records}))}"
)

# %%
# The attention functions
# -----------------------
# Left: median time of one call against the sequence length ``T``, both on
# log scales; the dashed line grows like ``T**2``, the cost of exact attention.
# Right: each implementation's time divided by SDPA's at the same ``T``.
#
# SDPA on the CPU runs a fused FlashAttention-style kernel that never forms
# the ``T × T`` score matrix and skips the blocks the causal mask removes.
# ``naive`` materialises the scores, the mask and the softmax as full
# ``(1, 8, T, T)`` tensors — 128 MiB per tensor at ``T = 2048`` — so it falls
# further behind as ``T`` grows; it is the *reference*, not the fast path, and
# the default sweep stops it at ``T = 2048``. The other registered backends
# are exact too but written for clarity in plain PyTorch (or, for ``flex``,
# run eagerly without :func:`torch.compile`), so they trail the fused kernel.
# ``llmref-auto`` dispatches to SDPA after validating its inputs, which costs
# a few microseconds per call: visible only at the shortest sequences.

plot_group(records, "attention-functional")
plt.show()

# %%
# The attention layers
# --------------------
# A full layer adds the input and output projections, whose cost grows like
# ``T`` (``T × 512 × 1536`` and ``T × 512 × 512`` multiply-adds), to the
# attention itself (``T**2``): at short sequences the projections dominate, at
# long ones the attention does.
#
# The two layers differ in *how* they attend. llmref's module calls SDPA with
# ``is_causal=True``, so it gets the fused causal kernel. PyTorch's module, in
# inference mode (``eval()``, no autograd) and with its default biases, takes
# its "fast path", ``torch._native_multi_head_attention``, which on the CPU
# does not use the ``is_causal`` hint: it multiplies out the full
# ``(1, 8, T, T)`` scores and applies a masked softmax — like ``naive`` above
# — so it falls behind as ``T`` grows. (Built with ``bias=False`` it skips the
# fast path and calls SDPA with ``is_causal=True`` too, and the two layers
# then run at about the same speed.)

plot_group(records, "attention-module")
plt.show()

# %%
# The numbers
# -----------
# Median milliseconds per call, and the ratio to each group's baseline
# (below 1 is faster). ``python -m llmref.bench.report results`` writes the
# same tables, for every group, into ``results/summary.md``.

for group in results.groups(records):
    print(f"{group} (baseline {results.baseline_of(records, group)})")
    print(group_table(records, group))
    print()
