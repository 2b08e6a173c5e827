"""Small model configs shared by the model tests (no downloads: everything is random)."""

from __future__ import annotations

import pytest
import torch

from llmref.models import DecoderConfig, DecoderLM, MLAConfig, MoEConfig

VOCAB = 96

MLA = MLAConfig(
    kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, q_lora_rank=16
)
MOE = MoEConfig(n_experts=4, top_k=2, d_expert=16, n_shared_experts=1)

# name -> DecoderConfig keyword arguments: every attention kind, position encoding and MLP kind.
VARIANTS: dict[str, dict] = {
    "gqa-rope": dict(attention="gqa", n_kv_heads=2),
    "mha-alibi": dict(attention="mha", position="alibi"),
    "mqa-nope": dict(attention="mqa"),
    "gqa-window": dict(attention="gqa", n_kv_heads=2, window=[3, 5]),
    "gqa-llama3-bias": dict(
        attention="gqa",
        n_kv_heads=2,
        rope_type="llama3",
        rope_parameters=dict(
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
        attention_bias="qkv",
    ),
    "mla-moe": dict(
        attention="mla", mla=MLA, mlp=["dense", "moe"], moe=MOE, rope_layout="interleaved"
    ),
}


def make_model(variant: str, *, dtype=torch.float64, seed=0) -> DecoderLM:
    """A 2-layer model of the variant, with weights large enough for decisive argmaxes."""
    kw = dict(VARIANTS[variant])
    if variant == "mqa-nope":
        kw["position"] = "nope"
    cfg = DecoderConfig(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=48, init_std=0.2, **kw
    )
    torch.manual_seed(seed)
    model = DecoderLM(cfg, dtype=dtype).eval()
    with torch.no_grad():  # make norms and biases visible to the tests
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def transformers_or_skip():
    return pytest.importorskip("transformers")


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, *, rel: float = 4e-6) -> None:
    """float32 logits computed two ways: rounding scales with the logits' magnitude.

    ``atol = rel * max|expected|`` (a few float32 ulps of the largest logit, as each logit is a
    long float32 dot product), ``rtol = 1e-5`` (tests/tolerances.py's float32 rtol).
    """
    atol = rel * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)
