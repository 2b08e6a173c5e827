"""
The online softmax, step by step
================================

FlashAttention never holds a whole row of attention scores. It reads keys and
values one block at a time and keeps three running quantities per query: the
largest score so far ``m``, the normaliser ``l`` (the sum of ``exp(s - m)``)
and the unnormalised output ``o``. When a block brings a larger score, what
was accumulated is rescaled by ``exp(m_old - m_new)``. This example runs that
recurrence by hand on one query, checks it against the exact softmax after
every block, and then checks :func:`llmref.attention.chunked_attention`, which
does the same on whole tiles, against :func:`llmref.attention.naive_attention`.
"""

# %%
# One query, 32 keys, blocks of 8
# -------------------------------
# The scores are random except for a large one in the third block, so the
# running maximum jumps there and the earlier sums must be rescaled. The
# values are scalars (``Dv = 1``) so that the output is one number we can
# follow.

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from llmref.attention import chunked_attention, naive_attention, split_kv_attention

torch.manual_seed(0)
S, block = 32, 8
scores = torch.randn(S, dtype=torch.float64)
scores[19] = 6.0  # a dominant key in block 2
values = torch.randn(S, dtype=torch.float64)

m, ell, o = -math.inf, 0.0, 0.0
history = []
for start in range(0, S, block):
    s = scores[start : start + block]
    v = values[start : start + block]
    m_new = max(m, s.max().item())
    correction = math.exp(m - m_new)  # exp(-inf) = 0 on the first block
    p = torch.exp(s - m_new)
    ell = correction * ell + p.sum().item()
    o = correction * o + (p * v).sum().item()
    m = m_new
    seen = scores[: start + block]
    exact = (torch.softmax(seen, 0) * values[: start + block]).sum().item()
    history.append((start + block, m, ell, o / ell, exact, correction))
    print(
        f"keys 0..{start + block - 1:2d}: m = {m:6.3f}  l = {ell:8.4f}  "
        f"correction = {correction:.2e}  o/l = {o / ell:+.6f}  exact = {exact:+.6f}"
    )

lse = m + math.log(ell)
print(f"log-sum-exp: online {lse:.12f}, torch.logsumexp {torch.logsumexp(scores, 0).item():.12f}")

# %%
# After every block, ``o / l`` is exactly the softmax-weighted average of the
# values seen so far, and ``m + log(l)`` is their log-sum-exp. The correction
# factor is ``exp(-inf) = 0`` on the first block (nothing to rescale), ``1``
# when the maximum does not change, and small when it jumps: here the big
# score of block 2 shrinks everything accumulated before by ``exp(m_old - 6)``.

fig, axes = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True, layout="constrained")
ax = axes[0]
ax.bar(range(S), scores, color=["C0" if (j // block) % 2 == 0 else "C9" for j in range(S)])
steps_x = [0] + [h[0] for h in history]
ax.step(steps_x, [history[0][1]] + [h[1] for h in history], where="pre", color="C3", lw=2)
ax.set_ylabel("score $s_j$")
ax.set_title("scores by block (alternating colours); red: running max $m$ after each block")

ax = axes[1]
m_final = history[-1][1]
partial = torch.cumsum(torch.exp(scores - m_final), 0)  # needs the whole row at once
ax.step(
    range(S),
    partial,
    where="mid",
    color="0.6",
    label=r"exact $\sum_{j' \leq j} e^{s_{j'} - m_\mathrm{final}}$",
)
ends = [h[0] - 1 for h in history]
ax.plot(
    ends,
    [h[2] * math.exp(h[1] - m_final) for h in history],
    "o",
    color="C1",
    ms=8,
    label=r"online $\ell \, e^{m - m_\mathrm{final}}$ after each block",
)
ax.set_yscale("log")
ax.set_ylabel("normaliser")
ax.legend(fontsize=8, loc="upper left")

ax = axes[2]
running = torch.cumsum(torch.exp(scores - m_final) * values, 0) / partial
ax.step(range(S), running, where="mid", color="0.6", label="exact, keys 0..j")
ax.plot(ends, [h[3] for h in history], "o", color="C0", ms=8, label="online $o / \\ell$")
ax.set_ylabel("attention output")
ax.set_xlabel("key position j")
ax.legend(fontsize=8)
plt.show()

# %%
# Whole tiles: ``chunked_attention``
# ----------------------------------
# :func:`~llmref.attention.chunked_attention` applies the same recurrence to a
# ``(block_q, block_k)`` tile of scores at a time, for every query row of the
# tile at once, and can return the log-sum-exp of each row. In float64 it
# agrees with the naive reference to rounding, whatever the tile size --
# including sizes that do not divide the sequence (300):

q, k, v = (torch.randn(1, 4, 300, 32, dtype=torch.float64) for _ in range(3))
ref, w = naive_attention(q, k, v, is_causal=True, return_weights=True)
scale = 32**-0.5
causal = torch.ones(300, 300, dtype=torch.bool).tril()
ref_lse = torch.logsumexp((q @ k.transpose(-1, -2) * scale).masked_fill(~causal, -math.inf), -1)
sizes = [7, 32, 64, 100, 128, 512]
errors = []
for bs in sizes:
    out, lse = chunked_attention(q, k, v, is_causal=True, block_size=bs, return_lse=True)
    errors.append(((out - ref).abs().max().item(), (lse - ref_lse).abs().max().item()))
    print(f"block_size={bs:3d}: max |out - naive| = {errors[-1][0]:.1e}, |lse| {errors[-1][1]:.1e}")

# %%
# Which tiles the causal kernel visits
# ------------------------------------
# With ``is_causal=True`` a key tile that starts after the last query of the
# query tile holds only future keys; it is skipped without being computed. The
# diagonal tiles are computed with the causal mask applied inside them. The
# picture colours each ``(query tile, key tile)`` pair for ``T = 512`` and
# tiles of 64: about half the work is skipped.

T, bs = 512, 64
n = T // bs
kind = torch.zeros(n, n)
for qi in range(n):
    for kj in range(n):
        qs, qe, ks = qi * bs, (qi + 1) * bs, kj * bs
        if ks > qe - 1:
            kind[qi, kj] = 0  # skipped: every key is in the future
        elif ks + bs - 1 > qs:
            kind[qi, kj] = 1  # diagonal: masked inside
        else:
            kind[qi, kj] = 2  # fully visible
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
ax0.imshow(kind, cmap=ListedColormap(["#edf2f7", "#f6ad55", "#2b6cb0"]), vmin=0, vmax=2)
ax0.set_xlabel("key tile")
ax0.set_ylabel("query tile")
ax0.set_title(
    f"T={T}, tiles of {bs}: {int((kind == 2).sum())} full, {int((kind == 1).sum())} "
    f"diagonal, {int((kind == 0).sum())} skipped",
    fontsize=9,
)
ax1.loglog(sizes, [max(e[0], 1e-17) for e in errors], "o-", label="output")
ax1.loglog(sizes, [max(e[1], 1e-17) for e in errors], "s--", label="log-sum-exp")
ax1.axhline(torch.finfo(torch.float64).eps, color="0.5", ls=":", label="float64 eps")
ax1.set_xlabel("block_size")
ax1.set_ylabel("max |chunked - naive|")
ax1.set_title("float64: exact to rounding for every tile size", fontsize=9)
ax1.legend(fontsize=8)
plt.show()

# %%
# The backward pass recomputes
# ----------------------------
# ``chunked_attention`` saves only its inputs, the output and the per-row
# log-sum-exp. Its backward rebuilds each tile of probabilities as
# ``exp(s - lse)`` -- no running max needed the second time -- and gets the
# same gradients as autograd through the naive formula, which stored the whole
# ``T x S`` weight matrix:

qs_, ks_, vs_ = (x[:, :, :64].clone().requires_grad_() for x in (q, k, v))
grads = []
for fn in (naive_attention, chunked_attention):
    extra = {"block_size": 16} if fn is chunked_attention else {}
    out = fn(qs_, ks_, vs_, is_causal=True, **extra)
    grads.append(torch.autograd.grad(out.square().sum(), (qs_, ks_, vs_)))
for name, a, b in zip("qkv", *grads, strict=True):
    print(f"d{name}: max |chunked - naive| = {(a - b).abs().max().item():.1e}")

# %%
# Two uses of the log-sum-exp
# ---------------------------
# The returned log-sum-exp makes partial results composable. Attention over
# two disjoint sets of keys, each normalised on its own, combines into
# attention over all of them by weighting each part with
# ``exp(lse_part - lse_all)``, where ``lse_all = logaddexp(lse_1, lse_2)`` --
# the same rescaling as above, once. This is how a long key sequence can be
# split across devices (ring attention) or across threads of one decoding
# step (split-K, "Flash-Decoding").
#
# A learned *attention sink* (gpt-oss) is one more softmax entry per head with
# logit ``b`` and no value. It is the initial state ``m = b, l = 1, o = 0`` of
# the recurrence, and in closed form it multiplies the ordinary output by
# ``sigmoid(lse - b)``: the fraction of probability mass left for real keys.

q2, k2, v2 = (x[:, :, :64] for x in (q, k, v))
o1, lse1 = chunked_attention(q2, k2[:, :, :40], v2[:, :, :40], return_lse=True)
o2, lse2 = chunked_attention(q2, k2[:, :, 40:], v2[:, :, 40:], return_lse=True)
lse_all = torch.logaddexp(lse1, lse2)
combined = o1 * torch.exp(lse1 - lse_all)[..., None] + o2 * torch.exp(lse2 - lse_all)[..., None]
print(
    "two halves combined vs all keys:", (combined - naive_attention(q2, k2, v2)).abs().max().item()
)

# Flash-Decoding does this for one decoding query against a long cache: the keys are
# split into chunks that are attended independently and merged by their LSEs.
q_new = q[:, :, -1:]  # the newest token, after the whole cache
for n in (1, 4, 30):
    split = split_kv_attention(q_new, k, v, num_splits=n)
    err = (split - naive_attention(q_new, k, v)).abs().max().item()
    print(f"split_kv_attention, {n:2d} splits vs all keys at once: {err:.1e}")

sinks = torch.tensor([-4.0, 0.0, 2.0, 4.0], dtype=torch.float64)  # one logit per head
with_sinks = naive_attention(q2, k2, v2, is_causal=True, sinks=sinks)
out, lse = chunked_attention(q2, k2, v2, is_causal=True, return_lse=True)
closed_form = out * torch.sigmoid(lse - sinks.view(1, -1, 1))[..., None]
print("sinks via sigmoid(lse - b):", (closed_form - with_sinks).abs().max().item())

fig, ax = plt.subplots(figsize=(8, 3.8), layout="constrained")
mass = torch.sigmoid(lse - sinks.view(1, -1, 1))[0]  # (H, T): mass left for real keys
for h in range(len(sinks)):
    ax.plot(mass[h], label=f"sink logit b = {sinks[h]:+.0f}")
ax.set_xlabel("query position i (causal: i + 1 keys visible)")
ax.set_ylabel("attention mass on real keys")
ax.set_ylim(0, 1.02)
ax.set_title("A learned sink lets a head attend to nothing: mass = sigmoid(lse - b)")
ax.legend(fontsize=8)
plt.show()
