"""API-wide consistency checks, in the spirit of scikit-learn's common tests.

Every public object has a numpydoc docstring with the sections users rely on;
every registry entry cites a paper present in ``docs/references.bib``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import llmref
from llmref import Registry

# Every public subpackage (llmref.attention, llmref.cache, ...) and the registries they export.
PUBLIC_MODULES = [llmref] + [
    importlib.import_module(f"llmref.{m.name}")
    for m in pkgutil.iter_modules(llmref.__path__)
    if m.ispkg and not m.name.startswith("_")
]
REGISTRIES = {
    f"{module.__name__}.{name}": getattr(module, name)
    for module in PUBLIC_MODULES
    for name in getattr(module, "__all__", [])
    if isinstance(getattr(module, name), Registry)
}
BIB = Path(__file__).resolve().parents[1] / "docs" / "references.bib"


def test_every_subpackage_is_covered():
    names = {m.__name__ for m in PUBLIC_MODULES}
    assert {"llmref.attention", "llmref.cache", "llmref.position", "llmref.quant"} <= names
    expected = {"attention.ATTENTION", "attention.MASKS", "attention.VARIANTS", "cache.CACHES"}
    expected |= {"position.POSITION", "position.ROPE_SCALING", "quant.FORMATS", "quant.METHODS"}
    assert {f"llmref.{name}" for name in expected} <= set(REGISTRIES)


def public_objects():
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


def sections(doc):
    return set(re.findall(r"^\s*([A-Z][a-z]+)\n\s*-{3,}\s*$", doc, flags=re.M))


@pytest.mark.parametrize(
    "name,obj", list(public_objects()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_object_has_numpydoc_docstring(name, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    found = sections(doc)
    assert "Examples" in found, f"{name}: docstring needs an Examples section"
    params = [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    if params:
        assert "Parameters" in found, f"{name}: docstring needs a Parameters section"
        documented = re.findall(r"^((?:\*{0,2}\w+)(?:, \*{0,2}\w+)*)(?: :|$)", doc, flags=re.M)
        names = {n.lstrip("*") for group in documented for n in group.split(", ")}
        missing = [p for p in params if p not in names]
        assert not missing, f"{name}: parameters not documented: {missing}"
    if inspect.isfunction(obj):
        assert "Returns" in found, f"{name}: docstring needs a Returns section"


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=REGISTRIES.keys())
def test_registry_entries_cite_papers_in_the_bibliography(registry):
    bib = BIB.read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    for name, entry in registry.items():
        assert entry.paper in keys, f"{name}: paper {entry.paper!r} not in {BIB.name}"
        assert entry.fn.__doc__, f"{name}: registered object has no docstring"


EXTENDING = BIB.parent / "extending" / "index.md"


def test_docs_list_every_declared_traces_exemption():
    """The exemptions table of docs/extending/index.md names exactly the library's entries
    whose spec declares ``traces=False`` (worked examples in tests/ are not the library's)."""
    rows = re.findall(r"^\| \{data\}`~([\w.]+)` \| `\"(\w+)\"` \|", EXTENDING.read_text(), re.M)
    declared = {
        (registry_name, name)
        for registry_name, registry in REGISTRIES.items()
        for name, spec in registry.items()
        if getattr(spec, "traces", None) is False
        and getattr(spec, spec.primary).__module__.startswith("llmref.")
    }
    assert declared, "no registry declares an exemption: is the traces field still read?"
    assert set(rows) == declared, (
        f"listed but not declared: {sorted(set(rows) - declared)}; "
        f"declared but not listed: {sorted(declared - set(rows))}"
    )
