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
from llmref.testing import (
    LOW_PRECISION,
    assert_identical,
    assert_low_precision,
    assert_within,
)
from tests.attention.reference import (
    assert_beyond_rounding,
    feature_attention_err,
    grad_scales,
    mag,
)
from tests.attention.test_functional import CONFIGS, make_qkv

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


def elu_plus_one(x):
    return F.elu(x) + 1


def elu_plus_one_mag(x):
    """What ``elu(x) + 1`` sums: ``|elu(x)| + 1`` (it loses precision where elu(x) ~ -1)."""
    return F.elu(x).abs() + 1


def textbook_linear(q, k, v, *, is_causal=False, phi=elu_plus_one, eps=1e-6, dtype=torch.float64):
    """Katharopoulos et al.'s eq. (6) written out per row, sharing no llmref code, every
    step in ``dtype`` (float64: the reference; 16-bit: the naive low-precision one)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
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


def linear_bound(q, k, v, *, is_causal=False, phi=elu_plus_one, phi_mag=elu_plus_one_mag, eps=1e-6):
    """The scale of linear attention's rounding (``feature_attention_err``), from the float64
    features of the inputs and what computing them summed (``phi_mag``)."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    fq, fk = phi(q), phi(k)
    _, err = feature_attention_err(
        fq, fk, phi_mag(q), phi_mag(k), v, mag(v), is_causal=is_causal, eps=eps
    )
    return err


def assert_linear(out, expected, q, k, v, *, is_causal=False, what="result"):
    """Within :func:`linear_bound` (float32/64), or FlashAttention's rule against
    :func:`textbook_linear` run in the low dtype (16-bit)."""
    if out.dtype in LOW_PRECISION:
        ref_lp = textbook_linear(q, k, v, is_causal=is_causal, dtype=out.dtype)
        assert_low_precision(out, expected, ref_lp, what=what)
    else:
        scale = linear_bound(q, k, v, is_causal=is_causal)
        assert_within(out, expected, scale=scale, what=what)


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
    assert_linear(out, textbook_linear(q, k, v, is_causal=is_causal), q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("is_causal", [False, True])
def test_efficient_form_equals_quadratic_form(config, is_causal, chunk_size):
    q, k, v = make_qkv(config)
    out = linear_attention(q, k, v, is_causal=is_causal, chunk_size=chunk_size)
    assert out.shape == (*q.shape[:3], v.shape[-1])
    expected = linear_attention_quadratic(q, k, v, is_causal=is_causal)
    assert_linear(out, expected, q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("config", [c for c in CONFIGS.values() if c[3] == c[4]])
def test_recurrent_form_equals_causal_forms(config):
    q, k, v = make_qkv(config)
    out, state = run_steps(q, k, v)
    efficient = linear_attention(q, k, v, is_causal=True, chunk_size=4)
    assert_linear(out, efficient, q, k, v, is_causal=True, what="vs efficient")
    quadratic = linear_attention_quadratic(q, k, v, is_causal=True)
    assert_linear(out, quadratic, q, k, v, is_causal=True, what="vs quadratic")
    # The final state is the full key/value summary: S = phi(K)^T V, z = phi(K)^T 1.
    phi_k, phi_k_mag = elu_plus_one(k), elu_plus_one_mag(k)
    S_scale = phi_k_mag.transpose(-1, -2) @ mag(v)
    assert_within(state.S, phi_k.transpose(-1, -2) @ v, scale=S_scale, what="S")
    assert_within(state.z, phi_k.sum(dim=2), scale=phi_k_mag.sum(dim=2), what="z")


def test_long_sequence_chunks_and_padding():
    """T = 203 is not a multiple of any chunk size; every chunking gives the same result."""
    q, k, v = make_qkv((1, 4, 2, 203, 203, 8, 5))
    expected = linear_attention_quadratic(q, k, v, is_causal=True)
    for chunk_size in (7, 64, 512):
        out = linear_attention(q, k, v, is_causal=True, chunk_size=chunk_size)
        assert_linear(out, expected, q, k, v, is_causal=True, what=f"chunk_size={chunk_size}")


def test_causal_output_ignores_future_keys():
    q, k, v = make_qkv(CONFIGS["gqa"])
    out = linear_attention(q, k, v, is_causal=True, chunk_size=4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 3.0
    v2[:, :, 5:] -= 2.0
    out2 = linear_attention(q, k2, v2, is_causal=True, chunk_size=4)
    # Same shapes, same operations: the changed keys and values reach rows 0..4 only
    # through terms the causal mask makes exactly 0, so those rows are the same bits.
    assert_identical(out[:, :, :5], out2[:, :, :5])
    later = linear_bound(q, k2, v2, is_causal=True)[:, :, 5:]
    assert_beyond_rounding(out[:, :, 5:], out2[:, :, 5:], scale=later)


def _pos_neg(x):
    return torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # F = 2D features


@pytest.mark.parametrize("feature_map", ["relu", _pos_neg], ids=["relu", "callable-2D"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_other_feature_maps(feature_map, is_causal):
    q, k, v = make_qkv(CONFIGS["gqa"])
    phi = F.relu if feature_map == "relu" else feature_map
    expected = textbook_linear(q, k, v, is_causal=is_causal, phi=phi)
    scale = linear_bound(q, k, v, is_causal=is_causal, phi=phi, phi_mag=phi)  # relu is exact
    kwargs = {"is_causal": is_causal, "feature_map": feature_map}
    out = linear_attention(q, k, v, chunk_size=4, **kwargs)
    assert_within(out, expected, scale=scale, what="efficient")
    out = linear_attention_quadratic(q, k, v, **kwargs)
    assert_within(out, expected, scale=scale, what="quadratic")
    if is_causal:
        out, state = run_steps(q, k, v, feature_map=feature_map)
        assert_within(out, expected, scale=scale, what="recurrent")
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
        scale = linear_bound(q, k, v, eps=eps)
        assert_within(linear_attention(q, k, v, eps=eps), expected, scale=scale, what=f"{eps=}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", ["gqa", "cross", "value-dim"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_low_precision_against_float64(dtype, config, is_causal):
    q, k, v = make_qkv(CONFIGS[config], dtype)
    expected = textbook_linear(q, k, v, is_causal=is_causal)  # float64, same rounded inputs
    out = linear_attention(q, k, v, is_causal=is_causal, chunk_size=4)
    assert out.dtype == dtype
    assert_linear(out, expected, q, k, v, is_causal=is_causal, what="efficient")
    out = linear_attention_quadratic(q, k, v, is_causal=is_causal)
    assert_linear(out, expected, q, k, v, is_causal=is_causal, what="quadratic")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_recurrent_low_precision_keeps_state_in_float32(dtype):
    q, k, v = make_qkv(CONFIGS["gqa"], dtype)
    expected = textbook_linear(q, k, v, is_causal=True)  # float64, same rounded inputs
    out, state = run_steps(q, k, v)
    assert out.dtype == dtype
    assert state.S.dtype == state.z.dtype == torch.float32
    assert_linear(out, expected, q, k, v, is_causal=True)


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
    # Gradient scales: |dout| pulled back through the surrogate; elu + 1 has slope <= 1, so
    # a feature's magnitude moves at most one for one with its input's.
    qm, km, vm = (mag(t, grad=True) for t in (q, k, v))
    fmq = elu_plus_one_mag(q) + (qm - qm.detach())
    fmk = elu_plus_one_mag(k) + (km - km.detach())
    _, out_mag = feature_attention_err(
        elu_plus_one(q), elu_plus_one(k), fmq, fmk, v, vm, is_causal=True, eps=1e-6
    )
    scales = grad_scales(out_mag, weights.expand_as(out_mag), [qm, km, vm])
    for form, other in zip(("quadratic", "recurrent"), grads[1:], strict=True):
        for a, b, scale, name in zip(grads[0], other, scales, "qkv", strict=True):
            assert_within(a, b, scale=scale, what=f"d{name}, efficient vs {form}")


def test_registered_as_variant():
    entry = VARIANTS["linear"]
    assert entry.fn is linear_attention
    assert entry.reference == "linear_attention_quadratic"
    assert entry.paper in bib_keys()
    assert entry.exact is True and entry.required == ()


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
