"""QuantLinear (reference and fast kernels); quantize_model is tested in test_model.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmref.quant import (
    FORMATS,
    QuantizedTensor,
    QuantLinear,
    dequantize,
    quantize,
)
from llmref.quant.kernels import KERNELS, kernel_status, select_kernel
from llmref.testing import assert_identical, assert_within, matmul_scale
from tests.quant.helpers import (
    assert_linear,
    assert_linear_low_precision,
    int_weight_magnitude,
    linear_reference,
    randn,
)

CPU = torch.device("cpu")


def make_linear(in_features=256, out_features=96, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_reference_forward_equals_dequantize_then_linear(fmt):
    lin = make_linear()
    qlin = QuantLinear.from_linear(lin, fmt, backend="reference")
    x = randn(2, 3, 256, seed=1)
    w, b = dequantize(quantize(lin.weight.detach(), fmt)), lin.bias.detach()
    with torch.no_grad():
        y = qlin(x)
    assert qlin.kernel.name == "reference"
    # The reference kernel's own op sequence: rows flattened to 2-D, F.linear without the
    # bias, the bias added after. Bit equality holds only for that sequence (F.linear with
    # the bias fuses it into addmm and rounds differently on some CPUs).
    same_ops = torch.nn.functional.linear(x.reshape(-1, 256), w).reshape(2, 3, 96) + b
    assert_identical(y, same_ops, what=f"{fmt} reference forward")
    # and the contract any order meets: x W^T + b to float32 rounding of |x||W|^T + |b|
    assert_linear(y, x, w, b, what=f"{fmt} reference forward")


# (format, options, kernel, what the kernel computes):
#   "float32"   x W^T in float32: within c eps |x||W|^T of the float64 product
#   "bfloat16"  x and the scales in bfloat16: FlashAttention's rule against the naive
#               bfloat16 product
#   "int8_rows" / "int8_groups"  activations rounded to int8 per row (W8A8) or per weight
#               group (W4A8), then an exact integer product: within float32 rounding of
#               the float64 product of those rounded activations
FAST = [
    ("int4", {"group_size": 32}, "int4_tinygemm", "float32"),
    ("int4", {"group_size": 128, "symmetric": False}, "int4_tinygemm", "float32"),
    (
        "int4",
        {"group_size": 64, "symmetric": False, "zero_point": "float"},
        "int4_tinygemm",
        "float32",
    ),
    (
        "int",
        {"bits": 4, "group_size": 256, "scale_convention": "half_range"},
        "int4_tinygemm",
        "float32",
    ),
    ("int4", {"group_size": 64}, "int4_tinygemm_bf16", "bfloat16"),
    ("int4", {"group_size": 128}, "int4_w4a8", "int8_groups"),
    ("int4", {"group_size": 256, "symmetric": False}, "int4_w4a8", "int8_groups"),
    ("int4", {"group_size": None}, "int4_w4a8", "int8_groups"),  # per channel: one group of 512
    ("int8", {}, "int8_weight", "float32"),
    ("int8", {}, "int8_dynamic", "int8_rows"),
    ("int8", {}, "int8_weight_bf16", "bfloat16"),
]


def int8_rows(x):
    """Activations as the W8A8 kernel sees them: int8 per row, ``round(x * 127 / a) * a / 127``."""
    return int8_blocks(x, x.shape[-1])


def assert_kernel_output(y, x, qt, b, options, computes, what):
    """``y = x W^T + b`` as the kernel computes it (see FAST), by the policy for that arithmetic."""
    w = qt.dequantize()
    if computes == "bfloat16":
        assert_linear_low_precision(y, x, w, b, what=what)
        return
    if computes == "int8_rows":
        x = int8_rows(x)
    elif computes == "int8_groups":
        x = int8_blocks(x, options.get("group_size") or x.shape[-1])
    ref, _ = linear_reference(x, w, b)
    # the int4 kernels sum unsigned codes and subtract the zero point after: their terms are
    # |x| (|w| + 30 s) (int_weight_magnitude); the int8 ones sum |x| |w|
    magnitude = int_weight_magnitude(qt) if int(qt.options["bits"]) == 4 else w.abs()
    scale = matmul_scale(x, magnitude.T) + (0.0 if b is None else b.detach().double().abs())
    assert_within(y, ref, scale=scale, what=what)


@pytest.mark.parametrize("fmt,options,kernel,computes", FAST, ids=lambda v: str(v))
@pytest.mark.parametrize("M", [1, 5, 64])
def test_fast_kernels_equal_the_reference(fmt, options, kernel, computes, M):
    lin = make_linear(512, 192, seed=2)
    fast = QuantLinear.from_linear(lin, fmt, backend=kernel, **options)
    ref = QuantLinear.from_linear(lin, fmt, backend="reference", **options)
    # exact for this weight: exact, and implementing the activations it declares (float)
    exact = KERNELS[kernel].is_exact_for(fast.qweight.without_input_scale())
    assert fast.kernel.name == kernel and exact == (computes == "float32")
    x = randn(M, 512, seed=3)
    with torch.no_grad():
        y, y_ref = fast(x), ref(x)
    assert y.dtype == x.dtype and y.shape == (M, 192)
    b = lin.bias.detach()
    assert_linear(y_ref, x, ref.qweight.dequantize(), b, what="reference kernel")
    assert_kernel_output(y, x, ref.qweight, b, options, computes, what=kernel)


def int8_blocks(x, block):
    """Activations as the W4A8 kernel sees them: int8 per block of ``block`` inputs,
    ``round(x * 127 / a) * a / 127`` with ``a = max|x|`` (int8_vectorwise_quant's arithmetic)."""
    xb = x.unflatten(-1, (-1, block))
    a = xb.abs().amax(-1, keepdim=True)
    q = torch.round(xb * (127 / a)).clamp(-127, 127)
    return torch.where(a > 0, q * (a / 127), 0.0).flatten(-2)


def test_int8_dynamic_error_is_the_activation_rounding():
    # W8A8 = the reference applied to activations rounded to int8 per row
    lin = make_linear(512, 64, bias=False, seed=4)
    fast = QuantLinear.from_linear(lin, "int8", backend="int8_dynamic")
    x = randn(3, 512, seed=5)
    sx = x.abs().amax(dim=1, keepdim=True) / 127
    xq = torch.round(x * (1 / sx)).clamp(-127, 127) * sx
    ref = QuantLinear.from_linear(lin, "int8", backend="reference")
    with torch.no_grad():
        y, y_ref = fast(x), ref(xq)
    w = ref.qweight.dequantize()
    # both are xq W^T: the int32 product and the float32 one, each within rounding of float64
    assert_linear(y, xq, w, what="int8_dynamic")
    assert_linear(y_ref, xq, w, what="reference on int8-rounded rows")


def test_auto_backend_choice():
    w = randn(64, 256)
    # exact kernels only: llmref's own where they build, else PyTorch's float32 ones
    native = kernel_status()["int4_w4a32"].available
    int4, int8 = ("int4_w4a32", "int8_w8a32") if native else ("int4_tinygemm", "int8_weight")
    assert select_kernel(quantize(w, "int4", group_size=64), CPU).name == int4
    assert select_kernel(quantize(w, "int8"), CPU).name == int8
    w512 = randn(64, 512)
    for fmt, opts, name in [
        ("q4_0", {}, int4),
        ("q4_1", {}, int4),
        ("q8_0", {}, int8),
        ("int8", {"group_size": 64}, int8),
    ]:
        expected = name if native else "reference"
        assert select_kernel(quantize(w512, fmt, **opts), CPU).name == expected
    # unsupported by every fast kernel: the reference
    for fmt, opts in [("nf4", {}), ("int4", {"group_size": 16})]:
        assert select_kernel(quantize(w512, fmt, **opts), CPU).name == "reference"
    # tinygemm needs out_features % 16 == 0, W4A8 an integer zero point; int4_w4a32 neither
    float_zero = {"group_size": 64, "symmetric": False, "zero_point": "float"}
    odd = select_kernel(quantize(randn(60, 512), "int4", **float_zero), CPU).name
    assert odd == ("int4_w4a32" if native else "reference")
    # int4 groups that are multiples of 128 (per channel included): the W4A8 kernel
    # only when asked by name or by the weight's act_quant; auto stays weight-only
    for opts in [{}, {"group_size": 128}, {"group_size": 256, "symmetric": False}]:
        qt = quantize(w512, "int4", **opts)
        assert select_kernel(qt, CPU).name != "int4_w4a8"
        assert select_kernel(qt, CPU, "int4_w4a8").name == "int4_w4a8"
        w4a8 = QuantizedTensor(
            qt.fmt, qt.shape, qt.dtype, qt.tensors, {**qt.options, "act_quant": "per_token_int8"}
        )
        assert select_kernel(w4a8, CPU).name == "int4_w4a8"
    with pytest.raises(ValueError, match="does not support"):
        select_kernel(quantize(w, "nf4"), CPU, "int4_tinygemm")
    with pytest.raises(ValueError, match="backend must be one of"):
        select_kernel(quantize(w, "nf4"), CPU, "cuda_magic")


def test_bias_dtype_shapes_and_errors():
    lin = make_linear(64, 32)
    qlin = QuantLinear.from_linear(lin, "int4", group_size=32)
    assert qlin(randn(64)).shape == (32,)
    assert qlin(randn(2, 3, 4, 64)).shape == (2, 3, 4, 32)
    assert qlin(randn(0, 64)).shape == (0, 32)
    y16 = qlin(randn(5, 64, dtype=torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="in_features=64"):
        qlin(randn(5, 63))
    with pytest.raises(ValueError, match="in_features=64"):
        qlin(torch.tensor(1.0))  # 0-d
    with pytest.raises(TypeError, match="floating point"):
        qlin(torch.ones(5, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        qlin([0.0] * 64)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        QuantLinear(lin.weight)
    with pytest.raises(ValueError, match="2-D"):
        QuantLinear(quantize(randn(64), "int8"))
    with pytest.raises(ValueError, match="bias must have shape"):
        QuantLinear(quantize(randn(32, 64), "int8"), torch.zeros(31))
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        QuantLinear.from_linear(nn.Conv1d(1, 1, 1), "int8")
    with pytest.raises(ValueError, match="group_size must divide"):
        QuantLinear.from_linear(lin, "int4", group_size=48)
    assert "fmt='int4'" in repr(qlin)


def test_state_dict_round_trip_and_gradients_to_bias():
    lin = make_linear(128, 64)
    qlin = QuantLinear.from_linear(lin, "nf4", double_quant=True)
    other = QuantLinear.from_linear(make_linear(128, 64, seed=9), "nf4", double_quant=True)
    other.load_state_dict(qlin.state_dict())
    assert other.qweight.equal(qlin.qweight)
    x = randn(3, 128)
    assert_identical(other(x), qlin(x))  # same storage, same kernel
    # a layer built for another format adopts the loaded storage
    target = QuantLinear.from_linear(make_linear(128, 64), "int8")
    target.load_state_dict(QuantLinear.from_linear(lin, "q4_0").state_dict())
    assert target.fmt == "q4_0"
    assert target.kernel.name == QuantLinear.from_linear(lin, "q4_0").kernel.name
    assert_identical(target(x), QuantLinear.from_linear(lin, "q4_0")(x))
    qlin(x).sum().backward()
    assert qlin.bias.grad is not None
    # an nn.Linear with the dequantized weight: addmm, another op order
    with torch.no_grad():
        dense = qlin.dequantized_linear()
        assert_linear(dense(x), x, dense.weight, dense.bias, what="dequantized_linear")
        assert_linear(qlin(x), x, dense.weight, dense.bias, what="QuantLinear")


# ------------------------------------------------------------------ input_scale
def with_scale(fmt, w, s, **options):
    """A weight whose codes store W diag(s), as AWQ and SmoothQuant produce."""
    return quantize(w * s, fmt, **options).with_input_scale(s)


def input_scales(n, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(n, generator=g, dtype=torch.float64)).to(torch.float32)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_input_scale_dequantize_and_reference_forward(fmt):
    w, s = randn(96, 256, seed=2), input_scales(256)
    qt = with_scale(fmt, w, s)
    stored = qt.without_input_scale()
    assert stored.input_scale is None and "input_scale" not in stored.tensors
    # dequantize() returns the effective weight dequant(codes) diag(1/s), in every format
    # (dequantize divides the stored codes' float32 values by s: the same two ops)
    assert_identical(qt.dequantize(), stored.dequantize() / s, what=f"{fmt} with input_scale")
    assert_identical(dequantize(qt), qt.dequantize())
    # the reference kernel multiplies x / s by the stored codes: 1/s applied once
    layer = QuantLinear(qt, torch.zeros(96), backend="reference")
    x = randn(5, 256, seed=3)
    with torch.no_grad():
        y = layer(x)
    # (x / s) codes^T equals x (codes diag(1/s))^T exactly; in float32 both round x / s
    # once and the sum: within c eps |x / s||codes|^T of the float64 product
    xs, codes = x.double() / s.double(), stored.dequantize()
    assert_linear(y, xs, codes, what=f"{fmt} with input_scale")
    assert layer.kernel.name == "reference" and torch.equal(layer.input_scale, s)


@pytest.mark.parametrize("fmt,options,kernel,computes", FAST, ids=lambda v: str(v))
def test_fast_kernels_with_input_scale_equal_dequantize_then_matmul(fmt, options, kernel, computes):
    w, s = randn(192, 512, seed=2), input_scales(512)
    qt = with_scale(fmt, w, s, **options)
    fast = QuantLinear(qt, backend=kernel)
    x = randn(7, 512, seed=3)
    with torch.no_grad():
        y = fast(x)
    # the kernel gets x / s (rounded to float32, as QuantLinear computes it) and the codes
    stored = qt.without_input_scale()
    assert_kernel_output(y, x / s, stored, None, options, computes, what=kernel)


def test_input_scale_round_trips_and_is_validated():
    w, s = randn(64, 128), input_scales(128)
    qt = with_scale("int4", w, s, group_size=32)
    assert qt.nbytes == quantize(w * s, "int4", group_size=32).nbytes + 128 * 4
    again = QuantizedTensor.from_state_dict(qt.state_dict(prefix="l."), prefix="l.")
    assert again.equal(qt) and torch.equal(again.input_scale, s)
    layer = QuantLinear(qt)
    target = QuantLinear(quantize(randn(64, 128), "nf4"))
    target.load_state_dict(layer.state_dict())
    x = randn(3, 128)
    with torch.no_grad():
        assert torch.equal(target.input_scale, s) and target.kernel.name == layer.kernel.name
        assert_identical(target(x), layer(x))
        dense = target.dequantized_linear()  # the effective weight in an nn.Linear
        assert_linear(dense(x), x, dense.weight, dense.bias, what="dequantized_linear")
        # auto picks an exact kernel: float32 (x / s) codes^T, which is x W_eff^T
        assert KERNELS[layer.kernel.name].exact
        stored = qt.without_input_scale()
        assert_kernel_output(layer(x), x / s, stored, None, {}, "float32", layer.kernel.name)
    with pytest.raises(ValueError, match="input_scale"):
        select_kernel(qt, CPU)  # kernels never see it
    with pytest.raises(ValueError, match=r"shape \(128,\)"):
        quantize(w, "int8").with_input_scale(torch.ones(64))
    with pytest.raises(ValueError, match="positive"):
        quantize(w, "int8").with_input_scale(torch.zeros(128))


def test_input_scale_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    qt = with_scale("nf4", randn(32, 128), input_scales(128))
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(qt.state_dict(), str(path))
    assert QuantizedTensor.from_state_dict(safetensors_torch.load_file(str(path))).equal(qt)


@pytest.mark.parametrize("out_features", [1, 8, 40, 263])
def test_int4_kernel_needs_output_rows_in_sixteens(out_features):
    """The CPU int4 packing interleaves rows in 16s: other sizes fall back (to llmref's
    int4_w4a32 where it builds, which takes any row count), or refuse by name."""
    lin = nn.Linear(64, out_features)
    qlin = QuantLinear.from_linear(lin, "int4", group_size=32)
    x = torch.randn(3, 64)
    native = kernel_status()["int4_w4a32"].available
    assert qlin.kernel.name == ("int4_w4a32" if native else "reference")
    with torch.no_grad():
        y = qlin(x)
    assert_kernel_output(y, x, qlin.qweight, lin.bias, {}, "float32", what=qlin.kernel.name)
    with pytest.raises(ValueError, match="'int4_tinygemm' does not support"):
        QuantLinear.from_linear(lin, "int4", group_size=32, backend="int4_tinygemm")(x)


def test_repacked_weight_follows_load_state_dict():
    """The cached fast-kernel weight is rebuilt when new weights are loaded in place."""
    a, b = nn.Linear(64, 32), nn.Linear(64, 32)
    qa = QuantLinear.from_linear(a, "int4", group_size=32)
    qb = QuantLinear.from_linear(b, "int4", group_size=32)
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = qa(x)
        qa.load_state_dict(qb.state_dict())
        assert qa.kernel.name == qb.kernel.name
        assert_identical(qa(x), qb(x))  # same storage, same kernel: the same op sequence
        assert not torch.equal(before, qb(x))  # (two different layers)
