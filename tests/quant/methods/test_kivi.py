"""KIVI helper: bit-compatible with the quantized cache's chunks, error bound, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.cache.quantized import kivi_dequantize as cache_dequantize
from llmref.cache.quantized import kivi_quantize as cache_quantize
from llmref.quant import METHODS, QuantizedKV, kivi, kivi_dequantize
from llmref.quant.formats import int_codes


def kv(B=2, H=3, T=32, D=16, *, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, H, T, D, generator=g)
    k[..., 3] *= 10  # a key outlier channel
    v = torch.randn(B, H, T, D, generator=g)
    return k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_bit_compatible_with_the_quantized_cache(bits):
    G = 16
    k, v = kv(T=3 * G)
    out = kivi(k, v, bits=bits, group_size=G)
    k2, v2 = kivi_dequantize(out)
    # one chunk of G tokens: storage byte for byte
    one = kivi(k[:, :, :G], v[:, :, :G], bits=bits, group_size=G)
    for qt, x, per in ((one.keys, k[:, :, :G], "channel"), (one.values, v[:, :, :G], "token")):
        chunk = cache_quantize(x, bits, per=per)
        assert torch.equal(qt["codes"].reshape(-1), chunk.packed.reshape(-1))
        assert torch.equal(qt["scale"], chunk.scale.reshape(-1))
        assert torch.equal(qt["offset"], chunk.offset.reshape(-1))
    # several chunks: each one dequantizes exactly as the cache's chunk does
    for i in range(3):
        sl = slice(i * G, (i + 1) * G)
        for x, per, mine in ((k, "channel", k2), (v, "token", v2)):
            part = x[:, :, sl]
            chunk = cache_quantize(part, bits, per=per)
            ref = cache_dequantize(chunk, tuple(part.shape), bits, per=per, dtype=x.dtype)
            assert torch.equal(mine[:, :, sl], ref)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_error_within_half_a_step_per_group(bits):
    k, v = kv(T=64)
    out = kivi(k, v, bits=bits, group_size=32, value_group_size=8)
    k2, v2 = kivi_dequantize(out)
    # keys: groups are (channel, 32 tokens); values: (token, 8 channels)
    kg = k.reshape(2, 3, 2, 32, 16)
    k_step = (kg.amax(dim=3, keepdim=True) - kg.amin(dim=3, keepdim=True)) / (2**bits - 1)
    vg = v.reshape(2, 3, 64, 2, 8)
    v_step = (vg.amax(dim=4, keepdim=True) - vg.amin(dim=4, keepdim=True)) / (2**bits - 1)
    k_err = (k2 - k).abs().reshape(kg.shape)
    v_err = (v2 - v).abs().reshape(vg.shape)
    assert torch.all(k_err <= k_step / 2 * (1 + 1e-5) + 1e-6)
    assert torch.all(v_err <= v_step / 2 * (1 + 1e-5) + 1e-6)
    assert out.keys.shape == (2, 3, 2, 16, 32) and out.values.shape == (2, 3, 64, 2, 8)
    assert int(int_codes(out.keys).max()) <= 2**bits - 1


def test_per_channel_keys_beat_per_token_keys_with_an_outlier_channel():
    k, v = kv(T=32)
    per_channel = kivi_dequantize(kivi(k, v, bits=2, group_size=32))[0]
    # per-token keys: quantize k as if it were the values
    per_token = kivi_dequantize(kivi(v, k, bits=2, group_size=32))[1]
    # the outlier channel inflates every per-token step: the other channels suffer
    others = [c for c in range(16) if c != 3]
    err_c = (per_channel - k)[..., others].pow(2).mean()
    err_t = (per_token - k)[..., others].pow(2).mean()
    assert err_c < 0.5 * err_t


def test_dtypes_determinism_and_registry():
    k, v = kv(T=32, dtype=torch.bfloat16)
    out = kivi(k, v, bits=4, group_size=32)
    assert isinstance(out, QuantizedKV) and out.keys.equal(kivi(k, v, bits=4).keys)
    k2, v2 = kivi_dequantize(out)
    assert k2.dtype == v2.dtype == torch.bfloat16
    assert kivi_dequantize(out, dtype=torch.float64)[0].dtype == torch.float64
    entry = METHODS["kivi"]
    assert entry.fn is kivi and entry.meta["target"] == "kv" and entry.paper == "liu2024kivi"


def test_bad_inputs_raise_naming_the_argument():
    k, v = kv(T=32)
    with pytest.raises(ValueError, match="group_size must divide"):
        kivi(k, v, group_size=24)
    with pytest.raises(ValueError, match="value_group_size"):
        kivi(k, v, value_group_size=5)
    with pytest.raises(ValueError, match="bits"):
        kivi(k, v, bits=1)
    with pytest.raises(ValueError, match="keys must be"):
        kivi(k[0], v)
    with pytest.raises(TypeError, match="values"):
        kivi(k, v.to(torch.int64))
    with pytest.raises(TypeError, match="group_size"):
        kivi(k, v, group_size=16.0)
    out = kivi(k, v)
    with pytest.raises(ValueError, match=r"kv\.keys"):
        kivi_dequantize(QuantizedKV(out.values, out.values))
