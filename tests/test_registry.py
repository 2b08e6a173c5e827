"""The one registry type."""

from __future__ import annotations

import pytest

from llmref import Registry, RegistryEntry


def test_register_and_lookup():
    reg = Registry("thing")

    @reg.register("a", paper="p", reference="r", third_party="t", extra=1)
    def a(x):
        return x + 1

    entry = reg["a"]
    assert isinstance(entry, RegistryEntry)
    assert entry.fn is a and entry(1) == 2
    assert (entry.paper, entry.reference, entry.third_party) == ("p", "r", "t")
    assert entry.meta == {"extra": 1}
    assert list(reg) == ["a"] and len(reg) == 1 and "a" in reg


def test_duplicate_and_bad_names():
    reg = Registry("thing")
    reg.register("a")(lambda: None)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a")(lambda: None)
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        reg.register("")


def test_unknown_name_lists_known_ones():
    reg = Registry("thing")
    reg.register("a")(lambda: None)
    with pytest.raises(KeyError, match="unknown thing 'b'; registered: 'a'"):
        reg["b"]


def test_registry_is_read_only():
    reg = Registry("thing")
    with pytest.raises(TypeError):
        reg["x"] = None  # type: ignore[index]
