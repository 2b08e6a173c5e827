"""Mask builders: every registered mask against an independently written dense reference."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import MASKS, causal_mask


def dense_causal(T, S, offset):
    out = torch.zeros(T, S, dtype=torch.bool)
    for i in range(T):
        for j in range(S):
            out[i, j] = j <= i + offset
    return out


@pytest.mark.parametrize("T,S", [(1, 1), (4, 4), (3, 7), (7, 3), (0, 5), (5, 0)])
@pytest.mark.parametrize("offset", [None, -2, 0, 1, 4])
def test_causal_mask_equals_dense_reference(T, S, offset):
    kwargs = {} if offset is None else {"offset": offset}
    mask = causal_mask(T, S, **kwargs)
    assert mask.dtype == torch.bool and mask.shape == (T, S)
    assert torch.equal(mask, dense_causal(T, S, offset or 0))


def test_causal_mask_defaults_and_torch_equivalents():
    assert torch.equal(causal_mask(5), torch.ones(5, 5, dtype=torch.bool).tril())
    # bottom-right alignment = torch.tril with diagonal S - T
    assert torch.equal(causal_mask(3, 8, offset=5), torch.ones(3, 8, dtype=torch.bool).tril(5))


def test_causal_mask_device_argument():
    assert causal_mask(2, device="cpu").device.type == "cpu"
    assert causal_mask(2, device=torch.device("meta")).device.type == "meta"


def test_causal_mask_registered():
    assert MASKS["causal"].fn is causal_mask
    assert MASKS["causal"].paper == "vaswani2017attention"


@pytest.mark.parametrize(
    "args,kwargs,exc,message",
    [
        ((-1,), {}, ValueError, "T must be >= 0, got -1"),
        ((3, -2), {}, ValueError, "S must be >= 0, got -2"),
        ((2.0,), {}, TypeError, "T must be an int, got float"),
        ((True,), {}, TypeError, "T must be an int, got bool"),
        ((3,), {"offset": 0.5}, TypeError, "offset must be an int"),
    ],
)
def test_causal_mask_bad_input(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        causal_mask(*args, **kwargs)
