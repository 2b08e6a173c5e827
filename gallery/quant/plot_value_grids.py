"""
The value grid of every format
==============================

A format with ``b`` bits can represent ``2^b`` numbers; what it is good at
depends on *where* those numbers lie. This example draws the element grid of
every format registered in :data:`llmref.quant.FORMATS` (before scaling,
normalised to ``[-1, 1]``): evenly spaced integers, NF4's Gaussian quantiles,
and the floating-point grids that are dense near zero.
"""

import matplotlib.pyplot as plt

from llmref.quant import FORMATS, format_values

# %%
# One row per format, each grid divided by its largest magnitude. ``int`` is
# the variable-width integer format (drawn at 3 bits); the ggml formats are
# integer grids too.

names = [n for n in FORMATS if n != "int"]
fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(12, 0.42 * len(names) + 1.2), sharey=True)
for row, name in enumerate(names):
    v = format_values(name)
    v = v / v.abs().max()
    kind = FORMATS[name].kind
    color = {"int": "C0", "ggml": "C0", "codebook": "C2", "float": "C1", "mx": "C3"}[kind]
    ax.plot(v, [row] * len(v), "|", color=color, markersize=9, markeredgewidth=1.2)
    pos = v[v > 0]
    ax_log.plot(pos, [row] * len(pos), "|", color=color, markersize=9, markeredgewidth=1.2)
    ax.text(1.04, row, f"{len(v)}", va="center", fontsize=8, color="0.35")
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set_xlim(-1.05, 1.12)
ax.set_xlabel("value / max |value|   (count of distinct levels at the right)")
ax.set_title("Element grids, linear scale")
ax_log.set_xscale("log", base=2)
ax_log.set_xlabel("positive values / max, log2 scale")
ax_log.set_title("Positive half: floats keep a constant number of levels per octave")
for a in (ax, ax_log):
    a.grid(axis="x", alpha=0.3)
fig.tight_layout()
plt.show()

# %%
# Integer grids (blue) are evenly spaced: the same absolute error everywhere.
# Floating-point grids (orange, red) have the same number of levels in every
# octave: the same *relative* error, which suits data spanning many orders of
# magnitude. NF4 (green) places its 16 levels at quantiles of a normal
# distribution, so that Gaussian weights use each level about equally often.
# bitsandbytes' ``fp4`` differs from OCP's ``fp4_e2m1`` only in its smallest
# non-zero level.

print("NF4 levels:", [round(float(v), 4) for v in format_values("nf4")])
print("OCP E2M1 :", format_values("fp4_e2m1").tolist())
print("bnb FP4  :", [round(float(v), 4) for v in format_values("fp4")])
