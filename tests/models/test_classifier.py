"""TextClassifier: the source notes' classifier; positions matter, padding does not."""

from __future__ import annotations

import pytest
import torch

from llmref.models import TextClassifier
from llmref.testing import assert_within
from tests.models.helpers import forward_scale


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return TextClassifier(
        vocab_size=20, n_classes=3, d_model=16, n_heads=2, max_len=12, **kw
    ).double()


def test_log_probabilities_and_shape():
    model = make()
    out = model(torch.randint(0, 20, (4, 9)))
    assert out.shape == (4, 3) and out.dtype == torch.float64
    # exp(log p) is off by eps |log p| relative: scale 1 + max |log p| per row
    ones = torch.ones(4, dtype=torch.float64)
    assert_within(out.exp().sum(-1), ones, scale=1 + out.abs().amax(-1))


def test_against_the_notes_computation():
    """token_emb + pos_emb, blocks, mean over time, linear, log_softmax."""
    model = make()
    ids = torch.randint(0, 20, (2, 7))
    x = model.token_emb(ids) + model.pos_emb.weight[:7]
    for block in model.blocks:
        x = block(x)
    expected = torch.log_softmax(model.to_logits(x.mean(dim=1)), dim=-1)
    assert_within(model(ids), expected, scale=forward_scale(model, ids))


def test_word_order_matters_only_through_the_position_embedding():
    model = make()
    ids = torch.randint(0, 20, (1, 8))
    perm = torch.randperm(8)
    scale = forward_scale(model, ids)
    with pytest.raises(AssertionError, match="outside"):  # a million roundings apart at least
        assert_within(model(ids), model(ids[:, perm]), scale=scale, c=1e6)
    with torch.no_grad():
        model.pos_emb.weight.zero_()  # without positions the model sees a bag of tokens
    # the same sums in another order
    assert_within(model(ids), model(ids[:, perm]), scale=forward_scale(model, ids))


def test_padding_is_ignored():
    model = make()
    ids = torch.randint(0, 20, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    scale = forward_scale(model, padded, attention_mask=mask)  # the padded run's sums
    assert_within(model(padded, attention_mask=mask), model(ids), scale=scale)


def test_it_learns_a_task_where_position_decides_the_label():
    """Label = which of the first three positions holds token 1: unlearnable as a bag of tokens."""
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=8, n_classes=3, d_model=32, n_heads=4, max_len=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        labels = torch.randint(0, 3, (64,))
        ids = torch.randint(2, 8, (64, 6))
        ids[torch.arange(64), labels] = 1
        loss = torch.nn.functional.nll_loss(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.randint(0, 3, (256,))
    ids = torch.randint(2, 8, (256, 6))
    ids[torch.arange(256), labels] = 1
    accuracy = (model(ids).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_bad_input():
    model = make()
    with pytest.raises(ValueError, match="more than max_len=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=20\)"):
        model(torch.full((1, 3), 20))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        TextClassifier(10, 1)
