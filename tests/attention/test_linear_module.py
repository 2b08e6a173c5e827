"""LinearAttention: the layer against a float64 transcription; parallel == recurrent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmref.attention import LinearAttention, LinearAttentionState
from llmref.testing import assert_within
from tests.attention.reference import feature_attention_err, linear_err
from tests.attention.test_linear import textbook_linear

D_MODEL = 24


def make_layer(n_heads=4, n_kv_heads=None, seed=0, **kw):
    torch.manual_seed(seed)
    return LinearAttention(D_MODEL, n_heads, n_kv_heads=n_kv_heads, **kw).double()


def textbook_layer(layer, x, *, is_causal=False):
    """Projections by hand, then Katharopoulos et al.'s eq. (6) row by row (test_linear)."""
    B, T, _ = x.shape
    H, H_kv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim

    def heads(proj, n):
        return F.linear(x, proj.weight, proj.bias).view(B, T, n, D).transpose(1, 2)

    q, k, v = heads(layer.q_proj, H), heads(layer.k_proj, H_kv), heads(layer.v_proj, H_kv)
    out = textbook_linear(q, k, v, is_causal=is_causal, eps=layer.eps)
    return F.linear(out.transpose(1, 2).reshape(B, T, H * D), *_wb(layer.out_proj))


def _square_features(t):
    return torch.cat([F.elu(t) + 1, t.square()], dim=-1)


# A bound on each feature map at x and its error: what it sums, plus its slope times the
# input's error e (elu + 1: slope <= 1, sums |elu(x)| + 1; relu: exact, slope <= 1; x^2:
# slope 2|x|).
FEATURE_MAGS = {
    "elu_plus_one": lambda x, e: F.elu(x).abs() + 1 + e,
    "relu": lambda x, e: F.relu(x) + e,
    _square_features: lambda x, e: torch.cat(
        [F.elu(x).abs() + 1 + e, x.square() + 2 * x.abs() * e], dim=-1
    ),
}
FEATURES = {
    "elu_plus_one": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    _square_features: _square_features,
}


def layer_mag(layer, x, *, is_causal=False):
    """The layer's error scale (tests.attention.reference): the projections, the features
    (``FEATURE_MAGS``), linear attention (``feature_attention_err``) and the output
    projection. Returns it, the keys' features, a bound on them and their errors, and
    one on the values (what the state sums)."""
    B, T, _ = x.shape
    H, H_kv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    acts, errs = [], []
    for proj, n in ((layer.q_proj, H), (layer.k_proj, H_kv), (layer.v_proj, H_kv)):
        y, e = linear_err(x, 0.0, proj.weight, proj.bias)
        acts.append(y.view(B, T, n, D).transpose(1, 2))
        errs.append(e.view(B, T, n, D).transpose(1, 2))
    (q, k, v), (eq, ek, ev) = acts, errs
    phi, phi_mag = FEATURES[layer.feature_map], FEATURE_MAGS[layer.feature_map]
    fk, fmk, vm = phi(k), phi_mag(k, ek), v.abs() + ev
    heads, err = feature_attention_err(
        phi(q), fk, phi_mag(q, eq), fmk, v, vm, is_causal=is_causal, eps=layer.eps
    )
    heads, err = (t.transpose(1, 2).reshape(B, T, H * D) for t in (heads, err))
    _, out_err = linear_err(heads, err, layer.out_proj.weight, layer.out_proj.bias)
    return out_err, fk, fmk, vm


def _wb(linear):
    return linear.weight, linear.bias


def run_steps(layer, x, state=None):
    outs = []
    for t in range(x.shape[1]):
        out, state = layer.step(x[:, t : t + 1], state)
        outs.append(out)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, None), (4, 2), (4, 1)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_textbook_float64(n_heads, n_kv_heads, is_causal):
    layer = make_layer(n_heads, n_kv_heads, bias=True, chunk_size=3)
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    expected = textbook_layer(layer, x, is_causal=is_causal)
    scale, *_ = layer_mag(layer, x, is_causal=is_causal)
    assert_within(layer(x, is_causal=is_causal), expected, scale=scale)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_parallel_form_equals_recurrent_steps(n_kv_heads):
    """The defining property: causal linear attention is an RNN with a constant-size state."""
    layer = make_layer(4, n_kv_heads, chunk_size=4)
    x = torch.randn(3, 13, D_MODEL, dtype=torch.float64)
    stepped, state = run_steps(layer, x)
    scale, *_ = layer_mag(layer, x, is_causal=True)
    assert_within(stepped, layer(x, is_causal=True), scale=scale)
    H_kv = n_kv_heads or 4
    assert state.S.shape == (3, H_kv, 6, 6) and state.z.shape == (3, H_kv, 6)


def test_prefill_state_continues_with_steps():
    layer = make_layer(4, 2)
    x = torch.randn(2, 10, D_MODEL, dtype=torch.float64)
    full = layer(x, is_causal=True)
    prefix, state = layer(x[:, :6], is_causal=True, return_state=True)
    assert isinstance(state, LinearAttentionState)
    _, stepped_state = run_steps(layer, x[:, :6])
    # The state sums phi(k_j) v_j^T and phi(k_j) over the prefix.
    scale, _, fmk, vm = layer_mag(layer, x[:, :6], is_causal=True)
    assert_within(state.S, stepped_state.S, scale=fmk.transpose(-1, -2) @ vm, what="S")
    assert_within(state.z, stepped_state.z, scale=fmk.sum(dim=2), what="z")
    rest, _ = run_steps(layer, x[:, 6:], state)
    scale, *_ = layer_mag(layer, x, is_causal=True)
    assert_within(torch.cat([prefix, rest], dim=1), full, scale=scale)


def test_other_feature_map_and_callable():
    x = torch.randn(1, 7, D_MODEL, dtype=torch.float64)
    for feature_map in ("relu", _square_features):
        layer = make_layer(feature_map=feature_map)
        stepped, _ = run_steps(layer, x)
        scale, *_ = layer_mag(layer, x, is_causal=True)
        assert_within(stepped, layer(x, is_causal=True), scale=scale, what=str(feature_map))


class _Stepper(torch.nn.Module):
    """Runs a layer token by token, so functional_call can differentiate the RNN form."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out, state = run_steps(self.layer, x)
        return out, state.S, state.z


def test_gradcheck_parallel_and_step():
    layer = LinearAttention(6, 2, n_kv_heads=1, chunk_size=2).double()
    stepper = _Stepper(layer)
    names = ["k_proj.weight", "out_proj.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    x = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)

    def call(x, *tensors, **kwargs):
        overrides = {**params, **dict(zip(names, tensors, strict=True))}
        return torch.func.functional_call(layer, overrides, (x,), kwargs)

    def call_steps(x, *tensors):
        overrides = {**params, **dict(zip(names, tensors, strict=True))}
        return torch.func.functional_call(
            stepper, {f"layer.{n}": p for n, p in overrides.items()}, (x,)
        )

    inputs = (x, *(params[n] for n in names))
    assert torch.autograd.gradcheck(lambda *a: call(*a, is_causal=True), inputs)
    assert torch.autograd.gradcheck(lambda *a: call(*a, is_causal=False), inputs)
    assert torch.autograd.gradcheck(call_steps, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_preserved_and_state_stays_float32(dtype):
    layer = LinearAttention(16, 2, dtype=dtype)
    x = torch.randn(2, 5, 16, dtype=dtype)
    out, state = layer(x, is_causal=True, return_state=True)
    assert out.dtype == dtype and state.S.dtype == torch.float32
    y, state = layer.step(x[:, :1], state)
    assert y.dtype == dtype and state.z.dtype == torch.float32


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((24, 5), {}, ValueError, "d_model must be divisible by n_heads"),
        ((24, 4), {"n_kv_heads": 3}, ValueError, "n_heads must be a multiple of n_kv_heads"),
        ((24, 0), {}, ValueError, "n_heads must be >= 1"),
        ((24, 4), {"feature_map": "softmax"}, ValueError, "feature_map must be one of"),
        ((24, 4), {"feature_map": 3}, TypeError, "feature_map must be a str or a callable"),
        ((24, 4), {"eps": -1.0}, ValueError, "eps must be a finite number >= 0"),
        ((24, 4), {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ],
)
def test_bad_config(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        LinearAttention(*args, **kwargs)


def test_bad_forward_and_step_input():
    layer = LinearAttention(24, 4)
    x = torch.randn(2, 5, 24)
    with pytest.raises(
        ValueError, match=r"x must have last dim d_model=24, got shape \(2, 5, 20\)"
    ):
        layer(torch.randn(2, 5, 20))
    with pytest.raises(ValueError, match="return_state=True continues a causal sequence"):
        layer(x, return_state=True)
    with pytest.raises(ValueError, match=r"x_t must hold one token, shape \(B, 1, d_model\)"):
        layer.step(x)
    with pytest.raises(ValueError, match="x_t must be 3-D"):
        layer.step(x[:, 0])
    _, state = layer(x, is_causal=True, return_state=True)
    with pytest.raises(ValueError, match=r"state.S must have shape \(B, H_kv, F, Dv\)"):
        layer.step(x[:1, :1], state)
    with pytest.raises(TypeError, match="state must be a LinearAttentionState"):
        layer.step(x[:, :1], "state")
