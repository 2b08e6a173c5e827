"""
Memory layouts: ring buffer, attention sinks and paged blocks
=============================================================

The same decode loop drives three caches; we then draw *where* each token's
key lives. The sliding-window cache writes token ``p`` into slot
``p mod window`` of a ring, so the slots are not in time order (attention
does not care: the mask follows :attr:`~llmref.cache.KVCache.key_positions`).
The sink cache keeps the first tokens forever and renumbers the rest. The
paged cache hands out fixed-size blocks from a free list to several sequences
of different lengths, and a finished sequence's blocks go back to the list.
"""

# %%
# Fill the caches
# ---------------

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmref.cache import PagedCache, SinkCache, SlidingWindowCache

ring = SlidingWindowCache(window=9)
sink = SinkCache(n_sink=2, window=7)
tokens = 20
for p in range(tokens):
    token = torch.full((1, 1, 1, 1), float(p))  # the key *is* the token's index
    ring.update(token, token)
    sink.update(token, token)

paged = PagedCache(n_blocks=12, block_size=4)
lengths = torch.tensor([13, 6, 9])
paged.update(torch.zeros(3, 1, 13, 1), torch.zeros(3, 1, 13, 1), lengths=lengths)
paged.free(1)  # sequence 1 finished: its 2 blocks return to the free list
paged.update(torch.zeros(3, 1, 3, 1), torch.zeros(3, 1, 3, 1))  # 3 more tokens each

# %%
# Draw the ring, the sink cache and the block table
# -------------------------------------------------
fig, axes = plt.subplots(3, 1, figsize=(9, 6.5), gridspec_kw={"height_ratios": [1, 1, 1.6]})

ax = axes[0]
slots = ring.key_positions[0].tolist()  # the ring's slots, in slot order
newest = max(slots)
for i, p in enumerate(slots):
    color = "#dd6b20" if p == newest else "#2b6cb0"
    ax.add_patch(plt.Rectangle((i, 0), 0.92, 0.92, color=color))
    ax.text(i + 0.46, 0.46, str(p), ha="center", va="center", color="white", fontsize=11)
ax.set_xlim(0, len(slots))
ax.set_ylim(0, 1)
ax.axis("off")
ax.set_title(
    f"sliding-window ring (window 9 = 9 slots) after {tokens} tokens: token p sits in slot "
    "p mod 9 (orange: newest)",
    fontsize=9,
)

ax = axes[1]
kept = sink._rows[0].k.flatten().tolist()  # the one sequence's kept keys
for i, p in enumerate(kept):
    color = "#38a169" if i < sink.n_sink else "#2b6cb0"
    ax.add_patch(plt.Rectangle((i, 0), 0.92, 0.92, color=color))
    ax.text(i + 0.46, 0.62, f"tok {p:.0f}", ha="center", va="center", color="white", fontsize=8)
    ax.text(i + 0.46, 0.25, f"pos {i}", ha="center", va="center", color="white", fontsize=8)
ax.set_xlim(0, len(slots))
ax.set_ylim(0, 1)
ax.axis("off")
ax.set_title(
    "sink cache (2 sinks in green + recent): positions are renumbered inside the cache "
    "and the cached RoPE keys are rotated to match",
    fontsize=9,
)

ax = axes[2]
owner = np.full(paged.n_blocks, -1)
for seq, table in enumerate(paged.block_tables):
    owner[table] = seq
colors = {-1: "#e2e8f0", 0: "#2b6cb0", 1: "#dd6b20", 2: "#805ad5"}
for block in range(paged.n_blocks):
    ax.add_patch(plt.Rectangle((block, 0), 0.92, 0.92, color=colors[int(owner[block])]))
    label = "free" if owner[block] < 0 else f"seq {owner[block]}"
    ax.text(block + 0.46, 0.46, f"#{block}\n{label}", ha="center", va="center", fontsize=8)
for seq, table in enumerate(paged.block_tables):
    ax.text(
        0,
        -0.35 - 0.3 * seq,
        f"seq {seq}: {paged.lengths[seq]:2d} tokens, block table {table}",
        fontsize=9,
        color=colors[seq],
    )
ax.set_xlim(0, paged.n_blocks)
ax.set_ylim(-1.3, 1)
ax.axis("off")
ax.set_title(
    "paged pool (12 blocks of 4 tokens) after seq 1 finished and was re-admitted", fontsize=9
)
fig.tight_layout()
print("free list:", paged.free_blocks)
