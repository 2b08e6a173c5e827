"""Small model configs shared by the model tests (no downloads: everything is random)."""

from __future__ import annotations

import pytest
import torch

from llmref.models import DecoderConfig, DecoderLM, MLAConfig, MoEConfig
from llmref.testing import (
    BOUND_FACTOR,
    assert_within,
    decisive_steps,
    eps,
    forward_scale,
)

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


def float64_twin(model: DecoderLM) -> DecoderLM:
    """The same DecoderLM in float64: the reference a float32 model (or transformers') meets.

    A DecoderLM built in float64 keeps float32 RoPE angles, as transformers' models compute
    them at any dtype and as the float32 models do (a ``model.double()`` would compute them
    in float64).
    """
    with torch.random.fork_rng():  # its random initialisation leaves the global RNG alone
        twin = DecoderLM(model.config, dtype=torch.float64).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def assert_logits_within(reference, ids, mask, **models) -> tuple[torch.Tensor, float]:
    """Each float32 model's logits at the real positions (``mask == 1``) against the float64
    ``reference``'s, within ``c * eps(float32) * forward_scale``.

    ``models`` maps names to DecoderLMs or transformers models (their ``.logits``). Returns the
    reference logits and the scale.
    """
    real = mask.bool()  # padding rows are don't-care
    with torch.no_grad():
        ref = reference(ids, attention_mask=mask)
        scale = forward_scale(reference, ids, attention_mask=mask)
        for name, model in models.items():
            out = model(ids, attention_mask=mask)
            out = getattr(out, "logits", out)
            assert_within(out[real], ref[real], scale=scale, what=f"{name}'s logits")
    return ref, scale


def assert_greedy_tokens_match(
    out: torch.Tensor, expected: torch.Tensor, ref_logits: torch.Tensor, scale: float, prompt: int
) -> list[int]:
    """Two float32 greedy generations agree up to the first step whose top-2 margin is within
    both sides' rounding.

    ``ref_logits`` are the reference's teacher-forced logits along ``expected`` (whose
    float32 logits :func:`assert_logits_within` held within ``c * eps * scale``): a margin
    above twice that picks the same token on both sides. Returns the decisive steps per row.
    """
    steps = ref_logits[:, prompt - 1 : -1]  # the logits that chose tokens prompt ..
    tolerance = 2 * BOUND_FACTOR * eps(torch.float32) * scale
    decisive = []
    for b in range(out.shape[0]):
        n = decisive_steps(steps[b], tolerance=tolerance)
        assert torch.equal(out[b, : prompt + n], expected[b, : prompt + n]), (b, n)
        decisive.append(n)
    return decisive
