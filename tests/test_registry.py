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


def test_typed_spec_registry_checks_the_spec_class():
    from dataclasses import FrozenInstanceError, dataclass

    from llmref import Spec

    @dataclass(frozen=True, kw_only=True)
    class ColourSpec(Spec):
        rgb: tuple[int, int, int]

    reg = Registry("colour", ColourSpec)
    red = reg.add(ColourSpec(name="red", rgb=(255, 0, 0), paper="p"))
    assert reg["red"] is red and reg["red"].rgb == (255, 0, 0)
    with pytest.raises(FrozenInstanceError):
        red.rgb = (0, 0, 0)  # type: ignore[misc]
    with pytest.raises(TypeError, match="entries must be ColourSpec instances, got RegistryEntry"):
        reg.add(RegistryEntry(name="f", fn=len))
    with pytest.raises(ValueError, match="'red' is already registered"):
        reg.add(ColourSpec(name="red", rgb=(1, 1, 1)))
    with pytest.raises(TypeError, match="ColourSpec has no 'fn' field; register a spec"):
        reg.register("green")
    with pytest.raises(ValueError, match="ColourSpec: name must be a non-empty str"):
        ColourSpec(name="", rgb=(0, 0, 0))
    with pytest.raises(TypeError, match="spec must be a Spec subclass"):
        Registry("bad", dict)  # type: ignore[arg-type]


def test_function_spec_registry_builds_its_spec():
    from dataclasses import dataclass

    from llmref import Spec

    @dataclass(frozen=True, kw_only=True)
    class KernelLike(Spec):
        fn: object
        exact: bool

    reg = Registry("kernel", KernelLike)
    reg.register("k", exact=True)(abs)
    assert reg["k"].fn is abs and reg["k"].exact is True
    with pytest.raises(TypeError, match="unexpected keyword argument 'fast'"):
        reg.register("j", exact=True, fast=1)(abs)
