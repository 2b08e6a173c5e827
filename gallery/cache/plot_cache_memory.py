"""
Cache memory against generated tokens
=====================================

Every cache kind in :data:`llmref.cache.CACHES` is fed the same stream of
keys and values, 64 tokens per update (the memory curve is the same as one
token at a time, and the example runs in seconds). We record
:attr:`~llmref.cache.KVCache.nbytes` (memory the cache holds, not just what
it uses) after each update and draw it. The shape of each curve is the
point: the dynamic cache grows in doublings, the static and paged caches
hold their pools from the start, the sliding-window and sink caches stop
growing at their window, and KIVI's 2-bit cache grows about five times more
slowly than the float16 ones.
"""

# %%
# Feed 2,048 tokens of one layer (8 KV heads of 128 channels, float16)
# --------------------------------------------------------------------

import matplotlib.pyplot as plt
import torch

from llmref.cache import (
    DynamicCache,
    PagedCache,
    QuantizedCache,
    SinkCache,
    SlidingWindowCache,
    StaticCache,
    kv_bytes_per_token,
)

H_KV, D, STEPS, CHUNK = 8, 128, 2048, 64
caches = {
    "dynamic": DynamicCache(),
    "static (max_len 2048)": StaticCache(2048),
    "paged (128 blocks x 16)": PagedCache(n_blocks=128, block_size=16),
    "sliding window (512)": SlidingWindowCache(512),
    "sink (4 + 508)": SinkCache(4, 508),
    "quantized (KIVI 2-bit)": QuantizedCache(bits=2, group_size=32, residual_length=128),
}
k = torch.randn(1, H_KV, CHUNK, D, dtype=torch.float16)
history = {name: [] for name in caches}
steps = range(CHUNK, STEPS + 1, CHUNK)
for _ in steps:
    for name, cache in caches.items():
        cache.update(k, k)
        history[name].append(cache.nbytes / 2**20)

# %%
# Draw it
# -------
fig, ax = plt.subplots(figsize=(8, 4.5))
styles = ["-", "--", ":", "-", "--", "-"]  # static/paged and sliding/sink overlap: tell them apart
for (name, mib), style in zip(history.items(), styles, strict=True):
    ax.plot(steps, mib, style, label=name, lw=2.5 if style != "-" else 2)
per_token = kv_bytes_per_token({"n_layers": 1, "n_kv_heads": H_KV, "head_dim": D})
ax.plot(
    [1, STEPS],
    [per_token / 2**20, STEPS * per_token / 2**20],
    "k:",
    lw=1,
    label=f"{per_token} B/token (kv_bytes_per_token)",
)
ax.set_xlabel("tokens generated")
ax.set_ylabel("cache memory (MiB, one layer)")
ax.set_title("KV cache memory per kind")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()

for name, mib in history.items():
    print(f"{name:26s} after {STEPS} tokens: {mib[-1]:6.2f} MiB")
