"""
Attention is blind to order
===========================

Self-attention without position information is *permutation-equivariant*:
shuffling the tokens only shuffles the output. This example shuffles a short
sequence and compares the attention maps of plain attention and of attention
with rotary position embedding (:class:`llmref.position.RotaryEmbedding`).
"""

import matplotlib.pyplot as plt
import torch

from llmref.attention import naive_attention
from llmref.position import RotaryEmbedding, nope

torch.manual_seed(0)
T, D = 10, 32
q, k, v = (torch.randn(1, 1, T, D, dtype=torch.float64) for _ in range(3))
perm = torch.randperm(T)
inverse = torch.argsort(perm)

# %%
# Without positions
# -----------------
# Attention on the shuffled tokens, un-shuffled afterwards, is exactly attention
# on the original tokens: the weights of each query over the keys are the same
# numbers in another order. :func:`llmref.position.nope` is the explicit "no
# encoding" choice.


def weights(q, k, v):
    return naive_attention(q, k, v, return_weights=True)[1][0, 0]


plain = weights(nope(q), nope(k), v)
plain_shuffled = weights(nope(q[:, :, perm]), nope(k[:, :, perm]), v[:, :, perm])
restored = plain_shuffled[inverse][:, inverse]
print("no positions, max difference after un-shuffling:", float((restored - plain).abs().max()))

# %%
# With RoPE
# ---------
# RoPE rotates each query and key by an angle proportional to its position, so
# the same tokens in another order are different vectors, and the weights change.

rope = RotaryEmbedding(D, dtype=torch.float64)
rotated = weights(rope(q), rope(k), v)
rotated_shuffled = weights(rope(q[:, :, perm]), rope(k[:, :, perm]), v[:, :, perm])
restored_rope = rotated_shuffled[inverse][:, inverse]
print("RoPE, max difference after un-shuffling:", float((restored_rope - rotated).abs().max()))

fig, axes = plt.subplots(2, 2, figsize=(8, 7.5), constrained_layout=True)
panels = [
    (plain, "no positions: original order"),
    (restored, "no positions: shuffled, then un-shuffled"),
    (rotated, "RoPE: original order"),
    (restored_rope, "RoPE: shuffled, then un-shuffled"),
]
for ax, (w, title) in zip(axes.flat, panels, strict=True):
    image = ax.imshow(w, cmap="viridis", vmin=0, vmax=float(plain.max().clamp(min=rotated.max())))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
fig.colorbar(image, ax=axes, shrink=0.7, label="attention weight")
fig.suptitle("Shuffling tokens: attention without positions cannot tell")
plt.show()
