"""
The sampling rules on one next-token distribution
=================================================

A language model gives a score (logit) to every token of its vocabulary; a
sampler turns the scores into a distribution and draws from it. Each rule of
:mod:`llmref.inference` changes that distribution: temperature reshapes it,
the truncation rules of :data:`llmref.inference.TRUNCATION` remove its tail,
and the penalties lower the tokens already seen. Here each rule is applied to
the same 40-token distribution, then the truncation rules are compared on
distributions of every entropy, and the two kinds of penalty are drawn as
functions of the logit.
"""

# %%
# One distribution, every rule
# ----------------------------
# A long-tailed distribution, as language models produce: a few plausible
# continuations, then a tail of tokens that are each unlikely but together
# carry a quarter of the mass. Every panel shows the distribution the sampler
# draws from after one rule (blue), over the original one (grey outline).
# The truncation panels are drawn from the registry, so a rule registered
# later appears here too.

import math

import matplotlib.pyplot as plt
import torch

from llmref.inference import (
    TRUNCATION,
    apply_temperature,
    presence_frequency_penalty,
    repetition_penalty,
)

V = 40
gen = torch.Generator().manual_seed(0)
rank = torch.arange(V, dtype=torch.float64)
logits = (-1.3 * torch.log1p(rank) + 0.25 * torch.randn(V, generator=gen, dtype=torch.float64))[
    None
]
probs = logits.softmax(-1)[0]
entropy = float(-(probs * probs.log()).sum())
print(f"V = {V}, entropy {entropy:.2f} nats, most likely token p = {float(probs.max()):.2f}")

values = {"top_k": 5, "top_p": 0.8, "min_p": 0.1, "typical": 0.5, "epsilon": 0.02, "eta": 0.02}
seen = torch.tensor([[0, 0, 0, 3, 7]])  # tokens already in the text: 0 three times, 3 and 7 once
panels = {
    "temperature 0.6": apply_temperature(logits, 0.6),
    "temperature 1.5": apply_temperature(logits, 1.5),
}
for name, spec in TRUNCATION.items():
    panels[f"{name} ({spec.parameter}={values[name]})"] = spec.fn(logits, values[name])
panels["repetition_penalty 1.5\n(seen: 0 x3, 3, 7)"] = repetition_penalty(logits, seen, 1.5)
panels["presence 0.5, frequency 0.5\n(seen: 0 x3, 3, 7)"] = presence_frequency_penalty(
    logits, seen, presence_penalty=0.5, frequency_penalty=0.5
)

rows = math.ceil(len(panels) / 2)
fig, axes = plt.subplots(rows, 2, figsize=(11, 2.3 * rows), layout="constrained", sharex=True)
for ax in axes.flat[len(panels) :]:
    ax.remove()  # an odd number of panels: no empty one
for ax, (title, processed) in zip(axes.flat, panels.items(), strict=False):
    new = processed.softmax(-1)[0]
    kept = int(processed.isfinite().sum())
    ax.bar(rank, probs, width=0.9, color="none", edgecolor="#a0aec0", linewidth=0.8)
    ax.bar(rank, new, width=0.6, color="#2b6cb0")
    ax.set_title(f"{title}: {kept} tokens kept", fontsize=9)
    ax.set_ylim(0, 0.75)
    print(f"{title.splitlines()[0]:34s} kept {kept:2d}, p(token 0) {float(new[0]):.3f}")
for ax in axes.flat[len(panels) - 2 : len(panels)]:
    ax.set_xlabel("token id")
for ax in axes[:, 0]:
    ax.set_ylabel("probability")
fig.suptitle("Each rule applied to the same next-token distribution (grey: before)")
plt.show()

# %%
# Reading the panels: temperature keeps every token and only reshapes the
# distribution (the order never changes). Top-k keeps a fixed number of
# tokens whatever their probabilities; top-p keeps the most likely tokens
# until they hold 80 % of the mass; min-p keeps those at least 10 % as likely
# as the best; epsilon cuts at an absolute probability, and eta at a cut-off
# that falls as the entropy rises. Typical sampling keeps the tokens whose
# surprisal is closest to the entropy, which here drops the most likely
# token: it is far *more* likely than typical. The repetition penalty divides
# the positive logits of seen tokens by 1.5 (token 0 loses most), the
# presence and frequency penalties subtract 0.5 per occurrence plus 0.5 once.

# %%
# How many tokens each rule keeps, from confident to flat
# -------------------------------------------------------
# The same distribution at temperatures from 0.3 to 3 sweeps its entropy from
# nearly zero to nearly :math:`\log V`. A fixed top-k keeps the same number of
# tokens throughout, even when one token holds almost all the mass; the
# adaptive rules keep one or two tokens when the model is sure and more as it
# grows unsure. Near the flat end min-p and eta keep every token (none is far
# below the best, and eta's cut-off falls as the entropy rises), while
# epsilon's fixed cut-off still removes the least likely ones.

temperatures = torch.logspace(math.log10(0.3), math.log10(3.0), 40)
entropies, counts = [], {name: [] for name in TRUNCATION}
for t in temperatures.tolist():
    z = apply_temperature(logits, t)
    p = z.softmax(-1)
    entropies.append(float(-(p * p.log()).sum()))
    for name, spec in TRUNCATION.items():
        counts[name].append(int(spec.fn(z, values[name]).isfinite().sum()))

fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
for name, kept in counts.items():
    ax.plot(entropies, kept, marker=".", label=f"{name} = {values[name]}")
ax.axvline(math.log(V), color="#a0aec0", linestyle=":")
ax.text(math.log(V), 2, " log V", color="#718096")
ax.set_xlabel("entropy of the tempered distribution (nats)")
ax.set_ylabel("tokens kept")
ax.set_title("Tokens kept by each truncation rule as the distribution flattens")
ax.legend(fontsize=8)
plt.show()

# %%
# Two kinds of penalty
# --------------------
# For a token seen before, the repetition penalty (CTRL, transformers) maps a
# logit :math:`z` to :math:`z/\theta` when it is positive and :math:`z\theta`
# when negative, so its effect on the probability depends on where the
# logit sits: a logit near zero is barely touched. The presence and
# frequency penalties (OpenAI, vLLM) subtract a constant, which divides the
# token's odds by the same factor wherever its logit is.

z = torch.linspace(-6, 6, 121, dtype=torch.float64)[None]
one_seen = torch.zeros(1, 1, dtype=torch.long)  # token 0 of a one-token vocabulary, seen once
# each logit as its own one-token row, the token seen once
rep = repetition_penalty(z.T, one_seen.expand(121, 1), 1.5).T
pres = presence_frequency_penalty(
    z.T, one_seen.expand(121, 1), presence_penalty=0.5, frequency_penalty=0.5
).T
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.plot(z[0], z[0], color="#a0aec0", linestyle=":", label="unchanged")
ax.plot(z[0], rep[0], label="repetition_penalty 1.5")
ax.plot(z[0], pres[0], label="presence 0.5 + frequency 0.5 (seen once)")
ax.set_xlabel("logit before")
ax.set_ylabel("logit after")
ax.set_title("The penalties on a token seen once, as functions of its logit")
ax.legend()
plt.show()
