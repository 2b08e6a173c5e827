"""
Training the source notes' text classifier: position matters
============================================================

The project's source notes list a text-classification transformer: token
embeddings plus *learned position embeddings*, a stack of transformer blocks,
mean pooling over time and a linear layer to class log-probabilities.
:class:`llmref.models.TextClassifier` is that model, built from llmref's
:class:`~llmref.models.TransformerBlock` (which wraps
:class:`~llmref.attention.MultiHeadAttention`) and
:class:`~llmref.position.LearnedPositionEmbedding`.

Attention is permutation-equivariant and the mean over time is
permutation-invariant, so everything the classifier knows about word order
comes from the position embedding. This example makes that visible with a
task that *only* order can solve: each sequence contains the marker tokens
``A`` and ``B`` exactly once, among random filler, and the label is whether
``A`` comes before ``B``. Every sequence has the same bag of tokens as its
mirror image with the other label, so a model without positions cannot beat
a coin toss. The same model is trained twice, with and without its position
embedding, on the CPU in well under a minute.
"""

import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from llmref.models import TextClassifier

VOCAB, T, A, B = 12, 16, 0, 1  # token ids 2..11 are filler


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``T`` tokens with one ``A`` and one ``B``; label 1 iff A is first."""
    ids = torch.randint(2, VOCAB, (n, T), generator=generator)
    pos = torch.rand(n, T, generator=generator).argsort(dim=1)[:, :2]  # two distinct positions
    rows = torch.arange(n)
    ids[rows, pos[:, 0]] = A
    ids[rows, pos[:, 1]] = B
    return ids, (pos[:, 0] < pos[:, 1]).long()


# %%
# Training
# --------
# Adam, batches of 128 fresh sequences, 300 steps. The "bag of tokens" run
# uses the same architecture with the position table frozen at zero.


def train(use_positions: bool, steps: int = 300) -> tuple[TextClassifier, list, list]:
    torch.manual_seed(0)
    model = TextClassifier(VOCAB, 2, d_model=32, n_heads=4, n_layers=2, max_len=T)
    if not use_positions:
        with torch.no_grad():
            model.pos_emb.weight.zero_()
        model.pos_emb.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    data = torch.Generator().manual_seed(1)
    losses, accuracies = [], []
    for _ in range(steps):
        ids, labels = batch(128, data)
        log_probs = model(ids)
        loss = F.nll_loss(log_probs, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accuracies.append((log_probs.argmax(-1) == labels).float().mean().item())
    return model, losses, accuracies


start = time.perf_counter()
with_pos, loss_pos, acc_pos = train(use_positions=True)
bag, loss_bag, acc_bag = train(use_positions=False)
elapsed = time.perf_counter() - start


def test_accuracy(model: TextClassifier) -> float:
    ids, labels = batch(4000, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (model(ids).argmax(-1) == labels).float().mean().item()


final_pos, final_bag = test_accuracy(with_pos), test_accuracy(bag)
print(f"trained both models in {elapsed:.1f} s")
print(f"held-out accuracy with learned positions: {final_pos:.1%}")
print(f"held-out accuracy as a bag of tokens:     {final_bag:.1%}")

# %%
# Learning curves
# ---------------
# With positions, the loss drops once the model discovers where ``A`` and
# ``B`` are, and held-out accuracy ends near 100 %; without them, the model can
# only learn the label frequencies and stays at chance.


def smooth(values: list, k: int = 10) -> torch.Tensor:
    x = torch.tensor(values)
    return torch.nn.functional.avg_pool1d(x[None, None], k, 1, padding=0)[0, 0]


fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
for losses, accs, label in (
    (loss_pos, acc_pos, f"learned positions (held-out {final_pos:.1%})"),
    (loss_bag, acc_bag, f"no positions (held-out {final_bag:.1%})"),
):
    ax_loss.plot(smooth(losses), label=label)
    ax_acc.plot(smooth(accs), label=label)
ax_loss.set(xlabel="step", ylabel="training loss (NLL)", title="loss")
ax_acc.axhline(0.5, color="gray", lw=0.8, ls="--")
ax_acc.set(xlabel="step", ylabel="training accuracy", title="accuracy", ylim=(0.4, 1.02))
ax_acc.legend(loc="lower right", fontsize=8)
fig.suptitle("TextClassifier on 'does A come before B?'")
fig.tight_layout()
plt.show()

# %%
# Accuracy by distance
# --------------------
# Held-out accuracy grouped by how far apart the two markers are. The model
# with positions is right at every distance, adjacent markers included; the
# bag of tokens is at chance everywhere, because the two orders of any pair of
# positions give it exactly the same input.

ids, labels = batch(4000, torch.Generator().manual_seed(123))
distance = ((ids == A).float().argmax(1) - (ids == B).float().argmax(1)).abs()
with torch.no_grad():
    right_pos = with_pos(ids).argmax(-1) == labels
    right_bag = bag(ids).argmax(-1) == labels
ds = torch.arange(1, T)
fig, ax = plt.subplots(figsize=(7, 3.2))
runs = ((right_pos, "learned positions", -0.2), (right_bag, "no positions", 0.2))
for right, label, shift in runs:
    acc = [right[distance == d].float().mean().item() for d in ds]
    ax.bar(ds + shift, acc, width=0.4, label=label)
ax.axhline(0.5, color="gray", lw=0.8, ls="--")
ax.set(xlabel="distance between A and B (tokens)", ylabel="held-out accuracy", ylim=(0, 1.05))
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
plt.show()
