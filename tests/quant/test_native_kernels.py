"""llmref's exact weight-only kernels (llmref/quant/wonly.c): equality to the reference for
every format, group size and ISA path, odd shapes, the fallback, the status, the
LLMREF_CPU_ISA override and concurrent first-use builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmref.quant import QuantizedTensor, QuantLinear, _native, _wonly, dequantize, quantize
from llmref.quant.kernels import AUTO_ORDER, KERNELS, kernel_status, select_kernel
from llmref.testing.equality import assert_identical, assert_within, matmul_scale

CPU = torch.device("cpu")
ISAS = [isa for isa in ("avx512", "avx2") if _native.isa_supported(isa)]
ISA_PARAMS = [
    pytest.param(
        isa,
        marks=pytest.mark.skipif(
            _wonly.library(isa) is None,
            reason=f"{isa} kernels unavailable: {_wonly.library.unavailable_reason(isa)}",
        ),
    )
    for isa in ISAS
] or [pytest.param("avx2", marks=pytest.mark.skip(reason="this CPU has neither AVX-512 nor AVX2"))]

# (format, options, kernel): every layout the kernels take
FORMATS = [
    ("int4", {"group_size": 32}, "int4_w4a32"),
    ("int4", {"group_size": 64}, "int4_w4a32"),
    ("int4", {"group_size": 128}, "int4_w4a32"),
    ("int4", {"group_size": None}, "int4_w4a32"),  # per channel: one group per row
    ("int4", {"group_size": 32, "symmetric": False}, "int4_w4a32"),  # uint8 zero points
    ("int4", {"group_size": 128, "symmetric": False}, "int4_w4a32"),
    ("int4", {"group_size": 64, "symmetric": False, "zero_point": "float"}, "int4_w4a32"),
    ("int4", {"group_size": 128, "symmetric": False, "zero_point": "float"}, "int4_w4a32"),
    ("int", {"bits": 4, "group_size": 64, "scale_convention": "half_range"}, "int4_w4a32"),
    ("q4_0", {}, "int4_w4a32"),  # float16 scales, zero point 8
    ("q4_1", {}, "int4_w4a32"),  # float16 scales and offsets
    ("int8", {}, "int8_w8a32"),  # per channel
    ("int8", {"group_size": 32}, "int8_w8a32"),
    ("int8", {"group_size": 128}, "int8_w8a32"),
    ("q8_0", {}, "int8_w8a32"),  # float16 scales per 32
]
IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for f, o, _ in FORMATS]

# (out_features, in_features): 40 and 17 leave partial row tiles (not multiples of 16 or 4);
# 96 = 3 blocks of 32 (not a multiple of 64 or 128); 192 = 1.5 groups of 128 of nothing;
# 136 x 640: two GEMM panels of rows (128 + 8, the second cut inside a 32-row micro-panel)
# and three input chunks (256 + 256 + 128)
SHAPES = [(40, 256), (17, 96), (1, 384), (64, 192), (136, 640)]
# the C kernel takes activation rows in blocks of 4, 2 and 1, the GEMM in blocks of 12 (6 on
# AVX2): 37 = 3 * 12 + 1
TOKENS = [1, 2, 3, 5, 16, 37]


def _fits(K, fmt, options):
    g = options.get("group_size")
    if fmt.startswith("q"):
        g = 32
    return g is None or K % g == 0


def _weight(N, K, fmt, options, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(N, K, generator=gen), fmt, **options)


def _check_layer(qt, kernel_name, isa, tokens, seed=1):
    layer = QuantLinear(qt)
    assert layer.kernel.name == kernel_name
    assert layer._prepared()[1]["lib"] is _wonly.library(isa)
    reference = QuantLinear(qt, backend="reference")
    w = dequantize(qt)
    gen = torch.Generator().manual_seed(seed)
    for M in tokens:
        x = torch.randn(M, qt.shape[1], generator=gen)
        with torch.no_grad():
            y, expected = layer(x), reference(x.double())
        assert y.dtype == torch.float32 and y.shape == (M, qt.shape[0])
        # the same weights (bit-for-bit), products summed in another order: c*eps*sum|x||w|
        assert_within(y, expected, scale=matmul_scale(x, w.T), what=f"{qt.fmt} M={M} {isa}")


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("fmt,options,kernel", FORMATS, ids=IDS)
@pytest.mark.parametrize("path", ["direct", "gemm"])
def test_equals_the_reference_kernel(monkeypatch, isa, fmt, options, kernel, path):
    """Both multiplication paths (the streaming kernel; the GEMM on dequantized panels)."""
    monkeypatch.setenv("LLMREF_CPU_ISA", isa)
    threshold = 10**9 if path == "direct" else 1
    monkeypatch.setattr(_wonly, "GEMM_MIN_TOKENS", dict.fromkeys(_wonly.GEMM_MIN_TOKENS, threshold))
    for N, K in SHAPES:
        if _fits(K, fmt, options):
            _check_layer(_weight(N, K, fmt, options), kernel, isa, TOKENS)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("fmt,options", [("int4", {"group_size": None}), ("int8", {})])
@pytest.mark.parametrize("K", [100, 33, 7, 300])
@pytest.mark.parametrize("path", ["direct", "gemm"])
def test_rows_not_a_multiple_of_32_are_padded(monkeypatch, isa, fmt, options, K, path):
    """Per-channel weights of any in_features: codes (and, in the streaming kernel,
    activations) padded with zeros; the GEMM stops at in_features."""
    monkeypatch.setenv("LLMREF_CPU_ISA", isa)
    threshold = 10**9 if path == "direct" else 1
    monkeypatch.setattr(_wonly, "GEMM_MIN_TOKENS", dict.fromkeys(_wonly.GEMM_MIN_TOKENS, threshold))
    qt = _weight(24, K, fmt, options)
    kernel = "int4_w4a32" if fmt == "int4" else "int8_w8a32"
    _check_layer(qt, kernel, isa, (1, 4, 7, 20))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("fmt,options,kernel", FORMATS, ids=IDS)
def test_dequantized_rows_are_the_reference_bits(isa, fmt, options, kernel):
    """The kernel's in-register weights: the reference's operations on the same numbers."""
    for N, K in [(40, 256), (17, 96), (5, 100)]:
        if not _fits(K, fmt, options):
            continue
        qt = _weight(N, K, fmt, options, seed=3)
        state = _wonly.prepare(qt)
        state["lib"] = _wonly.library(isa)
        assert_identical(_wonly.dequantize(state), dequantize(qt), what=f"{fmt} {isa}")
        assert_identical(_wonly.dequantize(state, 3, 5), dequantize(qt)[3:5])


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_nan_stays_in_its_row_and_dtypes_follow_the_input(monkeypatch, isa):
    monkeypatch.setenv("LLMREF_CPU_ISA", isa)
    layer = QuantLinear(_weight(32, 128, "int4", {"group_size": 32}))
    x = torch.randn(3, 128)
    x[1, 5] = float("nan")
    with torch.no_grad():
        y = layer(x)
        assert y[1].isnan().all() and torch.isfinite(y[[0, 2]]).all()
        xb = torch.randn(2, 128, dtype=torch.bfloat16)
        assert layer(xb).dtype == torch.bfloat16
        x64 = torch.randn(2, 128, dtype=torch.float64)  # float64: the reference's arithmetic
        reference = QuantLinear(layer.qweight, backend="reference")(x64)
        assert_identical(layer(x64), reference)


def test_auto_picks_exact_kernels_only():
    assert all(KERNELS[name].exact for name in AUTO_ORDER)
    w = torch.randn(64, 256)
    for fmt, options, kernel in FORMATS:
        chosen = select_kernel(quantize(w, fmt, **options), CPU)
        assert chosen.exact
        if kernel_status()[kernel].available:
            assert chosen.name == kernel
    # the bfloat16 and int8-activation kernels stay available by name
    assert not select_kernel(quantize(w, "int8"), CPU, "int8_weight_bf16").exact


def test_isa_override_none_falls_back_to_exact_pytorch(monkeypatch):
    monkeypatch.setenv("LLMREF_CPU_ISA", "none")
    status = kernel_status()
    for name in ("int4_w4a32", "int8_w8a32", "int4_w4a8"):
        assert not status[name].available and "LLMREF_CPU_ISA=none" in status[name].detail
    qt = _weight(32, 256, "int4", {"group_size": 64})
    layer = QuantLinear(qt)
    assert layer.kernel.name == "int4_tinygemm" and layer.kernel.exact
    x = torch.randn(2, 256)
    with torch.no_grad():
        y, reference = layer(x), QuantLinear(qt, backend="reference")(x.double())
    assert_within(y, reference, scale=matmul_scale(x, dequantize(qt).T))
    with pytest.raises(ValueError, match="'int4_w4a32' does not support"):
        QuantLinear(qt, backend="int4_w4a32")(x)


@pytest.mark.parametrize("value", ["sse", "AVX-512", "1"])
def test_isa_override_is_validated(monkeypatch, value):
    monkeypatch.setenv("LLMREF_CPU_ISA", value)
    with pytest.raises(ValueError, match=r"LLMREF_CPU_ISA must be one of 'avx512', 'avx2', 'none'"):
        kernel_status()
    with pytest.raises(ValueError, match="LLMREF_CPU_ISA"):
        QuantLinear(_weight(16, 64, "int8", {}))(torch.randn(1, 64))


def test_isa_override_cannot_exceed_the_cpu(monkeypatch):
    """Asking for AVX-512 on an AVX2-only CPU leaves the kernels unavailable, with the reason,
    instead of running instructions the CPU does not have."""
    monkeypatch.setattr(_native, "cpu_isa", lambda: "avx2")
    monkeypatch.setenv("LLMREF_CPU_ISA", "avx512")
    fresh = _native.NativeLibrary(_wonly.SOURCE, "wonly", ("avx512", "avx2"), _wonly._declare)
    assert fresh() is None
    assert "lacks the avx512 path" in str(fresh.unavailable_reason())
    monkeypatch.setenv("LLMREF_CPU_ISA", "avx2")
    assert fresh.isa() == "avx2"


def test_without_a_compiler_auto_is_exact_and_status_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMREF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    _wonly.library.cache_clear()
    try:
        status = kernel_status()["int8_w8a32"]
        if _native.selected_isa() != "none":
            assert not status.available and "no C compiler found" in status.detail
        qt = _weight(48, 128, "int8", {})
        layer = QuantLinear(qt)
        assert layer.kernel.name in ("int8_weight", "reference") and layer.kernel.exact
        x = torch.randn(3, 128)
        with torch.no_grad():
            y, reference = layer(x), QuantLinear(qt, backend="reference")(x.double())
        assert_within(y, reference, scale=matmul_scale(x, dequantize(qt).T))
    finally:
        _wonly.library.cache_clear()


_BUILD = """
import sys
from llmref.quant import _wonly
lib = _wonly.library(sys.argv[1])
print("ok" if lib is not None else _wonly.library.unavailable_reason(sys.argv[1]))
"""


def test_concurrent_first_use_builds_once(tmp_path):
    """Three processes building into an empty cache at once all load a whole library."""
    isa = _wonly.library.isa()
    if isa is None or _wonly.library() is None:
        pytest.skip(f"no native kernels here: {_wonly.library.unavailable_reason()}")
    env = {**os.environ, "LLMREF_KERNEL_CACHE": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD, isa],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [out.strip() for out, _ in outputs] == ["ok"] * 3, outputs
    assert len(list(tmp_path.glob(f"wonly-{isa}-*.so"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".so", ".lock")]


def test_concurrent_threads_build_once(monkeypatch, tmp_path):
    import threading

    monkeypatch.setenv("LLMREF_KERNEL_CACHE", str(tmp_path))
    fresh = _native.NativeLibrary(_wonly.SOURCE, "wonly", ("avx512", "avx2"), _wonly._declare)
    if fresh.isa() is None or _native.compiler() is None:
        pytest.skip("no native path or no compiler here")
    libs = []
    threads = [threading.Thread(target=lambda: libs.append(fresh())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(libs) == 4 and all(lib is libs[0] for lib in libs)


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_bad_layouts_are_refused_by_the_c_entry_point(isa):
    qt = _weight(16, 128, "int4", {"group_size": 32})
    state = _wonly.prepare(qt)
    state["lib"] = _wonly.library(isa)
    state["wq"].bpg = 3  # 3 blocks per group do not tile 4 blocks
    with pytest.raises(RuntimeError, match="status 1"):
        _wonly.linear(torch.randn(1, 128), state)
    with pytest.raises(RuntimeError, match="status 1"):
        _wonly.dequantize(state)


def test_layouts_the_kernels_take():
    w = torch.randn(8, 192)
    assert _wonly.int4_layout(quantize(w, "int4", group_size=64)) == "sym"
    assert _wonly.int4_layout(quantize(w, "int4", group_size=16)) is None  # not whole blocks
    assert _wonly.int4_layout(quantize(w, "nf4")) is None
    assert _wonly.int8_layout(quantize(w, "int8", symmetric=False)) is None
    assert _wonly.int8_layout(quantize(w, "q8_0")) == "q8_0"
    acts = quantize(w, "int8")
    acts = QuantizedTensor(
        acts.fmt, acts.shape, acts.dtype, acts.tensors, {**acts.options, "act_quant": "llm_int8"}
    )
    assert _wonly.int8_layout(acts) is None  # quantized activations: another kernel


def test_pack4_puts_inputs_j_and_j_plus_16_in_one_byte():
    codes = (torch.arange(2 * 40) * 7 % 16).view(2, 40)  # 40 inputs: a padded second block
    packed = _wonly.pack4(codes)
    assert packed.shape == (2, 32) and packed.dtype == torch.uint8
    for j in (0, 7, 15):
        assert packed[1, j] == codes[1, j] | codes[1, j + 16] << 4
    assert packed[0, 16] == codes[0, 32] and packed[0, 16 + 8] == 0  # padding codes are 0


def test_rows_are_interleaved_in_quads_block_by_block():
    """Block kb of rows 4q .. 4q + 3 are adjacent (one stream per pass over a quad); the
    row count is padded with zero rows to a multiple of 4."""
    N, blocks, bb = 6, 3, 16
    rows = (torch.arange(N * blocks * bb) % 251).to(torch.uint8).view(N, blocks * bb)
    out = _wonly.interleave_rows(rows, bb)
    assert out.shape == (8, blocks * bb) and out.dtype == torch.uint8
    flat = out.reshape(-1)
    for n in range(N):
        for kb in range(blocks):
            start = (((n // 4) * blocks + kb) * 4 + n % 4) * bb
            assert torch.equal(flat[start : start + bb], rows[n, kb * bb : (kb + 1) * bb])
    q1 = flat[blocks * 4 * bb :].view(blocks, 4, bb)
    assert not q1[:, 2:].any()  # rows 6 and 7 are padding
