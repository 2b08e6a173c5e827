"""
RoPE frequencies and wavelengths
================================

Every RoPE context-extension rule is a new set of frequencies. This example
computes them with :func:`llmref.position.rope_frequencies` for a
Llama-like head (128 channels, base 10 000, trained on ``L = 4096`` tokens)
extended 8 times, and plots what each rule does to each channel pair.
"""

import math

import matplotlib.pyplot as plt
import torch

from llmref.position import ROPE_SCALING, rope_frequencies

D, BASE, L, S = 128, 10000.0, 4096, 8.0
pairs = torch.arange(D // 2)
n = D // 2

# LongRoPE's factors are searched per model; this smooth curve only mimics
# their shape (near 1 for fast pairs, up to about s for slow ones).
long_factor = [1.0 + (S - 1) * (i / (n - 1)) ** 2 for i in range(n)]

rules = {
    "default": {},
    "linear": {"factor": S},
    "ntk_alpha": {"alpha": S},
    "dynamic": {"factor": S, "max_position_embeddings": L, "seq_len": int(S * L)},
    "yarn": {"factor": S, "original_max_position_embeddings": L},
    "llama3": {
        "factor": S,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": L,
    },
    "longrope": {
        "short_factor": [1.0] * n,
        "long_factor": long_factor,
        "original_max_position_embeddings": L,
        "factor": S,
        "seq_len": int(S * L),
    },
}
assert set(rules) <= set(ROPE_SCALING)

frequencies = {}
for name, params in rules.items():
    inv_freq, attention_factor = rope_frequencies(
        D, base=BASE, rope_type=name, dtype=torch.float64, **params
    )
    frequencies[name] = inv_freq
    print(f"{name:>9}: attention factor {attention_factor:.4f}")
default = frequencies["default"]
wavelength = 2 * math.pi / default

# %%
# Wavelengths
# -----------
# Pair ``i`` turns once every ``2 pi / theta_i`` tokens. Pairs above the dashed
# line never complete a turn within the trained length: beyond it they reach
# angles the model has not seen. Every rule lengthens those wavelengths; they
# differ in what they do to the fast pairs.

fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
for name, inv_freq in frequencies.items():
    style = {"color": "black", "linewidth": 2.5} if name == "default" else {}
    ax.plot(pairs, 2 * math.pi / inv_freq, label=name, **style)
ax.axhline(L, color="grey", linestyle="--")
ax.axhline(S * L, color="grey", linestyle=":")
ax.text(1, L * 1.15, "trained length L", color="grey")
ax.text(1, S * L * 1.15, "extended length sL", color="grey")
ax.set_yscale("log")
ax.set_xlabel("pair index i")
ax.set_ylabel("wavelength (tokens)")
ax.set_title(f"RoPE wavelengths, head dim {D}, base {BASE:g}, extended {S:g}x")
ax.legend()
plt.show()

# %%
# What each rule does to each frequency
# -------------------------------------
# The ratio of the new to the original frequency, against the wavelength in
# units of the trained length. Position interpolation divides everything by
# ``s``; NTK-aware and dynamic scaling blend geometrically (the fastest pair
# is kept, the slowest divided by the NTK factor); YaRN and Llama 3.1 keep pairs
# that turn many times over ``L``, interpolate those that turn less than once,
# and ramp in between (YaRN's ramp is linear in the pair index, Llama's in the
# number of turns); LongRoPE follows its per-pair factors.

fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
x = (wavelength / L).numpy()
for name, inv_freq in frequencies.items():
    if name == "default":
        continue
    ax.plot(x, (inv_freq / default).numpy(), marker=".", label=name)
ax.axvline(1.0, color="grey", linestyle="--")
ax.axvline(1 / 32, color="grey", linestyle=":")
ax.text(1.05, 0.9, "1 turn over L", color="grey")
ax.text(1 / 32 * 1.05, 0.9, "32 turns (YaRN's beta_fast)", color="grey")
ax.set_xscale("log")
ax.set_xlabel("original wavelength / trained length")
ax.set_ylabel("new frequency / original frequency")
ax.set_ylim(0, 1.05)
ax.set_title(f"Scaling rules at s = {S:g}")
ax.legend()
plt.show()
