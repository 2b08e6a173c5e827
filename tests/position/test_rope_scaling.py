"""RoPE frequency rules: equal to transformers' init functions, and their bad-config errors."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from llmref.position import ROPE_SCALING, rope_frequencies, rotary_dim
from llmref.position.rope_scaling import (
    default_frequencies,
    dynamic_frequencies,
    linear_frequencies,
    yarn_frequencies,
)
from llmref.testing import assert_identical, assert_within


def _factors(n, start, step):
    return [start + step * i for i in range(n)]


def _grid():
    """(rope_type, head_dim, params, extra) where extra holds non-rope_parameters inputs."""
    cases = []
    for head_dim, base, prf in itertools.product((32, 64, 128, 256), (1e4, 5e5, 1e6), (1.0, 0.5)):
        cases.append(("default", head_dim, {"rope_theta": base, "partial_rotary_factor": prf}, {}))
    for head_dim, prf in ((80, 0.4), (80, 0.25), (96, 0.75), (64, 0.3125)):
        cases.append(("default", head_dim, {"rope_theta": 1e4, "partial_rotary_factor": prf}, {}))
    for head_dim, factor, prf in itertools.product(
        (64, 128), (1.0, 2.0, 2.5, 4.0, 8.0), (1.0, 0.5)
    ):
        cases.append(
            (
                "linear",
                head_dim,
                {"rope_theta": 1e4, "factor": factor, "partial_rotary_factor": prf},
                {},
            )
        )
    for head_dim, factor, seq_len in itertools.product(
        (64, 128), (1.0, 2.0, 8.0), (None, 1000, 4096, 4097, 20000)
    ):
        extra = {"max_position_embeddings": 4096, "seq_len": seq_len}
        cases.append(("dynamic", head_dim, {"rope_theta": 1e4, "factor": factor}, extra))
    cases.append(
        (
            "dynamic",
            64,
            {"rope_theta": 5e5, "factor": 2.0, "partial_rotary_factor": 0.5},
            {"max_position_embeddings": 2048, "seq_len": 9000},
        )
    )
    for head_dim, alpha, base in itertools.product((64, 128), (1.0, 2.0, 8.0, 1000.0), (1e4, 1e6)):
        cases.append(("ntk_alpha", head_dim, {"rope_theta": base, "alpha": alpha}, {}))
    yarn_axes = itertools.product(
        (64, 128),  # head_dim
        (1.0, 4.0, 40.0),  # factor
        (4096, 32768),  # original_max_position_embeddings
        (1e4, 1e6),  # base
        ((None, None), (32.0, 1.0), (64.0, 2.0)),  # beta_fast, beta_slow
        (True, False),  # truncate
    )
    for i, (head_dim, factor, orig, base, (bf, bs), truncate) in enumerate(yarn_axes):
        params = {"rope_theta": base, "factor": factor, "original_max_position_embeddings": orig}
        if bf is not None:
            params.update(beta_fast=bf, beta_slow=bs)
        if not truncate:
            params["truncate"] = False
        # cycle the attention-factor options through the grid
        option = i % 6
        if option == 1:
            params.update(mscale=1.0, mscale_all_dim=1.0)
        elif option == 2:
            params.update(mscale=0.707, mscale_all_dim=0.707)
        elif option == 3:
            params.update(mscale=1.0, mscale_all_dim=0.5)
        elif option == 4:
            params["attention_factor"] = 1.0
        elif option == 5:
            params["attention_factor"] = 1.25
        if i % 5 == 0:
            params["partial_rotary_factor"] = 0.5
        cases.append(("yarn", head_dim, params, {"max_position_embeddings": int(factor * orig)}))
    # factor left out: the ratio max_position_embeddings / original (DeepSeek-style configs)
    cases.append(
        (
            "yarn",
            64,
            {"rope_theta": 1e4, "factor": None, "original_max_position_embeddings": 4096},
            {"max_position_embeddings": 163840},
        )
    )
    for head_dim, prf, (factor, max_pos), attention_factor, seq_len in itertools.product(
        (96, 128),
        (1.0, 0.5),
        ((None, 131072), (4.0, 4096), (1.0, 4096)),
        (None, 1.0, 1.3),
        (None, 4096, 4097),
    ):
        n = rotary_dim(head_dim, prf) // 2
        params = {
            "rope_theta": 1e4,
            "short_factor": _factors(n, 1.0, 0.01),
            "long_factor": _factors(n, 1.0, 0.5),
            "original_max_position_embeddings": 4096,
            "partial_rotary_factor": prf,
        }
        if factor is not None:
            params["factor"] = factor
        if attention_factor is not None:
            params["attention_factor"] = attention_factor
        cases.append(
            ("longrope", head_dim, params, {"max_position_embeddings": max_pos, "seq_len": seq_len})
        )
    for head_dim, factor, low, high, orig, base, prf in itertools.product(
        (64, 128), (8.0, 32.0), (1.0, 2.0), (4.0, 8.0), (2048, 8192), (5e5,), (1.0, 0.5)
    ):
        params = {
            "rope_theta": base,
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": orig,
            "partial_rotary_factor": prf,
        }
        cases.append(("llama3", head_dim, params, {"max_position_embeddings": 131072}))
    for head_dim, prf, factor, base in itertools.product(
        (128, 256), (0.25, 0.5, 1.0), (1.0, 8.0), (1e4, 1e6)
    ):
        params = {"rope_theta": base, "partial_rotary_factor": prf, "factor": factor}
        cases.append(("proportional", head_dim, params, {}))
    return cases


GRID = _grid()
# the library's own rules (worked examples from tests/extending register more)
OWN_RULES = {n for n, spec in ROPE_SCALING.items() if spec.fn.__module__.startswith("llmref.")}


def _id(case):
    rope_type, head_dim, params, extra = case
    shown = {
        k: v
        for k, v in {**params, **extra}.items()
        if not k.endswith("_factor") or not isinstance(v, list)
    }
    return f"{rope_type}-D{head_dim}-" + ",".join(
        f"{k}={v}" for k, v in shown.items() if v is not None
    )


def _transformers_frequencies(rope_type, head_dim, params, extra):
    """transformers' inv_freq and attention factor for one configuration."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.hunyuan_v1_dense.modeling_hunyuan_v1_dense import (
        HunYuanDenseV1RotaryEmbedding,
    )
    from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

    rope_parameters = {"rope_type": rope_type, **params}
    if rope_type == "ntk_alpha":
        config = SimpleNamespace(head_dim=head_dim, rope_parameters=rope_parameters)
        return HunYuanDenseV1RotaryEmbedding.compute_ntk_alpha_rope_parameters(config)
    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=extra.get("max_position_embeddings") or 4096,
        rope_parameters=rope_parameters,
    )
    if rope_type == "default":
        # Llama's default rule ignores partial_rotary_factor; Phi's is the general one.
        return PhiRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=extra.get("seq_len"))


@pytest.fixture(scope="module")
def quiet_transformers():
    transformers = pytest.importorskip("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def test_grid_covers_every_rope_type():
    assert {case[0] for case in GRID} == OWN_RULES


@pytest.mark.xcheck
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_frequencies_equal_transformers(case, quiet_transformers):
    pytest.importorskip("transformers")
    rope_type, head_dim, params, extra = case
    expected_inv_freq, expected_factor = _transformers_frequencies(*case)
    mine = {k: v for k, v in {**params, **extra}.items() if v is not None}
    if rope_type not in ("dynamic", "longrope", "yarn"):
        mine.pop("max_position_embeddings", None)
    inv_freq, attention_factor = rope_frequencies(head_dim, rope_type=rope_type, **mine)
    assert inv_freq.dtype == torch.float32
    # llmref runs transformers' float32 ops in their order on the same shapes (base ** e,
    # then the rule's products and blends): an identical sequence, so bit for bit
    assert_identical(inv_freq, expected_inv_freq, what=_id(case))
    assert isinstance(attention_factor, float)  # the same Python float arithmetic: ==
    assert attention_factor == float(expected_factor)


def test_float64_is_the_exact_value_float32_rounds():
    for case in GRID[::7]:
        rope_type, head_dim, params, extra = case
        mine = {k: v for k, v in {**params, **extra}.items() if v is not None}
        if rope_type not in ("dynamic", "longrope", "yarn"):
            mine.pop("max_position_embeddings", None)
        f32, a32 = rope_frequencies(head_dim, rope_type=rope_type, **mine)
        f64, a64 = rope_frequencies(head_dim, rope_type=rope_type, dtype=torch.float64, **mine)
        assert f64.dtype == torch.float64 and a32 == a64
        # float32 rounds the exponent e of base ** -e, which moves the result by
        # |ln(base ** -e)| * eps relative, plus the power's and the rule's own roundings
        # (proportional RoPE's zero frequencies are exact)
        scale = torch.where(f64 > 0, f64 * (1 + f64.log().abs()), 0.0)
        assert_within(f32, f64, scale=scale, what=_id(case))


def test_known_values():
    # Llama 3.1 8B: 64 pairs; wavelengths below 8192/4 kept, above 8192 divided by 8
    inv, _ = rope_frequencies(
        128,
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
        dtype=torch.float64,
    )
    default, _ = default_frequencies(128, base=500000.0, dtype=torch.float64)
    wavelength = 2 * math.pi / default
    # kept as they are, and divided by 8 (exact: a power of two)
    assert_identical(inv[wavelength < 2048], default[wavelength < 2048])
    assert_identical(inv[wavelength > 8192], default[wavelength > 8192] / 8)
    # YaRN's attention factor sqrt(1/t) = 0.1 ln(s) + 1
    _, factor = yarn_frequencies(64, factor=16.0, original_max_position_embeddings=4096)
    expected_factor = 0.1 * math.log(16) + 1
    assert_within(torch.tensor(factor), torch.tensor(expected_factor), scale=expected_factor)
    # dynamic NTK at twice the trained length with factor 2: base * 3 ** (d / (d - 2))
    inv, _ = dynamic_frequencies(
        64, factor=2.0, max_position_embeddings=1000, seq_len=2000, dtype=torch.float64
    )
    expected, _ = default_frequencies(64, base=1e4 * 3 ** (64 / 62), dtype=torch.float64)
    # the stretched base computed two ways (a few roundings): base ** -e keeps that relative
    assert_within(inv, expected, scale=expected)


def test_explicit_yarn_factor_wins_over_the_length_ratio():
    # huggingface/transformers#38224: factor must not be replaced by max/original
    explicit, _ = yarn_frequencies(
        64, factor=4.0, original_max_position_embeddings=4096, max_position_embeddings=131072
    )
    ratio, _ = yarn_frequencies(64, factor=32.0, original_max_position_embeddings=4096)
    same, _ = yarn_frequencies(64, factor=4.0, original_max_position_embeddings=4096)
    assert_identical(explicit, same)  # the same computation
    with pytest.raises(AssertionError, match="outside"):  # not a rounding difference
        assert_within(explicit, ratio, scale=ratio, c=1e6)


def test_explicit_attention_factor_is_honoured():
    for value in (1.0, 0.5, 1.7):
        _, got = yarn_frequencies(
            64,
            factor=8.0,
            original_max_position_embeddings=4096,
            attention_factor=value,
            mscale=1.0,
            mscale_all_dim=0.5,
        )
        assert got == value
        _, got = rope_frequencies(
            64,
            rope_type="longrope",
            short_factor=[1.0] * 32,
            long_factor=[2.0] * 32,
            original_max_position_embeddings=4096,
            factor=8.0,
            attention_factor=value,
        )
        assert got == value


def test_rope_parameters_dict_can_be_splatted():
    config = {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0, "partial_rotary_factor": 0.5}
    inv, _ = rope_frequencies(64, **config)
    expected, _ = linear_frequencies(64, base=5e5, factor=2.0, partial_rotary_factor=0.5)
    assert_identical(inv, expected)  # the dispatch calls the same function
    assert inv.shape == (16,)


def test_registry_entries_describe_their_parameters():
    for name in OWN_RULES:
        entry = ROPE_SCALING[name]
        assert "partial_rotary_factor" in entry.optional, name
        assert entry.accepts == set(entry.required) | set(entry.optional), name
        assert entry.third_party and entry.third_party.startswith("transformers."), name


def test_legacy_meta_still_reads_but_warns():
    with pytest.warns(DeprecationWarning, match=r"RopeRuleSpec.meta is deprecated.*spec.required"):
        meta = ROPE_SCALING["yarn"].meta
    assert meta["required"] == ("factor", "original_max_position_embeddings")
    assert meta["parameters"][0] == "base" and "beta_fast" in meta["parameters"]


def test_device_follows_argument():
    inv, _ = rope_frequencies(16, device="meta")
    assert inv.device.type == "meta"


LONGROPE = {
    "short_factor": [1.0] * 32,
    "long_factor": [1.0] * 32,
    "original_max_position_embeddings": 4096,
}

BAD = [
    ({"rope_type": "linear"}, ValueError, "rope_type='linear' needs 'factor'"),
    ({"rope_type": "dynamic", "max_position_embeddings": 4096}, ValueError, "needs 'factor'"),
    ({"rope_type": "dynamic", "factor": 2.0}, ValueError, "max_position_embeddings is required"),
    ({"rope_type": "yarn", "original_max_position_embeddings": 4096}, ValueError, "needs 'factor'"),
    ({"rope_type": "yarn", "factor": 2.0}, ValueError, "needs 'original_max_position_embeddings'"),
    (
        {
            "rope_type": "llama3",
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        ValueError,
        "needs 'factor'",
    ),
    ({"rope_type": "ntk_alpha"}, ValueError, "needs 'alpha'"),
    (
        {"rope_type": "linear", "factor": 0.5},
        ValueError,
        "factor must be >= 1 for rope_type='linear'",
    ),
    (
        {"rope_type": "yarn", "factor": 0.9, "original_max_position_embeddings": 64},
        ValueError,
        "factor must be >= 1",
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 0.25,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        ValueError,
        "factor must be >= 1",
    ),
    ({"rope_type": "linear", "factor": -2.0}, ValueError, "factor must be a finite number > 0"),
    ({"rope_type": "linear", "factor": "2"}, TypeError, "factor must be a float, got str"),
    ({"rope_type": "longrope", **LONGROPE}, ValueError, "needs 'factor'"),
    (
        {"rope_type": "longrope", **LONGROPE, "factor": 4.0, "long_factor": [1.0] * 31},
        ValueError,
        r"long_factor must have rotary_dim // 2 = 32 entries .* got shape \(31,\)",
    ),
    (
        {"rope_type": "longrope", **LONGROPE, "factor": 4.0, "short_factor": [1.0] * 64},
        ValueError,
        "short_factor must have rotary_dim // 2 = 32 entries",
    ),
    (
        {"rope_type": "longrope", **LONGROPE, "factor": 4.0, "long_factor": [0.0] * 32},
        ValueError,
        "long_factor must hold finite numbers > 0",
    ),
    (
        {"rope_type": "longrope", **LONGROPE, "factor": 4.0, "long_factor": "abc"},
        TypeError,
        "long_factor must be a list of numbers",
    ),
    (
        {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 8},
        ValueError,
        "needs 'short_factor'",
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 1.0,
            "beta_slow": 2.0,
        },
        ValueError,
        "beta_fast must be greater than beta_slow",
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 64,
            "attention_factor": 0.0,
        },
        ValueError,
        "attention_factor must be a finite number > 0",
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 4.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        ValueError,
        "high_freq_factor must be greater than low_freq_factor",
    ),
    (
        {"partial_rotary_factor": 0.0},
        ValueError,
        r"partial_rotary_factor must be in \(0, 1\], got 0.0",
    ),
    (
        {"partial_rotary_factor": 1.5},
        ValueError,
        r"partial_rotary_factor must be in \(0, 1\], got 1.5",
    ),
    ({"partial_rotary_factor": -0.5}, ValueError, r"partial_rotary_factor must be in \(0, 1\]"),
    (
        {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 64,
            "partial_rotary_factor": 2.0,
        },
        ValueError,
        r"partial_rotary_factor must be in \(0, 1\]",
    ),
    ({"partial_rotary_factor": 0.3}, ValueError, r"must be even and >= 2 .* int\(64 \* 0.3\) = 19"),
    ({"base": 1.0}, ValueError, "base .rope_theta. must be > 1"),
    ({"rope_type": "nope"}, KeyError, "unknown rope_type 'nope'"),
    (
        {"rope_type": "linear", "factor": 2.0, "beta_fast": 3},
        TypeError,
        "rope_type='linear' does not take 'beta_fast'",
    ),
    ({"rope_type": "default", "type": "linear"}, TypeError, "does not take 'type'"),
    ({"rope_theta": 5e5, "base": 1e6}, ValueError, "give base or rope_theta, not both"),
    ({"dtype": torch.float16}, TypeError, "dtype must be torch.float32 or torch.float64"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_configs_raise_clear_errors(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        rope_frequencies(64, **kwargs)


@pytest.mark.parametrize("rope_type", sorted(OWN_RULES - {"proportional"}))
def test_odd_head_dim_is_refused_by_every_rule(rope_type):
    params = {
        "linear": {"factor": 2.0},
        "dynamic": {"factor": 2.0, "max_position_embeddings": 64},
        "ntk_alpha": {"alpha": 2.0},
        "yarn": {"factor": 2.0, "original_max_position_embeddings": 64},
        "longrope": {
            "factor": 2.0,
            "original_max_position_embeddings": 64,
            "short_factor": [1.0] * 31,
            "long_factor": [1.0] * 31,
        },
        "llama3": {
            "factor": 2.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    }.get(rope_type, {})
    with pytest.raises(ValueError, match=r"head_dim must be even for RoPE .* got 63"):
        rope_frequencies(63, rope_type=rope_type, **params)


def test_head_dim_type_and_proportional_odd():
    with pytest.raises(TypeError, match="head_dim must be an int, got float"):
        rope_frequencies(64.0)
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_frequencies(63, rope_type="proportional", partial_rotary_factor=0.5)
    with pytest.raises(ValueError, match="rotary dimension > 2"):
        rope_frequencies(2, rope_type="dynamic", factor=2.0, max_position_embeddings=8)


def test_rope_rule_spec_validates_its_declaration():
    from llmref.position import RopeRuleSpec

    def rule(head_dim, *, factor=None, base=1e4, device=None, dtype=torch.float32):
        return default_frequencies(head_dim, base=base, device=device, dtype=dtype)

    def spec(**fields):
        return RopeRuleSpec(name="x", fn=rule, **fields)

    with pytest.raises(ValueError, match=r"\['factor'\] declared both required and optional"):
        spec(required=("factor",), optional=("factor",), example={"factor": 2.0})
    with pytest.raises(ValueError, match=r"\['base'\] are taken by every rule"):
        spec(optional=("base",))
    with pytest.raises(
        ValueError, match=r"example must give every required key.*missing \['factor'\]"
    ):
        spec(required=("factor",))
    with pytest.raises(ValueError, match=r"unknown \['alpha'\]"):
        spec(required=("factor",), example={"factor": 2.0, "alpha": 1.0})
    with pytest.raises(TypeError, match="required must be a tuple of non-empty str"):
        spec(required=["factor"], example={"factor": 2.0})
