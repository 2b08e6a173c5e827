"""
Linear attention is an RNN
==========================

Replace softmax's ``exp(q . k)`` by a product of feature maps
``phi(q) . phi(k)`` and attention can be re-associated: ``(phi(Q) phi(K)^T) V``
becomes ``phi(Q) (phi(K)^T V)``. Causally, ``phi(K)^T V`` is a running sum --
a fixed-size state updated once per token, exactly a recurrent network. This
example checks that llmref's three forms of linear attention agree,
draws the weights they imply next to softmax's, compares the memory a decoder
keeps per step, and shows Performer's random features (FAVOR+) approaching
softmax attention as their number grows.
"""

# %%
# Three forms, one function
# -------------------------
# :func:`~llmref.attention.linear_attention_quadratic` builds the
# ``T x S`` weights explicitly; :func:`~llmref.attention.linear_attention`
# uses associativity (chunked prefix sums when causal);
# :func:`~llmref.attention.linear_attention_step` is the recurrence,
# one token at a time.

import matplotlib.pyplot as plt
import torch

from llmref.attention import (
    LinearAttention,
    linear_attention,
    linear_attention_quadratic,
    linear_attention_step,
    naive_attention,
    orthogonal_random_features,
    performer_attention,
    sigmoid_attention,
)

torch.manual_seed(0)
B, H, T, D = 1, 2, 48, 16
q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))

quadratic = linear_attention_quadratic(q, k, v, is_causal=True)
parallel = linear_attention(q, k, v, is_causal=True, chunk_size=16)
state, outs = None, []
for t in range(T):
    o, state = linear_attention_step(
        q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state
    )
    outs.append(o)
recurrent = torch.cat(outs, dim=2)
print("max |parallel - quadratic| =", (parallel - quadratic).abs().max().item())
print("max |recurrent - quadratic| =", (recurrent - quadratic).abs().max().item())
print("state after", T, "tokens: S", tuple(state.S.shape), "z", tuple(state.z.shape))

# %%
# The same as a layer: prefill in parallel, decode as an RNN
# ----------------------------------------------------------
# :class:`~llmref.attention.LinearAttention` wraps the projections around these
# functions. ``forward(x, is_causal=True, return_state=True)`` runs a prompt in
# the parallel form and returns the state after it; ``step`` then continues one
# token at a time from that state, at a cost that does not grow with the context.

layer = LinearAttention(32, 4).double()
x = torch.randn(1, 40, 32, dtype=torch.float64)
full = layer(x, is_causal=True)
prompt_out, layer_state = layer(x[:, :30], is_causal=True, return_state=True)
decoded = []
for t in range(30, 40):
    y, layer_state = layer.step(x[:, t : t + 1], layer_state)
    decoded.append(y)
print(
    "max |prefill + 10 steps - parallel| =",
    (torch.cat([prompt_out, *decoded], dim=1) - full).abs().max().item(),
)

# %%
# The weights each form implies
# -----------------------------
# Giving every key a one-hot value (``V`` = the identity) makes the output
# equal to the weight matrix itself, so the weights can be read through the
# public functions. Softmax weights (left) are sharp: a few keys take most of
# the mass. Linear attention's weights with ``elu + 1`` features (second) are
# much flatter -- the kernel ``phi(q) . phi(k)`` grows polynomially, not
# exponentially, with the match -- which is the quality gap linear attention is
# known for. FAVOR+ estimates the softmax kernel with 256 positive random
# features and recovers most of its shape. Sigmoid attention (right), another
# way to drop softmax's normalisation, weights each key on its own with
# ``sigmoid(s - log S)``: its rows need not sum to one.

eye = torch.eye(T, dtype=torch.float64).expand(B, H, T, T)
w_softmax = naive_attention(q, k, eye, is_causal=True)
w_linear = linear_attention_quadratic(q, k, eye, is_causal=True)
proj = orthogonal_random_features(
    256, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64
)
w_favor = performer_attention(q, k, eye, projection=proj, is_causal=True)
w_sigmoid = sigmoid_attention(q, k, eye, is_causal=True)
for name, w in (
    ("softmax", w_softmax),
    ("linear", w_linear),
    ("FAVOR+", w_favor),
    ("sigmoid", w_sigmoid),
):
    rows = w[0, 0].sum(-1)
    print(f"{name:8s} row sums: min {rows.min():.3f}, max {rows.max():.3f}")

fig, axes = plt.subplots(1, 4, figsize=(15, 4.2), layout="constrained")
panels = (
    (w_softmax, "softmax (naive_attention)"),
    (w_linear, "linear, elu(x)+1 features"),
    (w_favor, "FAVOR+, 256 random features"),
    (w_sigmoid, "sigmoid, b = -log S"),
)
for ax, (w, title) in zip(axes, panels, strict=True):
    im = ax.imshow(w[0, 0], cmap="viridis", vmin=0, vmax=0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
fig.colorbar(im, ax=axes, shrink=0.8, label="weight (clipped at 0.5)")
plt.show()

# %%
# Memory a decoder keeps per step
# -------------------------------
# Softmax attention must keep every past key and value (the KV cache grows by
# ``2 * D`` numbers per token and head), while linear attention keeps the state
# ``S = sum phi(k) v^T`` of ``F x Dv`` numbers and ``z = sum phi(k)`` of ``F``
# numbers -- the same size after 10 tokens or 10 million. The crossover is at
# ``T = F (Dv + 1) / (2 D)`` tokens; for ``elu + 1`` features ``F = D``.

D_model = 64
steps = [2**i for i in range(4, 15)]
kv_cache = [2 * D_model * t for t in steps]
state_numbers = D_model * (D_model + 1)
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.loglog(steps, kv_cache, "o-", label="softmax: KV cache, 2 D per token")
ax.loglog(steps, [state_numbers] * len(steps), "s-", label="linear: state S and z, F (Dv + 1)")
ax.set_xlabel("tokens decoded")
ax.set_ylabel("numbers kept per head")
ax.set_title(f"Per-head decoding state, D = Dv = F = {D_model}")
ax.legend()
plt.show()

# %%
# FAVOR+: error falls as features grow
# ------------------------------------
# :func:`~llmref.attention.performer_attention` approximates softmax
# attention itself. Its error is random; averaged over draws of the projection
# it falls roughly like ``1 / sqrt(m)`` with the number of features ``m``. The
# estimator's variance grows exponentially with the query and key norms, so the
# inputs here are scaled down (``|q|^2 / sqrt(D) ~ 1``); see the function's
# Notes for what happens at larger norms.

qs, ks, vs = q / 2, k / 2, v
exact = naive_attention(qs, ks, vs)
features = [8, 16, 32, 64, 128, 256, 512, 1024]
draws = 8
errors = []
for m in features:
    errs = []
    for seed in range(draws):
        w = orthogonal_random_features(
            m, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        approx = performer_attention(qs, ks, vs, projection=w)
        errs.append(((approx - exact).norm() / exact.norm()).item())
    errors.append(torch.tensor(errs))
    print(f"m = {m:5d}: relative error {errors[-1].mean():.3f} ± {errors[-1].std():.3f}")

mean = torch.stack([e.mean() for e in errors])
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.loglog(features, mean, "o-", label=f"mean over {draws} projections")
for m, e in zip(features, errors, strict=True):
    ax.scatter([m] * len(e), e, s=8, color="0.6")
ax.loglog(features, mean[0] * (features[0] / torch.tensor(features)) ** 0.5, "--", label="∝ 1/√m")
ax.set_xlabel("random features m")
ax.set_ylabel("‖FAVOR+ - softmax‖ / ‖softmax‖")
ax.set_title("Performer's approximation of softmax attention")
ax.legend()
plt.show()
