"""
Attention weights, causal masking and GQA
=========================================

What does a row of the attention matrix mean, what does a causal mask remove,
and how do the query heads of grouped-query attention (GQA) share key/value
heads? This example answers all three on one twelve-word sentence, drawing the
weights returned by :func:`llmref.attention.naive_attention` with
``return_weights=True``.

Instead of random projections, the queries and keys are built by hand from two
kinds of features per token, its *position* and its *word class*, so that every
head has a pattern one can read off the picture.
"""

# %%
# A sentence and hand-made features
# ---------------------------------
# Each token gets a one-hot *position* (12 features) and a one-hot *word
# class* (6 features). A key is "what a token offers", a query is "what a
# token looks for"; the score of query ``i`` against key ``j`` is their dot
# product. With ``scale=1`` and queries of length ``strength``, a query that
# matches exactly one key puts about ``e^strength`` times more weight on it
# than on each of the others.

import matplotlib.pyplot as plt
import torch

from llmref.attention import causal_mask, naive_attention

tokens = "The cat sat on the mat because it was warm and soft".split()
word_class = [
    "det",
    "noun",
    "verb",
    "func",
    "det",
    "noun",
    "func",
    "pron",
    "verb",
    "adj",
    "func",
    "adj",
]
classes = ["det", "noun", "verb", "adj", "pron", "func"]
T, C = len(tokens), len(classes)
D = T + C  # features: [position one-hot | word-class one-hot]
strength = 6.0


def position(i: int) -> torch.Tensor:
    """Feature vector of position ``i`` (zero if ``i`` is outside the sentence)."""
    x = torch.zeros(D)
    if 0 <= i < T:
        x[i] = 1.0
    return x


def klass(*names: str) -> torch.Tensor:
    """Feature vector of one or more word classes."""
    x = torch.zeros(D)
    for name in names:
        x[T + classes.index(name)] = 1.0
    return x


keys = torch.stack([position(j) + klass(word_class[j]) for j in range(T)])

# What each word class looks for: determiners and nouns find each other,
# verbs find their subject, pronouns and function words find a noun,
# adjectives find what they describe (here the pronoun "it").
wants = {
    "det": ("noun",),
    "noun": ("det",),
    "verb": ("noun", "pron"),
    "func": ("noun",),
    "pron": ("noun",),
    "adj": ("pron",),
}


def show(ax, weights, title, *, xlabels=tokens, ylabels=tokens, vmax=1.0):
    """Heatmap of one ``(T, S)`` matrix with token labels."""
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=10)
    return im


# %%
# Two heads, with and without the causal mask
# -------------------------------------------
# Head 0 is purely *positional*: token ``i`` looks for position ``i + 1``
# (a "next-token head", as found in bidirectional encoders). Head 1 is purely
# *content-based*: each token looks for the word classes in ``wants``. Queries,
# keys and values are ``(B, H, T, D)``; here ``B = 1`` and ``H = 2``.

q_next = torch.stack([position(i + 1) for i in range(T)])
q_role = torch.stack([klass(*wants[c]) for c in word_class])
q = strength * torch.stack([q_next, q_role]).unsqueeze(0)  # (1, 2, T, D)
k = keys.expand(1, 2, T, D)
v = k  # the values do not matter for the weights

_, w_full = naive_attention(q, k, v, scale=1.0, return_weights=True)
_, w_causal = naive_attention(q, k, v, scale=1.0, is_causal=True, return_weights=True)
print("weights:", tuple(w_full.shape))
print("every row sums to 1:", torch.allclose(w_full.sum(-1), torch.ones(1, 2, T)))
print("causal weights above the diagonal:", w_causal.triu(1).abs().max().item())

fig, axes = plt.subplots(2, 2, figsize=(10, 10), layout="constrained")
for row, head in enumerate(["head 0: next token", "head 1: word it relates to"]):
    show(axes[row, 0], w_full[0, row], f"{head}\n(no mask)")
    im = show(axes[row, 1], w_causal[0, row], f"{head}\n(is_causal=True)")
fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
plt.show()

# %%
# Each row is a probability distribution over the keys. The causal mask sets
# every score above the diagonal to :math:`-\infty` before the softmax, so
# those weights are exactly zero and each row renormalises over what is left.
#
# * The next-token head is destroyed by the mask: the key it looks for is
#   always in the future, its query matches nothing it may see, and its weight
#   spreads evenly over the visible prefix (``1/1, 1/2, 1/3, ...`` along each
#   row). The last row of the unmasked map is uniform for the same reason:
#   there is no token after "soft".
# * The content head survives in part: the determiners looked *ahead* to
#   their noun ("The" → "cat"); under the mask "The", which sees only itself,
#   puts all its weight on itself, and "the" settles for the only noun it has
#   seen, "cat". Tokens whose partners lie in the past keep their pattern.

# %%
# The causal mask itself
# ----------------------
# :func:`~llmref.attention.causal_mask` returns a boolean ``(T, S)`` tensor,
# ``True`` where query ``i`` may attend to key ``j``: ``j <= i + offset``.
# ``offset=0`` (the default) aligns the first query with the first key, as
# ``is_causal=True`` does. When generating, the new queries are the *last*
# tokens: 4 new tokens after 8 cached ones need ``offset = S - T = 8``.

from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

full = causal_mask(T)
decode = causal_mask(4, T, offset=T - 4)
print(full.dtype, tuple(full.shape), tuple(decode.shape))

two_colours = ListedColormap(["#eeeeee", "#2a788e"])
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
ax0.imshow(full, cmap=two_colours, vmin=0, vmax=1)
ax1.imshow(decode, cmap=two_colours, vmin=0, vmax=1)
for ax, title, rows in [
    (ax0, "causal_mask(12)", tokens),
    (ax1, "causal_mask(4, 12, offset=8):\n4 new tokens after 8 cached", tokens[-4:]),
]:
    ax.set_xticks(range(T), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=10)
fig.legend(
    handles=[
        Patch(color="#2a788e", label="True: may attend"),
        Patch(color="#eeeeee", label="False"),
    ],
    loc="outside lower center",
    ncols=2,
)
plt.show()

# %%
# Grouped-query attention: who reads which key/value head
# -------------------------------------------------------
# With ``H`` query heads and ``H_kv`` key/value heads, query head ``h`` reads
# key/value head ``h // (H // H_kv)``: consecutive query heads form a group
# that shares one K and one V. ``H_kv = H`` is ordinary multi-head attention
# (MHA), ``H_kv = 1`` is multi-query attention (MQA); GQA lies between. The
# KV cache shrinks by ``H / H_kv``.

H = 8
fig, axes = plt.subplots(1, 3, figsize=(11, 4), layout="constrained")
for ax, (name, H_kv) in zip(axes, [("MHA", 8), ("GQA", 2), ("MQA", 1)], strict=True):
    group = H // H_kv
    for h in range(H):
        g = h // group
        y_kv = (g + 0.5) * H / H_kv - 0.5  # centre the K/V heads vertically
        ax.plot([0, 1], [h, y_kv], color=f"C{g % 10}", linewidth=1.5)
        ax.text(-0.05, h, f"q{h}", ha="right", va="center", fontsize=9)
    for g in range(H_kv):
        y_kv = (g + 0.5) * H / H_kv - 0.5
        ax.scatter([1], [y_kv], s=180, color=f"C{g % 10}", zorder=3)
        ax.text(1.08, y_kv, f"kv{g}", ha="left", va="center", fontsize=9)
    ax.scatter([0] * H, range(H), s=60, color="0.3", zorder=3)
    ax.set_xlim(-0.35, 1.35)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(f"{name}: H={H} query heads, H_kv={H_kv}\nK/V cache {H_kv}/{H} of MHA's")
plt.show()

# %%
# Eight query heads, two key/value heads
# --------------------------------------
# Key/value head 0 offers only positions, head 1 only word classes. The four
# query heads of group 0 therefore can only ask positional questions (self,
# one back, two back, the first token — an "attention sink"), the four of
# group 1 only questions about word classes. Keys and values have shape
# ``(1, 2, T, D)`` while queries have ``(1, 8, T, D)``; ``naive_attention``
# groups the query heads onto their key/value head without copying K and V.

pos_keys = torch.stack([position(j) for j in range(T)])
class_keys = torch.stack([klass(word_class[j]) for j in range(T)])
k_gqa = torch.stack([pos_keys, class_keys]).unsqueeze(0)  # (1, 2, T, D)
v_gqa = k_gqa

head_questions = {
    "self": [position(i) for i in range(T)],
    "previous token": [position(i - 1) for i in range(T)],
    "two back": [position(i - 2) for i in range(T)],
    "first token": [position(0) for _ in range(T)],
    "nouns": [klass("noun") for _ in range(T)],
    "verbs": [klass("verb") for _ in range(T)],
    "determiners": [klass("det") for _ in range(T)],
    "word it relates to": [klass(*wants[c]) for c in word_class],
}
q_gqa = strength * torch.stack([torch.stack(rows) for rows in head_questions.values()])
q_gqa = q_gqa.unsqueeze(0)  # (1, 8, T, D)

out, w_gqa = naive_attention(q_gqa, k_gqa, v_gqa, scale=1.0, is_causal=True, return_weights=True)
print("q", tuple(q_gqa.shape), "k/v", tuple(k_gqa.shape), "-> weights", tuple(w_gqa.shape))

fig, axes = plt.subplots(2, 4, figsize=(14, 7.5), layout="constrained")
for h, (ax, question) in enumerate(zip(axes.flat, head_questions, strict=True)):
    show(ax, w_gqa[0, h], f"q-head {h} → kv-head {h // 4}\n{question}")
    ax.set_xlabel("")
    ax.set_ylabel("")
for g, row in enumerate(axes):
    row[0].set_ylabel(f"group {g} (kv-head {g}): query", fontsize=10)
fig.suptitle("GQA, causal: 8 query heads share 2 key/value heads")
plt.show()

# %%
# Sharing is exact
# ----------------
# GQA is the same computation as MHA with each key/value head *repeated* for
# the query heads of its group. llmref never materialises the repeat, but the
# result must be identical:

k_rep = k_gqa.repeat_interleave(H // 2, dim=1)  # (1, 8, T, D)
v_rep = v_gqa.repeat_interleave(H // 2, dim=1)
out_rep = naive_attention(q_gqa, k_rep, v_rep, scale=1.0, is_causal=True)
print("max |GQA - MHA with repeated K/V| =", (out - out_rep).abs().max().item())
print(
    "K/V elements held: GQA",
    k_gqa.numel() + v_gqa.numel(),
    "vs repeated",
    k_rep.numel() + v_rep.numel(),
)

# %%
# In a model, :class:`~llmref.attention.MultiHeadAttention` with
# ``n_kv_heads=2`` does exactly this: its fused projection produces 8 query
# heads but only 2 key and 2 value heads.

from llmref.attention import MultiHeadAttention

mha = MultiHeadAttention(512, 8)
gqa = MultiHeadAttention(512, 8, n_kv_heads=2)
print(
    "MHA qkv_proj:",
    tuple(mha.qkv_proj.weight.shape),
    " GQA qkv_proj:",
    tuple(gqa.qkv_proj.weight.shape),
)
