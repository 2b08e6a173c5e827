"""
Perplexity against bits per weight: the Pareto front of post-training quantization
==================================================================================

Every post-training method buys accuracy with bits: more bits per weight
(codes plus scales, zero points and input scales) cost memory and bandwidth,
fewer cost perplexity. This example plots the results table of the theory
pages — SmolLM2-135M's perplexity on :func:`llmref.quant.evaluation_text` and
all-MiniLM-L6-v2's embedding cosine with the float model, for every method of
:data:`llmref.quant.METHODS` applied with :func:`llmref.quant.quantize_model`
— against the bits per weight each row stores, and marks the rows that no
other row beats on both axes.

The table is ``docs/theory/quant/ptq-results.csv``, written by::

    python benchmarks/ptq_table.py

(about 20 minutes on 2 CPU cores; its ``.md`` twin is the table on the theory
page). Running the methods here would take too long for a docs build, so this
example only reads the file.
"""

import csv
import math

import matplotlib.pyplot as plt

from llmref.bench.paths import find_project_root

root = find_project_root()
table = None if root is None else root / "docs" / "theory" / "quant" / "ptq-results.csv"
rows = []
if table is not None and table.exists():
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
else:
    print(f"{table} not found: run `python benchmarks/ptq_table.py` to produce it")


def number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


# %%
# Reading the rows
# ----------------
# A row's label is ``"<method> int<bits> <group>"`` (``"rtn int4 g64"``,
# ``"gptq int3 per channel"``), ``"nf4 g64"``, ``"smoothquant W8A8"`` or
# ``"float32"``. The float model is drawn as a horizontal line: at 32 bits per
# weight it would squash every other point into a corner.

METHOD_COLOURS = {
    "rtn": "tab:gray",
    "gptq": "tab:blue",
    "awq": "tab:orange",
    "hqq": "tab:green",
    "nf4": "tab:purple",
    "smoothquant": "tab:red",
    "llm_int8": "tab:brown",
}
MARKERS = {"per channel": "s", "W8A8": "D"}


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats in both bits and quality."""
    sign = -1 if higher_is_better else 1
    front = []
    for i, (b, q) in enumerate(points):
        dominated = any(
            b2 <= b and sign * q2 <= sign * q and (b2, q2) != (b, q)
            for j, (b2, q2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def draw(ax, metric: str, bits: str, ylabel: str, higher_is_better: bool, key_at) -> None:
    """One panel; the Pareto rows are numbered on the plot and named in a key at
    ``key_at`` (axes fraction), since their labels would overlap at the points."""
    labelled, points, base = [], [], math.nan
    for row in rows:
        value, bpw = number(row[metric]), number(row[bits])
        if math.isnan(value) or math.isnan(bpw):
            continue  # a row that failed or was not run
        if row["method"] == "float32":
            base = value
            continue
        labelled.append(row["method"])
        points.append((bpw, value))
    for label, (bpw, value) in zip(labelled, points, strict=True):
        method = label.split()[0]
        marker = next((m for key, m in MARKERS.items() if key in label), "o")
        filled = "int3" not in label
        ax.plot(
            bpw,
            value,
            marker,
            ms=7,
            color=METHOD_COLOURS.get(method, "k"),
            mfc=METHOD_COLOURS.get(method, "k") if filled else "none",
        )
    front = pareto(points, higher_is_better)
    if front:
        ax.plot(*zip(*(points[i] for i in front), strict=True), "k--", lw=1, label="Pareto front")
        for n, i in enumerate(front, start=1):
            ax.annotate(str(n), points[i], fontsize=7, xytext=(3, 3), textcoords="offset points")
        key = "\n".join(f"{n}  {labelled[i]}" for n, i in enumerate(front, start=1))
        ax.text(
            *key_at,
            "Pareto front\n" + key,
            transform=ax.transAxes,
            fontsize=7,
            va="top",
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
        )
    if not math.isnan(base):
        ax.axhline(base, color="k", lw=1, label="float32")
    ax.set(xlabel="bits per weight (quantized linear layers)", ylabel=ylabel)
    ax.grid(alpha=0.3)


# %%
# The plot
# --------
# Filled markers are 4-bit rows (and the 8-bit W8A8 ones), hollow ones 3-bit;
# squares are per-channel scales, circles groups, diamonds the 8-bit W8A8
# methods; the key below the plots says the same. Perplexity is on a
# log scale, because at 3 bits per channel some rows can be off by orders of
# magnitude.

if rows:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    draw(ax1, "smollm2_perplexity", "smollm2_bits_per_weight", "perplexity", False, (0.3, 0.97))
    ax1.set_yscale("log")
    ax1.set_title("SmolLM2-135M (lower is better)")
    draw(ax2, "minilm_cosine", "minilm_bits_per_weight", "cosine with float32", True, (0.3, 0.75))
    ax2.set_title("all-MiniLM-L6-v2 (higher is better)")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in METHOD_COLOURS.items()
    ]
    ax1.legend(handles=handles, fontsize=7, loc="upper right", title="method", title_fontsize=7)
    ax2.legend(fontsize=8, loc="lower right")
    # What the marker fill and shape say (the colour is the method, legend on the left).
    grey = "0.35"
    key = [
        plt.Line2D([], [], color=grey, marker="o", ls="", label="filled: 4 bits (8 for W8A8)"),
        plt.Line2D([], [], color=grey, marker="o", mfc="none", ls="", label="hollow: 3 bits"),
        plt.Line2D(
            [], [], color=grey, marker="o", ls="", label="circle: groups (g64, MiniLM g128)"
        ),
        plt.Line2D([], [], color=grey, marker="s", ls="", label="square: per-channel scales"),
        plt.Line2D([], [], color=grey, marker="D", ls="", label="diamond: W8A8"),
    ]
    fig.legend(handles=key, loc="lower center", ncol=len(key), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    plt.show()

# %%
# Reading the front: at a given size, the method on the front is the one to
# use; a method off the front is beaten by another that is both smaller and
# better. Things to look for: how far group-wise scales (a fraction of a bit
# per weight more) move each method towards the float line; whether the
# calibrated methods (GPTQ, AWQ) beat calibration-free HQQ and
# round-to-nearest at the same bits; and how much further apart the methods
# are at 3 bits than at 4. Keep in mind that SmolLM2's "float32" weights are
# a dequantized ``Q4_1`` checkpoint (see the theory page), and that these
# are single runs on one text.
