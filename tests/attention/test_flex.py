"""flex_attention backend: mask_mod / score_mod translation, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import (
    ATTENTION,
    as_mask_mod,
    flex_attention,
    naive_attention,
    sink_mask,
    sliding_window_mask,
)
from llmref.testing import assert_within, attention_scale
from tests.attention.reference import textbook_attention
from tests.attention.test_functional import CONFIGS, make_qkv, random_mask


def test_softcap_bias_mask_and_mask_mod_together():
    config = CONFIGS["gqa"]
    q, k, v = make_qkv(config)
    bias = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    mask = random_mask((2, 1, 9, 9))
    expected = naive_attention(
        q, k, v, mask=mask & sink_mask(9, n_sink=1, window=3), bias=bias, softcap=2.0
    )
    out = flex_attention(
        q,
        k,
        v,
        mask=mask,
        bias=bias,
        softcap=2.0,
        mask_mod=as_mask_mod("sink", n_sink=1, window=3),
    )
    # softcap's slope is at most 1: the raw scores plus |bias| bound the capped ones
    assert_within(out, expected, scale=attention_scale(q, k, v, bias=bias))


def test_compiled_kernel_matches_eager():
    """The opt-in torch.compile path (compiled once, cached) gives the eager result."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, 32) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    mod = as_mask_mod("sliding_window", window=64)
    eager = flex_attention(q, k, v, mask_mod=mod, is_causal=True)
    # llmref compiles without inductor's on-disk FX-graph cache, which does not key on
    # ATEN_CPU_CAPABILITY (a kernel cached by an AVX-512 run was wrong in an avx2 run).
    compiled = flex_attention(q, k, v, mask_mod=mod, is_causal=True, compiled=True)
    # Two float32 kernels with their own op orders: each against the float64 reference.
    expected = textbook_attention(q, k, v, sliding_window_mask(256, window=64), True)
    assert_within(eager, expected, scale=attention_scale(q, k, v), what="eager")
    assert_within(compiled, expected, scale=attention_scale(q, k, v), what="compiled")


def test_registered_without_cpu_backward():
    assert ATTENTION["flex"].backward_on_cpu is False
    q, k, v = (t.requires_grad_(True) for t in make_qkv(CONFIGS["mha"]))
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, k, v)


def test_bad_mask_mod():
    with pytest.raises(TypeError, match="mask_mod must be callable, got int"):
        flex_attention(*make_qkv(CONFIGS["mha"]), mask_mod=3)
