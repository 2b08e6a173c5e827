"""
The mask gallery
================

Every boolean mask registered in :data:`llmref.attention.MASKS`, drawn side by
side, then the same masks as a block-sparse kernel sees them, and finally the
sliding-window width convention checked against the formulas other libraries
use. A mask is a ``(T, S)`` tensor, ``True`` where query ``i`` may attend to
key ``j``; it broadcasts against scores of shape ``(B, H, T, S)``.
"""

# %%
# One example per registered mask
# -------------------------------
# The figure is driven by the registry: every name in ``MASKS`` is drawn, with
# the example parameters below. (A mask registered later without an entry
# here is reported, not silently skipped.) ``block_sparse`` draws a layout
# chosen by :func:`~llmref.attention.block_topk_layout`: the two key blocks
# with the highest mean-pooled score for each query block, its own diagonal
# block always included.

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from llmref.attention import (
    MASKS,
    as_mask_mod,
    block_sparse_mask,
    block_topk_layout,
    causal_mask,
    sliding_window_mask,
)

T = 16
docs = torch.tensor([0] * 5 + [1] * 7 + [2] * 4)
gen = torch.Generator().manual_seed(0)
q, k = torch.randn(1, 1, T, 8, generator=gen), torch.randn(1, 1, T, 8, generator=gen)
layout = block_topk_layout(q, k, block_size=4, topk=2, causal=True)

examples = {
    "causal": ("causal_mask(16)", lambda: causal_mask(T)),
    "sliding_window": (
        "sliding_window_mask(16, window=4)",
        lambda: MASKS["sliding_window"](T, window=4),
    ),
    "local_window": (
        "local_window_mask(16, window_size=(3, 2))",
        lambda: MASKS["local_window"](T, window_size=(3, 2)),
    ),
    "dilated": (
        "dilated_mask(16, window=4, dilation=2)",
        lambda: MASKS["dilated"](T, window=4, dilation=2),
    ),
    "prefix_lm": ("prefix_lm_mask(16, prefix_len=5)", lambda: MASKS["prefix_lm"](T, prefix_len=5)),
    "sink": ("sink_mask(16, n_sink=2, window=4)", lambda: MASKS["sink"](T, n_sink=2, window=4)),
    "document": (
        "document_mask(ids, causal=True)\nids = 0x5, 1x7, 2x4",
        lambda: MASKS["document"](docs, causal=True),
    ),
    "block_sparse": (
        "block_sparse_mask(top-2 layout,\nblock_size=4)",
        lambda: block_sparse_mask(layout, block_size=4)[0, 0],
    ),
}

missing = [name for name in MASKS if name not in examples]
print("registered masks:", ", ".join(MASKS))
print("without an example here:", missing or "none")

colours = ListedColormap(["#edf2f7", "#2b6cb0"])
names = [name for name in MASKS if name in examples]
fig, axes = plt.subplots(2, 4, figsize=(13, 7), layout="constrained")
for ax, name in zip(axes.flat, names, strict=False):
    title, build = examples[name]
    mask = build()
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    ax.imshow(mask, cmap=colours, vmin=0, vmax=1)
    ax.set_title(f'"{name}"\n{title}', fontsize=9)
    ax.set_xticks([0, 5, 10, 15])
    ax.set_yticks([0, 5, 10, 15])
    density = mask.float().mean().item()
    ax.set_xlabel(f"key j   ({density:.0%} of pairs)", fontsize=8)
    ax.set_ylabel("query i", fontsize=8)
for ax in axes.flat[len(names) :]:
    ax.remove()  # fewer masks than panels: no empty panel
fig.suptitle("llmref.attention.MASKS: True (blue) = may attend")
plt.show()

# %%
# Reading the pictures:
#
# * **causal** -- the lower triangle, diagonal included;
# * **sliding_window** -- a band of 4 keys per query, the query's own included;
# * **dilated** -- the same 4 keys per query spread 2 apart, so the band is
#   twice as wide at the same cost;
# * **prefix_lm** -- the first 5 keys are visible to everyone (a bidirectional
#   prompt), the rest is causal;
# * **sink** -- StreamingLLM: the first 2 keys stay visible forever, plus a
#   window of 4;
# * **document** -- three packed sequences, causal inside each and blind to the
#   others (the block diagonal);
# * **block_sparse** -- whole 4 x 4 blocks on or off, chosen per query block
#   from the data.

# %%
# What a block-sparse kernel computes
# -----------------------------------
# Fused kernels work on tiles. FlexAttention turns a ``mask_mod`` into a
# :class:`~torch.nn.attention.flex_attention.BlockMask` and skips every tile
# that is entirely masked, so its cost follows the number of tiles touched,
# not the number of pairs. :func:`~llmref.attention.as_mask_mod` gives the same
# predicates that built the dense masks above. Here ``T = 4096`` with 128 x 128
# tiles: the causal mask touches about half the tiles, a window of 256 keys
# only two or three tiles per row of tiles, so the windowed kernel does a small
# fraction of the work while a dense kernel given the same mask as a tensor
# still does all of it.

from torch.nn.attention.flex_attention import create_block_mask

T_big, window = 4096, 256
big_docs = torch.arange(T_big) // 1024  # four documents of 1024 tokens
mods = {
    "causal": as_mask_mod("causal"),
    "sliding_window (256)": as_mask_mod("sliding_window", window=window),
    "dilated (256 x 2)": as_mask_mod("dilated", window=window, dilation=2),
    "prefix_lm (1024)": as_mask_mod("prefix_lm", prefix_len=1024),
    "sink (4 + 256)": as_mask_mod("sink", n_sink=4, window=window),
    "document (4 x 1024)": as_mask_mod("document", document_ids=big_docs, causal=True),
}
pairs, tiles = [], []
for label, mod in mods.items():
    block_mask = create_block_mask(mod, None, None, T_big, T_big, device="cpu", BLOCK_SIZE=128)
    i = torch.arange(T_big).view(-1, 1)
    pairs.append(mod(0, 0, i, torch.arange(T_big)).float().mean().item())
    tiles.append(1.0 - block_mask.sparsity() / 100.0)
    print(f"{label:22s} pairs {pairs[-1]:6.1%}   tiles computed {tiles[-1]:6.1%}")

fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
y = torch.arange(len(mods)).float()
ax.barh(y - 0.2, pairs, height=0.4, label="pairs allowed", color="#2b6cb0")
ax.barh(y + 0.2, tiles, height=0.4, label="128 x 128 tiles computed", color="#dd6b20")
ax.set_yticks(y, list(mods))
ax.invert_yaxis()
ax.set_xlabel("fraction of the T x S matrix (T = S = 4096)")
ax.legend(loc="lower right")
ax.set_title("Work a block-sparse kernel (FlexAttention) does for each mask")
plt.show()

# %%
# The window convention, checked
# ------------------------------
# "Window 4" means different things in different libraries. llmref counts the
# keys a query sees, itself included. The same mask written in each library's
# own terms must be identical, and it is:

i, j = torch.arange(T).view(-1, 1), torch.arange(T)
w = 4
ours = sliding_window_mask(T, window=w)
conventions = {
    "transformers sliding_window=w: kv > q - w (and causal)": (j > i - w) & (j <= i),
    "FlashAttention window_size=(w-1, 0): q-(w-1) <= kv <= q": (j >= i - (w - 1)) & (j <= i),
    "attention-gym SLIDING_WINDOW=w-1: q - kv <= w-1 (causal)": (i - j <= w - 1) & (i >= j),
}
for label, mask in conventions.items():
    print(f"{label:58s} equal: {torch.equal(ours, mask)}")
print("keys seen by the last query:", int(ours[-1].sum()), "(window =", w, ")")
