"""Attention paths that need a projection's matrix, not its product, on a quantized model.

quantize_model replaces every nn.Linear by a QuantLinear, which has no ``.weight``: the
cross-attention branch of MultiHeadAttention (it slices the fused projection's rows) and
MLA's absorbed path (it folds kv_up into the queries) read the matrix through
``llmref.quant.float_weight``. Each is checked twice, in float64:

- against a float twin holding the dequantized weights (the same ``W``): equal within
  the float64 rounding bound, so the quantized layers were read as they multiply;
- against the original float module: within int8's own error, ``max|out - float| <=
  0.02 max|float|``. Per-channel symmetric int8 moves each weight by at most half a step,
  ``amax_row / 254`` (0.4 % of the row's largest weight), and the error of several
  projections in a row (three for cross-attention, four for MLA's absorbed path) adds
  up: measured over seeds 0-4 of these shapes, 4.4e-3 to 7.4e-3 for cross-attention and
  4.8e-3 to 8.2e-3 for MLA (7.4e-3 and 6.6e-3 for the seeds below). 0.02 is 2.4 times
  the largest, and still fails a misread weight (a wrong row slice is off by O(1)); the
  test also asserts the error is above 0, so the layers really were quantized.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmref.attention import MultiHeadAttention
from llmref.quant import QuantLinear, float_weight, quantize_model
from llmref.testing import assert_within, forward_scale
from tests.attention.test_latent import make_mla

RELATIVE_TOLERANCE = 0.02  # int8's error through one attention layer: see the docstring


def _quantized_and_twin(module):
    """``module`` quantized to int8, and a float copy holding the dequantized weights."""
    quantized = copy.deepcopy(module)
    quantize_model(quantized, "int8")
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, QuantLinear)}
    assert layers, "quantize_model replaced no layer"
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for name, layer in layers.items():
            twin.get_submodule(name).weight.copy_(layer.qweight.dequantize())
    return quantized, twin


def _close_to_float(out, reference):
    error = float((out - reference).abs().max() / reference.abs().max())
    assert 0 < error <= RELATIVE_TOLERANCE, error  # > 0: the weights really were quantized


def test_cross_attention_on_a_quantized_module():
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 4, n_kv_heads=2, bias=True).double()
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    context = torch.randn(2, 7, 64, dtype=torch.float64)
    quantized, twin = _quantized_and_twin(mha)
    assert isinstance(quantized.qkv_proj, QuantLinear) and not hasattr(quantized.qkv_proj, "weight")
    with torch.no_grad():
        out = quantized(x, context)
        assert_within(out, twin(x, context), scale=forward_scale(twin, x, context))
        _close_to_float(out, mha(x, context))


def test_mla_absorbed_path_on_a_quantized_module():
    mla = make_mla(q_lora_rank=10)
    x = torch.randn(2, 9, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    quantized, twin = _quantized_and_twin(mla)
    assert isinstance(quantized.kv_up, QuantLinear)
    with torch.no_grad():
        out = quantized.forward_absorbed(x, is_causal=True)
        expected = twin.forward_absorbed(x, is_causal=True)
        scale = forward_scale(twin.forward_absorbed, x, is_causal=True)
        assert_within(out, expected, scale=scale)
        assert_within(out, quantized(x, is_causal=True), scale=scale)  # = the expanded path
        _close_to_float(out, mla.forward_absorbed(x, is_causal=True))


def test_float_weight_refuses_a_layer_without_a_matrix():
    with pytest.raises(TypeError, match="linear must be a QuantLinear or a layer with a 2-D"):
        float_weight(torch.nn.RMSNorm(4))
