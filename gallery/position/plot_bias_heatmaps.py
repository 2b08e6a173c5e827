"""
Bias heatmaps
=============

Relative position biases are ``(H, T, S)`` tensors added to the attention
scores. This example draws ALiBi's biases (:func:`llmref.position.alibi_bias`)
for several heads of a 12-head model, whose slopes come from the
non-power-of-two rule, and T5's buckets
(:func:`llmref.position.t5_relative_position_bucket`) for an encoder and a
decoder.
"""

import matplotlib.pyplot as plt
import torch

from llmref.position import alibi_bias, alibi_slopes, t5_relative_position_bucket

# %%
# ALiBi
# -----
# Twelve heads: the first eight slopes are those of an 8-head model
# (1/2 ... 1/256), the other four are every other slope of a 16-head model,
# which fall between them (head 9 is the steepest). Entries above the diagonal
# are masked in a causal model; the colour scale is shared, so flat heads look
# pale: they barely penalise distance within 32 tokens.

H, T = 12, 32
slopes = alibi_slopes(H)
print("slopes:", [round(float(s), 5) for s in slopes])
bias = alibi_bias(H, T)
causal = torch.ones(T, T, dtype=torch.bool).tril()
masked = bias.masked_fill(~causal, float("nan"))

fig = plt.figure(figsize=(11, 5), constrained_layout=True)
grid = fig.add_gridspec(2, 4)
for n, h in enumerate((8, 0, 3, 7)):
    ax = fig.add_subplot(grid[n // 2, n % 2])
    image = ax.imshow(masked[h], cmap="magma", vmin=-8, vmax=0)
    ax.set_title(f"head {h + 1}: slope {float(slopes[h]):.4f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(image, ax=fig.axes, location="left", shrink=0.8, label="bias (clipped at -8)")
ax = fig.add_subplot(grid[:, 2:])
order = torch.argsort(slopes, descending=True)
for h in order:
    ax.plot(bias[h, -1], label=f"head {int(h) + 1}")
ax.set_xlabel("key position (query at the last position)")
ax.set_ylabel("bias")
ax.set_title("the last query's bias, every head")
ax.legend(fontsize=7, ncol=2)
fig.suptitle("ALiBi, 12 heads")
plt.show()

# %%
# T5 buckets
# ----------
# T5 maps the offset ``key - query`` to one of 32 buckets: exact for small
# distances, logarithmic up to ``max_distance = 128``, then one bucket for
# everything further. An encoder splits the buckets between keys before and
# after the query; a decoder spends them all on the past.

T = 200
rel = torch.arange(T)[None, :] - torch.arange(T)[:, None]
encoder = t5_relative_position_bucket(rel, bidirectional=True)
decoder = t5_relative_position_bucket(rel, bidirectional=False)
fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
for ax, buckets, title in ((axes[0], encoder, "encoder"), (axes[1], decoder, "decoder")):
    image = ax.imshow(buckets, cmap="tab20c", interpolation="nearest")
    ax.set_title(f"{title} buckets ({T} x {T})")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
fig.colorbar(image, ax=axes[:2], shrink=0.8, label="bucket")
offsets = torch.arange(-300, 301)
axes[2].step(offsets, t5_relative_position_bucket(offsets), where="mid", label="encoder")
axes[2].step(
    offsets, t5_relative_position_bucket(offsets, bidirectional=False), where="mid", label="decoder"
)
axes[2].set_xlabel("key - query")
axes[2].set_ylabel("bucket")
axes[2].set_title("bucket of each offset")
axes[2].legend()
plt.show()
