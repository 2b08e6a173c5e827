"""xPos, CoPE and M-RoPE: references, defining properties, transformers (M-RoPE), errors."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from llmref.attention import naive_attention
from llmref.position import (
    CoPE,
    XPos,
    apply_rope,
    apply_xpos,
    cope_bias,
    cope_positions,
    mrope_axes,
    mrope_cos_sin,
    mrope_position_ids,
    rope_cos_sin,
    rope_frequencies,
    xpos_scale,
)
from llmref.testing import BOUND_FACTOR, assert_identical, assert_within, eps, matmul_scale

from .reference import rotation_scale

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- xPos --------------------------------------------------------------------------------


def test_xpos_scores_depend_only_on_relative_position_and_decay():
    inv_freq, _ = rope_frequencies(32, dtype=F64)
    q = torch.randn(32, generator=_gen(0), dtype=F64)
    k = torch.randn(32, generator=_gen(1), dtype=F64)

    def score(n, m, center=0):
        pn, pm = torch.tensor([n]), torch.tensor([m])
        cq, sq = rope_cos_sin(inv_freq, pn)
        ck, sk = rope_cos_sin(inv_freq, pm)
        scale_q = xpos_scale(32, pn, center=center, dtype=F64)
        scale_k = xpos_scale(32, pm, center=center, dtype=F64)
        qn, km = apply_xpos(q[None], k[None], cq, sq, ck, sk, scale_q, scale_k)
        return float((qn * km).sum())

    zeta = (torch.arange(0, 32, 2, dtype=F64) / 32 + 0.4) / 1.4
    pair_norms = (q.view(2, 16).norm(dim=0)) * (k.view(2, 16).norm(dim=0))
    for delta in (0, 1, 9, 300):
        reference = score(delta, 0)
        shifted = [score(offset + delta, offset) for offset in (1, 50, 1000)]
        shifted.append(score(500 + delta, 500, center=500))
        got = torch.tensor(shifted, dtype=F64)
        # angles m * theta (theta <= 1, m <= 1300) are off by eps * m rad; the scales
        # zeta ** (m / B) by a few eps relative: a pair's term moves by (1 + m) eps times
        # |q_pair| |k_pair| zeta ** (delta / B) <= |q_pair| |k_pair|
        scale = (1 + 1300) * float(pair_norms.sum())
        assert_within(got, torch.full_like(got, reference), scale=scale)
    # the decay: |score| is bounded by sum_i zeta_i ** (delta / B) |q_i| |k_i| pairs, up to
    # the score's rounding (angles up to delta)
    for delta in (100, 1000, 5000):
        bound = float((zeta ** (delta / 512) * pair_norms).sum())
        rounding = BOUND_FACTOR * eps(F64) * (1 + delta) * float(pair_norms.sum())
        assert abs(score(delta, 0)) <= bound + rounding


def test_xpos_without_decay_is_rope():
    inv_freq, _ = rope_frequencies(16, dtype=F64)
    pos = torch.arange(7)
    cos, sin = rope_cos_sin(inv_freq, pos)
    ones = torch.ones_like(cos)
    q, k = torch.randn(2, 1, 7, 16, generator=_gen(2), dtype=F64).unbind(0)
    q2, k2 = apply_xpos(q, k, cos, sin, cos, sin, ones, ones)
    # cos * 1 and cos / 1 are cos exactly, then the same apply_rope: identical sequences
    assert_identical(q2, apply_rope(q, cos, sin))
    assert_identical(k2, apply_rope(k, cos, sin))


def test_xpos_scale_formula_and_layouts():
    scale = xpos_scale(8, torch.tensor([1024]), dtype=F64)[0]
    zeta = torch.tensor([(2 * i / 8 + 0.4) / 1.4 for i in range(4)], dtype=F64)
    expected = torch.cat([zeta, zeta]) ** 2
    assert_within(scale, expected, scale=expected)  # zeta ** (1024 / 512): a few roundings
    inter = xpos_scale(8, torch.tensor([1024]), layout="interleaved", dtype=F64)[0]
    expected = zeta.repeat_interleave(2) ** 2
    assert_within(inter, expected, scale=expected)


def test_xpos_module_decoding_matches_full():
    xpos = XPos(16, center=8)
    g = _gen(3)
    q, k = torch.randn(1, 2, 10, 16, generator=g), torch.randn(1, 2, 10, 16, generator=g)
    q_full, k_full = xpos(q, k)
    q_last, _ = xpos(q[:, :, -1:], k)
    # the same angles and scales from tables of other lengths (cos an ulp apart at most);
    # the xPos scales zeta ** (+-(m - 8) / 512) stay within [0.99, 1.01] at m < 10
    scales = xpos_scale(16, torch.arange(10), center=8, dtype=F64)
    most = float(torch.maximum(scales, 1 / scales).max())
    scale = rotation_scale(q[:, :, -1:], xpos.inv_freq) * most
    assert_within(q_last, q_full[:, :, -1:], scale=scale)
    _, k_first = xpos(q[:, :, :4], k[:, :, :4])
    assert_within(
        k_first, k_full[:, :, :4], scale=rotation_scale(k[:, :, :4], xpos.inv_freq) * most
    )
    assert "center=8" in repr(xpos)


# -- CoPE --------------------------------------------------------------------------------


def _loop_cope(q, k, pos_emb, scale):
    """float64 loops over (b, h, i, j), the paper's definitions written out."""
    B, H, T, _ = q.shape
    S = k.shape[2]
    P = pos_emb.shape[1]
    out = torch.zeros(B, H, T, S, dtype=F64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                gates = [
                    1 / (1 + math.exp(-float(q[b, h, i] @ k[b, h, t]) * scale)) for t in range(S)
                ]
                for j in range(i + 1):
                    p = min(sum(gates[j : i + 1]), P - 1)
                    lo, hi = math.floor(p), math.ceil(p)
                    z_lo = float(q[b, h, i] @ pos_emb[:, lo])
                    z_hi = float(q[b, h, i] @ pos_emb[:, hi])
                    out[b, h, i, j] = (1 - (p - lo)) * z_lo + (p - lo) * z_hi
    return out


def test_cope_equals_loop_reference():
    g = _gen(4)
    q, k = (
        torch.randn(2, 2, 6, 8, generator=g, dtype=F64),
        torch.randn(2, 2, 6, 8, generator=g, dtype=F64),
    )
    pos_emb = torch.randn(8, 4, generator=g, dtype=F64)  # P = 4 < 6: the clamp is exercised
    bias = cope_bias(q, k, pos_emb)
    expected = _loop_cope(q, k, pos_emb, 1 / math.sqrt(8))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    # p = a sum of gates, each off by eps (1 + |q.k| / sqrt(D)); the interpolation between
    # q.e_lo and q.e_hi (each of magnitude <= Z = max |q| @ |E|) moves by 2 Z per unit of p
    p_mag = (1 + matmul_scale(q, k.mT) / math.sqrt(8)).sum(-1, keepdim=True)
    z_mag = matmul_scale(q, pos_emb).amax(-1, keepdim=True)
    scale = (z_mag * (1 + 2 * p_mag)).expand_as(bias)
    assert_within(bias[..., causal], expected[..., causal], scale=scale[..., causal])


def test_cope_with_open_gates_counts_tokens():
    """Gates of 1 make the contextual position the token distance plus one."""
    T, D = 7, 4
    q = torch.zeros(1, 1, T, D, dtype=F64)
    q[..., 0] = 100.0
    k = q.clone()  # q . k = 1e4: every gate is 1
    p = cope_positions(q, k)[0, 0]
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    # sums of at most T gates of (exactly) 1
    assert_within(p, torch.where(j <= i, (i - j + 1).to(F64), 0.0), scale=float(T))


def test_cope_mask_gqa_and_module():
    g = _gen(5)
    q, k, v = torch.randn(1, 4, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g), None
    full = cope_positions(q, k.repeat_interleave(2, dim=1))
    # cope_positions repeats k's heads itself: the same ops on the same shapes
    assert_identical(cope_positions(q, k), full)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[:, 1] = False  # token 1 does not count for anyone
    masked = cope_positions(q, k, mask=mask)
    # ... so fewer gates are summed, up to the sums' rounding (eps (1 + |q.k| / sqrt(D)) each)
    p_mag = (1 + matmul_scale(q, k.repeat_interleave(2, dim=1).mT) / math.sqrt(8)).sum(-1)
    rounding = BOUND_FACTOR * eps(torch.float32) * p_mag
    assert bool((masked[..., 0] <= full[..., 0] + rounding).all())
    cope = CoPE(8, 6)
    bias = cope(q, k.repeat_interleave(2, dim=1))
    assert_identical(bias, torch.zeros_like(bias))  # zero init: products with 0 are exactly 0
    with torch.no_grad():
        cope.pos_emb.normal_()
    v = torch.randn(1, 4, 5, 8, generator=g)
    kk = k.repeat_interleave(2, dim=1)
    out = naive_attention(q, kk, v, bias=cope(q, kk), is_causal=True)
    out.sum().backward()
    assert cope.pos_emb.grad is not None and out.shape == (1, 4, 5, 8)


# -- M-RoPE ------------------------------------------------------------------------------


def test_mrope_axes():
    assert mrope_axes([16, 24, 24]).tolist() == [0] * 16 + [1] * 24 + [2] * 24
    axes = mrope_axes([24, 20, 20], interleaved=True)
    assert axes[:6].tolist() == [0, 1, 2, 0, 1, 2] and axes[60:].tolist() == [0, 0, 0, 0]
    assert [(axes == a).sum().item() for a in range(3)] == [24, 20, 20]


def test_mrope_on_text_is_rope_and_each_axis_is_relative():
    inv_freq, _ = rope_frequencies(32, dtype=F64)
    pos = torch.arange(9)[None]
    cos_m, sin_m = mrope_cos_sin(inv_freq, pos, [4, 6, 6])
    cos, sin = rope_cos_sin(inv_freq, pos)
    # the same angles (one product each), cos/sin on differently shaped tables: an ulp apart
    assert_within(cos_m, cos, scale=1.0)
    assert_within(sin_m, sin, scale=1.0)
    # shifting all three coordinates together shifts every pair's angle alike: scores unchanged
    q = torch.randn(1, 1, 4, 32, generator=_gen(6), dtype=F64)
    k = torch.randn(1, 1, 4, 32, generator=_gen(7), dtype=F64)
    ids = mrope_position_ids([(1, 2, 2)])[:, None]

    def scores(shift):
        c, s = mrope_cos_sin(inv_freq, ids + torch.tensor(shift)[:, None, None], [4, 6, 6])
        return apply_rope(q, c, s) @ apply_rope(k, c, s).mT

    # angles m * theta (theta <= 1, m <= M) are off by eps * M rad: a pair's product moves by
    # that times (|q_a| + |q_b|) (|k_a| + |k_b|) at most (matmul_scale of rotation_scale)
    M = int(ids.max()) + 100
    mag = matmul_scale(rotation_scale(q, inv_freq), rotation_scale(k, inv_freq).mT)
    assert_within(scores([0, 0, 0]), scores([7, 100, 3]), scale=(1 + M) * mag)


@pytest.mark.xcheck
@pytest.mark.parametrize("model", ["qwen2_vl", "qwen3_vl"])
def test_mrope_equals_transformers(model):
    pytest.importorskip("transformers")
    pos = mrope_position_ids([3, (2, 3, 4), 5, (1, 2, 2)])[:, None].expand(3, 2, -1).clone()
    pos[:, 1] += 7  # the second sequence starts later
    if model == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

        section, theta, interleaved = [16, 24, 24], 1e6, False
        config = Qwen2VLTextConfig(
            hidden_size=256,
            num_attention_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": theta},
        )
        hf = Qwen2VLRotaryEmbedding(config)
    else:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

        section, theta, interleaved = [24, 20, 20], 5e6, True
        config = Qwen3VLTextConfig(
            hidden_size=256,
            num_attention_heads=2,
            head_dim=128,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": theta},
        )
        hf = Qwen3VLTextRotaryEmbedding(config)
    cos_hf, sin_hf = hf(torch.zeros(1), pos)
    inv_freq, _ = rope_frequencies(128, base=theta)
    cos, sin = mrope_cos_sin(inv_freq, pos, section, interleaved=interleaved)
    # the same float32 angles (transformers' one-term product, llmref's product); cos/sin
    # evaluated on tables of other shapes (vectorised or scalar by position): an ulp apart
    assert_within(cos, cos_hf, scale=1.0)
    assert_within(sin, sin_hf, scale=1.0)


@pytest.mark.xcheck
def test_mrope_position_ids_equal_transformers_get_rope_index():
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    merge = 2
    fake = SimpleNamespace(
        config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge))
    )
    fake.get_vision_position_ids = partial(Qwen2VLModel.get_vision_position_ids, fake)
    types = torch.tensor([[0, 0, 0] + [1] * 6 + [0] * 2 + [1] * 4 + [0]])
    grids = torch.tensor([[1, 4, 6], [1, 4, 4]])  # before the 2 x 2 patch merge
    expected, _ = Qwen2VLModel.get_rope_index(
        fake, torch.zeros_like(types), types, image_grid_thw=grids
    )
    got = mrope_position_ids([3, (1, 2, 3), 2, (1, 2, 2), 1])
    assert torch.equal(got, expected[:, 0])


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda: xpos_scale(7, torch.arange(3)), ValueError, "head_dim must be even for xPos"),
        (lambda: xpos_scale(8, torch.arange(3.0)), TypeError, "position_ids must be an integer"),
        (lambda: xpos_scale(8, torch.arange(3), gamma=0.0), ValueError, "gamma must be"),
        (
            lambda: apply_xpos(
                torch.ones(1, 4, 8),
                torch.ones(1, 4, 8),
                torch.ones(4, 8),
                torch.ones(4, 8),
                torch.ones(4, 8),
                torch.ones(4, 8),
                torch.ones(3, 8),
                torch.ones(4, 8),
            ),
            ValueError,
            "scale_q/scale_k must have the shapes",
        ),
        (
            lambda: cope_bias(torch.ones(1, 1, 3, 4), torch.ones(1, 1, 3, 4), torch.ones(5, 2)),
            ValueError,
            r"pos_emb must be \(D=4, P\)",
        ),
        (
            lambda: cope_positions(torch.ones(1, 3, 3, 4), torch.ones(1, 2, 3, 4)),
            ValueError,
            "q heads must be a multiple of k heads",
        ),
        (
            lambda: cope_positions(torch.ones(1, 1, 3, 4), torch.ones(1, 1, 3, 5)),
            ValueError,
            "must share B and D",
        ),
        (
            lambda: cope_positions(
                torch.ones(1, 1, 3, 4), torch.ones(1, 1, 3, 4), mask=torch.ones(3, 3)
            ),
            TypeError,
            "mask must be a torch.bool",
        ),
        (lambda: mrope_axes([1, 2]), TypeError, "mrope_section must be 3 ints"),
        (lambda: mrope_axes([1, 4, 0], interleaved=True), ValueError, "do not fit"),
        (
            lambda: mrope_cos_sin(torch.ones(4), torch.zeros(3, 1, 2, dtype=torch.long), [1, 1, 1]),
            ValueError,
            r"mrope_section must sum to len\(inv_freq\) = 4",
        ),
        (
            lambda: mrope_cos_sin(torch.ones(3), torch.zeros(2, 1, 2, dtype=torch.long), [1, 1, 1]),
            ValueError,
            r"position_ids must be \(3, B, T\)",
        ),
        (lambda: mrope_position_ids([(1, 2)]), TypeError, r"must be \(t, h, w\)"),
        (lambda: mrope_position_ids([(1, 0, 2)]), ValueError, "h must be >= 1"),
        (lambda: mrope_position_ids([-1]), ValueError, "text segment must be >= 0"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
