"""
Where int4 pays: quantized linear layers against the number of tokens
=====================================================================

A linear layer applied to one token (``M = 1``, a decoding step) reads every
weight once and does two flops with it: it is limited by memory bandwidth, so
storing the weight in 4 bits instead of 32 can make it up to eight times
faster -- if the kernel does not spend the time saved on unpacking. With many
tokens the weights are reused from cache, the layer becomes compute-bound, and
the unpacking is pure overhead.

This example times one 4096 x 4096 layer as float32 :class:`torch.nn.Linear`
and as :class:`llmref.quant.QuantLinear` with three kernels of
:mod:`llmref.quant.kernels`: int8 per channel (``auto``: PyTorch's
``_weight_int8pack_mm`` on bfloat16 activations), int4 with groups of 128
(``auto``: PyTorch's ``_weight_int4pack_mm_for_cpu``) and the same int4 weight
through ``int4_w4a8``, llmref's AVX512-VNNI kernel that quantizes the
activations to int8 and multiplies integers (see :doc:`/theory/quant/weight-only`).
The timings come from the machine that built these docs, while it was
building them: read the ratios, not the milliseconds.
"""

# %%
# Time every layer at a few token counts
# --------------------------------------

import statistics
import time

import matplotlib.pyplot as plt
import torch

from llmref.quant import QuantLinear, _w4a8

torch.manual_seed(0)
N = 4096
float_layer = torch.nn.Linear(N, N, bias=False).requires_grad_(False)
layers = {
    "float32 nn.Linear": float_layer,
    "int8 (auto)": QuantLinear.from_linear(float_layer, "int8"),
    "int4 g128 (auto)": QuantLinear.from_linear(float_layer, "int4", group_size=128),
}
if _w4a8.library() is not None:
    layers["int4 g128 (int4_w4a8)"] = QuantLinear.from_linear(
        float_layer, "int4", group_size=128, backend="int4_w4a8"
    )
else:
    print("int4_w4a8 unavailable here:", _w4a8.unavailable_reason())


def median_ms(layer, x, budget=0.25):
    """Median time of one call, repeated for about ``budget`` seconds."""
    layer(x)  # warm up (and build the packed weights)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


tokens = [1, 4, 16, 64]
timings = {name: [] for name in layers}
with torch.inference_mode():
    for M in tokens:
        x = torch.randn(M, N)
        for name, layer in layers.items():
            timings[name].append(median_ms(layer, x))

print(f"{'M':>4} " + " ".join(f"{name:>22}" for name in layers))
for i, M in enumerate(tokens):
    print(f"{M:>4} " + " ".join(f"{timings[name][i]:>19.3f} ms" for name in layers))

# %%
# Time and speed-up against float32
# ---------------------------------
# Left: milliseconds per call. Right: float32 time divided by each layer's
# time; above 1 the quantized layer is faster. The dotted line is the bytes
# bound for int4 with groups of 128 (64 MiB of float32 weights against 8.5 MiB
# of codes and scales): no kernel that reads the weights once can beat it.

fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
base = timings["float32 nn.Linear"]
for name, ms in timings.items():
    ax_t.plot(tokens, ms, "o-", label=name)
    ax_s.plot(tokens, [b / t for b, t in zip(base, ms, strict=True)], "o-", label=name)
ax_t.set(xscale="log", yscale="log", xlabel="tokens M", ylabel="ms per call")
ax_t.set_title(f"y = x W^T, W of {N} x {N}")
ax_s.axhline(1.0, color="grey", lw=0.8)
ax_s.axhline(64 / 8.5, color="grey", ls=":", lw=1.0, label="int4 g128 bytes bound")
ax_s.set(xscale="log", xlabel="tokens M", ylabel="speed-up over float32")
ax_s.set_title("memory-bound at M = 1, compute-bound as M grows")
for ax in (ax_t, ax_s):
    ax.set_xticks(tokens, [str(m) for m in tokens])
    ax.grid(alpha=0.3)
ax_s.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# At one token the int4 layers are the fastest and ``int4_w4a8`` comes
# closest to the bytes bound, because it spends about four instructions per
# 64 weights where PyTorch's int4 kernel spends about fifteen. As ``M``
# grows every weight-only layer loses ground to the float32 matmul, which
# does no unpacking: weight-only quantization is a decoding (small ``M``)
# optimisation.
