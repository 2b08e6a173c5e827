"""
Speculative decoding: acceptance rate against the number of draft tokens
========================================================================

:func:`llmref.inference.speculative_generate` lets a cheap *draft* model
propose ``k`` tokens and the *target* check all of them in one forward pass.
How much that saves depends on how often the target accepts the draft's
tokens. Here a small random target decodes greedily with two kinds of draft
that run quickly on a CPU — its own first layers
(:func:`llmref.inference.early_exit_draft`) and a separate one-layer model
distilled from it for a few seconds — and we plot the acceptance rate and the
tokens produced per target forward pass against ``k``. (The int4-packed copy
of SmolLM2-135M, the third kind of draft, is measured by the
``bench_speculative`` benchmark: it takes minutes on a CPU.) Every output is
checked equal to the target's own greedy output.
"""

# %%
# A target and its drafts
# -----------------------
# The target is a random 4-layer decoder whose token embedding is scaled up,
# so that its next-token choices are decisive rather than near-uniform (as a
# trained model's are) and partly visible in its first layers. Random weights
# make a poor language model but a fair test of agreement: the early-exit drafts share
# the target's embedding, first layers and head, the separate draft only
# learns the target's next-token distribution by distillation (a KL loss on
# random token sequences), and the int4 draft is the whole target with its linear
# layers packed to 4 bits (:func:`llmref.quant.quantize_model`), as one would
# draft for SmolLM2-135M (``benchmarks/bench_speculative.py`` times that one).

import copy

import matplotlib.pyplot as plt
import torch

from llmref.inference import early_exit_draft, speculative_generate
from llmref.models import DecoderConfig, DecoderLM, generate
from llmref.quant import quantize_model

torch.set_num_threads(1)  # models this small run fastest without intra-op threads
torch.manual_seed(0)
VOCAB = 64
target = DecoderLM(
    DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=4, n_heads=4, d_ff=128)
).eval()
with torch.no_grad():  # a stronger embedding: decisive next tokens, partly visible early
    target.embed.weight.mul_(5)
student = DecoderLM(DecoderConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, d_ff=64))
optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
for _ in range(100):
    ids = torch.randint(0, VOCAB, (16, 24))
    with torch.no_grad():
        teacher = target(ids).log_softmax(-1)
    loss = torch.nn.functional.kl_div(
        student(ids).log_softmax(-1), teacher, log_target=True, reduction="batchmean"
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"distillation KL after 100 steps: {loss.item() / 24:.3f} nats per token")
student.eval()

int4_copy = copy.deepcopy(target)
quantize_model(int4_copy, "int4")  # rows of 64 and 128 inputs: one group each

drafts = {
    "first 1 of 4 layers": early_exit_draft(target, 1),
    "first 2 of 4 layers": early_exit_draft(target, 2),
    "separate 1-layer model (distilled)": student,
    "the target packed to int4": int4_copy,
}

# %%
# Acceptance and tokens per target call
# -------------------------------------
# Greedy decoding of 32 tokens after an 8-token prompt, for ``k`` = 1 to 6.
# The dashed lines are the expectation :math:`(1 - a^{k+1}) / (1 - a)` for
# each draft's acceptance rate :math:`a` at ``k = 1``: it assumes each token
# is accepted independently with the same probability, which greedy drafts
# from one model roughly follow.

prompt = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
reference = generate(target, prompt, 32)
ks = [1, 2, 4, 6]
results: dict[str, list] = {}
for name, draft in drafts.items():
    results[name] = []
    for k in ks:
        out, stats = speculative_generate(
            target, draft, prompt, 32, num_draft_tokens=k, return_stats=True
        )
        assert torch.equal(out, reference)  # greedy speculative decoding is exact
        results[name].append(stats)
    rates = ", ".join(
        f"k={k}: {s.acceptance_rate:.2f}" for k, s in zip(ks, results[name], strict=True)
    )
    print(f"{name}: acceptance {rates}")

fig, (ax_rate, ax_tokens) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
for (name, stats), color in zip(results.items(), ["C0", "C1", "C2", "C3"], strict=True):
    ax_rate.plot(ks, [s.acceptance_rate for s in stats], "o-", color=color, label=name)
    ax_tokens.plot(ks, [s.tokens_per_target_call for s in stats], "o-", color=color)
    a = min(stats[0].acceptance_rate, 0.999)
    ax_tokens.plot(ks, [(1 - a ** (k + 1)) / (1 - a) for k in ks], "--", color=color)
ax_rate.set(xlabel="draft tokens per round k", ylabel="acceptance rate", ylim=(0, 1.05))
ax_rate.legend(fontsize=8)
ax_tokens.set(
    xlabel="draft tokens per round k",
    ylabel="new tokens per target forward",
    title="measured (solid) and (1 - a^(k+1)) / (1 - a) (dashed)",
)
ax_tokens.title.set_fontsize(9)
plt.show()

# %%
# Reading the plot: the acceptance rate falls slowly with ``k`` (a later
# draft token is only proposed after the earlier ones, so rejections cut the
# round short and the harder positions are over-represented), while the tokens
# per target call keep rising and flatten at :math:`1 / (1 - a)`. Whether that
# is a speed-up depends on the draft's cost ``c`` relative to the target: the
# expected speed-up is :math:`(1 - a^{k+1}) / ((1 - a)(k c + 1))`. The
# early-exit drafts cost 1/4 and 1/2 of the target, so a deeper draft has to
# buy its cost back with acceptance. The int4 copy agrees with the target about
# as often as the two-layer early exit here, but on a CPU its cost is not a
# fraction of the target's (the benchmark measures c of about 0.7 on
# SmolLM2-135M), which is why it gives no speed-up there; see :doc:`/theory/inference/speculative`.
