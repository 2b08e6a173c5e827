"""apply_rope, layouts, RotaryEmbedding: reference, transformers, defining properties, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.position import (
    ROPE_SCALING,
    RotaryEmbedding,
    apply_rope,
    convert_rope_weight,
    rope_cos_sin,
    rope_frequencies,
    rope_layout_permutation,
)
from llmref.position.rope_scaling import dynamic_frequencies
from llmref.testing import (
    LOW_PRECISION,
    assert_identical,
    assert_low_precision,
    assert_within,
    matmul_scale,
)

from .reference import complex_rope, rope_low_precision, rotation_scale

LAYOUTS = ("half", "interleaved")

# One configuration per rope_type (float64), with the sequence length that selects
# the scaled frequencies where the rule depends on it.
CONFIGS = {
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0, "max_position_embeddings": 512, "seq_len": 5000},
    "ntk_alpha": {"alpha": 8.0},
    "yarn": {"factor": 16.0, "original_max_position_embeddings": 512, "beta_fast": 32.0},
    "longrope": {
        "short_factor": [1.0 + 0.05 * i for i in range(32)],
        "long_factor": [1.0 + 0.9 * i for i in range(32)],
        "original_max_position_embeddings": 512,
        "factor": 8.0,
        "seq_len": 4096,
    },
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512,
        "rope_theta": 500000.0,
    },
    "proportional": {"partial_rotary_factor": 0.5, "factor": 2.0},
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_configs_cover_every_rope_type():
    # the library's own rules (worked examples from tests/extending register more)
    own = {n for n, spec in ROPE_SCALING.items() if spec.fn.__module__.startswith("llmref.")}
    assert set(CONFIGS) == own


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rotary", [64, 32, 2])
def test_apply_rope_equals_complex_multiplication(layout, rotary):
    g = _gen()
    x = torch.randn(2, 3, 7, 64, generator=g, dtype=torch.float64)
    inv_freq, _ = rope_frequencies(64, partial_rotary_factor=rotary / 64, dtype=torch.float64)
    positions = torch.tensor([0, 1, 5, 17, 1000, 3, 65536])
    cos, sin = rope_cos_sin(inv_freq, positions, layout=layout, attention_factor=1.3)
    expected = complex_rope(x, positions, inv_freq, layout, attention_factor=1.3)
    # both sides round the same angles m * theta (one float64 product): only cos/sin and
    # the rotation's few roundings differ, of factor * (|re| + |im|) per channel
    scale = rotation_scale(x, inv_freq, layout, factor=1.3)
    assert_within(apply_rope(x, cos, sin, layout=layout), expected, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_rope_dtypes_within_tolerance(dtype, layout):
    g = _gen(1)
    x = torch.randn(1, 2, 9, 32, generator=g).to(dtype)
    inv_freq, _ = rope_frequencies(32)
    positions = torch.arange(9)  # float32 angles lose ~position * 6e-8 rad: keep them small
    cos, sin = rope_cos_sin(inv_freq, positions, layout=layout, dtype=dtype)
    out = apply_rope(x, cos, sin, layout=layout)
    assert out.dtype == dtype and out.shape == x.shape
    expected = complex_rope(x, positions, inv_freq, layout)
    if dtype in LOW_PRECISION:  # the tables and every product rounded to the low dtype
        naive = rope_low_precision(x, positions, inv_freq, layout, dtype)
        assert_low_precision(out, expected, naive)
    else:  # float32 angles, rounded to eps * angle: scale (|re| + |im|) * (1 + angle)
        scale = rotation_scale(x, inv_freq, layout, positions=positions)
        assert_within(out, expected, scale=scale)


@pytest.mark.parametrize("rope_type", list(CONFIGS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scores_depend_only_on_relative_position(rope_type, layout):
    """RoPE's defining property, in float64, for every scaling, at many offsets."""
    params = dict(CONFIGS[rope_type])
    inv_freq, factor = rope_frequencies(64, rope_type=rope_type, dtype=torch.float64, **params)
    g = _gen(2)
    q = torch.randn(64, generator=g, dtype=torch.float64)
    k = torch.randn(64, generator=g, dtype=torch.float64)
    deltas = torch.tensor([-300, -7, -1, 0, 1, 3, 100, 4095])
    offsets = torch.tensor([4096, 4097, 4111, 10_000, 65_535, 500_000, 2_000_000])

    def scores(offset):
        m = offset + deltas  # query positions
        n = torch.full_like(m, offset)  # key position
        cq, sq = rope_cos_sin(inv_freq, m, layout=layout, attention_factor=factor)
        ck, sk = rope_cos_sin(inv_freq, n, layout=layout, attention_factor=factor)
        qm = apply_rope(q.expand(len(m), 64), cq, sq, layout=layout)
        kn = apply_rope(k.expand(len(n), 64), ck, sk, layout=layout)
        return (qm * kn).sum(-1)

    first = scores(int(offsets[0]))
    # angles m * theta (theta <= 1) are off by eps * m rad, m <= M on both sides; a pair's
    # product moves by that times factor**2 |q_pair| |k_pair|: scale M * factor**2 sum|q| max|k|
    M = float(offsets.max() + deltas.max())
    scale = M * factor**2 * float(q.abs().sum() * k.abs().max())
    for offset in offsets[1:]:
        assert_within(scores(int(offset)), first, scale=scale)
    # ... and they do depend on the relative position
    assert first.unique().numel() == len(deltas)


@pytest.mark.parametrize("rope_type", list(CONFIGS))
def test_rotation_preserves_norm(rope_type):
    inv_freq, factor = rope_frequencies(
        64, rope_type=rope_type, dtype=torch.float64, **CONFIGS[rope_type]
    )
    x = torch.randn(2, 4, 50, 64, generator=_gen(3), dtype=torch.float64)
    positions = torch.randint(0, 1_000_000, (50,), generator=_gen(4))
    for layout in LAYOUTS:
        cos, sin = rope_cos_sin(inv_freq, positions, layout=layout, attention_factor=factor)
        out = apply_rope(x, cos, sin, layout=layout)
        # cos**2 + sin**2 = 1 to a few roundings, whatever the angle: relative to the norm
        norm = factor * x.norm(dim=-1)
        assert_within(out.norm(dim=-1), norm, scale=norm)
        d = cos.shape[-1]
        # each rotated pair keeps its own norm, channels past the rotary dim are untouched
        assert_identical(out[..., d:], x[..., d:])


@pytest.mark.parametrize("rotary", [64, 32])
@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2)])
def test_layouts_agree_under_the_weight_permutation(rotary, n_heads, n_kv_heads):
    """Meta-format (interleaved) and HF-format (half) Llama weights give the same model."""
    D, C, T = 64, 48, 11
    g = _gen(5)
    x = torch.randn(2, T, C, generator=g, dtype=torch.float64)
    wq_meta = torch.randn(n_heads * D, C, generator=g, dtype=torch.float64)
    wk_meta = torch.randn(n_kv_heads * D, C, generator=g, dtype=torch.float64)
    bq_meta = torch.randn(n_heads * D, generator=g, dtype=torch.float64)
    wq_hf = convert_rope_weight(wq_meta, n_heads, rotary_dim=rotary)
    wk_hf = convert_rope_weight(wk_meta, n_kv_heads, rotary_dim=rotary)
    bq_hf = convert_rope_weight(bq_meta, n_heads, rotary_dim=rotary)
    inv_freq, _ = rope_frequencies(D, partial_rotary_factor=rotary / D, dtype=torch.float64)
    positions = torch.arange(T) + 5

    def heads(w, b, h):
        y = x @ w.T + (0 if b is None else b)
        return y.view(2, T, h, D).transpose(1, 2)

    def rotated(layout, wq, bq, wk):
        cos, sin = rope_cos_sin(inv_freq, positions, layout=layout)
        q = apply_rope(heads(wq, bq, n_heads), cos, sin, layout=layout)
        k = apply_rope(heads(wk, None, n_kv_heads), cos, sin, layout=layout)
        return q, k

    q_meta, k_meta = rotated("interleaved", wq_meta, bq_meta, wk_meta)
    q_hf, k_hf = rotated("half", wq_hf, bq_hf, wk_hf)
    perm = rope_layout_permutation(D, rotary_dim=rotary)

    # the projections' sums |x| @ |w|^T + |b|, then mixed pairwise by the rotation
    def split(y, h):
        return y.view(2, T, h, D).transpose(1, 2)

    mag_q = rotation_scale(split(matmul_scale(x, wq_hf.T) + bq_hf.abs(), n_heads), inv_freq)
    mag_k = rotation_scale(split(matmul_scale(x, wk_hf.T), n_kv_heads), inv_freq)
    assert_within(q_hf, q_meta[..., perm], scale=mag_q)
    assert_within(k_hf, k_meta[..., perm], scale=mag_k)
    group = n_heads // n_kv_heads
    k_meta, k_hf = (k.repeat_interleave(group, dim=1) for k in (k_meta, k_hf))
    mag_k = mag_k.repeat_interleave(group, dim=1)
    # q's and k's own errors (within c eps mag_q, mag_k; |q| <= mag_q) and the product's rounding
    scores_scale = 3 * matmul_scale(mag_q, mag_k.mT)
    assert_within(q_hf @ k_hf.mT, q_meta @ k_meta.mT, scale=scores_scale)
    # and back
    back = convert_rope_weight(
        wq_hf, n_heads, source="half", target="interleaved", rotary_dim=rotary
    )
    assert_identical(back, wq_meta)  # a permutation of rows: no arithmetic


def test_layout_permutation_is_huggingface_llama_conversion():
    # convert_llama_weights_to_hf.py: w.view(H, D // 2, 2, C).transpose(1, 2).reshape(H * D, C)
    H, D, C = 3, 8, 5
    w = torch.randn(H * D, C, generator=_gen(6))
    expected = w.view(H, D // 2, 2, C).transpose(1, 2).reshape(H * D, C)
    assert_identical(convert_rope_weight(w, H), expected)
    assert torch.equal(rope_layout_permutation(8, source="half", target="half"), torch.arange(8))


@pytest.mark.xcheck
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_apply_rope_equals_transformers_apply_rotary_pos_emb(dtype):
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = _gen(7)
    q = torch.randn(2, 4, 9, 64, generator=g).to(dtype)
    k = torch.randn(2, 2, 9, 64, generator=g).to(dtype)
    inv_freq, _ = rope_frequencies(64, base=5e5)
    position_ids = torch.stack([torch.arange(9), torch.arange(100, 109)])  # (B, T), per sequence
    cos, sin = rope_cos_sin(inv_freq, position_ids, dtype=dtype)  # (B, T, D)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    # the same ops on the same shapes and dtypes: (x * cos) + (rotate_half(x) * sin), with
    # cos/sin unsqueezed at dim 1 -- an identical sequence, so bit for bit
    assert_identical(apply_rope(q, cos, sin), q_hf)
    assert_identical(apply_rope(k, cos, sin), k_hf)


@pytest.mark.xcheck
@pytest.mark.parametrize("rotary", [64, 32])
def test_interleaved_equals_transformers_glm(rotary):
    """GLM rotates interleaved pairs (and only part of the head) in transformers."""
    pytest.importorskip("transformers")
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    g = _gen(8)
    q = torch.randn(1, 2, 6, 64, generator=g)
    k = torch.randn(1, 2, 6, 64, generator=g)
    inv_freq, _ = rope_frequencies(64, partial_rotary_factor=rotary / 64)
    position_ids = torch.arange(6)[None] * 3
    cos_half, sin_half = rope_cos_sin(inv_freq, position_ids)
    cos, sin = rope_cos_sin(inv_freq, position_ids, layout="interleaved")
    q_glm, k_glm = apply_rotary_pos_emb(q, k, cos_half, sin_half)
    # the same float32 angles, but GLM interleaves cos/sin after evaluating them and llmref
    # before: an element may take the vectorised or the scalar cos, an ulp apart; the rotation
    # is the same ops. Scale: |re| + |im| per channel
    for x, theirs in ((q, q_glm), (k, k_glm)):
        scale = rotation_scale(x, inv_freq, "interleaved")
        assert_within(apply_rope(x, cos, sin, layout="interleaved"), theirs, scale=scale)


def _llama_rotary(rope_parameters, head_dim=64, max_position_embeddings=512):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=dict(rope_parameters),
    )
    return LlamaRotaryEmbedding(config)


MODULE_CONFIGS = {
    name: {k: v for k, v in params.items() if k != "seq_len"}
    for name, params in CONFIGS.items()
    if name not in ("ntk_alpha", "proportional")  # not rules of LlamaRotaryEmbedding
}


@pytest.mark.xcheck
@pytest.mark.parametrize("rope_type", list(MODULE_CONFIGS))
def test_rotary_embedding_equals_transformers_module(rope_type):
    """cos/sin of RotaryEmbedding equal LlamaRotaryEmbedding's, through a sequence of calls.

    The sequence grows past the trained length (dynamic recomputes, longrope switches to
    the long factors), then goes back to short inputs (dynamic resets, longrope
    switches back).
    """
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    params = dict(MODULE_CONFIGS[rope_type])
    mine_params = {**params}
    max_pos = mine_params.pop("max_position_embeddings", 512)
    hf = _llama_rotary({"rope_type": rope_type, **params}, max_position_embeddings=max_pos)
    mine = RotaryEmbedding(64, rope_type=rope_type, max_position_embeddings=max_pos, **mine_params)
    x = torch.zeros(1, dtype=torch.float32)
    calls = [
        torch.arange(10)[None],
        torch.tensor([[3, 9, 1, 400]]),
        torch.arange(600, 700)[None],  # beyond 512
        torch.arange(1500, 1600).view(2, 50),  # longer still
        torch.arange(800, 830)[None],  # shorter than the last, still beyond 512
        torch.arange(20)[None],  # short again: dynamic resets
        torch.arange(2000, 2010)[None],
    ]
    for position_ids in calls:
        cos_hf, sin_hf = hf(x, position_ids)
        cos, sin = mine.cos_sin(position_ids)
        what = f"{rope_type} at positions up to {int(position_ids.max())}"
        if rope_type == "dynamic" and not torch.equal(mine.inv_freq, hf.inv_freq):
            # At run time transformers computes the stretched base in float32 (the length is
            # a tensor there), llmref in float64: base ** -e inherits the base's few float32
            # roundings, and each angle m * theta moves by m times that
            assert_within(mine.inv_freq, hf.inv_freq, scale=hf.inv_freq, what=what)
            angles = position_ids[..., None] * hf.inv_freq.double()
            scale = 1 + torch.cat([angles, angles], dim=-1)
            assert_within(cos, cos_hf, scale=scale, what=what)
            assert_within(sin, sin_hf, scale=scale, what=what)
            continue
        # the same float32 ops as transformers' init functions, on the same shapes
        assert_identical(mine.inv_freq, hf.inv_freq, what=what)
        # the same float32 angles (a one-term product each side); cos/sin evaluated on tables
        # of other shapes (vectorised or scalar by position): an ulp or two of |cos| <= factor
        assert_within(cos, cos_hf, scale=mine.attention_factor, what=what)
        assert_within(sin, sin_hf, scale=mine.attention_factor, what=what)


def test_cache_grows_and_matches_direct_computation():
    rope = RotaryEmbedding(32, rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    assert rope.cached_len == 0
    rope.cos_sin(torch.arange(5))
    first = rope.cached_len
    assert first >= 5
    rope.cos_sin(torch.tensor([3000]))
    assert rope.cached_len >= 3001 > first
    positions = torch.tensor([0, 17, 2999, 3000, 5])
    cos, sin = rope.cos_sin(positions)
    exp_cos, exp_sin = rope_cos_sin(
        rope.inv_freq, positions, attention_factor=rope.attention_factor
    )
    # the same angles; cos/sin of a longer table (vectorised or scalar by position)
    assert_within(cos, exp_cos, scale=rope.attention_factor)
    assert_within(sin, exp_sin, scale=rope.attention_factor)
    assert rope.state_dict() == {}  # nothing to save: all buffers are derived


@pytest.mark.parametrize("layout", LAYOUTS)
def test_module_with_arbitrary_position_ids(layout):
    rope = RotaryEmbedding(64, layout=layout, partial_rotary_factor=0.5, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 64, generator=_gen(9), dtype=torch.float64)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 7, 40, 3, 100000, 2]])
    out = rope(x, position_ids)
    for b in range(2):
        expected = complex_rope(x[b], position_ids[b], rope.inv_freq, layout)
        # the same float64 angles on both sides (one product each): scale |re| + |im|
        assert_within(out[b], expected, scale=rotation_scale(x[b], rope.inv_freq, layout))


def test_decoding_with_offset_equals_the_full_sequence():
    rope = RotaryEmbedding(
        32,
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    )
    x = torch.randn(1, 2, 12, 32, generator=_gen(10))
    full = rope(x)
    steps = [rope(x[:, :, :8])] + [rope(x[:, :, t : t + 1], offset=t) for t in range(8, 12)]
    # elementwise products and a sum of the same cached table entries: each element takes
    # the same roundings whatever the slice (no reduction, no GEMM), so bit for bit
    assert_identical(torch.cat(steps, dim=2), full)


def test_dynamic_recomputes_beyond_the_trained_length_and_resets():
    rope = RotaryEmbedding(32, rope_type="dynamic", factor=2.0, max_position_embeddings=100)
    original = rope.inv_freq.clone()
    # the module recomputes with the same function and arguments: identical sequences
    rope.cos_sin(torch.arange(100))
    assert_identical(rope.inv_freq, original)  # at the trained length: no scaling
    rope.cos_sin(torch.arange(250))
    expected, _ = dynamic_frequencies(32, factor=2.0, max_position_embeddings=100, seq_len=250)
    assert_identical(rope.inv_freq, expected)
    rope.cos_sin(torch.arange(180))  # shorter, but still past 100: keeps the 250 frequencies
    assert_identical(rope.inv_freq, expected)
    cos, _ = rope.cos_sin(torch.arange(50))  # fits again: back to the default frequencies
    assert_identical(rope.inv_freq, original)
    # cos of the same angles from a table of another length: an ulp or so apart at most
    assert_within(cos, rope_cos_sin(original, torch.arange(50))[0], scale=1.0)
    rope.cos_sin(torch.arange(300))
    rope.reset()
    assert_identical(rope.inv_freq, original)


def test_longrope_switches_factor_sets_by_length():
    short, long = [1.0] * 8, [float(i + 1) for i in range(8)]
    rope = RotaryEmbedding(
        16,
        rope_type="longrope",
        short_factor=short,
        long_factor=long,
        original_max_position_embeddings=32,
        factor=4.0,
    )
    short_freq = rope.inv_freq.clone()
    rope.cos_sin(torch.arange(33))
    expected = short_freq / torch.tensor(long)
    # the same float32 power divided by the factor in another order: a rounding or two apart
    assert_within(rope.inv_freq, expected, scale=expected)
    rope.cos_sin(torch.arange(32))
    assert_identical(rope.inv_freq, short_freq)  # recomputed by the same function


def test_module_follows_dtype_and_device_of_inputs():
    rope = RotaryEmbedding(16)
    x = torch.randn(1, 1, 4, 16, dtype=torch.bfloat16)
    assert rope(x).dtype == torch.bfloat16
    meta = RotaryEmbedding(16, device="meta")
    assert meta.inv_freq.device.type == "meta"
    assert "rope_type='default'" in repr(rope)


APPLY_BAD = [
    (
        torch.ones(2, 8),
        torch.ones(2, 6),
        torch.ones(2, 8),
        {},
        ValueError,
        "cos and sin must have one shape",
    ),
    (torch.ones(2, 8), torch.ones(2, 5), torch.ones(2, 5), {}, ValueError, "must be even and in"),
    (torch.ones(2, 8), torch.ones(2, 10), torch.ones(2, 10), {}, ValueError, "must be even and in"),
    (
        torch.ones(1, 2, 3, 8),
        torch.ones(4, 8),
        torch.ones(4, 8),
        {},
        ValueError,
        "do not broadcast",
    ),
    (
        torch.ones(2, 8),
        torch.ones(2, 8),
        torch.ones(2, 8),
        {"layout": "neox"},
        ValueError,
        "layout must be 'half' or 'interleaved'",
    ),
    (
        torch.ones(2, 8, dtype=torch.long),
        torch.ones(2, 8),
        torch.ones(2, 8),
        {},
        TypeError,
        "x must have a floating dtype",
    ),
    ([1.0], torch.ones(2, 8), torch.ones(2, 8), {}, TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("x,cos,sin,kwargs,exc,message", APPLY_BAD, ids=[b[-1] for b in APPLY_BAD])
def test_apply_rope_bad_input(x, cos, sin, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        apply_rope(x, cos, sin, **kwargs)


def test_module_and_table_bad_input():
    rope = RotaryEmbedding(16)
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        rope.cos_sin(torch.arange(4.0))
    with pytest.raises(ValueError, match="position_ids must be >= 0"):
        rope.cos_sin(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"x must be \(..., T, head_dim=16\)"):
        rope(torch.ones(1, 1, 4, 8))
    with pytest.raises(ValueError, match="position_ids must have x's length T=4"):
        rope(torch.ones(1, 1, 4, 16), torch.arange(5))
    with pytest.raises(ValueError, match="layout must be"):
        RotaryEmbedding(16, layout="gptj")
    with pytest.raises(ValueError, match="head_dim must be even for RoPE"):
        RotaryEmbedding(15)
    with pytest.raises(ValueError, match="needs 'factor'"):
        RotaryEmbedding(16, rope_type="yarn", original_max_position_embeddings=8)
    with pytest.raises(TypeError, match="inv_freq must be a floating tensor"):
        rope_cos_sin(torch.arange(4), torch.arange(3))
    with pytest.raises(ValueError, match=r"weight must be \(n_heads \* head_dim"):
        convert_rope_weight(torch.ones(10, 3), 3)
    with pytest.raises(ValueError, match="rotary_dim must be even and <= head_dim=8"):
        rope_layout_permutation(8, rotary_dim=10)
    cos, sin = rope.cos_sin(torch.empty(0, dtype=torch.long))
    assert cos.shape == sin.shape == (0, 16)
