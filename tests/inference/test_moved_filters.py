"""top_k_filter and top_p_filter moved from llmref.models to llmref.inference: the old
names keep working, warn naming the replacement, and give the same result; generate
itself does not warn."""

from __future__ import annotations

import warnings

import pytest
import torch

import llmref.inference as inference
import llmref.models as models
from llmref.testing import assert_identical


@pytest.mark.parametrize(
    "name,value",
    [("top_k_filter", 1), ("top_k_filter", 7), ("top_p_filter", 0.3), ("top_p_filter", 0.9)],
)
def test_old_names_warn_and_give_the_new_functions_result(name, value):
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(0)) * 3
    logits[0, :5] = 2.0  # ties
    with pytest.warns(
        DeprecationWarning, match=f"llmref.models.{name} is deprecated; use llmref.inference.{name}"
    ):
        old = getattr(models, name)(logits, value)
    assert_identical(old, getattr(inference, name)(logits, value))


def test_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as caught:
        models.top_k_filter(torch.zeros(3), 1)
    assert caught[0].filename == __file__


def test_generate_does_not_warn():
    from llmref.models import DecoderConfig, DecoderLM, generate

    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        out = generate(model, torch.tensor([[1, 2]]), 3, do_sample=True, top_k=5, top_p=0.9, seed=0)
    assert out.shape == (1, 5)
