"""Quantizing a mixture of experts: the experts are quantized, the router stays float."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmref.models import DecoderConfig, DecoderLM, MoEConfig
from llmref.models.blocks import MoE, moe, route_tokens
from llmref.quant import QuantConfig, QuantizableWeights, QuantLinear, quantize_model, sqnr
from llmref.testing import assert_identical


def moe_lm(seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(
        vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, mlp="moe",
        moe=MoEConfig(n_experts=4, top_k=2, d_expert=64, n_shared_experts=1),
    )  # fmt: skip
    return DecoderLM(cfg).eval()


def ids(n=4, t=16, seed=1):
    return torch.randint(0, 64, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def test_moe_declares_its_experts_and_unstacking_changes_nothing():
    layer = MoE(16, MoEConfig(n_experts=4, top_k=2, d_expert=8, n_shared_experts=1))
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        before = layer(x)
        assert isinstance(layer, QuantizableWeights)
        linears = layer.quantizable_linears()
        after = layer(x)
    assert len(linears) == 2 * 4 + 3 and layer.router not in linears.values()
    assert layer.quantizable_linears() == linears  # idempotent
    assert_identical(after, before, what="MoE after unstacking its experts")


def test_moe_function_takes_per_expert_layers():
    gate_up, down = torch.randn(3, 2 * 8, 16), torch.randn(3, 16, 8)
    x = torch.randn(9, 16)
    w, idx = route_tokens(torch.randn(9, 3), 2)
    layers_up = [lambda t, e=e: nn.functional.linear(t, gate_up[e]) for e in range(3)]
    layers_down = [lambda t, e=e: nn.functional.linear(t, down[e]) for e in range(3)]
    assert_identical(moe(x, layers_up, layers_down, w, idx), moe(x, gate_up, down, w, idx))
    with pytest.raises(ValueError, match="one layer per expert"):
        moe(x, layers_up, layers_down[:2], w, idx)


@pytest.mark.parametrize("fmt,min_db", [("int8", 35.0), ("int4", 15.0)])
def test_quantized_moe_decoder_runs_and_stays_close_to_float(fmt, min_db):
    # regression: MoE.route read self.router.weight, which a QuantLinear lacks, and the
    # 3-D expert parameters were never quantized
    model = moe_lm()
    x = ids()
    ref = logits(model, x)
    report = quantize_model(model, fmt)
    names = {r.name for r in report}
    for i in range(2):
        mlp = model.layers[i].mlp
        assert type(mlp.router) is nn.Linear  # the router stays float
        assert f"layers.{i}.mlp.router" not in names
        for e in range(4):
            for proj in ("gate_up_proj", "down_proj"):
                assert f"layers.{i}.mlp.experts.{e}.{proj}" in names
                assert isinstance(mlp.experts[e][proj], QuantLinear)
    out = logits(model, x)
    # measured: int8 about 45 dB, int4 (groups of 128 = one per row here) about 21 dB
    assert sqnr(ref, out) > min_db


def test_gptq_on_moe_calibrates_each_expert_on_its_tokens():
    model = moe_lm(seed=3)
    calib = ids(n=8, seed=2)
    report = quantize_model(model, QuantConfig("int4", method="gptq"), calibration=calib)
    experts = [r for r in report if ".experts." in r.name]
    assert len(experts) == 2 * 2 * 4 and all(r.method in ("gptq", "rtn") for r in experts)
    assert sqnr(logits(moe_lm(seed=3), ids()), logits(model, ids())) > 15


def test_an_expert_without_calibration_tokens_falls_back_to_rtn_with_a_warning():
    model = moe_lm(seed=4)

    def first_two(x):  # every token to experts 0 and 1: experts 2 and 3 see no token
        n = x.shape[0]
        return torch.full((n, 2), 0.5), torch.tensor([[0, 1]]).expand(n, 2)

    for block in model.layers:
        block.mlp.route = first_two
    with pytest.warns(RuntimeWarning, match="received no calibration inputs"):
        report = quantize_model(model, QuantConfig("int4", method="gptq"), calibration=ids())
    methods = {r.name: r.method for r in report}
    assert methods["layers.0.mlp.experts.3.down_proj"] == "rtn"
    assert methods["layers.0.mlp.experts.0.down_proj"] == "gptq"


def test_quantized_alibi_model_decodes_through_its_cache():
    """The ALiBi bias follows the cache's key positions on the bias's device, not on a
    weight's (a quantized out_proj has none): generate runs and equals the full forward."""
    from llmref.models import generate
    from llmref.quant import quantize_model
    from tests.models.helpers import make_model

    model = make_model("mha-alibi", dtype=torch.float32)
    quantize_model(model, "int8")
    ids = torch.tensor([[1, 2, 3, 4]])
    out = generate(model, ids, 3)
    with torch.no_grad():
        full = model(out[:, :-1])[:, -3:].argmax(-1)
    assert torch.equal(out[:, 4:], full)
