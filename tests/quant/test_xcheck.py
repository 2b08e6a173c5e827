"""Cross-checks against bitsandbytes, torchao, torch's float8 casts and gguf (xcheck extra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmref.quant import QuantizedTensor, dequantize, quantize, to_bnb_4bit
from llmref.quant import from_ggml_blocks as from_gguf
from llmref.quant import to_ggml_blocks as to_gguf
from llmref.quant.formats import int_codes
from llmref.quant.packing import unpack_codes
from llmref.testing import assert_identical
from tests.quant.helpers import randn

pytestmark = pytest.mark.xcheck


# ------------------------------------------------------------------ bitsandbytes
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_nf4_fp4_bit_exact_to_bitsandbytes(quant_type, blocksize, dtype):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    x = randn(32, 256, seed=blocksize, dtype=dtype)
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
    qt = quantize(x, quant_type, group_size=blocksize)
    mine_packed, mine_absmax = to_bnb_4bit(qt)
    assert torch.equal(mine_packed, packed)
    assert torch.equal(mine_absmax, state.absmax)
    assert torch.equal(dequantize(qt), bnbf.dequantize_4bit(packed, state))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_matches_bitsandbytes(quant_type):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    x = randn(64, 640, seed=11)  # 640 absmax values: a ragged last block of 128
    packed, st = bnbf.quantize_4bit(x, quant_type=quant_type, compress_statistics=True)
    qt = quantize(x, quant_type, double_quant=True)
    assert torch.equal(to_bnb_4bit(qt)[0], packed)
    assert torch.equal(qt["absmax_scale"], st.state2.absmax)
    assert torch.equal(qt["absmax_offset"].reshape(()), st.offset.reshape(()))
    # The 8-bit absmax codes are the nearest dynamic-map levels (bitsandbytes' reference
    # algorithm, as in its pure-PyTorch backend). Its compiled CPU kernel normalizes with
    # a less precise division, so a value within ~2e-4 (relative) of a decision midpoint
    # can land on the other neighbour: allow exactly those.
    mine, theirs = qt["absmax_codes"].long(), st.absmax.long()
    diff = (mine != theirs).nonzero().reshape(-1)
    assert len(diff) <= 0.01 * len(mine)
    assert torch.all((mine[diff] - theirs[diff]).abs() == 1)
    code = st.state2.code
    centered = x.reshape(-1, 64).abs().amax(dim=1) - st.offset
    blocks = st.state2.absmax.repeat_interleave(256)[: len(centered)]
    normed = centered / blocks
    mid = (code[mine[diff]] + code[theirs[diff]]) / 2
    assert torch.all((normed[diff] - mid).abs() <= 2.5e-4 * normed[diff].abs().clamp(min=1e-2))
    # with bitsandbytes' absmax codes in place of those few, the same decoding: bit for bit
    theirs_codes = {**qt.tensors, "absmax_codes": st.absmax.to(qt["absmax_codes"].dtype)}
    same = QuantizedTensor(qt.fmt, qt.shape, qt.dtype, theirs_codes, qt.options)
    assert_identical(dequantize(same), bnbf.dequantize_4bit(packed, st))


# bitsandbytes' published mean absolute error of quantize_4bit -> dequantize_4bit on
# torch.randn(1024, 1024) (averaged over 1k samples; tests/test_functional.py,
# TestQuantize4BitFunctional.test_4bit_quant, error_dict), per block size.
BNB_PUBLISHED_ERR = {
    "nf4": {
        64: 0.072792,
        128: 0.076835,
        256: 0.080326,
        512: 0.083535,
        1024: 0.086603,
        2048: 0.089592,
        4096: 0.092537,
    },
    "fp4": {
        64: 0.096545,
        128: 0.102947,
        256: 0.108685,
        512: 0.114087,
        1024: 0.119312,
        2048: 0.124460,
        4096: 0.129573,
    },
}


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_mean_abs_error_matches_bitsandbytes_published_table(quant_type):
    x = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    for blocksize, published in BNB_PUBLISHED_ERR[quant_type].items():
        rows = x.reshape(-1, max(blocksize, 1024))  # same flat blocks as bitsandbytes
        err = (dequantize(quantize(rows, quant_type, group_size=blocksize)) - rows).abs().mean()
        # one sample of 2^20 values: the mean moves by ~1e-4; bitsandbytes allows +1e-3
        assert abs(float(err) - published) < 1e-3, (blocksize, float(err), published)


# ------------------------------------------------------------------------ torchao
@pytest.mark.parametrize("bits,group", [(8, 256), (8, 32), (4, 128), (4, 32), (3, 64), (2, 64)])
@pytest.mark.parametrize("mode", ["half_range", "qmax", "asymmetric"])
def test_affine_equals_torchao(bits, group, mode):
    qp = pytest.importorskip("torchao.quantization.quant_primitives")
    x = randn(16, 256, seed=bits * group)
    block = (1, group)
    if mode == "asymmetric":
        lo, hi, target, mapping = 0, 2**bits - 1, torch.uint8, qp.MappingType.ASYMMETRIC
        qt = quantize(x, "int", bits=bits, group_size=group, symmetric=False)
    else:
        hi = 2 ** (bits - 1) - 1
        lo = -hi - 1 if mode == "half_range" else -hi
        target, mapping = torch.int8, qp.MappingType.SYMMETRIC
        qt = quantize(x, "int", bits=bits, group_size=group, scale_convention=mode)
    scale, zp = qp.choose_qparams_affine(x, mapping, block, target, lo, hi)
    q = qp.quantize_affine(x, block, scale, zp, target, lo, hi)
    assert torch.equal(qt["scale"], scale.reshape(-1))
    if mode == "asymmetric":
        assert torch.equal(qt["zero_point"], zp.reshape(-1).to(torch.uint8))
    assert torch.equal(int_codes(qt), q.to(torch.int32))
    assert torch.equal(dequantize(qt), qp.dequantize_affine(q, block, scale, zp, target, lo, hi))


MX = {
    "mxfp8_e4m3": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
    "mxfp6_e2m3": "fp6_e2m3",
    "mxfp6_e3m2": "fp6_e3m2",
    "mxfp4": torch.float4_e2m1fn_x2,
}


@pytest.mark.parametrize("fmt", list(MX))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mx_formats_equal_torchao_to_mx(fmt, dtype):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    # wide dynamic range: blocks from 1e-6 to 1e4, zeros and exact powers of two
    x = randn(16, 256, seed=7) * torch.logspace(-6, 4, 16).reshape(-1, 1)
    x[3, 32:64] = 0
    x[5, 64] = 2.0**10
    x = x.to(dtype)
    scale, data = mx.to_mx(x, MX[fmt], 32)
    qt = quantize(x, fmt)
    assert torch.equal(qt["scale"], scale.view(torch.uint8).reshape(-1))
    if fmt.startswith("mxfp8"):
        assert torch.equal(qt["codes"].view(torch.uint8), data.view(torch.uint8))
    elif fmt.startswith("mxfp6"):  # torchao keeps one 6-bit code per byte
        assert torch.equal(unpack_codes(qt["codes"], 6, x.numel()), data.reshape(-1))
    else:  # both pack FP4 low nibble first
        assert torch.equal(qt["codes"], data.view(torch.uint8).reshape(-1))
    mt = mx.MXTensor.to_mx(x, MX[fmt], 32)
    assert torch.equal(dequantize(qt, dtype=torch.float32), mt.dequantize(torch.float32))


@pytest.mark.parametrize("tensor_scale", [True, False])
def test_nvfp4_equals_torchao(tensor_scale):
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    x = randn(32, 256, seed=8) * torch.logspace(-3, 2, 32).reshape(-1, 1)
    pts = nv.per_tensor_amax_to_scale(x.abs().max()) if tensor_scale else None
    scales, data = nv.nvfp4_quantize(x, 16, pts)
    qt = quantize(x, "nvfp4", tensor_scale=tensor_scale)
    assert torch.equal(qt["block_scale"].view(torch.uint8), scales.view(torch.uint8).reshape(-1))
    assert torch.equal(qt["codes"], data.view(torch.uint8).reshape(-1))
    ref = nv.NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=pts).dequantize(torch.float32)
    assert torch.equal(dequantize(qt), ref)


@pytest.mark.parametrize(
    "fmt,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]
)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_equals_torch_casts_and_torchao(fmt, dtype, granularity):
    x = randn(16, 256, seed=9) * 10
    # unscaled: exactly torch's saturating cast
    plain = quantize(x * 1000, fmt, scaled=False)
    fmax = torch.finfo(dtype).max
    assert torch.equal(
        plain["codes"].view(torch.uint8), (x * 1000).clamp(-fmax, fmax).to(dtype).view(torch.uint8)
    )
    qp = pytest.importorskip("torchao.quantization.quant_primitives")
    block = list(x.shape) if granularity == "tensor" else [1, 256]
    scale = qp._choose_scale_float8(x, block, dtype)
    codes = qp._quantize_affine_float8(x, scale, dtype)
    qt = quantize(x, fmt, granularity=granularity)
    assert torch.equal(qt["scale"], scale.reshape(-1))
    assert torch.equal(qt["codes"].view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(dequantize(qt), qp._dequantize_affine_float8(codes, scale))


# --------------------------------------------------------------------------- gguf
GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q4_k": "Q4_K"}


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_ggml_formats_bit_exact_to_gguf(fmt):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[fmt])
    x = randn(48, 256, seed=10) * torch.logspace(-2, 2, 48).reshape(-1, 1)
    x[4, :32] = 0
    x[5, :32] = -x[5, :32].abs()  # negative block maximum
    x[6, 0], x[6, 1] = 3.0, -3.0  # a +/- tie for q4_0's signed maximum
    ref = gguf.quants.quantize(x.numpy(), qtype)
    qt = quantize(x, fmt)
    assert np.array_equal(to_gguf(qt).numpy(), ref)
    assert np.array_equal(dequantize(qt).numpy(), gguf.quants.dequantize(ref, qtype))
    assert from_gguf(ref, fmt).equal(qt)


def test_q4_k_bytes_decode_identically_in_gguf():
    # gguf has no Q4_K quantizer: check llmref's blocks through gguf's dequantizer
    gguf = pytest.importorskip("gguf")
    x = randn(16, 512, seed=12) * torch.logspace(-2, 1, 16).reshape(-1, 1)
    x[2, :256] = 0
    x[3, :256] = x[3, :256].abs() + 0.5  # all positive: minimum clamps to 0
    qt = quantize(x, "q4_k")
    raw = to_gguf(qt).numpy()
    assert raw.shape == (16, 2 * 144)
    decoded = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K)
    assert np.array_equal(decoded, dequantize(qt).numpy())
    assert from_gguf(raw, "q4_k").equal(qt)
