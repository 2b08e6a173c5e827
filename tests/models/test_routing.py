"""The routing rules' typed specs: what route_tokens and the MoE layer read."""

from __future__ import annotations

import pytest
import torch

from llmref.models.routing import ROUTERS, RouterSpec, route_tokens


def test_specs_declare_grouping_and_correction_bias():
    declared = {name: (spec.grouped, spec.correction_bias) for name, spec in ROUTERS.items()}
    assert declared == {
        "greedy": (False, False),
        "group_limited_greedy": (True, False),
        "noaux_tc": (True, True),
    }


@pytest.mark.parametrize("name", [n for n, s in ROUTERS.items() if s.grouped])
def test_grouped_rule_without_its_groups_is_refused(name):
    logits = torch.randn(3, 8)
    with pytest.raises(ValueError, match=rf"topk_method='{name}' needs n_group and topk_group"):
        route_tokens(logits, 2, topk_method=name)
    weights, indices = route_tokens(logits, 2, topk_method=name, n_group=4, topk_group=2)
    assert weights.shape == indices.shape == (3, 2)


def test_spec_validates_itself():
    def rule(logits, **_):
        return logits, logits

    with pytest.raises(TypeError, match="router 'x': grouped must be a bool"):
        RouterSpec(name="x", fn=rule, grouped="yes")
    with pytest.raises(TypeError, match="router 'x': fn must be callable"):
        RouterSpec(name="x", fn=None)
    spec = RouterSpec(name="x", fn=rule)
    logits = torch.randn(2, 4)
    assert spec(logits)[0] is logits  # calling the spec calls its function


def test_legacy_meta_reads_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"RouterSpec.meta is deprecated.*spec.grouped"):
        assert ROUTERS["noaux_tc"].meta == {"grouped": True, "correction_bias": True}
