"""
Multi-head latent attention: expanded and absorbed
==================================================

DeepSeek-V2's multi-head latent attention (MLA) caches one small latent vector
per token instead of per-head keys and values. It can be computed two ways:
*expanded* -- rebuild every head's keys and values from the latent, then run
ordinary attention -- or *absorbed* -- fold the key up-projection into the
query and the value up-projection into the output, and attend to the latent
directly. This example checks that
:class:`llmref.attention.MultiHeadLatentAttention` gives the same output both
ways, decodes token by token from a :class:`llmref.cache.LatentCache`, and
measures how many bytes each kind of cache holds.
"""

# %%
# Same output, two computations
# -----------------------------
# A small MLA layer in float64 (so that the only difference is rounding):
# ``d_model = 256``, 8 heads, a latent of ``kv_lora_rank = 48`` channels, a
# shared RoPE key of 16 channels, 32 content channels per query/key head and
# 32 value channels per head. :meth:`~llmref.attention.MultiHeadLatentAttention.forward`
# expands, :meth:`~llmref.attention.MultiHeadLatentAttention.forward_absorbed`
# absorbs.

import matplotlib.pyplot as plt
import torch

from llmref.attention import MultiHeadAttention, MultiHeadLatentAttention
from llmref.cache import DynamicCache, LatentCache, kv_bytes_per_token

torch.manual_seed(0)
sizes = {"kv_lora_rank": 48, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32}
mla = MultiHeadLatentAttention(256, 8, q_lora_rank=96, **sizes).double().eval()
x = torch.randn(2, 40, 256, dtype=torch.float64)

with torch.no_grad():
    expanded = mla(x, is_causal=True)
    absorbed = mla.forward_absorbed(x, is_causal=True)
print("max |expanded - absorbed| =", (expanded - absorbed).abs().max().item())

# %%
# Where the absorbed path attends
# -------------------------------
# The absorbed path is multi-query attention: every head's query is mapped into
# the latent space (``W_UK^T q``, 48 channels) and joined with its RoPE part
# (16 channels); all heads share one "key" -- the cached latent joined with the
# RoPE key -- and one "value" -- the latent itself. The per-head value
# up-projection is applied after attention. The shapes tell the story:

latent, k_rope = mla.compress_kv(x)
print("cached per token: latent", tuple(latent.shape), "+ RoPE key", tuple(k_rope.shape))
H, r = mla.n_heads, mla.kv_lora_rank
w_up = mla.kv_up.weight.view(H, sizes["qk_nope_head_dim"] + sizes["v_head_dim"], r)
print("kv_up viewed per head:", tuple(w_up.shape), "= (H, nope + v, r)")

# %%
# Decoding from the latent cache
# ------------------------------
# With a :class:`~llmref.cache.LatentCache`, each new token's latent and RoPE
# key are appended and attention runs on the absorbed path over everything
# cached. Feeding the sequence one token at a time gives the full forward's
# output:

cache = LatentCache()
with torch.no_grad():
    steps = [mla(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(x.shape[1])]
decoded = torch.cat(steps, dim=1)
print("max |token-by-token - full forward| =", (decoded - expanded).abs().max().item())
print("tokens cached:", len(cache))

# %%
# What each cache holds, measured
# -------------------------------
# The same 64 tokens go one at a time through an MHA layer and a GQA layer of
# the same width (8 heads of 32 channels; GQA with 2 key/value heads), each
# filling a :class:`~llmref.cache.DynamicCache`, and through the MLA layer,
# filling its latent cache. ``nbytes`` is what a cache has allocated; both
# kinds grow by doubling (16, 32, 64 tokens), so the measured steps touch the
# per-token cost computed by :func:`~llmref.cache.kv_bytes_per_token` (dashed)
# whenever the buffer is exactly full. MLA also caches its latent once for all
# heads; had it cached the expanded keys and values, it would need
# ``H * (nope + rope + v)`` numbers per token (grey).

tokens = torch.randn(1, 64, 256, dtype=torch.float64)
layers = {
    "MHA, 8 K/V heads": (MultiHeadAttention(256, 8), DynamicCache(), "dynamic", {"n_kv_heads": 8}),
    "GQA, 2 K/V heads": (
        MultiHeadAttention(256, 8, n_kv_heads=2),
        DynamicCache(),
        "dynamic",
        {"n_kv_heads": 2},
    ),
    "MLA latent": (mla, LatentCache(), "latent", {}),
}
fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
steps = range(1, tokens.shape[1] + 1)
for name, (layer, cache, kind, config) in layers.items():
    layer = layer.double().eval()
    allocated = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            layer(tokens[:, t : t + 1], is_causal=True, cache=cache)
            allocated.append(cache.nbytes)
    per_token = kv_bytes_per_token(
        {"n_layers": 1, "n_heads": 8, "head_dim": 32, **config, **sizes}, kind, dtype=torch.float64
    )
    print(
        f"{name:18s} formula {per_token:5d} B/token, measured at 64 tokens {allocated[-1] / 64:.0f}"
    )
    (line,) = ax.step(steps, allocated, where="post", label=f"{name}: {per_token} B/token")
    ax.plot(steps, [per_token * t for t in steps], ls="--", color=line.get_color(), lw=1)
expanded_per_token = (
    H * (sizes["qk_nope_head_dim"] + sizes["qk_rope_head_dim"] + sizes["v_head_dim"]) * 8
)
ax.plot(
    steps,
    [expanded_per_token * t for t in steps],
    color="0.5",
    label=f"MLA if it cached expanded K/V: {expanded_per_token} B/token",
)
ax.set_xlabel("tokens decoded")
ax.set_ylabel("bytes allocated (float64, one layer)")
ax.set_title("KV cache of one layer: measured nbytes (steps) and the formula (dashed)")
ax.legend(fontsize=8)
plt.show()

# %%
# Real models
# -----------
# The same function on the published configurations (the dtype each model is
# released in, all layers): Llama-2-7B (MHA), Llama-3-8B and Mistral-7B (GQA
# with 8 key/value heads; Mistral-7B's sliding window also caps its cache at
# 4096 tokens), and DeepSeek-V2 (MLA, ``kv_lora_rank = 512``,
# ``qk_rope_head_dim = 64``, 60 layers). The last bar is DeepSeek-V2's 128
# heads if the expanded keys (``128 + 64`` channels) and values (``128``) were
# cached instead of the latent.

models = {
    "Llama-2-7B\n(MHA, fp16)": kv_bytes_per_token(
        {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096},
        dtype=torch.float16,
    ),
    "Llama-3-8B\n(GQA 32/8, bf16)": kv_bytes_per_token(
        {
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_size": 4096,
        },
        dtype=torch.bfloat16,
    ),
    "Mistral-7B\n(GQA 32/8, bf16)": kv_bytes_per_token(
        {
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_size": 4096,
        },
        "sliding_window",
        dtype=torch.bfloat16,
    ),
    "DeepSeek-V2\n(MLA, bf16)": kv_bytes_per_token(
        {"num_hidden_layers": 60, "kv_lora_rank": 512, "qk_rope_head_dim": 64},
        "latent",
        dtype=torch.bfloat16,
    ),
    "DeepSeek-V2 if it\ncached K and V": 2 * 60 * 128 * (128 + 64 + 128),
}
for name, b in models.items():
    print(f"{name.replace(chr(10), ' '):34s} {b:9,d} B/token = {b / 1024:7.1f} KiB")
fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
bars = ax.bar(range(len(models)), [b / 1024 for b in models.values()], color="C0")
bars[-1].set_color("0.6")
ax.bar_label(bars, labels=[f"{b / 1024:,.1f}" for b in models.values()], fontsize=8)
ax.set_xticks(range(len(models)), list(models), fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("KV cache KiB per token (all layers)")
ax.set_title("Per-token KV cache from llmref.cache.kv_bytes_per_token")
plt.show()
