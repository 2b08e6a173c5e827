"""MultiHeadAttention keeps ``backend="auto"`` and resolves it per call, as ``attention()`` does.

The module cannot know at construction the dtype of its inputs or of its position
bias; the functional dispatcher picks, per call, a backend that keeps the bias's
precision (SDPA would round a float32 bias to a 16-bit ``q``'s dtype). The module
calls that dispatcher, so a 16-bit module with a float32 ALiBi bias is as close to the
float64 result as the naive backend (the rule of
:func:`llmref.testing.assert_low_precision`).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmref.attention import MultiHeadAttention
from llmref.position import AlibiBias
from llmref.testing import assert_low_precision

START = 2000  # the first key's position: a long prompt already in the cache


class BloomAlibi(nn.Module):
    """ALiBi as BLOOM writes it (transformers' ``build_alibi_tensor``): ``slope * key
    position``, equal after the softmax to ``-slope * distance`` (a constant per row).
    At position 2000 its float32 values need more bits than float16 (2^-1 steps there)
    or bfloat16 have, so rounding it to ``q``'s dtype moves the scores by up to 8."""

    def __init__(self, n_heads):
        super().__init__()
        self.alibi = AlibiBias(n_heads)

    def forward(self, T, S=None, *, offset=0):
        keys = START + torch.arange(T if S is None else S, dtype=self.alibi.slopes.dtype)
        return (self.alibi.slopes[:, None, None] * keys).expand(-1, T, -1)


def _module(dtype, backend="auto"):
    torch.manual_seed(0)
    module = MultiHeadAttention(64, 4, position_bias=BloomAlibi(4), backend=backend)
    module = module.to(dtype).requires_grad_(False)
    module.position_bias.float()  # the bias in float32, the projections in 16 bits
    return module


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_float32_bias_keeps_its_precision_in_a_16_bit_module(dtype):
    module = _module(dtype)
    reference = copy.deepcopy(module).double()
    x = torch.randn(2, 160, 64, generator=torch.Generator().manual_seed(1))
    expected, naive = reference(x.double(), is_causal=True), _module(dtype, "naive")
    out = module(x.to(dtype), is_causal=True)
    assert module.position_bias(3).dtype == torch.float32 and out.dtype == dtype
    assert_low_precision(out, expected, naive(x.to(dtype), is_causal=True))
    # what the module resolved at construction would have done: SDPA, the bias rounded
    with pytest.raises(AssertionError, match=r"max\|error\|"):
        rounded = _module(dtype, "fast")(x.to(dtype), is_causal=True)
        assert_low_precision(rounded, expected, naive(x.to(dtype), is_causal=True))


def test_a_named_backend_that_would_round_the_bias_is_refused_per_call():
    module = _module(torch.float16, "sdpa")  # accepted: SDPA takes a bias ...
    with pytest.raises(ValueError, match=r"backend 'sdpa' would round the torch\.float32 bias"):
        module(torch.randn(1, 4, 64, dtype=torch.float16))  # ... but this one it would round


def test_backend_stays_readable_and_settable():
    module = _module(torch.float32)
    assert module.requested_backend == "auto" and "backend='auto'" in repr(module)
    assert module.backend == "sdpa"  # what "auto" picks for a bias in the inputs' dtype
    module.backend = "naive"
    assert module.backend == module.requested_backend == "naive"
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'nope'"):
        module.backend = "nope"
    assert MultiHeadAttention(16, 2, softcap=5.0).backend == "chunked"  # SDPA cannot softcap
