"""Differential attention: an independent float64 formula, lambda = 0, transformers' DiffLlama."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmref.attention import ATTENTION, naive_attention
from llmref.attention.differential import differential_attention
from llmref.attention.variants import VARIANTS
from llmref.testing import (
    LOW_PRECISION,
    assert_low_precision,
    assert_within,
    attention_scale,
)
from tests.attention.reference import mag, rms_norm_err
from tests.attention.test_functional import CONFIGS, make_qkv, random_mask
from tests.attention.test_linear import bib_keys

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def textbook_differential(
    q, k, v, lam, *, mask=None, is_causal=False, scale=None, dtype=torch.float64
):
    """(softmax(s Q1 K1^T) - lam softmax(s Q2 K2^T)) V with copied K/V heads, every step in
    ``dtype`` (float64: the reference; a 16-bit dtype: the naive low-precision one)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    H, d = q.shape[1], q.shape[-1] // 2
    group = H // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = 1 / math.sqrt(d) if scale is None else scale
    T, S = q.shape[2], k.shape[2]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask

    def softmax_map(qh, kh):
        logits = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~allowed, -math.inf)
        return torch.nan_to_num(torch.softmax(logits, dim=-1))

    lam = torch.as_tensor(lam, dtype=dtype).reshape(-1, 1, 1)
    weights = softmax_map(q[..., :d], k[..., :d]) - lam * softmax_map(q[..., d:], k[..., d:])
    return weights @ v


def differential_bound(q, k, v, lam, *, scale=None):
    """Each softmax map's :func:`~llmref.testing.attention_scale`, the second weighted by
    ``|lam|`` (pass the summed magnitude of lam where it was computed)."""
    d = q.shape[-1] // 2
    scale = 1 / math.sqrt(d) if scale is None else scale
    first = attention_scale(q[..., :d], k[..., :d], v, scale=scale)
    second = attention_scale(q[..., d:], k[..., d:], v, scale=scale)
    return first + mag(torch.as_tensor(lam)).reshape(-1, 1, 1) * second


def assert_differential(out, expected, q, k, v, lam, **kwargs):
    """Within :func:`differential_bound` (float32/64), or FlashAttention's rule against
    :func:`textbook_differential` run in the low dtype (16-bit)."""
    if out.dtype in LOW_PRECISION:
        ref_lp = textbook_differential(q, k, v, lam, dtype=out.dtype, **kwargs)
        assert_low_precision(out, expected, ref_lp)
    else:
        scale = differential_bound(q, k, v, lam, scale=kwargs.get("scale"))
        assert_within(out, expected, scale=scale)


def lam_for(kind, heads):
    if kind == "float":
        return 0.8
    if kind == "scalar-tensor":
        return torch.tensor(0.35, dtype=torch.float64)
    return torch.linspace(0.1, 0.9, heads, dtype=torch.float64)  # per head


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("masking", ["none", "causal", "bool-mask", "both"])
def test_matches_textbook_formula_float64(config, masking):
    q, k, v = make_qkv(config)
    B, H, _, T, S, _, Dv = config
    mask = random_mask((B, 1, T, S)) if masking in ("bool-mask", "both") else None
    is_causal = masking in ("causal", "both")
    lam = lam_for("per-head", H)
    out = differential_attention(q, k, v, lam=lam, mask=mask, is_causal=is_causal)
    assert out.shape == (B, H, T, Dv)
    expected = textbook_differential(q, k, v, lam, mask=mask, is_causal=is_causal)
    assert_differential(out, expected, q, k, v, lam)


@pytest.mark.parametrize("lam_kind", ["float", "scalar-tensor", "per-head"])
def test_lambda_as_number_scalar_tensor_or_per_head(lam_kind):
    q, k, v = make_qkv(CONFIGS["gqa"])
    lam = lam_for(lam_kind, 8)
    out = differential_attention(q, k, v, lam=lam, is_causal=True)
    assert_differential(out, textbook_differential(q, k, v, lam, is_causal=True), q, k, v, lam)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_low_precision_against_float64(dtype, is_causal):
    q, k, v = make_qkv(CONFIGS["gqa"], dtype)
    lam = lam_for("per-head", 8).to(dtype)
    expected = textbook_differential(q, k, v, lam, is_causal=is_causal)  # same rounded inputs
    out = differential_attention(q, k, v, lam=lam, is_causal=is_causal)
    assert out.dtype == dtype
    assert_differential(out, expected, q, k, v, lam, is_causal=is_causal)


@pytest.mark.parametrize("backend", list(ATTENTION))
def test_every_softmax_backend_gives_the_same_result(backend):
    q, k, v = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    expected = textbook_differential(q, k, v, 0.6, mask=mask, is_causal=True)
    out = differential_attention(q, k, v, lam=0.6, mask=mask, is_causal=True, backend=backend)
    assert_differential(out, expected, q, k, v, 0.6)


@pytest.mark.parametrize("config", ["mha", "gqa", "cross"])
def test_lambda_zero_is_ordinary_attention_on_the_first_half(config):
    q, k, v = make_qkv(CONFIGS[config])
    d = q.shape[-1] // 2
    out = differential_attention(q, k, v, lam=0.0, is_causal=True)
    first = naive_attention(q[..., :d], k[..., :d], v, is_causal=True)  # default 1/sqrt(d)
    assert_within(out, first, scale=attention_scale(q[..., :d], k[..., :d], v))
    # ...and the second half enters with weight -lam, linearly.
    second = naive_attention(q[..., d:], k[..., d:], v, is_causal=True)
    out_half = differential_attention(q, k, v, lam=0.5, is_causal=True)
    assert_within(out_half, first - 0.5 * second, scale=differential_bound(q, k, v, 0.5))


def test_equal_halves_scale_attention_by_one_minus_lambda():
    q, k, v = make_qkv(CONFIGS["gqa"])
    qq, kk = torch.cat([q, q], dim=-1), torch.cat([k, k], dim=-1)
    out = differential_attention(qq, kk, v, lam=0.3, scale=0.2)
    expected = 0.7 * naive_attention(q, k, v, scale=0.2)
    assert_within(out, expected, scale=differential_bound(qq, kk, v, 0.3, scale=0.2))


def test_fully_masked_rows_are_zero():
    q, k, v = make_qkv(CONFIGS["gqa"])
    mask = random_mask((9, 9))
    mask[4] = False
    out = differential_attention(q, k, v, lam=0.5, mask=mask)
    assert torch.all(out[:, :, 4] == 0) and not out.isnan().any()


def test_gradcheck_including_lambda():
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, 3, 4, 4, 3)))
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=torch.float64, requires_grad=True)
    mask = random_mask((3, 4))
    assert torch.autograd.gradcheck(
        lambda q, k, v, lam: differential_attention(q, k, v, lam=lam, mask=mask, backend="naive"),
        (q, k, v, lam),
    )


@pytest.mark.xcheck
@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_transformers_diffllama(is_causal):
    """transformers' DiffLlamaAttention (identity RoPE and output projection) after mapping
    its head layout: first half of its heads = q1, second half = q2 (likewise k and v)."""
    modeling = pytest.importorskip("transformers.models.diffllama.modeling_diffllama")
    from transformers import DiffLlamaConfig

    H_hf, H_kv_hf, hd, T, B = 4, 2, 8, 6, 2
    config = DiffLlamaConfig(
        hidden_size=H_hf * hd,
        num_attention_heads=H_hf,
        num_key_value_heads=H_kv_hf,
        head_dim=hd,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():  # the layer initialises itself from the global generator
        torch.manual_seed(0)
        layer = modeling.DiffLlamaAttention(config, layer_idx=2).double().eval()
    with torch.no_grad():
        layer.o_proj.weight.copy_(torch.eye(H_hf * hd))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H_hf * hd, generator=g, dtype=torch.float64)
    cos, sin = torch.ones(B, T, hd, dtype=torch.float64), torch.zeros(B, T, hd, dtype=torch.float64)
    mask = None
    if is_causal:
        mask = torch.full((T, T), -math.inf, dtype=torch.float64).triu(1).expand(B, 1, T, T)
    with torch.no_grad():
        expected, _ = layer(x, (cos, sin), attention_mask=mask)

        def heads(proj, n):  # (B, T, n * hd) -> ours: (B, n / 2, T, 2 hd)
            y = proj(x).view(B, T, n, hd).transpose(1, 2)
            return y.unflatten(1, (2, n // 2)).permute(0, 2, 3, 1, 4).flatten(-2)

        q, k, v = (
            heads(layer.q_proj, H_hf),
            heads(layer.k_proj, H_kv_hf),
            heads(layer.v_proj, H_kv_hf),
        )
        exps = (
            torch.exp((layer.lambda_q1 * layer.lambda_k1).sum()),
            torch.exp((layer.lambda_q2 * layer.lambda_k2).sum()),
        )
        lam = exps[0] - exps[1] + layer.lambda_init
        heads = differential_attention(q, k, v, lam=lam, is_causal=is_causal, scale=hd**-0.5)
        out = (1 - layer.lambda_init) * F.rms_norm(heads, (2 * hd,), eps=config.rms_norm_eps)
    # transformers' eager path takes the softmax, lambda and the norm in float32 even for
    # float64 inputs: the float32 bound of the maps (lambda by what it sums), through the norm.
    lam_mag = exps[0] + exps[1] + layer.lambda_init
    heads_err = differential_bound(q, k, v, lam_mag, scale=hd**-0.5).expand_as(heads)
    _, err = rms_norm_err(heads, heads_err, eps=config.rms_norm_eps)
    scale = (1 - layer.lambda_init) * err
    assert_within(
        out.transpose(1, 2).reshape(B, T, -1),
        expected,
        scale=scale.transpose(1, 2).reshape(B, T, -1),
        dtype=torch.float32,
    )


def test_registered_as_variant():
    entry = VARIANTS["differential"]
    assert entry.fn is differential_attention
    assert entry.reference == "naive_attention"
    assert entry.paper in bib_keys()
    assert entry.required == ("lam",)
    assert entry.third_party is not None and entry.third_party.startswith("transformers.")


def test_device_follows_inputs():
    """No tensor is created on a fixed device (checked on the meta device, which has no data)."""
    q, k, v = (t.to("meta") for t in make_qkv(CONFIGS["cross"], torch.float32))
    lam = torch.full((4,), 0.5, device="meta")
    out = differential_attention(q, k, v, lam=lam, is_causal=True, backend="naive")
    assert out.device == q.device


# -- bad input --------------------------------------------------------------------------

GOOD = make_qkv(CONFIGS["gqa"], torch.float32)


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        (
            (GOOD[0][..., :31], GOOD[1][..., :31], GOOD[2]),
            {"lam": 0.5},
            ValueError,
            r"head dim must be even \(2d, holding the halves \[q1 \| q2\]",
        ),
        (
            GOOD,
            {"lam": torch.ones(7)},
            ValueError,
            r"shape \(\) or \(H,\) = \(8,\), got shape \(7,\)",
        ),
        (GOOD, {"lam": torch.ones(1, 8)}, ValueError, r"got shape \(1, 8\)"),
        (GOOD, {"lam": torch.ones(8, dtype=torch.long)}, TypeError, "floating tensor"),
        (GOOD, {"lam": "0.5"}, TypeError, "lam must be a float or a tensor, got str"),
        (GOOD, {"lam": True}, TypeError, "lam must be a float or a tensor, got bool"),
        (GOOD, {"lam": math.nan}, ValueError, "lam must be finite"),
        (GOOD, {"lam": torch.ones(8, device="meta")}, ValueError, "lam must be on the same"),
        (GOOD, {"lam": 0.5, "scale": 0.0}, ValueError, "scale must be a finite number > 0"),
        (GOOD, {"lam": 0.5, "backend": "flash"}, ValueError, "backend must be one of"),
        (GOOD, {"lam": 0.5, "mask": torch.zeros(9, 9)}, TypeError, "mask must be a torch.bool"),
        ((GOOD[0][0], *GOOD[1:]), {"lam": 0.5}, ValueError, "q must be 4-D"),
    ],
)
def test_bad_input_raises_clear_error(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        differential_attention(*args, **kwargs)


def test_lam_is_required():
    with pytest.raises(TypeError, match="lam"):
        differential_attention(*GOOD)  # type: ignore[call-arg]
