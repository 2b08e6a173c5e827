"""
SQNR against group size and bits per weight
===========================================

Two knobs set a quantizer's error: the number of bits per element and the
number of elements that share a scale (the ``group_size``). This example
measures the signal-to-quantization-noise ratio (:func:`llmref.quant.sqnr`)
of Gaussian weights as both vary, and places every registered format on the
accuracy / size plane, using the storage that
:attr:`~llmref.quant.QuantizedTensor.bits_per_weight` counts (scales included).
"""

import matplotlib.pyplot as plt
import torch

from llmref.quant import FORMATS, dequantize, quantize, sqnr

torch.manual_seed(0)
w = torch.randn(128, 1024)

# %%
# SQNR against group size
# -----------------------
# Smaller groups follow the local range of the data: the largest value of a
# group of 16 Gaussian numbers is about 2σ, of 1024 about 3.4σ, and the step
# of the grid shrinks with it.

groups = [8, 16, 32, 64, 128, 256, 1024]
curves = {
    "int4 symmetric": ("int4", {}),
    "int4 asymmetric (float offset)": ("int4", {"symmetric": False, "zero_point": "float"}),
    "nf4": ("nf4", {}),
    "fp4 (bitsandbytes)": ("fp4", {}),
    "fp4_e2m1 (fp32 scale)": ("fp4_e2m1", {}),
}
fig, ax = plt.subplots(figsize=(7, 4.5))
for label, (fmt, opts) in curves.items():
    s = [sqnr(w, dequantize(quantize(w, fmt, group_size=g, **opts))) for g in groups]
    ax.plot(groups, s, "o-", label=label)
ax.set_xscale("log", base=2)
ax.set_xlabel("group_size")
ax.set_ylabel("SQNR (dB)")
ax.set_title("4-bit formats on N(0, 1) weights")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# SQNR against bits per weight
# ----------------------------
# Integer quantization at 2 to 8 bits (groups of 64) follows the
# :math:`6.02\,b` dB rule; every registered format at its default options
# is one point.

bits = range(2, 9)
int_points = []
for b in bits:
    qt = quantize(w, "int", bits=b, group_size=64)
    int_points.append((qt.bits_per_weight, sqnr(w, dequantize(qt))))
xs, ys = zip(*int_points, strict=True)
fig, (ax2, ax3) = plt.subplots(1, 2, figsize=(12, 4.8))
ax2.plot(xs, ys, "k.-", label="int, 2-8 bits, group 64")
ref_b = torch.tensor([2.0, 8.5])
ax2.plot(ref_b, 6.02 * ref_b + (ys[-1] - 6.02 * xs[-1]), "k:", lw=1, label="slope 6.02 dB / bit")
markers = {"int": "s", "codebook": "D", "float": "^", "mx": "v", "ggml": "o"}
for name, entry in FORMATS.items():
    if name == "int":
        continue
    qt = quantize(w, name)
    s = sqnr(w, dequantize(qt))
    for a in (ax2, ax3):
        a.plot(qt.bits_per_weight, s, markers[entry.kind], ms=7)
    if qt.bits_per_weight > 5.5 or qt.bits_per_weight < 4:
        dy = 6 if name.startswith("mx") else -9  # keep the fp8 and mxfp8 labels apart
        ax2.annotate(
            name, (qt.bits_per_weight, s), fontsize=7, xytext=(4, dy), textcoords="offset points"
        )
    else:
        ax3.annotate(
            name, (qt.bits_per_weight, s), fontsize=8, xytext=(5, -3), textcoords="offset points"
        )
ax3.plot(xs, ys, "k.-")
ax3.set_xlim(3.9, 5.4)
ax3.set_ylim(15.5, 24)
ax3.set_title("Zoom: the 4-bit formats")
ax2.set_xlabel("bits per weight (codes + scales)")
ax3.set_xlabel("bits per weight (codes + scales)")
ax2.set_ylabel("SQNR (dB)")
ax2.set_title("Every format at its default options")
for a in (ax2, ax3):
    a.grid(alpha=0.3)
ax2.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %%
# At four bits the codebook and floating-point grids (NF4, E2M1) beat the
# evenly spaced integers for large groups; with small groups, where the
# normalised values are closer to uniform, affine int4 catches up — and with
# an asymmetric offset it wins, at the price of one more number per group.
# ggml's ``q4_k`` spends its 4.5 bits on searched sub-block scales and is the
# most accurate 4-bit point; at 8 bits the integer formats are about 10 dB
# ahead of FP8, whose 3 mantissa bits give a constant relative error.
