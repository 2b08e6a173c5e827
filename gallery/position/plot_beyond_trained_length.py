"""
Beyond the trained length
=========================

A RoPE model trained on ``L`` tokens has seen each channel pair rotate only
through the angles ``r theta_i`` with ``r < L``. Pairs that turn many times
over ``L`` have seen every angle; slow pairs have only seen an arc of the
circle. This example follows what happens past ``L`` with the default
frequencies and with scaled ones (:func:`llmref.position.rope_frequencies`):
which angles become new, and how the scores of a query and a key change with
their distance.
"""

import itertools
import math

import matplotlib.pyplot as plt
import torch

from llmref.position import apply_rope, rope_cos_sin, rope_frequencies

D, L, S = 64, 2048, 4.0
configs = {
    "default": {},
    "linear": {"factor": S},
    "ntk_alpha": {"alpha": S},
    "yarn": {"factor": S, "original_max_position_embeddings": L},
    "llama3": {
        "factor": S,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": L,
    },
}
default, _ = rope_frequencies(D, dtype=torch.float64)
trained_arc = L * default  # angles seen in training: [0, L theta_i), all of them if >= 2 pi
distances = torch.arange(0, int(2 * S * L) + 1, 8)
frequencies = {
    name: rope_frequencies(D, rope_type=name, dtype=torch.float64, **params)
    for name, params in configs.items()
}

# %%
# Unseen angles
# -------------
# At distance ``r`` pair ``i`` sits at angle ``r theta'_i``. It is familiar if
# the pair turned at least once during training, or if the angle (modulo a
# turn) lies in the arc ``[0, L theta_i)`` that the pre-trained model saw.
# Left: the share of pairs at unfamiliar angles. Right: the slowest pair's angle
# against the arc it was trained on.

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
for name, (inv_freq, _) in frequencies.items():
    angles = distances[:, None].double() * inv_freq[None, :]
    familiar = (trained_arc >= 2 * math.pi) | (torch.remainder(angles, 2 * math.pi) < trained_arc)
    axes[0].plot(distances, 1 - familiar.double().mean(dim=-1), label=name)
    axes[1].plot(distances, angles[:, -1], label=name)
axes[1].axhspan(0, float(trained_arc[-1]), color="tab:green", alpha=0.15, label="trained arc")
for ax in axes:
    ax.axvspan(0, L, color="grey", alpha=0.15)
    ax.axvline(S * L, color="grey", linestyle=":")
    ax.set_xlabel("distance between query and key (tokens)")
    ax.legend(fontsize=8)
axes[0].set_ylabel("share of pairs at unfamiliar angles")
axes[0].set_title(f"trained on L = {L} (shaded), extended {S:g}x (dotted)")
axes[1].set_ylabel("angle of the slowest pair (rad)")
axes[1].set_title("the slowest pair leaves its trained arc at L")
plt.show()

# %%
# Scores
# ------
# The score of a query with a key equal to it, ``sum_i |q_i|^2 cos(r theta'_i)``
# for ``q`` of all ones (the average over random queries has the same shape),
# against the distance on a log scale. The score oscillates, so each band shows
# its range within a small window of distances. With the default frequencies
# the band keeps sinking past ``L`` into values the model never met at any
# trained distance; position interpolation and YaRN stretch the trained shape
# over ``sL``, reaching at ``sL`` about the level the default had at ``L``
# (YaRN's attention factor also raises every score a little).

fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
r = torch.arange(1, int(2 * S * L) + 1)
edges = torch.logspace(0, math.log10(len(r)), 60).long().unique()
ones = torch.ones(len(r), D, dtype=torch.float64)
for name in ("default", "linear", "yarn"):
    inv_freq, factor = frequencies[name]
    cos, sin = rope_cos_sin(inv_freq, r, attention_factor=factor)
    cos0, sin0 = rope_cos_sin(inv_freq, torch.zeros_like(r), attention_factor=factor)
    score = (apply_rope(ones, cos, sin) * apply_rope(ones, cos0, sin0)).sum(-1) / math.sqrt(D)
    lows, highs, centres = [], [], []
    for a, b in itertools.pairwise(edges.tolist()):
        window = score[a - 1 : b]
        lows.append(float(window.min()))
        highs.append(float(window.max()))
        centres.append((a + b) / 2)
    ax.fill_between(centres, lows, highs, alpha=0.35, label=name)
ax.axvspan(1, L, color="grey", alpha=0.15)
ax.axvline(S * L, color="grey", linestyle=":")
ax.set_xscale("log")
ax.set_xlabel("distance between query and key (tokens)")
ax.set_ylabel("q . k / sqrt(d), q = k = 1")
ax.set_title("scores against distance, with and without scaling")
ax.legend(fontsize=8)
plt.show()
