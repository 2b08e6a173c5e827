"""AWQ: lower output error than RTN on outlier-channel inputs, its reductions, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.quant import METHODS, QuantLinear, awq, quantize, rtn
from llmref.quant.formats import int_codes
from llmref.quant.kernels import KERNELS
from llmref.testing import assert_identical, assert_lower, assert_within, matmul_scale
from tests.quant.helpers import db, int_weight_magnitude, linear_reference


def layer_with_outliers(out_f=128, in_f=256, n=512, *, n_outliers=6, magnitude=30.0, seed=0):
    """A weight and activations where a few input channels are ``magnitude`` times larger."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    x = torch.randn(n, in_f, generator=g)
    x[:, torch.randperm(in_f, generator=g)[:n_outliers]] *= magnitude
    return w, x


def output_loss(w, x, qt):
    return float((x @ (qt.dequantize().to(torch.float32) - w).T).pow(2).mean())


@pytest.mark.parametrize("group_size", [64, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_awq_loss_is_below_rtn_with_outlier_channels(group_size, seed):
    w, x = layer_with_outliers(seed=seed)
    base = output_loss(w, x, rtn(w, fmt="int4", group_size=group_size, symmetric=False))
    scaled = output_loss(w, x, awq(w, x, fmt="int4", group_size=group_size, clip=False))
    clipped = output_loss(w, x, awq(w, x, fmt="int4", group_size=group_size))
    # alpha = 0 is RTN itself, so the scale search can only lower the loss on the rows it
    # sees (all of them here), and the clipping search lowers it further. Losses in dB,
    # measured over seeds 0-2 x {native, avx2} x {1, 2 threads} (int4, groups of 64 or per
    # channel, 6 channels at 30x), smallest gaps: scale search 4.84 dB below RTN, with
    # clipping 5.06 dB, clipping over the scale search alone 0.21 dB; asserted at half
    assert_lower(db(scaled), db(base), margin=2.4, what="scale search vs RTN")
    assert_lower(db(clipped), db(base), margin=2.5, what="with clipping vs RTN")
    assert_lower(db(clipped), db(scaled), margin=0.1, what="with vs without clipping")


def test_one_grid_point_without_clipping_is_rtn():
    w, x = layer_with_outliers()
    qt = awq(w, x, fmt="int4", group_size=64, n_grid=1, clip=False)
    ref = rtn(w, fmt="int4", group_size=64, symmetric=False)
    assert torch.equal(qt.input_scale, torch.ones(256))
    assert qt.without_input_scale().equal(ref)


def test_codes_store_the_scaled_weight_and_dequantize_divides():
    w, x = layer_with_outliers()
    qt = awq(w, x, fmt="int4", group_size=64, clip=False)
    s = qt.input_scale
    stored = quantize(w * s, "int4", group_size=64, symmetric=False)
    assert torch.equal(int_codes(qt), int_codes(stored))
    assert_identical(qt.dequantize(), stored.dequantize() / s)  # dequantize divides by s
    # normalised as the reference, s / sqrt(max s * min s): max * min == 1 up to the float32
    # rounding of the square root, the divisions and the product (a few eps of 1)
    product = (s.max() * s.min()).reshape(())
    assert_within(product, torch.tensor(1.0), scale=1.0, what="max(s) * min(s)")


def test_quant_linear_runs_awq_weights_on_every_kernel():
    w, x = layer_with_outliers()
    qt = awq(w, x, fmt="int4", group_size=64)
    stored = qt.without_input_scale()
    # every kernel computes (x / s) codes^T in float32 (auto picks an exact kernel): within
    # c eps of the float64 product, of the terms |x / s| (|w| + 30 step) the int4 kernels
    # sum (int_weight_magnitude; the reference's |w| is smaller)
    xs = x[:7] / qt.input_scale
    expected, _ = linear_reference(xs, stored.dequantize())
    scale = matmul_scale(xs, int_weight_magnitude(stored).T)
    for backend in ("reference", "int4_tinygemm", "auto"):
        layer = QuantLinear(qt, backend=backend)
        assert KERNELS[layer.kernel.name].exact
        with torch.no_grad():
            y = layer(x[:7])
        assert_within(y, expected, scale=scale, what=f"{backend} ({layer.kernel.name})")


def test_deterministic_subsampling_and_dtypes():
    w, x = layer_with_outliers(n=2000)
    a = awq(w, x, max_tokens=300, group_size=64)
    b = awq(w, x, max_tokens=300, group_size=64)
    assert a.equal(b)
    q16 = awq(w.to(torch.bfloat16), x.to(torch.bfloat16), group_size=64, fmt="int", bits=3)
    assert q16.dtype == torch.bfloat16 and q16.options["bits"] == 3
    assert q16.dequantize().dtype == torch.bfloat16
    sym = awq(w, x, fmt="int8", group_size=None, symmetric=True, n_grid=4)
    assert sym.options["symmetric"] and sym.options["group_size"] == 256


def test_registry_entry():
    entry = METHODS["awq"]
    assert entry.fn is awq and entry.paper == "lin2024awq"
    assert entry.needs_inputs and entry.applies_to == "weight"


def test_bad_configs_raise_naming_the_argument():
    w, x = layer_with_outliers(32, 64, 16)
    with pytest.raises(ValueError, match="inputs"):
        awq(w)
    with pytest.raises(ValueError, match="in_features=64"):
        awq(w, x[:, :63])
    with pytest.raises(ValueError, match="n_grid"):
        awq(w, x, group_size=32, n_grid=0)
    with pytest.raises(ValueError, match="n_clip_grid"):
        awq(w, x, group_size=32, n_clip_grid=0)
    with pytest.raises(ValueError, match="max_tokens"):
        awq(w, x, group_size=32, max_tokens=0)
    with pytest.raises(ValueError, match="max_shrink"):
        awq(w, x, group_size=32, max_shrink=1.0)
    with pytest.raises(ValueError, match="group_size must divide"):
        awq(w, x, group_size=48)
    with pytest.raises(ValueError, match="fmt must be an integer format"):
        awq(w, x, fmt="nf4", group_size=32)
    with pytest.raises(TypeError, match="does not accept"):
        awq(w, x, group_size=32, double_quant=True)
    with pytest.raises(TypeError, match="n_grid"):
        awq(w, x, group_size=32, n_grid=2.5)
    with pytest.raises(ValueError, match=r"finite|NaN"):
        awq(w, torch.full_like(x, float("nan")), group_size=32)
