"""Linear attention: efficient, quadratic and recurrent forms agree; dtypes, gradients, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmref.attention.linear import (
    LinearAttentionState,
    linear_attention,
    linear_attention_quadratic,
    linear_attention_step,
)
from llmref.attention.variants import VARIANTS
from tests.attention.test_functional import CONFIGS, make_qkv
from tests.tolerances import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CHUNKS = [1, 3, 64]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def bib_keys():
    """Keys of docs/references.bib plus any pending entries not merged yet."""
    text = "".join(
        p.read_text(encoding="utf-8")
        for p in (DOCS / "references.bib", DOCS / "_pending" / "attention_variants.bib")
        if p.exists()
    )
    return set(re.findall(r"@\w+\{([^,\s]+),", text))


def textbook_linear(q, k, v, *, is_causal=False, phi=lambda x: F.elu(x) + 1, eps=1e-6):
    """Katharopoulos et al.'s eq. (6) written out per row, in float64, sharing no llmref code."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    fq, fk = phi(q), phi(k)
    T, S = q.shape[2], k.shape[2]
    rows = []
    for i in range(T):
        last = min(i + 1, S) if is_causal else S
        sim = torch.einsum("bhf,bhsf->bhs", fq[:, :, i], fk[:, :, :last])
        num = torch.einsum("bhs,bhsd->bhd", sim, v[:, :, :last])
        rows.append(num / (sim.sum(-1, keepdim=True) + eps))
    return torch.stack(rows, dim=2)


def run_steps(q, k, v, **kwargs):
    state, outs = None, []
    for t in range(q.shape[2]):
        sl = slice(t, t + 1)
        out, state = linear_attention_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], state, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=2), state


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("is_causal", [False, True])
def test_quadratic_form_equals_textbook_formula(config, is_causal):
    q, k, v = make_qkv(config)
    out = linear_attention_quadratic(q, k, v, is_causal=is_causal)
    assert_close(out, textbook_linear(q, k, v, is_causal=is_causal), torch.float64)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("is_causal", [False, True])
def test_efficient_form_equals_quadratic_form(config, is_causal, chunk_size):
    q, k, v = make_qkv(config)
    out = linear_attention(q, k, v, is_causal=is_causal, chunk_size=chunk_size)
    assert out.shape == (*q.shape[:3], v.shape[-1])
    assert_close(out, linear_attention_quadratic(q, k, v, is_causal=is_causal), torch.float64)


@pytest.mark.parametrize("config", [c for c in CONFIGS.values() if c[3] == c[4]])
def test_recurrent_form_equals_causal_forms(config):
    q, k, v = make_qkv(config)
    out, state = run_steps(q, k, v)
    assert_close(out, linear_attention(q, k, v, is_causal=True, chunk_size=4), torch.float64)
    assert_close(out, linear_attention_quadratic(q, k, v, is_causal=True), torch.float64)
    # The final state is the full key/value summary: S = phi(K)^T V, z = phi(K)^T 1.
    phi_k = F.elu(k) + 1
    assert_close(state.S, phi_k.transpose(-1, -2) @ v, torch.float64)
    assert_close(state.z, phi_k.sum(dim=2), torch.float64)


def test_long_sequence_chunks_and_padding():
    """T = 203 is not a multiple of any chunk size; every chunking gives the same result."""
    q, k, v = make_qkv((1, 4, 2, 203, 203, 8, 5))
    expected = linear_attention_quadratic(q, k, v, is_causal=True)
    for chunk_size in (7, 64, 512):
        out = linear_attention(q, k, v, is_causal=True, chunk_size=chunk_size)
        assert_close(out, expected, torch.float64)


def test_causal_output_ignores_future_keys():
    q, k, v = make_qkv(CONFIGS["gqa"])
    out = linear_attention(q, k, v, is_causal=True, chunk_size=4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 3.0
    v2[:, :, 5:] -= 2.0
    out2 = linear_attention(q, k2, v2, is_causal=True, chunk_size=4)
    assert torch.equal(out[:, :, :5], out2[:, :, :5])
    assert not torch.allclose(out[:, :, 5:], out2[:, :, 5:])


def _pos_neg(x):
    return torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # F = 2D features


@pytest.mark.parametrize("feature_map", ["relu", _pos_neg], ids=["relu", "callable-2D"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_other_feature_maps(feature_map, is_causal):
    q, k, v = make_qkv(CONFIGS["gqa"])
    phi = F.relu if feature_map == "relu" else feature_map
    expected = textbook_linear(q, k, v, is_causal=is_causal, phi=phi)
    kwargs = {"is_causal": is_causal, "feature_map": feature_map}
    assert_close(linear_attention(q, k, v, chunk_size=4, **kwargs), expected, torch.float64)
    assert_close(linear_attention_quadratic(q, k, v, **kwargs), expected, torch.float64)
    if is_causal:
        out, state = run_steps(q, k, v, feature_map=feature_map)
        assert_close(out, expected, torch.float64)
        assert state.S.shape[2] == (64 if feature_map is _pos_neg else 32)


def test_zero_denominator_gives_zero_rows_not_nan():
    """relu features of a negative query are all zero; with eps=0 that row is 0, not NaN."""
    q, k, v = make_qkv(CONFIGS["mha"])
    q[:, :, 2] = -1.0
    for fn in (linear_attention, linear_attention_quadratic):
        out = fn(q, k, v, feature_map="relu", eps=0.0)
        assert not out.isnan().any()
        assert torch.all(out[:, :, 2] == 0)


def test_eps_is_added_to_the_denominator():
    q, k, v = make_qkv(CONFIGS["mha"])
    for eps in (0.0, 0.5):
        expected = textbook_linear(q, k, v, eps=eps)
        assert_close(linear_attention(q, k, v, eps=eps), expected, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", ["gqa", "cross", "value-dim"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_low_precision_against_float64(dtype, config, is_causal):
    q64, k64, v64 = make_qkv(CONFIGS[config])
    expected = linear_attention_quadratic(q64, k64, v64, is_causal=is_causal)
    q, k, v = (t.to(dtype) for t in (q64, k64, v64))
    out = linear_attention(q, k, v, is_causal=is_causal, chunk_size=4)
    assert out.dtype == dtype
    assert_close(out, expected, dtype)
    assert_close(linear_attention_quadratic(q, k, v, is_causal=is_causal), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_recurrent_low_precision_keeps_state_in_float32(dtype):
    q64, k64, v64 = make_qkv(CONFIGS["gqa"])
    expected = linear_attention_quadratic(q64, k64, v64, is_causal=True)
    out, state = run_steps(*(t.to(dtype) for t in (q64, k64, v64)))
    assert out.dtype == dtype
    assert state.S.dtype == state.z.dtype == torch.float32
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_efficient_form(is_causal):
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, 5, 5, 3, 2)))
    assert torch.autograd.gradcheck(
        lambda q, k, v: linear_attention(q, k, v, is_causal=is_causal, chunk_size=2), (q, k, v)
    )


def test_gradcheck_recurrent_form_including_state():
    q, k, v = (t.requires_grad_(True) for t in make_qkv((2, 4, 2, 1, 1, 3, 2)))
    g = torch.Generator().manual_seed(3)
    S = torch.rand(2, 2, 3, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    z = torch.rand(2, 2, 3, generator=g, dtype=torch.float64).add(1).requires_grad_(True)

    def step(q, k, v, S, z):
        out, new = linear_attention_step(q, k, v, LinearAttentionState(S, z))
        return out, new.S, new.z

    assert torch.autograd.gradcheck(step, (q, k, v, S, z))


def test_gradients_of_forms_agree():
    q, k, v = make_qkv(CONFIGS["gqa"])
    weights = torch.linspace(-1, 1, v.shape[-1], dtype=torch.float64)
    grads = []
    for fn in (
        lambda q, k, v: linear_attention(q, k, v, is_causal=True, chunk_size=4),
        lambda q, k, v: linear_attention_quadratic(q, k, v, is_causal=True),
        lambda q, k, v: run_steps(q, k, v)[0],
    ):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (fn(*inputs) * weights).sum().backward()
        grads.append([t.grad for t in inputs])
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            assert_close(a, b, torch.float64)


def test_registered_as_variant():
    entry = VARIANTS["linear"]
    assert entry.fn is linear_attention
    assert entry.reference == "linear_attention_quadratic"
    assert entry.paper in bib_keys()
    assert entry.meta["exact"] is True and entry.meta["required"] == ()


def test_device_follows_inputs():
    """No tensor is created on a fixed device (checked on the meta device, which has no data)."""
    q, k, v = (t.to("meta") for t in make_qkv(CONFIGS["cross"], torch.float32))
    for is_causal in (False, True):
        assert linear_attention(q, k, v, is_causal=is_causal, chunk_size=2).device == q.device
        assert linear_attention_quadratic(q, k, v, is_causal=is_causal).device == q.device
    out, state = linear_attention_step(*(t[:, :, :1] for t in (q, k, v)))
    out, state = linear_attention_step(*(t[:, :, :1] for t in (q, k, v)), state)
    assert out.device == state.S.device == state.z.device == q.device


# -- bad input --------------------------------------------------------------------------

GOOD = make_qkv(CONFIGS["gqa"], torch.float32)
STEP = tuple(t[:, :, :1] for t in GOOD)

BAD_INPUTS = {
    "q-3d": ((GOOD[0][0], *GOOD[1:]), {}, ValueError, "q must be 4-D"),
    "heads": (
        (GOOD[0], torch.randn(2, 3, 9, 32), torch.randn(2, 3, 9, 32)),
        {},
        ValueError,
        r"H % H_kv == 0",
    ),
    "mixed-dtype": ((GOOD[0], GOOD[1].double(), GOOD[2]), {}, TypeError, "share one dtype"),
    "eps-negative": (GOOD, {"eps": -1e-3}, ValueError, "eps must be a finite number >= 0"),
    "eps-nan": (GOOD, {"eps": float("nan")}, ValueError, "eps must be a finite number >= 0"),
    "eps-str": (GOOD, {"eps": "1e-6"}, TypeError, "eps must be a float"),
    "feature-unknown": (GOOD, {"feature_map": "elu"}, ValueError, "feature_map must be one of"),
    "feature-type": (
        GOOD,
        {"feature_map": 3},
        TypeError,
        "feature_map must be a str or a callable",
    ),
    "feature-returns-list": (
        GOOD,
        {"feature_map": lambda x: x.tolist()},
        TypeError,
        "feature_map must return a torch.Tensor",
    ),
    "feature-bad-shape": (
        GOOD,
        {"feature_map": lambda x: x.sum(-2)},
        ValueError,
        "feature_map must map q",
    ),
    "feature-int": (
        GOOD,
        {"feature_map": lambda x: (x > 0).long()},
        TypeError,
        "feature_map must return a floating tensor",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
@pytest.mark.parametrize("form", ["efficient", "quadratic"])
def test_bad_input_raises_clear_error(case, form):
    (q, k, v), kwargs, exc, message = case
    fn = linear_attention if form == "efficient" else linear_attention_quadratic
    with pytest.raises(exc, match=message):
        fn(q, k, v, **kwargs)
    with pytest.raises(exc, match=message):
        linear_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], **kwargs)


@pytest.mark.parametrize("chunk_size", [0, -4])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        linear_attention(*GOOD, is_causal=True, chunk_size=chunk_size)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        linear_attention(*GOOD, chunk_size=2.0)


def test_feature_sizes_must_match():
    state = {"calls": 0}

    def uneven(x):
        state["calls"] += 1
        return F.relu(x) if state["calls"] == 1 else F.relu(x)[..., :4]

    with pytest.raises(ValueError, match="same feature size, got 32 for q and 4 for k"):
        linear_attention(*GOOD, feature_map=uneven)


def test_step_needs_one_position():
    with pytest.raises(ValueError, match="must hold one position"):
        linear_attention_step(*GOOD)


def test_bad_state():
    _, state = linear_attention_step(*STEP)
    S, z = state
    cases = [
        ((S, z, z), TypeError, "state must be a LinearAttentionState"),
        ([S, z], TypeError, "state must be a LinearAttentionState"),
        (LinearAttentionState(S[..., :3], z), ValueError, r"state.S must have shape \(B, H_kv"),
        (LinearAttentionState(S, z[:1]), ValueError, r"state.z must have shape \(B, H_kv, F\)"),
        (LinearAttentionState(S.double(), z), TypeError, "state.S must have dtype torch.float32"),
        (LinearAttentionState(S, "z"), TypeError, "state.z must be a torch.Tensor"),
    ]
    for bad, exc, message in cases:
        with pytest.raises(exc, match=message):
            linear_attention_step(*STEP, bad)
