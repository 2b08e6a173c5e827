"""The W4A8 kernel (llmref/quant/w4a8.c): packing, exactness, edge cases, availability."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from llmref.quant import QuantizedTensor, QuantLinear, quantize
from llmref.quant import _w4a8 as w4a8
from tests.quant.test_modules import int8_blocks


def _cpu_has_vnni() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512_vnni" in cpuinfo.read_text()


needs_kernel = pytest.mark.skipif(
    w4a8.library() is None, reason=f"W4A8 kernel unavailable: {w4a8.unavailable_reason()}"
)


def test_available_wherever_the_cpu_has_vnni_and_there_is_a_compiler():
    """Guards the skips below: on a VNNI CPU with gcc the kernel must build and load."""
    if _cpu_has_vnni() and shutil.which("gcc"):
        assert w4a8.library() is not None, w4a8.unavailable_reason()


def test_unavailable_without_a_compiler_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMREF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    w4a8.library.cache_clear()
    try:
        assert w4a8.library() is None
        assert "no C compiler found" in str(w4a8.unavailable_reason())
        w = quantize(torch.randn(32, 256), "int4", group_size=128)
        with pytest.raises(ValueError, match="does not support"):
            QuantLinear(w, backend="int4_w4a8")(torch.randn(1, 256))
    finally:
        w4a8.library.cache_clear()


@pytest.mark.skipif(not (_cpu_has_vnni() and shutil.which("gcc")), reason="needs gcc and VNNI")
def test_builds_into_a_private_cache_of_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMREF_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    w4a8.library.cache_clear()
    try:
        assert w4a8.library() is not None
        cache = tmp_path / "llmref" / "kernels"
        assert len(list(cache.glob("w4a8-*.so"))) == 1
        assert cache.stat().st_mode & 0o777 == 0o700
    finally:
        w4a8.library.cache_clear()


def test_pack_puts_two_runs_of_64_in_the_nibble_planes():
    codes = (torch.arange(320) * 7 % 16).view(1, 320)  # two runs of 128, a last run of 64
    packed = w4a8.pack(codes)
    assert packed.shape == (1, 160) and packed.dtype == torch.uint8
    for j in (0, 5, 63, 64, 127):
        k0 = j // 64 * 128 + j % 64  # byte j of run j // 64
        assert packed[0, j] == codes[0, k0] | codes[0, k0 + 64] << 4
    for j in (0, 31):  # the last 64 inputs: planes of 32
        assert packed[0, 128 + j] == codes[0, 256 + j] | codes[0, 288 + j] << 4


def test_shapes_the_kernel_takes():
    assert w4a8.fits(576, 64) and w4a8.fits(576, 32) and w4a8.fits(4096, 128)
    assert w4a8.fits(384, 384)  # per channel
    assert not w4a8.fits(576, 576)  # a group of 576 is not a multiple of 128
    assert not w4a8.fits(96, 32)  # in_features not a multiple of 64
    assert not w4a8.fits(512, 16) and not w4a8.fits(512, 96)


def _weight(N, K, group, symmetric, seed=0):
    g = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(N, K, generator=g), "int4", group_size=group, symmetric=symmetric)


CASES = [  # (N, K, group, symmetric); N = 40 leaves a partial block of 16 output rows
    (40, 384, 128, True),
    (40, 384, 384, True),  # per channel
    (48, 512, 256, False),  # integer zero point
    (40, 256, 64, True),  # one group per nibble plane
    (40, 576, 64, False),  # K % 128 == 64: a last run of 64 inputs
    (40, 576, 32, True),  # two groups per plane, in lanes 0-7 and 8-15
    (16, 320, 32, False),
]


@needs_kernel
@pytest.mark.parametrize("N,K,group,symmetric", CASES)
@pytest.mark.parametrize("M", [1, 3, 4, 9])
def test_per_token_mode_equals_the_reference(N, K, group, symmetric, M):
    """With act_quant="per_token_int8", auto picks the kernel and it equals the reference
    kernel's fake-quantized activations (int8_vectorwise_quant) up to float32 rounding."""
    qt = _weight(N, K, group, symmetric)
    qt = QuantizedTensor(
        qt.fmt, qt.shape, qt.dtype, qt.tensors, {**qt.options, "act_quant": "per_token_int8"}
    )
    fast, ref = QuantLinear(qt), QuantLinear(qt, backend="reference")
    assert fast.kernel.name == "int4_w4a8"
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, expected = fast(x), ref(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@needs_kernel
@pytest.mark.parametrize("N,K,group,symmetric", CASES)
@pytest.mark.parametrize("M", [1, 5])
def test_group_mode_equals_int8_activations_per_group(N, K, group, symmetric, M):
    qt = _weight(N, K, group, symmetric)
    layer = QuantLinear(qt, backend="int4_w4a8")
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2)) * 3
    expected = int8_blocks(x.double(), group) @ qt.dequantize().double().T
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(
        y.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
    )
    exact = x @ qt.dequantize().T  # only the activation rounding separates them
    assert float((y - exact).norm() / exact.norm()) < 1.5e-2


@needs_kernel
def test_zero_rows_give_zeros_and_non_finite_rows_stay_in_their_row():
    qt = _weight(32, 256, 128, True)
    layer = QuantLinear(qt, backend="int4_w4a8")
    x = torch.randn(4, 256)
    x[0] = 0.0
    x[2, 7] = float("nan")
    x[3, 200] = float("inf")
    with torch.no_grad():
        y = layer(x)
    assert torch.equal(y[0], torch.zeros(32))
    assert torch.isfinite(y[1]).all() and y[2].isnan().all() and y[3].isnan().all()


@needs_kernel
def test_bad_group_is_refused_by_the_c_entry_point():
    qt = _weight(32, 256, 128, True)
    st = QuantLinear(qt, backend="int4_w4a8")._prepared()[1]
    with pytest.raises(RuntimeError, match="status 1"):
        w4a8.linear(torch.randn(1, 256), st["packed"], st["scale"], st["zero"], 96, False)
