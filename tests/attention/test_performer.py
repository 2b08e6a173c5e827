"""Performer FAVOR+: orthogonal features, an unbiased kernel estimate, error falling with m."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from llmref.attention import naive_attention
from llmref.attention.performer import (
    favor_features,
    orthogonal_random_features,
    performer_attention,
)
from llmref.attention.variants import VARIANTS
from llmref.testing import (
    LOW_PRECISION,
    assert_identical,
    assert_low_precision,
    assert_lower,
    assert_within,
)
from tests.attention.reference import feature_attention_err, mag
from tests.attention.test_functional import CONFIGS, make_qkv
from tests.attention.test_linear import bib_keys


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def small_qkv(config, dtype=torch.float64, seed=0, norm=0.5):
    """make_qkv with queries and keys shrunk: FAVOR+'s variance grows like exp(|q + k|^2)."""
    q, k, v = make_qkv(config, seed=seed)
    return (q * norm).to(dtype), (k * norm).to(dtype), v.to(dtype)


# -- orthogonal_random_features ---------------------------------------------------------


@pytest.mark.parametrize("m,d", [(1, 4), (8, 8), (20, 8), (64, 16), (3, 1)])
def test_projection_shape_and_block_orthogonality(m, d):
    w = orthogonal_random_features(m, d, generator=seeded(0), dtype=torch.float64)
    assert w.shape == (m, d) and w.dtype == torch.float64
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        off_diagonal = gram - torch.diag(gram.diagonal())
        # Householder QR's Q is orthogonal to O(d eps) (Higham, Thm. 19.4); rows rescaled
        # to norms |w_i| leave |w_i . w_j| <= d eps |w_i| |w_j|.
        norms = block.norm(dim=-1)
        scale = block.shape[-1] * norms[:, None] * norms[None, :]
        assert_within(off_diagonal, torch.zeros_like(gram), scale=scale)


def test_projection_rows_have_gaussian_norms():
    """Squared row norms are chi-squared with D degrees of freedom: mean D, variance 2D."""
    d = 16
    w = orthogonal_random_features(4096, d, generator=seeded(1), dtype=torch.float64)
    sq = w.square().sum(-1)
    # Standard error of the mean is sqrt(2D / 4096) = 0.088; allow 5 of them.
    assert abs(sq.mean().item() - d) < 5 * math.sqrt(2 * d / 4096)
    assert abs(sq.var().item() - 2 * d) < 0.25 * 2 * d
    # Not all rows have norm sqrt(D): the chi scaling, not the fixed one.
    assert sq.std() > 1.0


def test_projection_is_reproducible_and_follows_dtype():
    a = orthogonal_random_features(40, 8, generator=seeded(7))
    b = orthogonal_random_features(40, 8, generator=seeded(7))
    c = orthogonal_random_features(40, 8, generator=seeded(8))
    assert_identical(a, b)  # the same call on the same generator state
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    half = orthogonal_random_features(40, 8, generator=seeded(7), dtype=torch.bfloat16)
    # both round the same float64 draw; torch converts float64 to bfloat16 through float32
    assert_identical(half, a.to(torch.bfloat16))


# -- favor_features ---------------------------------------------------------------------


def test_kernel_estimate_is_unbiased():
    """Mean of phi(x).phi(y) over N independent projections -> exp(x.y).

    One projection of N * m rows is N independent projections of m rows (its blocks of D
    rows and their chi norms are drawn independently), so it is drawn at once and split.
    With N = 1000 estimates the standard error of their mean is measured from the sample,
    and the mean must lie within 4 standard errors of exp(x.y) for each of the 16 pairs
    (a false failure has probability about 1e-3 for Gaussian means) and within 2 %.
    """
    d, n, m = 8, 1000, 32
    g = seeded(11)
    x = torch.randn(1, 1, 4, d, generator=g, dtype=torch.float64) * 0.2
    y = torch.randn(1, 1, 4, d, generator=g, dtype=torch.float64) * 0.2
    exact = torch.exp(x[0, 0] @ y[0, 0].T)
    w = orthogonal_random_features(n * m, d, generator=g, dtype=torch.float64)
    fx = favor_features(x, w, is_query=True, stabilize=False)[0, 0].unflatten(-1, (n, m))
    fy = favor_features(y, w, is_query=False, stabilize=False)[0, 0].unflatten(-1, (n, m))
    # Features carry 1/sqrt(n m); the estimate of one m-row projection carries 1/m.
    est = torch.einsum("inf,jnf->nij", fx, fy) * n
    mean, stderr = est.mean(0), est.std(0) / math.sqrt(n)
    assert torch.all((mean - exact).abs() < 4 * stderr)
    assert torch.allclose(mean, exact, rtol=0.02)


def test_stabiliser_values():
    """Queries: each row's largest feature is 1/sqrt(m); keys: the largest per (b, h) is."""
    w = orthogonal_random_features(64, 16, generator=seeded(0), dtype=torch.float64)
    x = torch.randn(2, 3, 5, 16, generator=seeded(1), dtype=torch.float64) * 3  # large norms
    fq = favor_features(x, w, is_query=True)
    fk = favor_features(x, w, is_query=False)
    raw = favor_features(x, w, is_query=True, stabilize=False)
    top = torch.full((2, 3, 5), 1 / 8, dtype=torch.float64)
    # exp(0) / sqrt(64): one rounding of 1/8 at most
    assert_within(fq.amax(-1), top, scale=top, what="query maxima")
    assert_within(fk.amax(dim=(-2, -1)), top[..., 0], scale=top[..., 0], what="key maxima")
    assert torch.all(fk.amax(-1) <= 1 / 8)  # exp of an exponent <= 0 never rounds above 1
    # Each stabilised feature is the raw one times one common factor (per row / per head):
    # exp(u - c) / exp(u), both exponents off by what u sums (A = |w| . |x| + |x|^2 / 2)
    # and c by the largest A, so each ratio is off by up to 4 max A + 6 roundings (both
    # ratios compared, two exponentials and a division each).
    A = mag(x) @ mag(w).T + x.square().sum(-1, keepdim=True) / 2
    ratio = fq / raw
    scale = ratio.abs() * (4 * A.amax(-1, keepdim=True) + 6)
    assert_within(ratio, ratio[..., :1].expand_as(fq), scale=scale, what="query ratios")
    ratio = (fk / raw).flatten(-2)
    scale = ratio.abs() * (4 * A.amax(dim=(-2, -1)).unsqueeze(-1) + 6)
    assert_within(ratio, ratio[..., :1].expand_as(ratio), scale=scale, what="key ratios")


def test_features_dtype():
    w = orthogonal_random_features(16, 8, generator=seeded(0))
    x = torch.randn(1, 2, 3, 8, generator=seeded(1)) * 0.5
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        phi = favor_features(x.to(dtype), w, is_query=True)
        assert phi.dtype == dtype and phi.shape == (1, 2, 3, 16) and bool((phi > 0).all())


# -- performer_attention ----------------------------------------------------------------


def reference_with_raw_features(q, k, v, w, is_causal, scale=None):
    """Linear attention on *unstabilised* features, written out: the stabilisers cancel."""
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    fq = favor_features(q * math.sqrt(s), w, is_query=True, stabilize=False)
    fk = favor_features(k * math.sqrt(s), w, is_query=False, stabilize=False)
    weights = fq @ fk.transpose(-1, -2)
    if is_causal:
        weights = weights.tril()
    return (weights @ v) / weights.sum(-1, keepdim=True)


def favor_err(x, w, *, is_query, scale):
    """Raw FAVOR+ features of ``x sqrt(scale)`` and their rounding scale: the exponent
    ``u = w . x' - |x'|^2 / 2`` is off by what it sums, ``A = |w| . |x'| + |x'|^2 / 2``,
    the stabiliser (the largest u of a row or head) by the largest ``A``, so a feature is
    off by ``A + max A + 2`` roundings relative (the exponential's and the 1/sqrt(m))."""
    x = x.detach().double() * math.sqrt(scale)
    w = w.detach().double()
    half_sq = x.square().sum(-1, keepdim=True) / 2
    A = mag(x) @ mag(w).T + half_sq
    f = torch.exp(x @ w.T - half_sq) / math.sqrt(w.shape[0])
    dims = (-1,) if is_query else (-2, -1)
    return f, f * (A + A.amax(dim=dims, keepdim=True) + 2)


def performer_bound(q, k, v, w, *, is_causal=False, scale=None):
    """Performer is linear attention on FAVOR+ features: ``feature_attention_err`` with
    the features' rounding from :func:`favor_err` (the stabilisers cancel in the ratio)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    fq, fmq = favor_err(q, w, is_query=True, scale=scale)
    fk, fmk = favor_err(k, w, is_query=False, scale=scale)
    return feature_attention_err(fq, fk, fmq, fmk, v, mag(v), is_causal=is_causal)[1]


@pytest.mark.parametrize("config", ["mha", "gqa", "mqa", "cross", "value-dim"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_stabilisers_cancel(config, is_causal):
    q, k, v = small_qkv(CONFIGS[config])
    w = orthogonal_random_features(48, q.shape[-1], generator=seeded(2), dtype=torch.float64)
    expected = reference_with_raw_features(q, k, v, w, is_causal, scale=0.3)
    out = performer_attention(q, k, v, projection=w, is_causal=is_causal, scale=0.3, chunk_size=2)
    assert_within(out, expected, scale=performer_bound(q, k, v, w, is_causal=is_causal, scale=0.3))


def test_causal_chunk_size_does_not_matter():
    q, k, v = small_qkv((1, 2, 2, 37, 37, 8, 8))
    w = orthogonal_random_features(32, 8, generator=seeded(0), dtype=torch.float64)
    outs = [
        performer_attention(q, k, v, projection=w, is_causal=True, chunk_size=c) for c in (1, 5, 64)
    ]
    scale = performer_bound(q, k, v, w, is_causal=True)
    for out in outs[1:]:
        assert_within(out, outs[0], scale=scale)


@pytest.mark.parametrize("is_causal", [False, True])
def test_error_falls_as_features_grow(is_causal):
    """Median relative error over 5 projections, 16 -> 256 -> 4096 features: falling.

    Expected roughly 1/sqrt(m) (a factor 4 per step here). Medians measured for the data
    seeds 0..3 of make_qkv (the test uses 0), the same to 1e-15 natively and with
    ATEN_CPU_CAPABILITY=avx2, with 1 and 2 threads:
    non-causal 0.47/0.43/0.32/0.43 -> 0.19/0.14/0.11/0.13 -> 0.056/0.039/0.031/0.040,
    causal 0.26/0.26/0.27/0.35 -> 0.10/0.098/0.084/0.099 -> 0.031/0.026/0.026/0.032.
    Smallest gaps: 0.152 (16 -> 256), 0.058 (256 -> 4096), 0.044 (4096 below 0.1); the
    margins are at most half of each.
    """
    q, k, v = small_qkv((1, 2, 1, 48, 48, 16, 16))
    exact = naive_attention(q, k, v, is_causal=is_causal)
    medians = []
    for m in (16, 256, 4096):
        errors = []
        for seed in range(5):
            w = orthogonal_random_features(m, 16, generator=seeded(seed), dtype=torch.float64)
            out = performer_attention(q, k, v, projection=w, is_causal=is_causal)
            errors.append(((out - exact).norm() / exact.norm()).item())
        medians.append(statistics.median(errors))
    assert_lower(medians[1], medians[0], margin=0.07, what="256 vs 16 features")
    assert_lower(medians[2], medians[1], margin=0.025, what="4096 vs 256 features")
    assert_lower(medians[2], 0.1, margin=0.02, what="4096 features vs 10 %")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_low_precision_against_float64(dtype, is_causal):
    q, k, v = small_qkv(CONFIGS["gqa"], dtype)
    w = orthogonal_random_features(64, 32, generator=seeded(0), dtype=dtype)
    args = q, k, v, w, is_causal
    expected = reference_with_raw_features(*(t.double() for t in (q, k, v, w)), is_causal)
    out = performer_attention(q, k, v, projection=w, is_causal=is_causal, chunk_size=4)
    assert out.dtype == dtype
    if dtype in LOW_PRECISION:  # against the same formula run in the low dtype
        assert_low_precision(out, expected, reference_with_raw_features(*args))
    else:
        assert_within(out, expected, scale=performer_bound(q, k, v, w, is_causal=is_causal))


def test_gqa_equals_repeated_heads():
    q, k, v = small_qkv(CONFIGS["gqa"])
    w = orthogonal_random_features(40, 32, generator=seeded(0), dtype=torch.float64)
    grouped = performer_attention(q, k, v, projection=w, is_causal=True)
    repeated = performer_attention(
        q,
        k.repeat_interleave(4, dim=1),
        v.repeat_interleave(4, dim=1),
        projection=w,
        is_causal=True,
    )
    assert_within(grouped, repeated, scale=performer_bound(q, k, v, w, is_causal=True))


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(is_causal):
    q, k, v = (t.requires_grad_(True) for t in small_qkv((1, 2, 1, 4, 4, 3, 2)))
    w = orthogonal_random_features(6, 3, generator=seeded(0), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: performer_attention(
            q, k, v, projection=w, is_causal=is_causal, chunk_size=3
        ),
        (q, k, v),
    )


def test_registered_as_variant():
    entry = VARIANTS["performer"]
    assert entry.fn is performer_attention
    assert entry.reference == "naive_attention"
    assert entry.paper in bib_keys()
    assert entry.exact is False and entry.required == ("projection",)


def test_device_follows_inputs():
    """No tensor is created on a fixed device (checked on the meta device, which has no data)."""
    q, k, v = (t.to("meta") for t in small_qkv(CONFIGS["cross"], torch.float32))
    w = orthogonal_random_features(24, 16, generator=seeded(0), device="meta")
    assert w.device == q.device
    for is_causal in (False, True):
        assert performer_attention(q, k, v, projection=w, is_causal=is_causal).device == q.device
    assert favor_features(k, w, is_query=False).device == q.device


# -- bad input --------------------------------------------------------------------------

GOOD = make_qkv(CONFIGS["gqa"], torch.float32)
W = orthogonal_random_features(16, 32, generator=seeded(0))


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({"projection": W[:, :8]}, ValueError, r"projection must have shape \(n_features, D\)"),
        ({"projection": W[:0]}, ValueError, "with m >= 1"),
        ({"projection": W[None]}, ValueError, "projection must be 2-D"),
        ({"projection": W.tolist()}, TypeError, "projection must be a torch.Tensor"),
        ({"projection": W.long()}, TypeError, "projection must have a floating dtype"),
        ({"projection": W, "scale": 0.0}, ValueError, "scale must be a finite number > 0"),
        ({"projection": W, "chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ],
)
def test_performer_bad_input(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        performer_attention(*GOOD, **kwargs)


def test_performer_needs_a_projection_and_valid_qkv():
    with pytest.raises(TypeError, match="projection"):
        performer_attention(*GOOD)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"H % H_kv == 0"):
        performer_attention(
            GOOD[0], torch.randn(2, 3, 9, 32), torch.randn(2, 3, 9, 32), projection=W
        )


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((0, 8), {}, ValueError, "n_features must be >= 1"),
        ((8, 0), {}, ValueError, "head_dim must be >= 1"),
        ((8.0, 8), {}, TypeError, "n_features must be an int"),
        ((8, 8), {"dtype": torch.int32}, TypeError, "dtype must be one of"),
        ((8, 8), {"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_orthogonal_random_features_bad_input(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        orthogonal_random_features(*args, **kwargs)


def test_favor_features_bad_input():
    x = GOOD[0]
    with pytest.raises(TypeError, match="is_query must be a bool"):
        favor_features(x, W, is_query=1)
    with pytest.raises(TypeError, match="stabilize must be a bool"):
        favor_features(x, W, is_query=True, stabilize=None)
    with pytest.raises(ValueError, match="x must be 4-D"):
        favor_features(x[0], W, is_query=True)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        favor_features(x.long(), W, is_query=True)
    with pytest.raises(
        ValueError, match=r"projection must have shape \(n_features, D\) = \(m, 32\)"
    ):
        favor_features(x, W.T, is_query=False)
