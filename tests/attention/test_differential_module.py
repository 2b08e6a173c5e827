"""DifferentialAttention: the DIFF Transformer layer against a per-head float64 transcription."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention import ATTENTION, DifferentialAttention
from llmref.position import RotaryEmbedding
from llmref.testing import assert_within
from tests.attention.reference import (
    assert_beyond_rounding,
    attention_err,
    group_norm_err,
    linear_err,
    mag,
    rms_norm_err,
    rope_err,
)

D_MODEL = 48


def make_layer(n_heads=3, n_kv_heads=None, layer_index=2, seed=0, **kw):
    torch.manual_seed(seed)
    layer = DifferentialAttention(
        D_MODEL, n_heads, n_kv_heads=n_kv_heads, layer_index=layer_index, **kw
    ).double()
    with torch.no_grad():  # non-trivial norm parameters, so the tests see them
        for name, p in layer.head_norm.named_parameters():
            p.uniform_(0.5, 1.5) if name == "weight" else p.uniform_(-0.3, 0.3)
    return layer


def textbook_layer(layer, x, *, is_causal=False, mask=None, rope=None):
    """The official code's layout, one head at a time: 2H half-heads of d channels (pairs
    2h, 2h+1 form head h), H_kv value heads of 2d, lambda re-parameterised, each head
    normalised and scaled by 1 - lambda_init. Shares no code with llmref.attention."""
    B, T, _ = x.shape
    H, H_kv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    d = D // 2
    q = torch.nn.functional.linear(x, layer.q_proj.weight, layer.q_proj.bias)
    k = torch.nn.functional.linear(x, layer.k_proj.weight, layer.k_proj.bias)
    v = torch.nn.functional.linear(x, layer.v_proj.weight, layer.v_proj.bias)
    q = q.view(B, T, 2 * H, d).transpose(1, 2)
    k = k.view(B, T, 2 * H_kv, d).transpose(1, 2)
    v = v.view(B, T, H_kv, D).transpose(1, 2)
    if rope is not None:
        q, k = rope(q), rope(k)
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * (layer.layer_index - 1))
    lam = (
        torch.exp((layer.lambda_q1 * layer.lambda_k1).sum())
        - torch.exp((layer.lambda_q2 * layer.lambda_k2).sum())
        + lam_init
    )
    allowed = torch.ones(T, T, dtype=torch.bool)
    if is_causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & mask

    def softmax_map(qh, kh):
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        return torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)

    heads = []
    eps = layer.head_norm.eps
    for h in range(H):
        g = h // (H // H_kv)
        a1 = softmax_map(q[:, 2 * h], k[:, 2 * g])
        a2 = softmax_map(q[:, 2 * h + 1], k[:, 2 * g + 1])
        o = (a1 - lam * a2) @ v[:, g]  # (B, T, 2d)
        if layer.head_norm_kind == "rms":
            o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps) * layer.head_norm.weight
        else:  # GroupNorm, one group per head: mean-centred, per-channel affine
            w = layer.head_norm.weight[h * D : (h + 1) * D]
            b = layer.head_norm.bias[h * D : (h + 1) * D]
            mu, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
            o = (o - mu) / torch.sqrt(var + eps) * w + b
        heads.append((1 - lam_init) * o)
    out = torch.cat(heads, dim=-1)
    return torch.nn.functional.linear(out, layer.out_proj.weight, layer.out_proj.bias)


def lambda_mag(layer):
    """What lambda sums: ``e^(lq1.lk1) (1 + |lq1|.|lk1|) + e^(lq2.lk2) (...) + lambda_init``
    (an exponential passes on its argument's rounding relative to its value)."""
    total = layer.lambda_init
    for a, b in ((layer.lambda_q1, layer.lambda_k1), (layer.lambda_q2, layer.lambda_k2)):
        a, b = a.detach().double(), b.detach().double()
        total = total + torch.exp(a @ b) * (1 + mag(a) @ mag(b))
    return total


ROUNDED = frozenset({"projections", "norm", "rope"})


def layer_mag(layer, x, *, mask=None, is_causal=False, rounded=ROUNDED):
    """The layer's error scale (tests.attention.reference): projections, RoPE on each half,
    the two softmax maps (the second times lambda's magnitude, the first's and second's
    output errors added), the head norm, 1 - lambda_init and the output projection.
    ``rounded``: the steps whose own rounding counts, all unless the other side runs only
    some in the dtype compared (the maps and lambda always count). Returns the output's
    and the head norm input's scales, (B, T, d_model) and (B, T, H, head_dim)."""
    own = {step: step in rounded for step in ROUNDED}
    B, T, _ = x.shape
    H, H_kv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    d = D // 2
    acts, errs = [], []
    for proj, n in ((layer.q_proj, H), (layer.k_proj, H_kv), (layer.v_proj, H_kv)):
        y, e = linear_err(x, 0.0, proj.weight, proj.bias, own=own["projections"])
        acts.append(y.view(B, T, n, D).transpose(1, 2))
        errs.append(e.view(B, T, n, D).transpose(1, 2))
    if layer.rope is not None:
        for i in (0, 1):  # rotate each half: (B, H, T, 2, d) -> heads of d channels
            halves = acts[i].unflatten(-1, (2, d)).transpose(2, 3)
            halves_err = errs[i].unflatten(-1, (2, d)).transpose(2, 3)
            y, e = rope_err(
                halves.flatten(1, 2), halves_err.flatten(1, 2), layer.rope, own=own["rope"]
            )
            acts[i] = y.unflatten(1, (-1, 2)).transpose(2, 3).flatten(-2)
            errs[i] = e.unflatten(1, (-1, 2)).transpose(2, 3).flatten(-2)
    (q, k, v), (eq, ek, ev) = acts, errs
    maps = [
        attention_err(
            q[..., h],
            k[..., h],
            v,
            eq[..., h],
            ek[..., h],
            ev,
            mask=mask,
            is_causal=is_causal,
            scale=layer.scale,
        )
        for h in (slice(0, d), slice(d, None))
    ]
    lam = layer.lam().detach().double()
    heads = maps[0][0] - lam * maps[1][0]
    # |lam| e_2 for the second map, lambda's own error times |o_2|, the subtraction's rounding
    heads_err = (
        maps[0][1] + lam.abs() * maps[1][1] + lambda_mag(layer) * maps[1][0].abs() + heads.abs()
    )
    norm = layer.head_norm
    if layer.head_norm_kind == "rms":
        normed, err = rms_norm_err(heads, heads_err, norm.weight, eps=norm.eps, own=own["norm"])
    else:
        w, b = (t.view(1, H, 1, D) for t in (norm.weight, norm.bias))
        normed, err = group_norm_err(heads, heads_err, w, b, eps=norm.eps)  # only rounded
    factor = 1 - layer.lambda_init
    normed = normed.transpose(1, 2).reshape(B, T, H * D) * factor
    err = err.transpose(1, 2).reshape(B, T, H * D) * factor
    out = layer.out_proj
    _, out_err = linear_err(normed, err, out.weight, out.bias, own=own["projections"])
    return out_err, heads_err.transpose(1, 2)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(3, None), (4, 2), (4, 1)])
@pytest.mark.parametrize("head_norm", ["rms", "group"])
@pytest.mark.parametrize("masking", ["none", "causal", "mask"])
def test_matches_per_head_textbook_float64(n_heads, n_kv_heads, head_norm, masking):
    layer = make_layer(n_heads, n_kv_heads, head_norm=head_norm, bias=True)
    x = torch.randn(2, 7, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = None
    if masking == "mask":
        mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(2)) > 0.3
        mask[:, 0] = True
    is_causal = masking == "causal"
    expected = textbook_layer(layer, x, is_causal=is_causal, mask=mask)
    scale, _ = layer_mag(layer, x, mask=mask, is_causal=is_causal)
    assert_within(layer(x, is_causal=is_causal, mask=mask), expected, scale=scale)


def test_rope_rotates_each_half_of_queries_and_keys():
    rope = RotaryEmbedding(8, dtype=torch.float64)  # head_dim 16 = two halves of 8
    layer = make_layer(3, rope=rope)
    x = torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    expected = textbook_layer(layer, x, is_causal=True, rope=rope)
    scale, _ = layer_mag(layer, x, is_causal=True)  # position-free: RoPE's |cos|, |sin| <= 1
    assert_within(layer(x, is_causal=True), expected, scale=scale)
    # Scores depend on relative positions only: a uniform shift changes nothing, while
    # positions spread apart do change the output.
    assert_within(layer(x, is_causal=True, offset=5), expected, scale=scale)
    shifted = layer(x, is_causal=True, position_ids=torch.arange(5, 11))
    assert_within(shifted, expected, scale=scale)
    spread = layer(x, is_causal=True, position_ids=3 * torch.arange(6))
    assert_beyond_rounding(spread, expected, scale=scale)


@pytest.mark.parametrize("layer_index", [1, 2, 5, 12, 100])
def test_lambda_init_follows_the_paper_schedule(layer_index):
    layer = DifferentialAttention(32, 2, layer_index=layer_index)
    expected = 0.8 - 0.6 * math.exp(-0.3 * (layer_index - 1))
    assert layer.lambda_init == expected  # the same Python expression, the same float
    with torch.no_grad():
        layer.lambda_q1.zero_()
        layer.lambda_q2.zero_()
    # exp(0) - exp(0) + init in float32: what it sums is 1 + 1 + init.
    lam = layer.lam().detach()
    assert_within(lam, torch.tensor(expected, dtype=torch.float64), scale=2 + expected)


def test_lambda_schedule_values():
    inits = [DifferentialAttention(32, 2, layer_index=i).lambda_init for i in (1, 2, 40)]
    as_tensor = torch.tensor(inits, dtype=torch.float64)
    # first layer: 0.8 - 0.6, up to the rounding of that float64 difference
    assert_within(as_tensor[0], torch.tensor(0.2, dtype=torch.float64), scale=0.8 + 0.6)
    assert inits[1] == 0.8 - 0.6 * math.exp(-0.3)  # the same expression, the same float
    # deep layers approach 0.8 from below: 0.6 e^(-0.3 * 39) = 4.9e-6 short of it
    assert 0.8 - 1e-5 < inits[2] < 0.8
    assert inits == sorted(inits)


def test_lambda_is_the_reparameterisation_and_is_learned():
    layer = make_layer()
    expected = (
        torch.exp(layer.lambda_q1 @ layer.lambda_k1)
        - torch.exp(layer.lambda_q2 @ layer.lambda_k2)
        + layer.lambda_init
    )
    assert_within(layer.lam(), expected, scale=lambda_mag(layer))
    layer(torch.randn(1, 5, D_MODEL, dtype=torch.float64), is_causal=True).sum().backward()
    for p in (layer.lambda_q1, layer.lambda_k1, layer.lambda_q2, layer.lambda_k2):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_equal_halves_collapse_to_scaled_ordinary_attention():
    """The defining property: with q1 = q2 and k1 = k2 both softmax maps are equal, so the
    layer's attention is (1 - lambda) softmax(...) V before the head norm."""
    layer = make_layer(2, head_norm="rms")
    with torch.no_grad():  # copy the first half-head's rows onto the second in q and k
        for proj in (layer.q_proj, layer.k_proj):
            w = proj.weight.view(-1, 2, layer.head_dim // 2, D_MODEL)
            w[:, 1] = w[:, 0]
    x = torch.randn(1, 5, D_MODEL, dtype=torch.float64)
    captured = {}
    layer.head_norm.register_forward_pre_hook(lambda m, a: captured.setdefault("in", a[0]))
    layer(x, is_causal=True)
    _, heads_mag = layer_mag(layer, x, is_causal=True)
    D = layer.head_dim
    q = layer.q_proj(x).view(1, 5, 2, D).transpose(1, 2)[..., : D // 2]
    k = layer.k_proj(x).view(1, 5, 2, D).transpose(1, 2)[..., : D // 2]
    v = layer.v_proj(x).view(1, 5, 2, D).transpose(1, 2)
    weights = torch.softmax(
        (q @ k.transpose(-1, -2) / math.sqrt(D // 2)).masked_fill(
            ~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf
        ),
        dim=-1,
    )
    expected = ((1 - layer.lam()) * weights @ v).transpose(1, 2)
    assert_within(captured["in"], expected, scale=heads_mag)


@pytest.mark.parametrize("backend", list(ATTENTION))
def test_every_backend_gives_the_same_layer(backend):
    layer = make_layer(4, 2)
    x = torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    expected = textbook_layer(layer, x, is_causal=True)
    layer.backend = DifferentialAttention(
        D_MODEL, 4, n_kv_heads=2, layer_index=2, backend=backend
    ).backend
    scale, _ = layer_mag(layer, x, is_causal=True)
    with torch.no_grad():  # some backends (flex) have no backward on CPU
        assert_within(layer(x, is_causal=True), expected, scale=scale)


def test_gradcheck_float64():
    layer = DifferentialAttention(
        6, 2, n_kv_heads=1, head_dim=4, layer_index=3, head_norm="group"
    ).double()
    names = ["lambda_q1", "lambda_k2", "q_proj.weight", "head_norm.bias"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    x = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)

    def run(x, *tensors):
        overrides = {**params, **dict(zip(names, tensors, strict=True))}
        return torch.func.functional_call(layer, overrides, (x,), {"is_causal": True})

    assert torch.autograd.gradcheck(run, (x, *(params[n] for n in names)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    layer = DifferentialAttention(32, 2, layer_index=4, dtype=dtype)
    out = layer(torch.randn(2, 5, 32, dtype=dtype), is_causal=True)
    assert out.dtype == dtype and out.shape == (2, 5, 32) and torch.isfinite(out).all()


@pytest.mark.xcheck
def test_matches_transformers_diffllama_layer():
    """transformers' DiffLlamaAttention with RoPE: its heads 0..H-1 are our q1 halves and
    H..2H-1 our q2 halves (likewise for keys and values), so permute the projection rows."""
    modeling = pytest.importorskip("transformers.models.diffllama.modeling_diffllama")
    from transformers import DiffLlamaConfig

    H_hf, hd, T, B = 4, 8, 6, 2
    config = DiffLlamaConfig(
        hidden_size=H_hf * hd,
        num_attention_heads=H_hf,
        num_key_value_heads=H_hf,
        head_dim=hd,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = modeling.DiffLlamaAttention(config, layer_idx=2).double().eval()
        rotary = modeling.DiffLlamaRotaryEmbedding(config)
    ours = DifferentialAttention(
        H_hf * hd,
        H_hf // 2,
        layer_index=3,  # transformers' layer_idx counts from 0
        head_dim=2 * hd,
        norm_eps=config.rms_norm_eps,
        rope=RotaryEmbedding(hd),
    ).double()

    def rows(w, n):  # (2 * n * hd, in): [first half heads | second half] -> pairs per head
        return w.view(2, n, hd, -1).transpose(0, 1).reshape(w.shape)

    with torch.no_grad():
        ours.q_proj.weight.copy_(rows(theirs.q_proj.weight, H_hf // 2))
        ours.k_proj.weight.copy_(rows(theirs.k_proj.weight, H_hf // 2))
        ours.v_proj.weight.copy_(rows(theirs.v_proj.weight, H_hf // 2))
        ours.out_proj.weight.copy_(theirs.o_proj.weight)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(ours, name).copy_(getattr(theirs, name))
    assert ours.lambda_init == theirs.lambda_init  # 0.8 - 0.6 * exp(-0.3 * 2) on both sides
    x = torch.randn(B, T, H_hf * hd, dtype=torch.float64)
    cos, sin = rotary(x, torch.arange(T)[None])
    causal = torch.full((T, T), -math.inf, dtype=torch.float64).triu(1).expand(B, 1, T, T)
    with torch.no_grad():
        expected, _ = theirs(x, (cos.double(), sin.double()), attention_mask=causal)
        out = ours(x, is_causal=True)
    # transformers takes the softmax, lambda and the head norm in float32 and rotates with
    # float32 tables; the projections are float64 on both sides, 2^29 times finer.
    scale, _ = layer_mag(ours, x, is_causal=True, rounded={"norm", "rope"})
    assert_within(out, expected, scale=scale, dtype=torch.float32)


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((32, 2), {}, TypeError, "layer_index"),
        ((32, 2), {"layer_index": 0}, ValueError, "layer_index must be >= 1, got 0"),
        ((32, 2), {"layer_index": 1.5}, TypeError, "layer_index must be an int, got float"),
        ((32, 4), {"layer_index": 1, "n_kv_heads": 3}, ValueError, "n_heads must be a multiple"),
        ((30, 2), {"layer_index": 1}, ValueError, r"head_dim must be even .* got 15"),
        ((32, 3), {"layer_index": 1}, ValueError, "d_model must be divisible by n_heads"),
        ((32, 2), {"layer_index": 1, "head_norm": "layer"}, ValueError, "head_norm must be one"),
        ((32, 2), {"layer_index": 1, "norm_eps": 0.0}, ValueError, "norm_eps must be a finite"),
        ((32, 2), {"layer_index": 1, "scale": -1.0}, ValueError, "scale must be a finite"),
        ((32, 2), {"layer_index": 1, "backend": "flash"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_config(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        DifferentialAttention(*args, **kwargs)


def test_bad_forward_input():
    layer = DifferentialAttention(32, 2, layer_index=1)
    with pytest.raises(
        ValueError, match=r"x must have last dim d_model=32, got shape \(1, 4, 30\)"
    ):
        layer(torch.randn(1, 4, 30))
    with pytest.raises(ValueError, match="x must be 3-D"):
        layer(torch.randn(4, 32))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        layer([[0.0] * 32])
    with pytest.raises(TypeError, match=r"mask must be a torch\.bool"):
        layer(torch.randn(1, 4, 32), mask=torch.ones(4, 4))
