"""transformers' RoPE spellings that differ from llmref's rule names map onto the right rule."""

from __future__ import annotations

import pytest
import torch

from llmref.models import config_from_transformers
from llmref.position import rope_frequencies
from llmref.testing import assert_within

LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
}


def test_hunyuan_dynamic_with_alpha_is_static_ntk_alpha():
    rope = {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}
    cfg = config_from_transformers({**LLAMA, "rope_parameters": rope})
    assert cfg.rope_type == "ntk_alpha"
    assert dict(cfg.rope_parameters) == {"alpha": 1000.0}
    # A real "dynamic" rule (no alpha) keeps its name and its factor.
    plain = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    cfg = config_from_transformers({**LLAMA, "rope_parameters": plain})
    assert cfg.rope_type == "dynamic" and cfg.rope_parameters["factor"] == 2.0


@pytest.mark.xcheck
def test_hunyuan_frequencies_equal_transformers():
    hunyuan = pytest.importorskip("transformers.models.hunyuan_v1_dense.modeling_hunyuan_v1_dense")
    from transformers import HunYuanDenseV1Config

    # HunYuan's checkpoints carry a factor too; transformers' validation requires it.
    rope = {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}
    hf = HunYuanDenseV1Config(
        hidden_size=64, num_attention_heads=4, head_dim=16, rope_parameters=dict(rope)
    )
    theirs = hunyuan.HunYuanDenseV1RotaryEmbedding(hf).inv_freq.double()
    cfg = config_from_transformers({**LLAMA, "rope_parameters": dict(rope)})
    ours, factor = rope_frequencies(
        16, base=cfg.rope_theta, rope_type=cfg.rope_type, dtype=torch.float64, **cfg.rope_parameters
    )
    assert factor == 1.0
    # transformers computes base**(2i/d) in float32: its inverse frequencies are off by
    # about eps(float32) * log(base') * (2i/d) relative to the float64 values.
    base = 10000.0 * 1000.0 ** (16 / 14)
    exponent = torch.arange(0, 16, 2, dtype=torch.float64) / 16
    scale = ours * (1 + torch.log(torch.tensor(base)) * exponent)
    assert_within(theirs, ours, scale=scale, dtype=torch.float32)
