"""
Where int4 pays: quantized linear layers against the number of tokens
=====================================================================

A linear layer applied to one token (``M = 1``, a decoding step) reads every
weight once and does two flops with it: it is limited by memory bandwidth, so
storing the weight in 4 bits instead of 32 can make it up to eight times
faster -- if the kernel does not spend the time saved on unpacking, and if the
weights really come from memory. Timing one layer over and over does not
measure that: an int4 or int8 weight of a 4096 x 4096 layer (8-16 MB) stays in
the last-level cache between calls while the 64 MB float32 one does not.

So this example times each layer as a model runs it: every call uses the next
of a rotating set of distinct copies that together hold four times the
last-level cache (:func:`llmref.bench.stream.rotating_layers`), and compares
the time with a bound that no kernel reading its weight once can beat -- the
weight bytes divided by the machine's measured read bandwidth
(:func:`llmref.bench.stream.read_bandwidth`). The layers are float32
:class:`torch.nn.Linear` and :class:`llmref.quant.QuantLinear` with
``backend="auto"`` -- llmref's exact kernels ``int8_w8a32`` and ``int4_w4a32``
(float32 activations; see :doc:`/theory/quant/weight-only`) -- and the int4
weight through ``int4_w4a8``, which rounds activations to int8. The timings
come from the machine that built these docs, while it was building them: read
the ratios, not the milliseconds.
"""

# %%
# Time every layer on its rotating set
# ------------------------------------

import itertools
import statistics
import time

import matplotlib.pyplot as plt
import torch

from llmref.bench.stream import layer_bytes, read_bandwidth, rotating_layers
from llmref.quant import QuantLinear, quantize
from llmref.quant.kernels import kernel_status

N = 4096
w = torch.randn(N, N, generator=torch.Generator().manual_seed(0))


def float_layer():
    layer = torch.nn.Linear(N, N, bias=False).requires_grad_(False)
    layer.weight.copy_(w)
    return layer


makers = {
    "float32 nn.Linear": float_layer,
    "int8 (auto: int8_w8a32)": lambda: QuantLinear(quantize(w, "int8")),
    "int4 g128 (auto: int4_w4a32)": lambda: QuantLinear(quantize(w, "int4", group_size=128)),
}
if kernel_status()["int4_w4a8"].available:
    makers["int4 g128 (int4_w4a8, int8 x)"] = lambda: QuantLinear(
        quantize(w, "int4", group_size=128), backend="int4_w4a8"
    )
sets = {name: rotating_layers(make) for name, make in makers.items()}
for name, layers in sets.items():
    print(
        f"{name:32} {layers[0].kernel.name if hasattr(layers[0], 'kernel') else '':12} "
        f"{layer_bytes(layers[0]) / 2**20:5.1f} MiB x {len(layers)} copies"
    )
bandwidth = read_bandwidth()
print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s")


def median_s(layers, x, budget=0.15):
    """Median time of one call, cycling through ``layers`` for about ``budget`` seconds."""
    for layer in layers:
        layer(x)  # warm up (kernels pack their weights on first use)
    turn, times = itertools.cycle(layers), []
    start = time.perf_counter()
    while len(times) < 2 * len(layers) or time.perf_counter() - start < budget:
        layer = next(turn)
        t = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


tokens = [1, 16, 64]
stream = {name: [] for name in sets}
with torch.inference_mode():
    for M in tokens:
        x = torch.randn(M, N)
        for name, layers in sets.items():
            stream[name].append(median_s(layers, x))
    x1 = torch.randn(1, N)
    cached = {name: median_s(layers[:1], x1) for name, layers in sets.items()}

print(f"{'M':>4} " + " ".join(f"{name:>32}" for name in sets))
for i, M in enumerate(tokens):
    print(f"{M:>4} " + " ".join(f"{1e3 * stream[name][i]:>29.3f} ms" for name in sets))

# %%
# Speed-up against float32, and the bandwidth bound
# -------------------------------------------------
# Left: milliseconds per call with the weights streamed from memory. Right: the
# float32 time divided by each layer's time, both on their rotating sets. The
# dotted lines are real bounds: float32's measured time over each quantized
# weight's bytes divided by the read bandwidth, i.e. what a kernel would reach
# if reading its weight were all it did. The crosses are the same layers timed
# on one weight at one token, cache-resident: they can beat the bound, because
# their weights never leave the cache.

fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
base = stream["float32 nn.Linear"]
for i, (name, times) in enumerate(stream.items()):
    color = f"C{i}"
    ax_t.plot(tokens, [1e3 * t for t in times], "o-", color=color, label=name)
    ax_s.plot(
        tokens, [b / t for b, t in zip(base, times, strict=True)], "o-", color=color, label=name
    )
    ax_s.plot([1], [cached["float32 nn.Linear"] / cached[name]], "x", color=color, ms=8)
    if name != "float32 nn.Linear":
        bound = base[0] / (layer_bytes(sets[name][0]) / bandwidth)
        ax_s.axhline(bound, color=color, ls=":", lw=1.0)
ax_s.plot([], [], "kx", label="cache-resident, M = 1")
ax_s.plot([], [], "k:", lw=1.0, label="bandwidth bound (bytes / read GB/s)")
ax_t.set(xscale="log", yscale="log", xlabel="tokens M", ylabel="ms per call")
ax_t.set_title(f"y = x W^T, W of {N} x {N}, weights streamed")
ax_s.axhline(1.0, color="grey", lw=0.8)
ax_s.set(xscale="log", yscale="log", xlabel="tokens M", ylabel="speed-up over float32")
ax_s.set_title("memory-bound at M = 1, compute-bound as M grows")
for ax in (ax_t, ax_s):
    ax.set_xticks(tokens, [str(m) for m in tokens])
    ax.grid(alpha=0.3)
ax_s.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
# At one token the quantized layers read a quarter (int8) or an eighth (int4)
# of float32's bytes; how close each comes to its bound shows how much of the
# time is spent on instructions rather than on memory. The exact kernels
# dequantize every weight to float32 in registers (a table lookup for int4);
# ``int4_w4a8`` does less work per weight by rounding the activations to int8
# and multiplying integers, which buys speed at 0.7 % error. As ``M`` grows the
# weights are reused across tokens and the layer becomes compute-bound; the
# exact kernels still multiply in float32, like ``nn.Linear``, and read fewer
# bytes. The measured numbers with the machine they came from are on
# :doc:`/theory/quant/weight-only`.
