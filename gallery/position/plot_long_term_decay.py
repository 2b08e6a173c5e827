"""
Scores against relative distance
================================

How does the attention score of a query and a key depend on how far apart
they are? For RoPE the answer is an oscillating envelope (its *long-term
decay*); xPos adds an explicit exponential decay; ALiBi and KERPLE subtract a
penalty that grows with distance; the dot product of two sinusoidal encodings
decays with ripples. All are computed with :mod:`llmref.position`.
"""

import matplotlib.pyplot as plt
import torch

from llmref.position import (
    alibi_slopes,
    apply_rope,
    apply_xpos,
    kerple_bias,
    rope_cos_sin,
    rope_frequencies,
    sinusoidal_embedding,
    xpos_scale,
)

D = 128
distances = torch.arange(0, 4097)
inv_freq, _ = rope_frequencies(D, dtype=torch.float64)

# %%
# RoPE
# ----
# With ``q = k`` the score at distance ``r`` is ``sum_i |q_i|^2 cos(r theta_i)``.
# For all-ones vectors that is the curve Su et al. plot; the bound from
# summation by parts is the average of the partial sums ``|S_j|``. Random
# vectors average to zero at every distance, so the envelope is what matters.

cos, sin = rope_cos_sin(inv_freq, distances)
ones = torch.ones(1, D, dtype=torch.float64)
rotated = apply_rope(ones.expand(len(distances), D), cos, sin)
rope_score = (rotated * ones).sum(-1)  # q = k = 1 at distance r

phases = torch.exp(1j * distances[:, None].double() * inv_freq[None, :])
partial_sums = phases.cumsum(dim=-1).abs()
bound = partial_sums.mean(dim=-1)

# %%
# xPos
# ----
# The same rotation with the query scaled by ``zeta ** (n / 512)`` and the key
# by ``zeta ** (-m / 512)``: an exponential decay per pair on top of RoPE.

q_pos = distances  # query at position r, key at 0
cos_q, sin_q = rope_cos_sin(inv_freq, q_pos)
cos_k, sin_k = rope_cos_sin(inv_freq, torch.zeros_like(q_pos))
scale_q = xpos_scale(D, q_pos, dtype=torch.float64)
scale_k = xpos_scale(D, torch.zeros_like(q_pos), dtype=torch.float64)
q_x, k_x = apply_xpos(
    ones.expand(len(distances), D),
    ones.expand(len(distances), D),
    cos_q,
    sin_q,
    cos_k,
    sin_k,
    scale_q,
    scale_k,
)
xpos_score = (q_x * k_x).sum(-1)

# %%
# Biases and sinusoids
# --------------------
# ALiBi's bias of the three flattest heads of an 8-head model, KERPLE's
# logarithmic kernel, and the dot product of two sinusoidal encodings.

slopes = alibi_slopes(8, dtype=torch.float64)
kerple = kerple_bias(
    1,
    4097,
    r1=torch.tensor([1.0], dtype=torch.float64),
    r2=torch.tensor([0.5], dtype=torch.float64),
    offset=4096,
)[0, 0].flip(0)
pe = sinusoidal_embedding(4097, D, dtype=torch.float64)
sinusoid_dot = pe @ pe[0]

fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
ax = axes[0, 0]
ax.plot(distances, rope_score / rope_score[0], linewidth=0.8, label="score of q = k = 1")
ax.plot(distances, bound / bound[0], label="bound: mean of |S_j|")
ax.set_xscale("symlog", linthresh=10)
ax.set_title("RoPE: oscillating long-term decay (relative to r = 0)")
ax.legend()
ax = axes[0, 1]
ax.plot(distances, xpos_score, label="xPos, q = k = 1", color="tab:green")
ax.plot(distances, rope_score, linewidth=0.5, alpha=0.5, label="RoPE", color="tab:blue")
ax.set_xscale("symlog", linthresh=10)
ax.set_title("xPos: RoPE times an exponential decay")
ax.legend()
ax = axes[1, 0]
for h in (5, 6, 7):
    ax.plot(
        distances, -slopes[h] * distances, label=f"ALiBi head {h + 1}, slope {float(slopes[h]):.4f}"
    )
ax.plot(distances, kerple, label="KERPLE log, r1 = 1, r2 = 0.5")
ax.set_title("Additive biases")
ax.legend()
ax = axes[1, 1]
ax.plot(distances, sinusoid_dot, color="tab:purple")
ax.set_xscale("symlog", linthresh=10)
ax.set_title("Sinusoidal: PE(p) . PE(p + r)")
for ax in axes.flat:
    ax.set_xlabel("relative distance r")
axes[0, 0].set_ylabel("relative score")
axes[1, 0].set_ylabel("bias")
plt.show()
