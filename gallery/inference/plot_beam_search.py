"""
Beam search: a wider search for a more likely sequence
======================================================

Greedy decoding commits to the most likely token at every step, so a token
that looks best now can lead into continuations that are all unlikely.
:func:`llmref.inference.beam_search` (which :func:`llmref.models.generate`
runs for ``num_beams > 1``) keeps the ``num_beams`` best partial sequences
instead and extends each of them. With a vocabulary of 8 tokens every
4-token continuation can be scored, so here we can see how close greedy
decoding and beams of width 2 to 4 get to the most likely continuation, on
one prompt step by step and then over many prompts. A last part adds an
end-of-sequence token and shows how ``length_penalty`` decides which finished
hypothesis wins.
"""

# %%
# A small model with uncertain choices
# ------------------------------------
# A random 2-layer decoder over 8 tokens. With ``init_std=0.2`` its next-token
# distributions are spread out (their mean entropy is printed below; a uniform
# distribution has :math:`\log 8 \approx 2.08` nats), so the first token is
# often a poor guide to the whole sequence. The model runs in float64: the
# totals compared below are sums of log-probabilities, and float64 keeps
# rounding far below the differences between them.

import itertools

import matplotlib.pyplot as plt
import torch

from llmref.inference import beam_search
from llmref.models import DecoderConfig, DecoderLM, generate

torch.set_num_threads(1)  # a model this small runs fastest without intra-op threads
torch.manual_seed(0)
V = 8
model = (
    DecoderLM(DecoderConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, init_std=0.2))
    .double()
    .eval()
)
T, N, P = 6, 4, 32  # prompt length, tokens searched, prompts
prompts = torch.randint(0, V, (P, T), generator=torch.Generator().manual_seed(1))


def every_continuation(prompts: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Summed log-probability of every continuation of 1..depth tokens.

    Entry ``d - 1`` has shape ``(P, V**d)``; the continuation ``(y_1, ..., y_d)``
    sits at index ``y_1 V^(d-1) + ... + y_d``.
    """
    seqs, totals, levels = prompts[:, None], torch.zeros(len(prompts), 1).double(), []
    for _ in range(depth):
        n = seqs.shape[1]
        with torch.no_grad():
            logits = model(seqs.reshape(len(prompts) * n, -1))[:, -1]
        totals = (totals[..., None] + logits.log_softmax(-1).view(-1, n, V)).flatten(1)
        tokens = torch.arange(V).repeat(n).expand(len(prompts), -1)
        seqs = torch.cat([seqs.repeat_interleave(V, dim=1), tokens[..., None]], dim=2)
        levels.append(totals)
    return levels


def index(tokens: torch.Tensor) -> torch.Tensor:
    """Position of each continuation (a row of ``tokens``) in its level."""
    powers = V ** torch.arange(tokens.shape[-1] - 1, -1, -1)
    return (tokens * powers).sum(-1)


levels = every_continuation(prompts, N)  # V + V^2 + V^3 + V^4 sequences per prompt
first = levels[0].exp()
entropy = float(-(first * first.log()).sum(-1).mean())
best = levels[-1].max(dim=1).values  # the most likely N-token continuation
print(f"mean entropy of the first next-token distribution: {entropy:.2f} nats")

# %%
# The search on one prompt
# ------------------------
# For each beam width, ``beam_search(..., max_new_tokens=t, length_penalty=0,
# num_return_sequences=num_beams)`` returns the beams alive after step ``t``:
# with no end-of-sequence token nothing finishes before the last step, where
# the best ``num_beams`` candidates (those that would have run on) are
# returned, and with ``length_penalty=0`` a hypothesis' score is its summed
# log-probability. Running it for ``t = 1 .. 4`` draws the search as it went
# (the script checks every score against the exhaustive table). Greedy
# decoding is the width-1 case, and the script checks that
# :func:`~llmref.models.generate` gives the same tokens. The prompt shown is
# the one, among the 32, on which greedy decoding ends furthest below the
# most likely continuation.

greedy = generate(model, prompts, N)[:, T:]
assert torch.equal(greedy, beam_search(model, prompts, num_beams=1, max_new_tokens=N)[:, T:])
greedy_total = levels[-1].gather(1, index(greedy)[:, None])[:, 0]
shown = int((best - greedy_total).argmax())
prompt = prompts[shown : shown + 1]
best_path = int(levels[-1][shown].argmax())
best_tokens = [best_path // V ** (N - d) % V for d in range(1, N + 1)]
print(f"prompt {shown}: greedy {greedy[shown].tolist()}, best {best_tokens}")


def beams_after(num_beams: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The beams alive after ``steps`` steps (tokens after the prompt) and their scores."""
    out, scores = beam_search(
        model,
        prompt,
        num_beams=num_beams,
        max_new_tokens=steps,
        length_penalty=0.0,
        num_return_sequences=num_beams,
        return_scores=True,
    )
    return out[:, T:], scores


jitter = torch.rand(V**N, generator=torch.Generator().manual_seed(2)) * 0.3 - 0.15
fig, axes = plt.subplots(1, 4, figsize=(13, 4.6), sharey=True, layout="constrained")
lowest = 0.0  # the lowest score of a kept beam, to zoom in on the top of the grey columns
for num_beams, ax in zip(range(1, 5), axes, strict=True):
    for d in range(1, N + 1):  # every continuation (grey)
        ax.scatter(d + jitter[: V**d], levels[d - 1][shown], s=4, color="#a0aec0", lw=0)
    for t in range(1, N + 1):  # the beams kept after each step, joined to their parents
        tokens, scores = beams_after(num_beams, t)
        assert torch.allclose(scores, levels[t - 1][shown, index(tokens)])
        parents = (
            [0.0] * len(tokens) if t == 1 else levels[t - 2][shown, index(tokens[:, :-1])].tolist()
        )
        for parent, score in zip(parents, scores.tolist(), strict=True):
            ax.plot([t - 1, t], [parent, score], color="C0", lw=1, alpha=0.6)
        ax.scatter([t] * len(scores), scores, color="C0", s=18, zorder=3)
        lowest = min(lowest, float(scores.min()))
    winner = tokens[0]  # the best of the last step's beams
    path = [0.0] + [float(levels[d - 1][shown, index(winner[:d])]) for d in range(1, N + 1)]
    ax.plot(range(N + 1), path, color="C0", lw=2.5, label="returned")
    opt = [0.0] + [float(levels[d - 1][shown, best_path // V ** (N - d)]) for d in range(1, N + 1)]
    ax.plot(range(N + 1), opt, color="k", ls="--", lw=1, label="most likely")
    ax.scatter([N], [best[shown]], marker="*", s=160, color="k", zorder=4)
    name = "greedy (num_beams=1)" if num_beams == 1 else f"num_beams={num_beams}"
    ax.set_title(f"{name}\nlog p = {path[-1]:.2f} (best {float(best[shown]):.2f})", fontsize=10)
    ax.set_xticks(range(N + 1))
    ax.set_xlabel("tokens generated")
axes[0].set_ylim(lowest - 3, 0.4)
axes[0].set_ylabel("summed log-probability of the prefix")
axes[0].legend(loc="lower left", fontsize=8)
fig.suptitle(f"Beams kept at each step (blue) among all {V}^t continuations (grey)")
plt.show()

# %%
# Reading the panels: the grey columns hold every continuation of 1 to 4
# tokens (they reach further down than the frame), the blue dots and lines
# the beams kept after each step and the prefixes they extend, the thick blue
# line the sequence returned. The dashed line leads to the most likely
# 4-token continuation (the star), found by scoring all :math:`8^4` of them.
# Greedy decoding only ever extends its one prefix by that prefix's best
# token. The search loses the most likely continuation for good as soon as
# one of its prefixes ranks below the ``num_beams`` best of a step, which
# happens when its first tokens are not the model's favourites and it only
# pulls ahead later: a wider beam keeps more such runners-up alive. Scores
# only fall as tokens are added (every log-probability is negative), so a
# path that starts lower wins only by losing less on the later tokens.

# %%
# Over many prompts
# -----------------
# Left: on the 32 prompts, how often each beam width returns the most likely
# 4-token continuation, and how far below it it ends on average. Right: 12
# tokens, where :math:`8^{12}` continuations are too many to score, so each
# width is compared with greedy decoding instead, on 100 prompts: the gain in
# summed log-probability of the returned sequence over greedy's. Beam search
# is not exact, and a wider beam is not guaranteed to do better than a
# narrower one, or than greedy: the beams that push greedy's path out of the
# search can lead to worse continuations than greedy's. Those are the points
# below zero; the script prints how many there are for each width.

widths = [1, 2, 3, 4]
found, gap = [], []
for num_beams in widths:
    _, scores = beam_search(
        model,
        prompts,
        num_beams=num_beams,
        max_new_tokens=N,
        length_penalty=0.0,
        return_scores=True,
    )
    found.append(float((scores >= best - 1e-9).double().mean()))
    gap.append(float((best - scores).mean()))
    print(f"num_beams={num_beams}: best continuation on {found[-1]:.0%}, mean gap {gap[-1]:.3f}")

long_prompts = torch.randint(0, V, (100, T), generator=torch.Generator().manual_seed(3))
with torch.no_grad():
    out = generate(model, long_prompts, 12)
    step_lp = model(out).log_softmax(-1)[:, T - 1 : -1].gather(2, out[:, T:, None])
greedy_long = step_lp.sum((1, 2))
gains = {}
for num_beams in widths[1:]:
    _, scores = beam_search(
        model,
        long_prompts,
        num_beams=num_beams,
        max_new_tokens=12,
        length_penalty=0.0,
        return_scores=True,
    )
    gains[num_beams] = scores - greedy_long
    worse = int((gains[num_beams] < -1e-9).sum())
    print(
        f"12 tokens, num_beams={num_beams}: mean gain {float(gains[num_beams].mean()):.3f}, "
        f"better than greedy on {int((gains[num_beams] > 1e-9).sum())} prompts, worse on {worse}"
    )

fig, (ax_found, ax_gain) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
ax_found.bar(widths, found, color="C0")
for w, f, g in zip(widths, found, gap, strict=True):
    ax_found.text(w, f + 0.02, f"gap {g:.3f}", ha="center", fontsize=8)
ax_found.set(
    xlabel="num_beams (1 = greedy)",
    ylabel="share of prompts",
    ylim=(0, 1.1),
    xticks=widths,
    title=f"{N} tokens: the most likely continuation found",
)
ax_gain.axhline(0, color="#a0aec0", lw=1)
ax_gain.boxplot(list(gains.values()), positions=list(gains), widths=0.5, showfliers=False)
for w, g in gains.items():
    x = w + 0.12 * (torch.rand(len(g), generator=torch.Generator().manual_seed(w)) - 0.5)
    ax_gain.scatter(x, g, s=6, color="C0", alpha=0.5)
ax_gain.set(
    xlabel="num_beams",
    ylabel="log p(beam output) - log p(greedy output)",
    title="12 tokens: gain over greedy on 100 prompts",
)
plt.show()

# %%
# The length penalty
# ------------------
# Now one token ends a sequence. We give that role to the token the model
# predicts least often on average, so hypotheses end at varied lengths, and
# keep it out of the prompts. A finished hypothesis of :math:`n` tokens (the
# end token included) is ranked by :math:`\log p(y) / n^{\alpha}` with
# :math:`\alpha` = ``length_penalty``. Since :math:`\log p(y)` is negative and
# falls with every token, :math:`\alpha = 0` favours the short hypotheses,
# and a larger :math:`\alpha` divides long ones by more and lets them win.
# Sequences cut at ``max_new_tokens`` count as finished at that length.
#
# Left: the finished hypotheses of one prompt (those returned for any of the
# penalties), with, for each penalty, the winner ringed and the curve
# :math:`\log p = s\, n^{\alpha}` through it: a hypothesis above a curve
# would score more than that penalty's winner. Right: over 50 prompts, the
# mean length of what :func:`~llmref.models.generate` returns with
# ``num_beams=4`` against the penalty, beside greedy decoding's.

with torch.no_grad():
    eos = int(model(prompts).softmax(-1).mean((0, 1)).argmin())
NEW, BEAMS = 10, 4
eos_prompts = torch.randint(0, V - 1, (50, T), generator=torch.Generator().manual_seed(4))
eos_prompts += (eos_prompts >= eos).long()  # every token but the end token


def continuations(out: torch.Tensor) -> torch.Tensor:
    """The generated part of ``out``, padded with the end token to ``NEW`` tokens."""
    return torch.nn.functional.pad(out[:, T:], (0, T + NEW - out.shape[1]), value=eos)


def log_p_and_length(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability and length (end token included) of each continuation."""
    gen = continuations(out)
    with torch.no_grad():
        logits = model(torch.cat([out[:, :T], gen], dim=1))[:, T - 1 : -1]
    token_lp = logits.log_softmax(-1).gather(2, gen[..., None])[..., 0]
    is_eos = (gen == eos).long()
    counted = is_eos.cumsum(1) - is_eos == 0  # the tokens up to the first end token
    return (token_lp * counted).sum(1), counted.sum(1)


alphas = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
mean_length, winners = [], []
for a in alphas:
    out = generate(model, eos_prompts, NEW, num_beams=BEAMS, length_penalty=a, eos_token_id=eos)
    mean_length.append(float(log_p_and_length(out)[1].double().mean()))
    winners.append(continuations(out))
greedy_eos = generate(model, eos_prompts, NEW, eos_token_id=eos)
greedy_length = float(log_p_and_length(greedy_eos)[1].double().mean())
# the prompt whose output changes most often as the penalty grows
changes = sum((w1 != w2).any(dim=1).long() for w1, w2 in itertools.pairwise(winners))
shown = int(changes.argmax())
prompt = eos_prompts[shown : shown + 1]

pool: dict[tuple, tuple[int, float]] = {}  # continuation -> (length, log p)
chosen = {}  # penalty -> (length, log p) of the hypothesis it returned first
for a in alphas:
    out, scores = beam_search(
        model,
        prompt,
        num_beams=BEAMS,
        max_new_tokens=NEW,
        length_penalty=a,
        eos_token_id=eos,
        num_return_sequences=BEAMS,
        return_scores=True,
    )
    log_p, length = log_p_and_length(out)
    assert torch.allclose(scores, log_p / length.double() ** a)  # the documented score
    for row, n, lp in zip(
        continuations(out).tolist(), length.tolist(), log_p.tolist(), strict=True
    ):
        pool[tuple(row[:n])] = (n, lp)
    chosen[a] = (int(length[0]), float(log_p[0]))
print(f"prompt {shown}: {len(pool)} finished hypotheses over all penalties")
for a, (n_won, lp_won) in chosen.items():
    beaten_by = sum(lp / n**a > lp_won / n_won**a + 1e-9 for n, lp in pool.values())
    print(
        f"  length_penalty={a:+.1f}: winner n={n_won}, log p={lp_won:.2f}; "
        f"{beaten_by} hypotheses found under other penalties score higher"
    )

fig, (ax_pool, ax_len) = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
ns = torch.linspace(1, NEW, 100, dtype=torch.float64)
lengths, log_ps = zip(*pool.values(), strict=True)
ax_pool.scatter(lengths, log_ps, color="#4a5568", s=14, zorder=3, label="finished hypotheses")
for i, a in enumerate([0.0, 0.5, 1.0, 2.0]):
    n_won, lp_won = chosen[a]
    curve = lp_won / n_won**a * ns**a
    ax_pool.plot(ns, curve, color=f"C{i + 1}", lw=1.2, label=f"length_penalty={a:g}")
    ax_pool.scatter(
        [n_won], [lp_won], s=110 + 60 * i, facecolor="none", edgecolor=f"C{i + 1}", lw=1.5, zorder=4
    )
ax_pool.set(
    xlabel="length n (end token included)",
    ylabel="log p of the hypothesis",
    ylim=(min(log_ps) - 1, 0.3),
    title="One prompt: each penalty's winner and its iso-score curve",
)
ax_pool.title.set_fontsize(10)
ax_pool.legend(fontsize=8, loc="lower left")
ax_len.plot(alphas, mean_length, "o-", label=f"beam search, num_beams={BEAMS}")
ax_len.axhline(greedy_length, color="#a0aec0", ls="--", label="greedy")
ax_len.set(
    xlabel="length_penalty",
    ylabel="mean length of the output",
    ylim=(0, NEW + 0.5),
    title=f"50 prompts, at most {NEW} new tokens",
)
ax_len.title.set_fontsize(10)
ax_len.legend(fontsize=8)
plt.show()

# %%
# Reading the plot: with ``length_penalty=0`` the winner is simply the
# finished hypothesis with the highest :math:`\log p` (a flat line), usually
# a short one, since every extra token costs log-probability. The larger the
# penalty, the more steeply the curve through a winner falls with length, so
# a long hypothesis can clear the curve of a short one and the winner moves
# right; on average the output grows towards ``max_new_tokens``, past
# greedy decoding's length, which no penalty affects. A negative penalty
# multiplies :math:`\log p` by a power of the length instead and favours
# short outputs even more than 0 does. Each run ranks only the hypotheses it
# finished itself, and which those are depends on the penalty too (the pool
# keeps the ``num_beams`` best penalised scores, and the stopping rule uses
# the penalty), so the script also counts, for each penalty, the hypotheses
# found under the other penalties that would have beaten its winner. See
# :doc:`/theory/inference/decoding` for the algorithm and its stopping rules.
