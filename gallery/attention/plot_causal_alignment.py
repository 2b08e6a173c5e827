"""
Causal alignment and two-sided local windows
============================================

When the queries are not the same positions as the keys (``T != S``), a causal
mask must say where the queries sit. SDPA aligns them **top-left** (query 0 at
key 0); FlashAttention (>= 2.1) aligns them **bottom-right** (the last query at
the last key), which is right for ``T`` new tokens after ``S - T`` cached ones.
llmref takes both: ``attention(..., is_causal=True, causal_alignment=...)``.
FlashAttention's two-sided ``window_size=(left, right)`` is aligned the same way;
:func:`~llmref.attention.local_window_mask` builds it with ``offset=S - T``. Last,
a packed batch of variable-length sequences, each aligned on its own.
"""

# %%
# The masks
# ---------
# Each panel is drawn from the function itself; blue: may attend.

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from llmref.attention import (
    attention,
    causal_mask,
    local_window_mask,
    naive_attention,
    varlen_attention,
)

panels = [
    ("top_left, T=4, S=8\ncausal_mask(4, 8)", causal_mask(4, 8)),
    ("bottom_right, T=4, S=8\ncausal_mask(4, 8, offset=4)", causal_mask(4, 8, offset=4)),
    ("bottom_right, T=8, S=4\nfirst 4 rows see nothing", causal_mask(8, 4, offset=-4)),
    (
        "window_size=(2, 1), T=4, S=8\nbottom-right: offset=4",
        local_window_mask(4, 8, window_size=(2, 1), offset=4),
    ),
]
colours = ListedColormap(["#edf2f7", "#2b6cb0"])
fig, axes = plt.subplots(1, 4, figsize=(13, 3.8), layout="constrained")
for ax, (title, mask) in zip(axes, panels, strict=True):
    ax.imshow(mask, cmap=colours, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key j", fontsize=8)
    ax.set_ylabel("query i", fontsize=8)
    ax.set_xticks(range(mask.shape[1]))
    ax.set_yticks(range(mask.shape[0]))
plt.show()

# %%
# The option equals the mask, on every backend
# --------------------------------------------
# ``causal_alignment="bottom_right"`` gives the result of the explicit mask
# ``causal_mask(T, S, offset=S - T)``; the backends differ only in how they use
# it (PyTorch's ``causal_lower_right`` for SDPA, skipped tiles for the chunked
# kernel, a ``mask_mod`` for FlexAttention).

gen = torch.Generator().manual_seed(0)
q = torch.randn(1, 4, 4, 16, generator=gen, dtype=torch.float64)
k, v = (torch.randn(1, 4, 8, 16, generator=gen, dtype=torch.float64) for _ in range(2))
reference = attention(q, k, v, mask=causal_mask(4, 8, offset=4), backend="naive")
for backend in ("naive", "sdpa", "chunked", "flex"):
    out = attention(q, k, v, is_causal=True, causal_alignment="bottom_right", backend=backend)
    print(f"{backend:8s} max |difference| = {float((out - reference).abs().max()):.1e}")

# %%
# Packed variable-length batches
# ------------------------------
# :func:`~llmref.attention.varlen_attention` takes sequences concatenated along
# ``T`` with their offsets ``cu_seqlens`` (FlashAttention's varlen interface):
# three sequences of 3, 5 and 2 queries against 5, 5 and 6 keys, causal and
# aligned bottom-right within each. The mask it applies is block diagonal; the
# chunked kernel skips the tiles off the blocks.

cu_q, cu_k = torch.tensor([0, 3, 8, 10]), torch.tensor([0, 5, 10, 16])
seq_q = torch.repeat_interleave(torch.arange(3), cu_q.diff())
seq_k = torch.repeat_interleave(torch.arange(3), cu_k.diff())
local_q = torch.arange(10) - cu_q[seq_q]
local_k = torch.arange(16) - cu_k[seq_k]
shift = (cu_k.diff() - cu_q.diff())[seq_q]
packed_mask = (seq_q[:, None] == seq_k) & (local_k <= (local_q + shift)[:, None])

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ax.imshow(packed_mask, cmap=colours, vmin=0, vmax=1)
ax.set_title(
    "cu_seqlens_q = [0, 3, 8, 10], cu_seqlens_k = [0, 5, 10, 16]\n"
    "causal, bottom-right within each sequence",
    fontsize=9,
)
ax.set_xlabel("packed key j", fontsize=8)
ax.set_ylabel("packed query i", fontsize=8)
plt.show()

q = torch.randn(1, 4, 10, 16, generator=gen, dtype=torch.float64)
k, v = (torch.randn(1, 4, 16, 16, generator=gen, dtype=torch.float64) for _ in range(2))
out = varlen_attention(q, k, v, cu_q, cu_k, is_causal=True, causal_alignment="bottom_right")
alone = naive_attention(
    q[:, :, 3:8], k[:, :, 5:10], v[:, :, 5:10], is_causal=True, causal_alignment="bottom_right"
)
print("sequence 1 packed vs alone:", float((out[:, :, 3:8] - alone).abs().max()))
