"""Typed registry specs, one set of option names and defaults, exact-by-default dispatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmref.quant import (
    FORMATS,
    METHODS,
    FormatSpec,
    GPTQConfig,
    MethodSpec,
    QuantConfig,
    QuantLinear,
    awq,
    gptq,
    hqq,
    quantize,
    quantize_model,
    rtn,
    smoothquant,
)
from llmref.quant.kernels import (
    AUTO_ORDER,
    AUTO_ORDERS,
    FAST_ORDERS,
    KERNELS,
    Kernel,
    KernelSpec,
    activation_semantics,
    fast_isa,
    select_kernel,
)
from llmref.testing.contracts.quant import KERNEL_WEIGHTS
from tests.quant.helpers import randn

CPU = torch.device("cpu")


def test_registries_hold_typed_specs():
    assert all(isinstance(s, FormatSpec) for s in FORMATS.values())
    assert all(isinstance(s, MethodSpec) for s in METHODS.values())
    assert all(isinstance(s, KernelSpec) for s in KERNELS.values())
    assert all(isinstance(s, Kernel) for s in KERNELS.values())  # the deprecated name
    assert set(AUTO_ORDER) <= set(KERNELS)
    assert FORMATS["int4"].group_size == 128 and FORMATS["int8"].granularity == "channel"
    assert METHODS["gptq"].config is GPTQConfig and METHODS["gptq"].takes_hessian
    assert METHODS["kivi"].applies_to == "kv" and METHODS["kivi"].inverse is not None
    with pytest.warns(DeprecationWarning, match="MethodSpec fields"):
        assert METHODS["awq"].meta["target"] == "weight"
    with pytest.raises(TypeError, match="FormatSpec instances"):
        FORMATS.add(METHODS["rtn"])


def test_the_former_kernel_name_takes_the_old_positional_form_and_warns():
    ref = KERNELS["reference"]
    with pytest.warns(DeprecationWarning, match=r"Kernel is deprecated; use KernelSpec"):
        old = Kernel("old_style", ref.supports, ref.prepare, ref.run, False)
    assert type(old) is KernelSpec and isinstance(old, Kernel)
    assert (old.name, old.supports, old.prepare, old.run, old.exact) == (
        "old_style",
        ref.supports,
        ref.prepare,
        ref.run,
        False,
    )
    assert old.activations == "float" and issubclass(KernelSpec, Kernel)
    with pytest.warns(DeprecationWarning):  # keywords, new fields included, still work
        new = Kernel("kw", ref.supports, ref.prepare, run=ref.run, activations="bfloat16")
    assert new.exact and new.activations == "bfloat16"
    with pytest.raises(TypeError, match=r"at most 5 positional arguments \(name, supports"):
        Kernel("x", ref.supports, ref.prepare, ref.run, True, "float")
    with pytest.raises(TypeError, match=r"\['run'\] both by position and by keyword"):
        Kernel("x", ref.supports, ref.prepare, ref.run, run=ref.run)
    assert not isinstance(FORMATS["int4"], Kernel)


def test_spec_fields_are_validated():
    with pytest.raises(ValueError, match="granularity"):
        FormatSpec(**{**FORMATS["int4"].__dict__, "name": "bad", "granularity": "row"})
    with pytest.raises(ValueError, match="applies_to"):
        MethodSpec(name="bad", fn=rtn, applies_to="bias", needs_inputs=False, config=GPTQConfig)
    with pytest.raises(ValueError, match="activations"):
        KernelSpec(name="bad", supports=None, prepare=None, run=None, activations="int4")


# -- one set of defaults: int4 groups of 128, int8 per channel, everywhere ------------------


@pytest.mark.parametrize("fmt,expected", [("int4", 128), ("int8", 512), ("int2", 128)])
def test_every_method_and_quantize_model_share_the_format_default(fmt, expected):
    w, x = randn(32, 512), randn(200, 512, seed=1)
    made = {
        "quantize": quantize(w, fmt),
        "rtn": rtn(w, fmt=fmt),
        "gptq": gptq(w, x, fmt=fmt),
        "awq": awq(w, x, fmt=fmt),
        "hqq": hqq(w, fmt=fmt),
    }
    for method in ("rtn", "gptq", "awq", "hqq"):
        model = nn.Sequential(nn.Linear(512, 32))
        with torch.no_grad():
            model[0].weight.copy_(w)
        quantize_model(model, QuantConfig(fmt, method=method), calibration=[x])
        made[f"quantize_model {method}"] = model[0].qweight
    sizes = {name: qt.options["group_size"] for name, qt in made.items()}
    assert set(sizes.values()) == {expected}, sizes
    # the regression: quantize_model(method="gptq") used to quantize per channel
    assert made["rtn"].equal(made["quantize"])
    assert made["quantize_model rtn"].equal(made["quantize"])


def test_group_size_none_is_per_channel_and_short_rows_are_one_group():
    w = randn(8, 512)
    assert quantize(w, "int4", group_size=None).options["group_size"] == 512
    assert gptq(w, randn(64, 512, seed=1), group_size=None).options["group_size"] == 512
    assert quantize(randn(8, 96), "int4").options["group_size"] == 96  # 96 <= 128: one group
    with pytest.raises(ValueError, match=r"groups of 128.*e\.g\. 64\) or group_size=None"):
        quantize(randn(8, 192), "int4")  # 192 is not a multiple of 128: say so, never guess
    with pytest.raises(ValueError, match="groups of 128"):
        gptq(randn(8, 576), randn(64, 576, seed=1))  # SmolLM2's d_model
    assert smoothquant(w, randn(64, 512, seed=2)).options["group_size"] == 512


# -- QuantConfig validates everything at construction, naming the option -----------------


def test_gptq_stochastic_rounding_fails_at_construction():
    with pytest.raises(ValueError, match="rounding='stochastic' is not supported by gptq"):
        QuantConfig("int4", {"rounding": "stochastic"}, method="gptq")


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(fmt="int4", options={"rounding": "up"}), ValueError, "rounding"),
        (dict(fmt="int4", options={"groupsize": 64}), TypeError, "'groupsize'"),
        (dict(fmt="int4", options={"symmetric": "yes"}), TypeError, "symmetric"),
        (dict(fmt="int4", options={"group_size": 0}), ValueError, "group_size"),
        (dict(fmt="int4", method="gptq", method_options={"damp": -1.0}), ValueError, "damp"),
        (dict(fmt="int4", method="gptq", method_options={"act_order": 1}), TypeError, "act_order"),
        (dict(fmt="int4", method="awq", method_options={"n_grid": 0}), ValueError, "n_grid"),
        (dict(fmt="int4", options={"rounding": "stochastic"}, method="awq"), ValueError, "awq"),
        (dict(fmt="int4", options={"symmetric": True}, method="hqq"), ValueError, "symmetric"),
        (dict(fmt="int4", options={"granularity": "tensor"}, method="gptq"), TypeError, "gran"),
        (dict(fmt="int8", options={"symmetric": False}, method="smoothquant"), TypeError, "sym"),
        (dict(fmt="int8", method="llm_int8", method_options={"threshold": 0}), ValueError, "thr"),
        (dict(fmt="int8", backend="fastest"), ValueError, "backend"),
    ],
)
def test_quant_config_names_the_bad_option(kwargs, error, words):
    with pytest.raises(error, match=words):
        QuantConfig(**kwargs)


def test_errors_inside_quantize_model_name_the_layer():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"cannot quantize layer '3'.*group_size"):
        quantize_model(model, QuantConfig("int4", {"group_size": 16}))


# -- exact by default ---------------------------------------------------------------------


@pytest.mark.parametrize("label", list(KERNEL_WEIGHTS))
def test_auto_picks_an_exact_kernel_for_every_weight(label):
    qt = KERNEL_WEIGHTS[label]
    kernel = select_kernel(qt, CPU)
    assert kernel.name == "reference" or kernel.is_exact_for(qt), (label, kernel.name)


def test_int8_activation_weights_get_their_integer_kernel_as_exact():
    w, x = randn(64, 256), randn(128, 256, seed=1)
    qt = smoothquant(w, x).without_input_scale()
    assert activation_semantics(qt) == "per_token_int8"
    kernel = select_kernel(qt, CPU)
    assert kernel.name in ("int8_dynamic", "reference") and kernel.is_exact_for(qt)
    assert not KERNELS["int8_weight"].is_exact_for(qt)  # float activations: not its semantics


def test_auto_order_is_static_per_isa(monkeypatch):
    qt = quantize(randn(64, 256), "int4", group_size=64)
    monkeypatch.setenv("LLMREF_CPU_ISA", "none")
    assert "int4_w4a32" not in AUTO_ORDERS["none"]
    assert select_kernel(qt, CPU).name == "int4_tinygemm"  # PyTorch's exact kernel


def test_fast_is_opt_in_and_named_inexact_kernels_stay_available():
    w = randn(64, 512)
    for fmt in ("int4", "int8"):
        qt = quantize(w, fmt)
        auto, fast = select_kernel(qt, CPU), select_kernel(qt, CPU, "fast")
        assert auto.is_exact_for(qt)
        order = FAST_ORDERS[fast_isa()] + AUTO_ORDERS["avx2"]
        supported = [n for n in order if KERNELS[n].supports(qt, CPU)]
        assert fast.name == (supported[0] if supported else "reference")
    for name in ("int4_tinygemm_bf16", "int8_weight_bf16"):
        assert not KERNELS[name].exact and KERNELS[name].activations == "bfloat16"
    layer = QuantLinear(quantize(w, "int4", group_size=64), backend="int4_tinygemm_bf16")
    assert layer.kernel.name == "int4_tinygemm_bf16"


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_fast_error_is_the_documented_activation_rounding(fmt):
    # FAST_ORDERS documents 0.61-0.73 % (int4_w4a8) and 0.75-0.83 % (int8_dynamic) of
    # max |y64| on Gaussian 2048 x 2048 layers; asserted at 2 %, with auto at float32 rounding
    w = randn(256, 1024) / 32
    qt = quantize(w, fmt)
    x = randn(8, 1024, seed=1)
    ref = x.double() @ qt.dequantize(dtype=torch.float64).T
    for backend, bound in (("fast", 0.02), ("auto", 1e-6)):
        layer = QuantLinear(qt, backend=backend)
        assert QuantConfig(fmt, backend=backend).backend == backend
        with torch.no_grad():
            err = float((layer(x).double() - ref).abs().max() / ref.abs().max())
        assert err <= bound, (backend, layer.kernel.name, err)
    if fast_isa() == "avx512_vnni":  # the VNNI kernels really are what fast runs here
        assert QuantLinear(qt, backend="fast").kernel.name in FAST_ORDERS["avx512_vnni"]
