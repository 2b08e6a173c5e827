"""KIVI helper: what the quantized cache stores, error bound, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.cache import QuantizedCache
from llmref.quant import METHODS, QuantizedKV, kivi, kivi_dequantize
from llmref.quant.formats import int_codes


def kv(B=2, H=3, T=32, D=16, *, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, H, T, D, generator=g)
    k[..., 3] *= 10  # a key outlier channel
    v = torch.randn(B, H, T, D, generator=g)
    return k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_quantized_cache_stores_what_kivi_returns(bits):
    """QuantizedCache quantizes each chunk of G tokens with kivi(); the rest stays exact."""
    G = 16
    k, v = kv(T=3 * G + 5)
    cache = QuantizedCache(bits, group_size=G, residual_length=4)
    cache.update(k[:, :, :-1], v[:, :, :-1])
    k_all, v_all = cache.update(k[:, :, -1:], v[:, :, -1:])
    assert cache.n_quantized == 3 * G
    for i in range(3):
        sl = slice(i * G, (i + 1) * G)
        k2, v2 = kivi_dequantize(kivi(k[:, :, sl], v[:, :, sl], bits=bits, group_size=G))
        assert torch.equal(k_all[:, :, sl], k2) and torch.equal(v_all[:, :, sl], v2)
    assert torch.equal(k_all[:, :, 3 * G :], k[:, :, 3 * G :])
    one = kivi(k[:, :, :G], v[:, :, :G], bits=bits, group_size=G)
    residual = 2 * k[:, :, 3 * G :].numel() * k.element_size()
    assert cache.nbytes == 3 * (one.keys.nbytes + one.values.nbytes) + residual


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
