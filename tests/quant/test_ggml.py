"""ggml formats: q4_k against a scalar transcription of ggml's reference quantizer; GGUF bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmref.quant import GGUF_BLOCKS, dequantize, quantize
from llmref.quant import from_ggml_blocks as from_gguf
from llmref.quant import to_ggml_blocks as to_gguf
from tests.quant.helpers import assert_error_within, randn

f32 = np.float32


def nearest_int(v):
    return int(np.rint(v))  # ggml's magic-number trick rounds half to even, as rint does


def make_qkx2_quants(x, w, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20):
    """Element-by-element float32 transcription of ggml's make_qkx2_quants."""
    n = len(x)
    mn, mx = x[0], x[0]
    sum_w = w[0]
    sum_x = f32(sum_w * x[0])
    for i in range(1, n):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        sum_w = f32(sum_w + w[i])
        sum_x = f32(sum_x + f32(w[i] * x[i]))
    mn = min(mn, f32(0))
    if mx == mn:
        return f32(0), f32(-mn), [0] * n
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(f32(1) / iscale)
    L = [max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn))))) for i in range(n)]
    best = f32(0)
    for i in range(n):
        diff = f32(f32(f32(scale * f32(L[i])) + mn) - x[i])
        best = f32(best + f32(w[i] * f32(diff * diff)))
    for step in range(nstep + 1):
        iscale = f32(f32(f32(f32(rmin) + f32(f32(rdelta) * f32(step))) + f32(nmax)) / f32(mx - mn))
        La = [max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn))))) for i in range(n)]
        sum_l = sum_l2 = sum_xl = f32(0)
        for i in range(n):
            wl = f32(w[i] * f32(La[i]))
            sum_l = f32(sum_l + wl)
            sum_l2 = f32(sum_l2 + f32(wl * f32(La[i])))
            sum_xl = f32(sum_xl + f32(wl * x[i]))
        D = f32(f32(sum_w * sum_l2) - f32(sum_l * sum_l))
        if D > 0:
            this_scale = f32(f32(f32(sum_w * sum_xl) - f32(sum_x * sum_l)) / D)
            this_min = f32(f32(f32(sum_l2 * sum_x) - f32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = f32(0)
                this_scale = f32(sum_xl / sum_l2)
            mad = f32(0)
            for i in range(n):
                diff = f32(f32(f32(this_scale * f32(La[i])) + this_min) - x[i])
                mad = f32(mad + f32(w[i] * f32(diff * diff)))
            if mad < best:
                L, best, scale, mn = La, mad, this_scale, this_min
    return scale, f32(-mn), L


def reference_q4_k_block(x):
    """quantize_row_q4_K_ref for one super-block of 256: (d, dmin, ls, lm, L)."""
    scales, mins, L = [], [], []
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = f32(0)
        for v in xs:
            sum_x2 = f32(sum_x2 + f32(v * v))
        av_x = f32(np.sqrt(f32(sum_x2 / f32(32))))
        w = [f32(av_x + abs(v)) for v in xs]
        s, m, Lj = make_qkx2_quants(xs, w)
        scales.append(s)
        mins.append(m)
        L.append(Lj)
    max_scale = max([f32(0), *scales])
    max_min = max([f32(0), *mins])
    inv_scale = f32(f32(63) / max_scale) if max_scale > 0 else f32(0)
    inv_min = f32(f32(63) / max_min) if max_min > 0 else f32(0)
    ls = [min(63, nearest_int(f32(inv_scale * s))) for s in scales]
    lm = [min(63, nearest_int(f32(inv_min * m))) for m in mins]
    d = np.float16(f32(max_scale / f32(63)))
    dmin = np.float16(f32(max_min / f32(63)))
    for j in range(8):
        dj = f32(f32(d) * f32(ls[j]))
        if dj == 0:
            continue
        dm = f32(f32(dmin) * f32(lm[j]))
        L[j] = [
            max(0, min(15, nearest_int(f32(f32(v + dm) / dj)))) for v in x[32 * j : 32 * j + 32]
        ]
    return d, dmin, ls, lm, [v for Lj in L for v in Lj]


def test_q4_k_matches_scalar_transcription_of_ggml():
    x = randn(3, 256, seed=21).numpy() * np.array([[1.0], [0.01], [30.0]], dtype=f32)
    x[1, 64:96] = 0  # a zero sub-block
    qt = quantize(torch.from_numpy(x), "q4_k")
    from llmref.quant.formats.ggml import _unpack_k_scales
    from llmref.quant.packing import unpack_codes

    sc, mn = _unpack_k_scales(qt["scales"])
    codes = unpack_codes(qt["codes"], 4, qt.numel).reshape(3, 256)
    for b in range(3):
        d, dmin, ls, lm, L = reference_q4_k_block(x[b])
        assert qt["d"][b].item() == float(d) and qt["dmin"][b].item() == float(dmin)
        assert sc[b].tolist() == ls and mn[b].tolist() == lm
        assert codes[b].tolist() == L


@pytest.mark.parametrize("fmt", list(GGUF_BLOCKS))
def test_gguf_byte_round_trip(fmt):
    x = randn(4, 512, seed=22)
    qt = quantize(x, fmt)
    raw = to_gguf(qt)
    block, size = GGUF_BLOCKS[fmt]
    assert raw.dtype == torch.uint8 and raw.shape == (4, 512 // block * size)
    back = from_gguf(raw, fmt)
    assert back.equal(qt)
    assert from_gguf(raw.numpy(), fmt, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_ggml_nibble_order_in_gguf_bytes():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 16] = -1.0, 0.25  # d = 1/8: codes 0 and 10
    raw = to_gguf(quantize(x, "q4_0"))
    assert raw[0, 2].item() == 0 | (10 << 4)  # byte 0 = q[0] | q[16] << 4


def test_gguf_errors():
    with pytest.raises(ValueError, match="ggml format"):
        to_gguf(quantize(randn(2, 64), "int4"))
    with pytest.raises(ValueError, match="fmt must be one of"):
        from_gguf(torch.zeros(2, 34, dtype=torch.uint8), "q5_0")
    with pytest.raises(ValueError, match="multiple of 34 bytes"):
        from_gguf(torch.zeros(2, 35, dtype=torch.uint8), "q8_0")


def test_q4_k_all_positive_and_constant_blocks():
    x = torch.full((2, 256), 0.5)
    x[1] = torch.linspace(0.1, 3.0, 256)
    qt = quantize(x, "q4_k")
    y = dequantize(qt)
    assert torch.all(torch.isfinite(y))
    # each value is on its sub-block's grid d*ls*q - dmin*lm, q = 0..15, at the nearest point:
    # within half a step, or the distance to the grid's ends where it clamps
    from llmref.quant.formats.ggml import _unpack_k_scales

    sc, mn = _unpack_k_scales(qt["scales"])
    step = (qt["d"].double().reshape(-1, 1) * sc.double()).repeat_interleave(32, dim=1)
    lo = -(qt["dmin"].double().reshape(-1, 1) * mn.double()).repeat_interleave(32, dim=1)
    xd = x.double()
    bound = step / 2 + (lo - xd).clamp(min=0) + (xd - (lo + 15 * step)).clamp(min=0)
    assert_error_within(y, x, bound, scale=xd.abs() + lo.abs(), what="q4_k")
