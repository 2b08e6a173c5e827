"""The typed specs of MASKS and VARIANTS validate themselves; their old meta view warns."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import MASKS, VARIANTS, AttentionVariantSpec, MaskSpec, as_mask_mod


def _fn(*args, **kwargs):
    return None


def test_mask_spec_needs_callables():
    with pytest.raises(TypeError, match="mask 'x': mask_mod must be callable"):
        MaskSpec(name="x", fn=_fn, mask_mod=None)
    with pytest.raises(TypeError, match="mask 'x': fn must be callable"):
        MaskSpec(name="x", fn="causal", mask_mod=_fn)


def test_as_mask_mod_reads_the_declared_factory():
    spec = MASKS["sink"]
    i, j = torch.arange(9).view(9, 1), torch.arange(9)
    mod = as_mask_mod("sink", n_sink=2, window=3)
    assert torch.equal(mod(0, 0, i, j), spec.mask_mod(n_sink=2, window=3)(0, 0, i, j))
    assert torch.equal(mod(0, 0, i, j), spec(9, n_sink=2, window=3))


def test_variant_spec_validates_itself():
    with pytest.raises(ValueError, match=r"'x': features must be a frozenset of .* got"):
        AttentionVariantSpec(name="x", fn=_fn, features=frozenset({"dropout"}), exact=True)
    with pytest.raises(TypeError, match="'x': required must be a tuple of str"):
        AttentionVariantSpec(name="x", fn=_fn, required=["lam"], exact=True)
    with pytest.raises(TypeError, match="'x': exact must be a bool"):
        AttentionVariantSpec(name="x", fn=_fn, exact="yes")


def test_legacy_meta_reads_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"MaskSpec.meta is deprecated.*spec.mask_mod"):
        assert MASKS["causal"].meta["mask_mod"] is MASKS["causal"].mask_mod
    with pytest.warns(DeprecationWarning, match=r"AttentionVariantSpec.meta is deprecated"):
        assert VARIANTS["performer"].meta["required"] == ("projection",)
