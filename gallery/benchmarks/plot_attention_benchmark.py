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

all in float32 with a causal mask. By default this script times a reduced
sweep of the *same cases* from :mod:`llmref.bench.cases` right here, with fewer
sequence lengths and repeats, so the page is the same whether or not the
benchmarks ran first. To plot a full run instead, name its JSON explicitly:
``LLMREF_BENCH_JSON=results/bench.json tox -e docs``.
"""

# %%
# Measure a reduced sweep, or load a named results file
# -----------------------------------------------------

import matplotlib.pyplot as plt

from llmref.bench import cases, load_json, measure
from llmref.bench.paths import BENCH_JSON_ENV, explicit_results_file
from llmref.bench.plot import plot_group
from llmref.bench.report import group_table
from llmref.bench.results import Record, baseline_of, groups

json_path = explicit_results_file(BENCH_JSON_ENV)
records: list[Record] = []
if json_path is not None:
    loaded = load_json(json_path)
    for skipped in loaded.skipped:
        print(f"skipped {skipped.what}: {skipped.reason}")
    records = [r for r in loaded.records if r.group.startswith("attention-")]
    if not records:
        raise ValueError(f"{BENCH_JSON_ENV}={json_path} holds no attention results")
    source = f"pytest-benchmark JSON {json_path.name} (measured {records[0].datetime})"
else:
    sweep = cases.sweep("quick")
    print(f"timing the reduced 'quick' sweep ({len(sweep)} cases)")
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
# log scales, with the interquartile range of the timed calls shaded; the
# dashed line grows like ``T**2``, the cost of exact attention. Right: each
# implementation's time divided by SDPA's at the same ``T``.
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

for group in groups(records):
    print(f"{group} (baseline {baseline_of(records, group)})")
    print(group_table(records, group))
    print()
