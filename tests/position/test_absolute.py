"""Sinusoidal and learned absolute encodings, NoPE: references, transformers, properties."""

from __future__ import annotations

import math

import pytest
import torch

from llmref.attention import naive_attention
from llmref.position import (
    POSITION,
    LearnedPositionEmbedding,
    NoPE,
    RotaryEmbedding,
    learned_position_embedding,
    nope,
    sinusoidal_embedding,
)
from llmref.testing import assert_identical, assert_within, attention_scale


@pytest.mark.parametrize("dim", [1, 2, 7, 16])
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_sinusoidal_equals_the_formula(dim, layout):
    out = sinusoidal_embedding(12, dim, offset=3, layout=layout, dtype=torch.float64)
    sines = [j for j in range(0, dim, 2)]
    for p in range(12):
        pos = p + 3
        values = []
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            values.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        row = torch.tensor(values, dtype=torch.float64)
        if layout == "half":
            row = torch.cat([row[0::2], row[1::2]])
        # sin/cos of angles <= pos, each rounded to eps * angle on either side
        assert_within(out[p], row, scale=pos + 1.0)
    assert len(sines) == (dim + 1) // 2


@pytest.mark.xcheck
@pytest.mark.parametrize("n,dim", [(256, 96), (100, 7), (64, 512)])
def test_sinusoidal_equals_transformers(n, dim):
    pytest.importorskip("transformers")
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    out = torch.empty(n, dim)
    create_sinusoidal_embeddings(n, dim, out)
    marian = MarianSinusoidalPositionalEmbedding(n, dim).create_weight()
    # all three compute in float64 (numpy or torch) and round once to float32: each is within
    # a float32 rounding of the float64 table (values in [-1, 1], so scale 1)
    for layout, theirs in (("interleaved", out), ("half", marian)):
        ref = sinusoidal_embedding(n, dim, layout=layout, dtype=torch.float64)
        assert_within(sinusoidal_embedding(n, dim, layout=layout), ref, scale=1.0, c=1.0)
        assert_within(theirs, ref, scale=1.0, c=1.0, what="transformers' table")


def test_sinusoidal_dot_products_depend_only_on_offset():
    pe = sinusoidal_embedding(600, 64, dtype=torch.float64)
    inv_freq = 10000.0 ** -(torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    for k in (0, 1, 5, 100):
        dots = (pe[: 600 - k] * pe[k:]).sum(-1)  # = sum_i cos(k * theta_i) exactly
        # pair i of the two rows is off by eps * theta_i * (p + p + k) through its rounded
        # angles; the 64-term sum adds its own roundings: scale 64 + sum_i theta_i * (2 * 600)
        scale = 64 + float(inv_freq.sum()) * 2 * 600
        assert_within(dots, dots[:1].expand_as(dots), scale=scale)


def test_learned_lookup_and_module():
    table = torch.randn(10, 4)
    ids = torch.tensor([[0, 9, 3], [1, 1, 2]])
    assert_identical(learned_position_embedding(table, ids), table[ids])  # lookups: no arithmetic
    module = LearnedPositionEmbedding(10, 4)
    assert_identical(module(T=3, offset=7), module.weight[7:10].detach())
    module(torch.arange(10)).sum().backward()
    assert module.weight.grad is not None
    with pytest.raises(ValueError, match="cannot extrapolate"):
        module(T=3, offset=8)
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        learned_position_embedding(table, torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        learned_position_embedding(table, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="give position_ids or T"):
        module()


def test_attention_without_positions_is_permutation_equivariant():
    """Why position information is needed: without it, attention cannot tell orders apart."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g, dtype=torch.float64) for _ in range(3))
    perm = torch.randperm(8, generator=g)
    out = naive_attention(q, k, v)
    scale = attention_scale(q, k, v)  # the keys are summed in another order: rounding only
    permuted_out = naive_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm])
    assert_within(permuted_out, out[:, :, perm], scale=scale[:, :, perm])
    # NoPE changes nothing; RoPE breaks the symmetry
    assert nope(q) is q and NoPE()(q) is q
    rope = RotaryEmbedding(16, dtype=torch.float64)
    rotated = naive_attention(rope(q), rope(k), v)
    permuted = naive_attention(rope(q[:, :, perm]), rope(k[:, :, perm]), v[:, :, perm])
    # not a rounding difference: apart by more than a million roundings of the inputs' magnitude
    with pytest.raises(AssertionError, match="outside"):
        assert_within(
            permuted, rotated[:, :, perm], scale=attention_scale(rope(q), rope(k), v), c=1e6
        )


def test_legacy_meta_keeps_the_old_keys_and_warns():
    with pytest.warns(DeprecationWarning, match=r"PositionSpec.meta is deprecated.*spec.forms"):
        meta = POSITION["kerple"].meta
    assert meta["kind"] == "bias" and meta["variants"] == ("log", "power")
    assert POSITION["kerple"].forms == ("log", "power")


def test_registry_entries():
    kinds = {name: entry.kind for name, entry in POSITION.items()}
    assert kinds["rope"] == "rotary" and kinds["nope"] == "none"
    assert kinds["alibi"] == kinds["t5"] == "bias" and kinds["sinusoidal"] == "absolute"
    import llmref.position as position

    for name, entry in POSITION.items():
        module = entry.module
        assert module is None or hasattr(position, module), name
        assert entry.fn.__doc__ and entry.paper, name


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({"T": -1, "dim": 4}, ValueError, "T must be >= 0"),
        ({"T": 3, "dim": 0}, ValueError, "dim must be >= 1"),
        (
            {"T": 3, "dim": 4, "layout": "split"},
            ValueError,
            "layout must be 'interleaved' or 'half'",
        ),
        ({"T": 3, "dim": 4, "base": -1.0}, ValueError, "base must be a finite number > 0"),
        ({"T": 3, "dim": 4, "dtype": torch.int64}, TypeError, "dtype must be a floating"),
    ],
)
def test_sinusoidal_bad_input(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        sinusoidal_embedding(**kwargs)
