"""
Outlier input channels: what AWQ and LLM.int8() do about them
=============================================================

A few input features of an LLM's linear layers are much larger than the rest
(see the SmoothQuant example). They hurt in two ways, and two methods answer them:

* **weight-only quantization** (:func:`llmref.quant.awq`): the weights that
  multiply a large input matter most, yet round-to-nearest gives them the same
  relative error as all others. AWQ scales those weight columns up before
  rounding (and the inputs down by the same factor), so they lose less.
* **activation quantization** (:func:`llmref.quant.llm_int8`): with int8
  activations per token, one large feature sets the step of the whole token.
  LLM.int8() computes the feature columns above a threshold in float and the
  rest in int8.

Both are shown on one synthetic layer whose input has a handful of outlier
channels, measured by the SQNR of the layer *output* on held-out inputs.
"""

import matplotlib.pyplot as plt
import torch

from llmref.quant import QuantLinear, awq, llm_int8, quantize, rtn, sqnr

g = torch.Generator().manual_seed(0)
d_in, d_out = 512, 256
w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
outliers = torch.randperm(d_in, generator=g)[:6]


def inputs(n: int, size: float) -> torch.Tensor:
    x = torch.randn(n, d_in, generator=g)
    x[:, outliers] *= size
    return x


# %%
# AWQ against round-to-nearest, as the outliers grow
# ---------------------------------------------------
# Calibrate on 1,024 rows, measure on 1,024 others; 4 and 3 bits, groups of 64.

# sphinx_gallery_defer_figures
# The right-hand panel is drawn in the next cell; the figure is shown there.

sizes = [1, 5, 10, 20, 40, 80]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for bits, style in ((4, "-"), (3, "--")):
    r_db, a_db = [], []
    for size in sizes:
        x_cal, x_test = inputs(1024, size), inputs(1024, size)
        y = x_test @ w.T
        opts = {"fmt": "int", "bits": bits, "group_size": 64, "symmetric": False}
        r_db.append(sqnr(y, QuantLinear(rtn(w, **opts), backend="reference")(x_test)))
        a_db.append(sqnr(y, QuantLinear(awq(w, x_cal, **opts), backend="reference")(x_test)))
    ax1.plot(sizes, r_db, "o" + style, color="tab:gray", label=f"RTN int{bits}")
    ax1.plot(sizes, a_db, "o" + style, color="tab:orange", label=f"AWQ int{bits}")
ax1.set(
    xscale="log",
    xlabel="outlier channel magnitude (x the others)",
    ylabel="output SQNR (dB)",
    title="weight-only: AWQ protects salient columns",
)
ax1.grid(alpha=0.3)
_ = ax1.legend()

# %%
# LLM.int8() against plain W8A8
# -----------------------------
# Both quantize weights to int8 per row and activations to int8 per token; the
# plain layer (``int8_dynamic`` kernel) lets the outliers set every token's
# step, LLM.int8() keeps the columns above ``threshold=6`` in float.

plain_db, mixed_db = [], []
for size in sizes:
    x_test = inputs(1024, size)
    y = x_test @ w.T
    plain = QuantLinear(quantize(w, "int8"), backend="int8_dynamic")
    plain_db.append(sqnr(y, plain(x_test)))
    mixed_db.append(sqnr(y, QuantLinear(llm_int8(w, threshold=6.0))(x_test)))
ax2.plot(sizes, plain_db, "o-", color="tab:gray", label="W8A8, per-token activations")
ax2.plot(sizes, mixed_db, "o-", color="tab:brown", label="LLM.int8(), threshold 6")
ax2.set(
    xscale="log",
    xlabel="outlier channel magnitude (x the others)",
    ylabel="output SQNR (dB)",
    title="W8A8: LLM.int8() takes the outliers out",
)
ax2.grid(alpha=0.3)
ax2.legend()
fig.tight_layout()
plt.show()

# %%
# Without outliers (magnitude 1) both methods are close to their baselines.
#
# *Weight-only.* RTN's output SQNR stays flat: every weight keeps the same
# relative error, whatever the inputs. AWQ's rises with the outliers. The
# larger the outlier channels, the more of the output they carry, and the more
# AWQ gains by scaling up their weight columns before rounding.
#
# *W8A8.* Plain per-token activations lose about 10 dB as the outliers grow,
# because the outliers set every token's step. LLM.int8() moves the columns
# above the threshold to float, so the int8 part sees only the ordinary features
# and the output error falls instead.
