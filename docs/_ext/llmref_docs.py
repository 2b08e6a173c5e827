"""Local Sphinx extension for the llmref docs.

``llmref-registry`` directive
    Renders a table of every entry of an :class:`llmref.Registry`: its name,
    the function, the paper (as a citation), the llmref reference it is tested
    against and the third-party implementation it is compared with.  Pages
    iterate the registries instead of listing variants by hand, so a newly
    registered variant shows up without editing the docs::

        .. llmref-registry:: llmref.attention.ATTENTION

    An argument that is not a registry renders nothing, so the autosummary
    template for data can use it on every module-level object.

``llmref-package-tree`` directive
    The package's modules as they exist, with the first line of each docstring
    (the package map can therefore not go stale).

References to objects documented under another name
    Objects are documented under one name (``llmref.attention.MultiHeadAttention``)
    but type annotations and base classes name the defining module
    (``llmref.attention.modules.MultiHeadAttention``), and docstrings may name
    re-exports.  On ``missing-reference`` such a target is resolved to the
    documented object *only if it is the very same Python object*; an ``:attr:``
    to an attribute listed in a class's numpydoc ``Attributes`` section links to
    the class.  Anything else stays a warning.

API coverage
    Warns for every name in ``llmref.__all__`` (and its subpackages' ``__all__``)
    that has no API entry.

Re-exported data
    ``autodata`` of a re-exported module variable gets the docstring written
    where the variable is assigned, not its type's docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Parser as RstParser
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# Third-party packages that have an intersphinx inventory in conf.py; other
# third-party names are shown as code, not links.
_LINKED_PACKAGES = ("torch",)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_dotted(name: str) -> Any:
    """Import ``a.b.c``, preferring an attribute over a submodule of the same name.

    (``llmref.position.nope`` is the function the package exports, not the
    module ``llmref/position/nope.py`` it comes from.)
    """
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    return importlib.import_module(name)


def _public_name(fn: Any, home: Any, home_name: str) -> str | None:
    """Name under which ``fn`` is exported from module ``home``, if it is."""
    for attr in getattr(home, "__all__", dir(home)):
        if getattr(home, attr, None) is fn:
            return f"{home_name}.{attr}"
    return None


def _spec_options(spec: Any) -> str:
    """The fields a spec class adds to :class:`llmref.Spec` (and a ``RegistryEntry``'s
    ``meta``), as ``name=value``: callables (e.g. a FlexAttention ``mask_mod``) are left
    out, classes (e.g. a config class) are shown by name, ``None`` values are omitted,
    and so are fields declared with ``metadata={"table": False}`` (worked examples)."""
    import llmref

    base = {f.name for f in dataclasses.fields(llmref.Spec)} | {spec.primary, "meta"}
    shown = [f for f in dataclasses.fields(spec) if f.metadata.get("table", True)]
    items = [(f.name, getattr(spec, f.name)) for f in shown]
    if isinstance(spec, llmref.RegistryEntry):  # typed specs' ``meta`` is a deprecated view
        items += list(spec.meta.items())
    parts = []
    for key, value in items:
        if key in base or value is None:
            continue
        if isinstance(value, type):
            parts.append(f"``{key}={value.__name__}``")
        elif isinstance(value, frozenset):  # sorted: set order changes with the hash seed
            parts.append(f"``{key}={{{', '.join(map(repr, sorted(value)))}}}``")
        elif not callable(value):
            parts.append(f"``{key}={value!r}``")
    return ", ".join(parts)


class RegistryTable(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        target = self.arguments[0]
        import llmref

        obj = import_dotted(target)
        if not isinstance(obj, llmref.Registry):
            return []
        home_name = target.rsplit(".", 1)[0]
        home = import_dotted(home_name)
        # Rebuild this page whenever any module of the package changes: that is
        # where variants register themselves.
        for path in sorted(Path(llmref.__file__).resolve().parent.rglob("*.py")):
            self.env.note_dependency(str(path))
        if len(obj) == 0:
            return [nodes.paragraph(text="No entries are registered yet.")]

        def fn_ref(fn: Any) -> str:
            public = _public_name(fn, home, home_name) or _shortest_public_name(fn)
            if public is not None:
                return f":py:func:`~{public}`"
            return f"``{getattr(fn, '__qualname__', repr(fn))}``"

        public = _public_object_ids()

        def reference_ref(ref: str | None) -> str:
            if not ref:
                return ""
            full = ref if "." in ref else f"{home_name}.{ref}"
            try:
                target_obj = import_dotted(full)
            except (ImportError, AttributeError):
                return f"``{ref}``"
            if id(target_obj) not in public:
                return f"``{ref}``"  # not part of the documented API
            return f":py:obj:`~{full}`"

        def third_party_ref(name: str | None) -> str:
            if not name:
                return ""
            # A zero-width space after each dot lets a long name wrap in the table.
            shown = name.replace(".", ".\u200b")
            if _DOTTED.fullmatch(name) and name.split(".")[0] in _LINKED_PACKAGES:
                return f":py:obj:`{shown} <{name}>`"
            return f"``{shown}``"

        columns = [
            ("Name", lambda name, e: f'``"{name}"``'),
            ("Function", lambda name, e: fn_ref(getattr(e, e.primary)) if e.primary else ""),
            ("Paper", lambda name, e: f":cite:p:`{e.paper}`" if e.paper else ""),
            ("Tested against", lambda name, e: reference_ref(e.reference)),
            ("Third-party equivalent", lambda name, e: third_party_ref(e.third_party)),
            ("Options", lambda name, e: _spec_options(e)),
        ]
        rows = [[cell(name, entry) for _, cell in columns] for name, entry in obj.items()]
        # Leave out columns that are empty for every entry.
        keep = [i for i in range(len(columns)) if i < 1 or any(row[i] for row in rows)]
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: auto",
            "   :class: llmref-registry",
            "",
        ]
        for row in [
            [columns[i][0] for i in keep],
            *([r[i] or "\u2014" for i in keep] for r in rows),
        ]:
            lines.append("   * - " + row[0])
            lines += [f"     - {cell}" for cell in row[1:]]
        return self._parse_rst("\n".join(lines))

    def _parse_rst(self, text: str) -> list[nodes.Node]:
        """Parse ``text`` as reStructuredText, also inside a MyST page.

        ``state.nested_parse`` would parse with the page's own parser, which is
        Markdown in a MyST page; like MyST's ``eval-rst``, parse into a scratch
        document that shares the page's settings and reporter.
        """
        doc = new_document(self.state.document["source"], self.state.document.settings)
        doc.reporter = self.state.document.reporter
        RstParser().parse(text, doc)
        return list(doc.children)


def _module_summary(path: Path) -> str:
    """First line of a module's docstring, read without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    doc = ast.get_docstring(tree) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    line = re.sub(r":\w+:`~?([^`]+)`", r"\1", line).replace("``", "")
    return line if len(line) <= 72 else line[:71].rstrip() + "…"


class AllRegistries(SphinxDirective):
    """Every registry in the public API, each as a rubric and a ``llmref-registry`` table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import llmref

        seen: dict[int, str] = {}
        for name in public_names():
            obj = import_dotted(name)
            if isinstance(obj, llmref.Registry) and id(obj) not in seen:
                seen[id(obj)] = name
        # Prefer the shortest public name of each registry (the package export).
        names = sorted(seen.values(), key=lambda n: (n.split(".")[1], n.count("."), n))
        text = "\n".join(
            f".. rubric:: :py:data:`{name}`\n\n.. llmref-registry:: {name}\n" for name in names
        )
        return RegistryTable._parse_rst(self, text)


class Planned(SphinxDirective):
    """List planned subpackages that do not exist yet.

    Content lines are ``name | description``; a line is dropped as soon as
    ``llmref/name`` exists, so the package map never calls existing code planned.
    """

    has_content = True

    def run(self) -> list[nodes.Node]:
        import llmref

        root = Path(llmref.__file__).resolve().parent
        self.env.note_dependency(str(root / "__init__.py"))
        items = []
        for line in self.content:
            if "|" not in line:
                continue
            name, description = (part.strip() for part in line.split("|", 1))
            if not (root / name.rstrip("/")).exists():
                items.append(f"- ``llmref/{name}`` — {description}")
        if not items:
            return [nodes.paragraph(text="Every planned subpackage exists now.")]
        return RegistryTable._parse_rst(self, "\n".join(items))


class PackageTree(SphinxDirective):
    """A tree of the package's modules as they exist now, with their one-line summaries.

    Usage: ``.. llmref-package-tree:: llmref``.  Private modules are included
    (``_registry.py`` is part of the map); ``__pycache__`` and data files are not.
    """

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        root = Path(package.__file__).resolve().parent
        lines: list[str] = []

        def walk(folder: Path, prefix: str) -> None:
            entries = sorted(
                p
                for p in folder.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists())
                or (p.suffix == ".py" and p.name != "__init__.py")
            )
            for i, path in enumerate(entries):
                last = i == len(entries) - 1
                branch = "└── " if last else "├── "
                if path.is_dir():
                    summary = _module_summary(path / "__init__.py")
                    lines.append((prefix + branch + path.name + "/", summary))
                    walk(path, prefix + ("    " if last else "│   "))
                else:
                    lines.append((prefix + branch + path.name, _module_summary(path)))
                self.env.note_dependency(str(path))

        lines.append((root.name + "/", _module_summary(root / "__init__.py")))
        walk(root, "")
        width = max(len(name) for name, _ in lines) + 2
        text = "\n".join((name.ljust(width) + summary).rstrip() for name, summary in lines)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _identity_key(obj: Any) -> int | None:
    """``id(obj)`` for objects whose identity means something (not ints or strings)."""
    if obj is None or isinstance(obj, (str, bytes, int, float, complex, bool, tuple)):
        return None
    return id(obj)


def _documented_objects(app: Sphinx) -> dict[int, str]:
    """Map the identity of each documented llmref object to the name it is documented under."""
    env = app.env
    cache = getattr(env, "_llmref_documented", None)
    if cache is not None:
        return cache
    mapping: dict[int, str] = {}
    for name, _dispname, objtype, *_ in env.get_domain("py").get_objects():
        if not name.startswith("llmref.") or objtype == "module":
            continue
        try:
            key = _identity_key(import_dotted(name))
        except Exception:
            continue
        if key is not None:
            mapping.setdefault(key, name)
    env._llmref_documented = mapping  # type: ignore[attr-defined]
    return mapping


def _class_attributes(cls: Any) -> set[str]:
    """Attributes a class documents without giving each an anchor.

    The names in its numpydoc ``Attributes`` section and, for a dataclass, its
    fields (described in ``Parameters``).
    """
    import dataclasses

    from numpydoc.docscrape import NumpyDocString

    names: set[str] = set()
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    try:
        doc = NumpyDocString(getattr(cls, "__doc__", None) or "")
    except Exception:
        return names
    for item in doc["Attributes"]:
        names |= {n.strip() for n in item.name.split(",")}
    return names


def _candidates(node: Any) -> list[str]:
    """Full names a py reference may mean, most specific first.

    Besides Sphinx's own context (the current module and class), a name in a
    docstring is tried relative to the module the documented object is
    *defined* in: ``:func:`group_length``` written in
    ``llmref.quant.primitives`` means ``llmref.quant.primitives.group_length``
    even on the page of the re-export ``llmref.quant.choose_qparams``.
    """
    target = node.get("reftarget", "").lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    names = []
    if module and cls:
        names.append(f"{module}.{cls}.{target}")
    if module:
        names.append(f"{module}.{target}")
    page_object = node.get("refdoc", "").rsplit("/", 1)[-1]
    if page_object.startswith("llmref."):
        try:
            obj = import_dotted(page_object)
        except Exception:
            obj = None
        home = getattr(obj, "__module__", None)
        if isinstance(home, str):
            if cls:
                names.append(f"{home}.{cls}.{target}")
            names.append(f"{home}.{target}")
    names.append(target)
    return [n for n in dict.fromkeys(names) if n.startswith("llmref.")]


def _resolve_llmref_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a py reference to an llmref object documented under another name.

    Two cases, both exact:

    * the target imports to the very same object as a documented name
      (``llmref.attention.modules.MultiHeadAttention`` written by autodoc for a
      base class or annotation, or ``Record`` re-exported by ``llmref.bench``);
    * an ``:attr:`` to an attribute listed in a documented class's numpydoc
      ``Attributes`` section, which numpydoc renders without an anchor of its
      own: the link goes to the class.
    """
    if node.get("refdomain") != "py":
        return None
    py = env.get_domain("py")
    documented = _documented_objects(app)
    for name in _candidates(node):
        try:
            obj = import_dotted(name)
        except Exception:
            obj = None
        key = _identity_key(obj)
        if key is not None and key in documented:
            return py.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], documented[key], node, contnode
            )
        if node["reftype"] == "attr" and "." in name:
            owner_name, attr = name.rsplit(".", 1)
            try:
                owner = import_dotted(owner_name)
            except Exception:
                continue
            if not isinstance(owner, type):
                continue
            # The class itself or the llmref base class whose docstring lists it.
            for klass in owner.__mro__:
                klass_key = _identity_key(klass)
                if klass_key in documented and attr in _class_attributes(klass):
                    return py.resolve_xref(
                        env,
                        node["refdoc"],
                        app.builder,
                        "class",
                        documented[klass_key],
                        node,
                        contnode,
                    )
    return None


def _resolve_external_func_as_class(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Let ``:func:`` find a *class* in an intersphinx inventory (``torch.no_grad``),
    and ``nn.X`` mean ``torch.nn.X``.

    Sphinx resolves a local ``:func:`` to any object with that exact name,
    whatever its type; intersphinx insists on the type.  This gives external
    references the local behaviour, for exact names only.
    """
    if node.get("refdomain") != "py":
        return None
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    if target.startswith("nn."):
        # ``from torch import nn`` is universal; an annotation that could not
        # be evaluated keeps the short spelling ``nn.Module``.
        retry = node.deepcopy()
        retry["reftarget"] = "torch." + target
        found = intersphinx.missing_reference(app, env, retry, contnode)
        if found is not None or node.get("reftype") != "func":
            return found
        node = retry
    if node.get("reftype") != "func":
        return None
    retry = node.deepcopy()
    retry["reftype"] = "class"
    return intersphinx.missing_reference(app, env, retry, contnode)


def _clean_alias_reprs(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    """Work around Sphinx writing ``TypeAliasForwardRef('x.Y')`` inside ``X | None``,
    and drop a ``-> Any`` return annotation.

    An ``autodoc_type_aliases`` entry used inside a union or a generic is
    stringified as its repr; put the aliased name back.
    """

    def fix(text: str | None) -> str | None:
        return None if text is None else _ALIAS_REPR.sub(r"\1", text)

    signature = fix(signature)
    if signature and "<factory>" in signature:
        signature = _factory_defaults(obj, signature)
    return_annotation = fix(return_annotation)
    if return_annotation is not None and return_annotation.lstrip("~") in ("Any", "typing.Any"):
        # ``-> Any`` tells the reader nothing (chunked_attention returns a tensor, or a
        # tuple with return_lse=True): leave it out; the Returns section says what it is.
        return_annotation = None
    return signature, return_annotation


def _factory_defaults(cls: Any, signature: str) -> str:
    """Write a dataclass ``default_factory`` as a call (``dict()``), not ``<factory>``.

    ``<factory>`` is not Python, so Sphinx cannot parse the signature and
    splits annotations such as ``Mapping[str, Any]`` at the comma.
    """
    import dataclasses

    factories = {}
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING:
                factories[f.name] = getattr(f.default_factory, "__qualname__", None)

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        factory = factories.get(name)
        call = f"{factory}()" if factory and _DOTTED.fullmatch(factory) else "..."
        return f"{match.group(0)[: -len('<factory>')]}{call}"

    return re.sub(r"(\w+)(?::[^=,()]*(?:\[[^\]]*\])?[^=,()]*)?\s*=\s*<factory>", repl, signature)


_ALIAS_REPR = re.compile(r"TypeAliasForwardRef\('([^']+)'\)")


def _skip_torch_inherited_docs(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Skip overrides of ``torch.nn.Module`` methods that have no docstring of their own.

    With docstring inheritance on (so a cache's ``update`` shows the base
    class's documentation), an undocumented ``forward`` or ``extra_repr``
    would otherwise show PyTorch's generic text about overriding it.
    """
    if what != "class" or skip or getattr(obj, "__doc__", "") is not None:
        return None
    try:
        import torch
    except ImportError:
        return None
    return True if hasattr(torch.nn.Module, name) else None


def _reset_cache(app: Sphinx, env: Any) -> list[str]:
    env._llmref_documented = None
    return []


def _defining_module_doc(fullname: str, obj: Any) -> list[str] | None:
    """The attribute docstring of ``fullname`` from the module that assigns it.

    ``llmref.attention.ATTENTION`` is assigned (and documented) in
    ``llmref.attention.functional`` and re-exported; autodoc only reads
    attribute docstrings of the module named in the directive, and otherwise
    falls back to the docstring of the object's *type*.
    """
    from sphinx.pycode import ModuleAnalyzer
    from sphinx.util.docstrings import prepare_docstring

    package, _, attr = fullname.rpartition(".")
    for modname, module in sorted(sys.modules.items()):
        if not (modname == package or modname.startswith(package + ".")):
            continue
        if getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:
            continue
        if ("", attr) in docs:
            return prepare_docstring("\n".join(docs[("", attr)]))
    return None


def _data_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Give re-exported module-level data the docstring written where it is defined."""
    if what != "data" or not name.startswith("llmref."):
        return
    from sphinx.util.docstrings import prepare_docstring

    type_doc = prepare_docstring(type(obj).__doc__ or "")
    if [ln for ln in lines if ln.strip()] != [ln for ln in type_doc if ln.strip()]:
        return  # autodoc found the object's own docstring
    own = _defining_module_doc(name, obj)
    lines[:] = own if own is not None else []


def public_modules() -> list[Any]:
    """llmref and every module under it whose dotted path has no ``_``-prefixed part."""
    import pkgutil

    import llmref

    modules = [llmref]
    for info in pkgutil.walk_packages(llmref.__path__, prefix="llmref."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


@functools.cache
def public_names() -> tuple[str, ...]:
    """Every public name: the ``__all__`` entries of every public module (not modules).

    Cached for the life of the process (one ``sphinx-build`` run).
    """
    import types

    names = []
    for module in public_modules():
        for attr in getattr(module, "__all__", []):
            if attr.startswith("__"):
                continue
            if not isinstance(getattr(module, attr, None), types.ModuleType):
                names.append(f"{module.__name__}.{attr}")
    return tuple(names)


def _shortest_public_name(obj: Any) -> str | None:
    """The public name of ``obj`` with the fewest dots, if it has one."""
    names = [n for n in public_names() if import_dotted(n) is obj]
    return min(names, key=lambda n: (n.count("."), n)) if names else None


def _public_object_ids() -> set[int]:
    return {id(import_dotted(name)) for name in public_names()}


def _check_api_coverage(app: Sphinx, env: Any) -> None:
    """Warn for each public name that has no API entry (under that name or another)."""
    documented_names = {name for name, *_ in env.get_domain("py").get_objects()}
    # Re-exports are the same object under two names: documenting either counts.
    documented_ids = set()
    for name in documented_names:
        if name.startswith("llmref."):
            try:
                documented_ids.add(id(import_dotted(name)))
            except Exception:
                pass
    for name in public_names():
        if name in documented_names or id(import_dotted(name)) in documented_ids:
            continue
        logger.warning(
            "public name %s is not documented; add it to an autosummary in docs/api/",
            name,
            type="llmref",
            subtype="api_coverage",
        )


# -- API pages generated from __all__ ------------------------------------------


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _api_sections(package: Any) -> list[tuple[str, str, list[str]]]:
    """``(module name, currentmodule, names)`` sections for one package's API page.

    Every name in the package's ``__all__`` is documented under the package
    (``llmref.position.apply_rope``), grouped by the public submodule that
    defines it; names a public submodule exports but the package does not are
    documented under the submodule (``llmref.quant.primitives.group_length``).
    """
    import pkgutil
    import types

    pkg_name = package.__name__
    exported = [n for n in getattr(package, "__all__", []) if not n.startswith("__")]
    submodules = []
    if hasattr(package, "__path__"):
        for info in pkgutil.walk_packages(package.__path__, prefix=pkg_name + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                submodules.append(importlib.import_module(info.name))
    submodule_names = {m.__name__ for m in submodules}

    def home_of(obj: Any) -> str:
        for module in submodules:
            for attr in getattr(module, "__all__", []):
                if getattr(module, attr, None) is obj:
                    return module.__name__
        return pkg_name

    sections: dict[str, list[tuple[str, str]]] = {}
    exported_ids = set()
    for name in exported:
        obj = getattr(package, name)
        if isinstance(obj, types.ModuleType):
            continue
        exported_ids.add(id(obj))
        home = home_of(obj)
        if f"{pkg_name}.{name}" in submodule_names:
            # A function named like its module: autosummary would import the
            # module, so document it under the module's path.
            sections.setdefault(home, []).append((home, name))
        else:
            sections.setdefault(home, []).append((pkg_name, name))
    for module in submodules:
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr, None)
            if isinstance(obj, types.ModuleType) or id(obj) in exported_ids:
                continue
            sections.setdefault(module.__name__, []).append((module.__name__, attr))

    order = [pkg_name, *sorted(m for m in sections if m != pkg_name)]
    result = []
    for module_name in order:
        if module_name not in sections:
            continue
        by_current: dict[str, list[str]] = {}
        for current, name in sections[module_name]:
            by_current.setdefault(current, []).append(name)
        for current, names in by_current.items():
            result.append((module_name, current, names))
    return result


def api_page(package_name: str) -> str:
    """The reST source of the API page of one package.

    The package docstring, then one section per public submodule (its
    docstring, then an autosummary of what it exports), so the page follows
    the package's own structure and cannot miss a name in ``__all__``.
    """
    package = importlib.import_module(package_name)
    title = f"``{package_name}``"
    lines = [
        ".. This file is generated by docs/_ext/llmref_docs.py from __all__; do not edit.",
        "",
        title,
        "=" * len(title),
        "",
        f".. automodule:: {package_name}",
        "   :no-members:",
        "",
    ]
    previous = None
    for module_name, current, names in _api_sections(package):
        if module_name != previous and module_name != package_name:
            heading = f"``{module_name}``"
            lines += [
                heading,
                "-" * len(heading),
                "",
                f".. automodule:: {module_name}",
                "   :no-members:",
                "",
            ]
        previous = module_name
        lines += [
            f".. currentmodule:: {current}",
            "",
            ".. autosummary::",
            "   :toctree: ../generated",
            "   :nosignatures:",
            "",
        ]
        lines += [f"   {name}" for name in names]
        lines.append("")
    return "\n".join(lines)


def write_api_pages(out_dir: Path) -> list[str]:
    """Write one page per public subpackage of llmref into ``out_dir``.

    Files are rewritten only when their text changes, and pages of packages
    that no longer exist are removed.  Returns the page names written.
    """
    import pkgutil

    import llmref

    out_dir.mkdir(parents=True, exist_ok=True)
    packages = [
        f"llmref.{info.name}"
        for info in pkgutil.iter_modules(llmref.__path__)
        if info.ispkg and not info.name.startswith("_")
    ]
    written = []
    for name in packages:
        path = out_dir / f"{name}.rst"
        text = api_page(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(name)
    for stale in out_dir.glob("llmref.*.rst"):
        if stale.stem not in written:
            stale.unlink()
    return written


def _extract_summary(doc: Any, settings: Any) -> str:
    """``sphinx.ext.autosummary.extract_summary`` with its sentence check fixed.

    Sphinx 9 splits the first paragraph at ". " and means to grow the candidate
    sentence until it parses cleanly (so a literal like ``0 .. 2**bits - 1`` is
    not cut in half), but it re-parses the whole paragraph instead of the
    candidate, so it always keeps the first cut.  This parses the candidate.
    """
    from docutils import nodes as dn
    from sphinx.ext import autosummary as autosum

    first_stanza: list[str] = []
    for line in doc:
        blank = not line or line.isspace()
        if blank and first_stanza:
            break
        if not blank:
            first_stanza.append(line)
    if not first_stanza:
        return ""
    node = autosum._parse_summary(first_stanza, settings)
    if not isinstance(node[0], dn.paragraph):
        return _ORIGINAL_EXTRACT_SUMMARY(doc, settings)
    sentences = autosum.periods_re.split(" ".join(first_stanza))
    summary = sentences[0].strip()
    for i in range(len(sentences)):
        summary = ". ".join(sentences[: i + 1]).rstrip(".") + "."
        if summary.endswith(autosum.WELL_KNOWN_ABBREVIATIONS):
            continue
        if not any(autosum._parse_summary([summary], settings).findall(dn.system_message)):
            break
    return autosum.literal_re.sub(".", summary)


def _patch_autosummary() -> None:
    from sphinx.ext import autosummary as autosum

    needed = (
        "extract_summary",
        "_parse_summary",
        "periods_re",
        "literal_re",
        "WELL_KNOWN_ABBREVIATIONS",
    )
    if not all(hasattr(autosum, name) for name in needed):
        return  # a Sphinx whose internals differ: keep its own behaviour
    global _ORIGINAL_EXTRACT_SUMMARY
    if autosum.extract_summary is not _extract_summary:
        _ORIGINAL_EXTRACT_SUMMARY = autosum.extract_summary
        autosum.extract_summary = _extract_summary


_ORIGINAL_EXTRACT_SUMMARY: Any = None


def _refresh_found_docs(app: Sphinx) -> None:
    app.env.find_files(app.config, app.builder)


def _remove_stale_stubs(app: Sphinx) -> None:
    """Delete autosummary stub pages that no autosummary lists any more.

    autosummary writes ``api/generated/<name>.rst`` but never deletes one; when
    a name leaves ``__all__`` (or moves), its old page would be an orphan and
    fail the build with "document isn't included in any toctree".
    """
    from sphinx.ext.autosummary.generate import find_autosummary_in_files

    generated = Path(app.srcdir) / "api" / "generated"
    if not generated.is_dir():
        return
    sources = [str(app.env.doc2path(doc)) for doc in app.env.found_docs]
    wanted = {entry.name for entry in find_autosummary_in_files(sources)}
    removed = False
    for stub in generated.glob("*.rst"):
        if stub.stem not in wanted:
            stub.unlink()
            removed = True
    if removed:
        app.env.find_files(app.config, app.builder)


_DOTTED_TITLE = re.compile(r"(<h1>)([A-Za-z_]\w*(?:\.\w+)+)(<a class=\"headerlink\")")


def _breakable_titles(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    """Let a dotted-name page title (``llmref.attention.chunked_attention``) wrap at its dots.

    The name is one word, wider than the column on a narrow window; a ``<wbr>``
    after each dot offers a line break there without changing the text that is
    copied or searched.
    """
    body = context.get("body")
    if not pagename.startswith("api/") or not isinstance(body, str):
        return
    context["body"] = _DOTTED_TITLE.sub(
        lambda m: m.group(1) + m.group(2).replace(".", ".<wbr>") + m.group(3), body, count=1
    )


def setup(app: Sphinx) -> dict[str, Any]:
    _patch_autosummary()
    app.connect("html-page-context", _breakable_titles)
    # Before autosummary (priority 500) looks for autosummary directives: on an
    # incremental build its list of source files comes from the pickled
    # environment and misses API pages conf.py has just written.
    app.connect("builder-inited", _refresh_found_docs, priority=100)
    # After autosummary has generated its stubs.
    app.connect("builder-inited", _remove_stale_stubs, priority=600)
    app.add_directive("llmref-registry", RegistryTable)
    app.add_directive("llmref-package-tree", PackageTree)
    app.add_directive("llmref-all-registries", AllRegistries)
    app.add_directive("llmref-planned", Planned)
    app.connect("missing-reference", _resolve_llmref_reference)
    # After intersphinx's own handler (priority 500) has failed.
    app.connect("missing-reference", _resolve_external_func_as_class, priority=900)
    app.connect("autodoc-process-signature", _clean_alias_reprs)
    app.connect("autodoc-skip-member", _skip_torch_inherited_docs)
    app.connect("env-updated", _reset_cache)
    app.connect("env-check-consistency", _check_api_coverage)
    # Before napoleon (priority 500) rewrites the lines it is compared with.
    app.connect("autodoc-process-docstring", _data_docstring, priority=100)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
