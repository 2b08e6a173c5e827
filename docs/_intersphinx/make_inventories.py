"""Write the small intersphinx inventories the docs use: Python, PyTorch, Matplotlib.

Why: the docs must build with no network (``sphinx-build -n -W``), yet type
annotations and docstrings mention ``torch.Tensor``, ``collections.abc.Mapping``
and friends, which nitpicky mode insists on resolving.  Fetching the real
``objects.inv`` files at build time would fail (or hang until the timeout)
offline, so ``conf.py`` points intersphinx at these curated local files instead.
Every entry below is a real object on docs.python.org/3,
docs.pytorch.org/docs/stable or matplotlib.org/stable, with the URL it has
there; the links in the built HTML therefore work for anyone who reads the
docs online.

When a docs build warns ``py:class reference target not found: torch.X``, add
``torch.X`` here (with its real URL) and rerun::

    python docs/_intersphinx/make_inventories.py

``conf.py`` also runs this script on every build, so the committed ``.inv``
files never drift from this list.  The output is deterministic (byte-identical
for the same list).

The format is the standard Sphinx inventory version 2: four plain header
lines, then zlib-compressed lines of ``name domain:role priority uri dispname``
(``dispname`` ``-`` means "same as name").
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, domain:role, uri relative to the project's base URL)
PYTHON: list[tuple[str, str, str]] = [
    # builtins
    ("bool", "py:class", "library/functions.html#bool"),
    ("bytes", "py:class", "library/stdtypes.html#bytes"),
    ("callable", "py:function", "library/functions.html#callable"),
    ("dict", "py:class", "library/stdtypes.html#dict"),
    ("float", "py:class", "library/functions.html#float"),
    ("int", "py:class", "library/functions.html#int"),
    ("list", "py:class", "library/stdtypes.html#list"),
    ("object", "py:class", "library/functions.html#object"),
    ("print", "py:function", "library/functions.html#print"),
    ("slice", "py:class", "library/functions.html#slice"),
    ("str", "py:class", "library/stdtypes.html#str"),
    ("tuple", "py:class", "library/stdtypes.html#tuple"),
    ("type", "py:class", "library/functions.html#type"),
    ("None", "py:data", "library/constants.html#None"),
    ("True", "py:data", "library/constants.html#True"),
    ("False", "py:data", "library/constants.html#False"),
    ("Ellipsis", "py:data", "library/constants.html#Ellipsis"),
    # exceptions
    ("AttributeError", "py:exception", "library/exceptions.html#AttributeError"),
    ("IndexError", "py:exception", "library/exceptions.html#IndexError"),
    ("KeyError", "py:exception", "library/exceptions.html#KeyError"),
    ("NotImplementedError", "py:exception", "library/exceptions.html#NotImplementedError"),
    ("RuntimeError", "py:exception", "library/exceptions.html#RuntimeError"),
    ("TypeError", "py:exception", "library/exceptions.html#TypeError"),
    ("ValueError", "py:exception", "library/exceptions.html#ValueError"),
    # collections / collections.abc
    ("collections.namedtuple", "py:function", "library/collections.html#collections.namedtuple"),
    (
        "collections.abc.Callable",
        "py:class",
        "library/collections.abc.html#collections.abc.Callable",
    ),
    (
        "collections.abc.Iterable",
        "py:class",
        "library/collections.abc.html#collections.abc.Iterable",
    ),
    (
        "collections.abc.Iterator",
        "py:class",
        "library/collections.abc.html#collections.abc.Iterator",
    ),
    ("collections.abc.Mapping", "py:class", "library/collections.abc.html#collections.abc.Mapping"),
    (
        "collections.abc.Sequence",
        "py:class",
        "library/collections.abc.html#collections.abc.Sequence",
    ),
    # typing
    ("typing.Any", "py:data", "library/typing.html#typing.Any"),
    ("typing.Callable", "py:data", "library/typing.html#typing.Callable"),
    ("typing.Literal", "py:data", "library/typing.html#typing.Literal"),
    ("typing.Optional", "py:data", "library/typing.html#typing.Optional"),
    ("typing.Union", "py:data", "library/typing.html#typing.Union"),
    ("typing.NamedTuple", "py:class", "library/typing.html#typing.NamedTuple"),
    # misc stdlib
    (
        "contextlib.contextmanager",
        "py:function",
        "library/contextlib.html#contextlib.contextmanager",
    ),
    ("dataclasses.dataclass", "py:function", "library/dataclasses.html#dataclasses.dataclass"),
    ("dataclasses.field", "py:function", "library/dataclasses.html#dataclasses.field"),
    ("functools.partial", "py:function", "library/functools.html#functools.partial"),
    ("os.PathLike", "py:class", "library/os.html#os.PathLike"),
    ("pathlib.Path", "py:class", "library/pathlib.html#pathlib.Path"),
    ("time.perf_counter", "py:function", "library/time.html#time.perf_counter"),
    ("tracemalloc", "py:module", "library/tracemalloc.html#module-tracemalloc"),
    ("types.MappingProxyType", "py:class", "library/types.html#types.MappingProxyType"),
    # targets numpydoc's default type aliases point at ("bool" -> this label, ...)
    ("bltin-boolean-values", "std:label", "library/stdtypes.html#bltin-boolean-values"),
    ("callable", "std:term", "glossary.html#term-callable"),
    ("generator", "std:term", "glossary.html#term-generator"),
    ("iterable", "std:term", "glossary.html#term-iterable"),
    ("mapping", "std:term", "glossary.html#term-mapping"),
    ("sequence", "std:term", "glossary.html#term-sequence"),
]

_G = "generated/"
TORCH: list[tuple[str, str, str]] = [
    ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
    ("torch.dtype", "py:class", "tensor_attributes.html#torch.dtype"),
    ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
    ("torch.layout", "py:class", "tensor_attributes.html#torch.layout"),
    ("torch.Size", "py:class", "size.html#torch.Size"),
    ("torch.Generator", "py:class", _G + "torch.Generator.html#torch.Generator"),
    # torch.Generator is torch._C.Generator; annotations resolve to the latter.
    ("torch._C.Generator", "py:class", _G + "torch.Generator.html#torch.Generator"),
    ("torch.no_grad", "py:class", _G + "torch.no_grad.html#torch.no_grad"),
    ("torch.compile", "py:function", _G + "torch.compile.html#torch.compile"),
    ("torch.einsum", "py:function", _G + "torch.einsum.html#torch.einsum"),
    ("torch.logsumexp", "py:function", _G + "torch.logsumexp.html#torch.logsumexp"),
    ("torch.manual_seed", "py:function", _G + "torch.manual_seed.html#torch.manual_seed"),
    ("torch.matmul", "py:function", _G + "torch.matmul.html#torch.matmul"),
    ("torch.save", "py:function", _G + "torch.save.html#torch.save"),
    ("torch.load", "py:function", _G + "torch.load.html#torch.load"),
    ("torch.randn", "py:function", _G + "torch.randn.html#torch.randn"),
    (
        "torch.repeat_interleave",
        "py:function",
        _G + "torch.repeat_interleave.html#torch.repeat_interleave",
    ),
    ("torch.tril", "py:function", _G + "torch.tril.html#torch.tril"),
    ("torch.triu", "py:function", _G + "torch.triu.html#torch.triu"),
    ("torch.where", "py:function", _G + "torch.where.html#torch.where"),
    ("torch.autograd.Function", "py:class", "autograd.html#torch.autograd.Function"),
    ("torch.testing.assert_close", "py:function", "testing.html#torch.testing.assert_close"),
    # torch.nn; the ``torch.nn.modules.*`` names are where the classes are
    # defined, which is what autodoc writes for base classes (``Bases: ...``).
    ("torch.nn.Module", "py:class", _G + "torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.modules.module.Module", "py:class", _G + "torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.Linear", "py:class", _G + "torch.nn.Linear.html#torch.nn.Linear"),
    ("torch.nn.RMSNorm", "py:class", _G + "torch.nn.RMSNorm.html#torch.nn.RMSNorm"),
    ("torch.nn.modules.linear.Linear", "py:class", _G + "torch.nn.Linear.html#torch.nn.Linear"),
    (
        "torch.nn.MultiheadAttention",
        "py:class",
        _G + "torch.nn.MultiheadAttention.html#torch.nn.MultiheadAttention",
    ),
    (
        "torch.nn.modules.activation.MultiheadAttention",
        "py:class",
        _G + "torch.nn.MultiheadAttention.html#torch.nn.MultiheadAttention",
    ),
    (
        "torch.nn.parameter.Parameter",
        "py:class",
        _G + "torch.nn.parameter.Parameter.html#torch.nn.parameter.Parameter",
    ),
    (
        "torch.nn.Parameter",
        "py:class",
        _G + "torch.nn.parameter.Parameter.html#torch.nn.parameter.Parameter",
    ),
    (
        "torch.nn.functional.embedding",
        "py:function",
        _G + "torch.nn.functional.embedding.html#torch.nn.functional.embedding",
    ),
    (
        "torch.nn.functional.linear",
        "py:function",
        _G + "torch.nn.functional.linear.html#torch.nn.functional.linear",
    ),
    (
        "torch.nn.functional.softmax",
        "py:function",
        _G + "torch.nn.functional.softmax.html#torch.nn.functional.softmax",
    ),
    (
        "torch.nn.functional.scaled_dot_product_attention",
        "py:function",
        _G + "torch.nn.functional.scaled_dot_product_attention.html"
        "#torch.nn.functional.scaled_dot_product_attention",
    ),
    (
        "torch.nn.attention.SDPBackend",
        "py:class",
        _G + "torch.nn.attention.SDPBackend.html#torch.nn.attention.SDPBackend",
    ),
    (
        "torch.nn.attention.sdpa_kernel",
        "py:function",
        _G + "torch.nn.attention.sdpa_kernel.html#torch.nn.attention.sdpa_kernel",
    ),
    (
        "torch.nn.attention.flex_attention.flex_attention",
        "py:function",
        "nn.attention.flex_attention.html#torch.nn.attention.flex_attention.flex_attention",
    ),
    (
        "torch.nn.attention.flex_attention.BlockMask",
        "py:class",
        "nn.attention.flex_attention.html#torch.nn.attention.flex_attention.BlockMask",
    ),
    (
        "torch.nn.attention.flex_attention.create_block_mask",
        "py:function",
        "nn.attention.flex_attention.html#torch.nn.attention.flex_attention.create_block_mask",
    ),
    ("torch.nn.init.xavier_uniform_", "py:function", "nn.init.html#torch.nn.init.xavier_uniform_"),
]

NUMPY: list[tuple[str, str, str]] = [
    ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
]

MATPLOTLIB: list[tuple[str, str, str]] = [
    ("matplotlib.pyplot", "py:module", "api/pyplot_summary.html#module-matplotlib.pyplot"),
    (
        "matplotlib.axes.Axes",
        "py:class",
        "api/_as_gen/matplotlib.axes.Axes.html#matplotlib.axes.Axes",
    ),
    (
        "matplotlib.figure.Figure",
        "py:class",
        "api/_as_gen/matplotlib.figure.Figure.html#matplotlib.figure.Figure",
    ),
]


def render(project: str, version: str, entries: list[tuple[str, str, str]]) -> bytes:
    """Return the bytes of an objects.inv (version 2) holding ``entries``."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    names = [(n, r) for n, r, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate entries in the {project} inventory")
    lines = []
    for name, role, uri in sorted(entries):
        # Objects get priority 1; labels, terms and documents -1 (as Sphinx writes them).
        priority = 1 if role.startswith("py:") and role != "py:module" else -1
        if role == "py:module":
            priority = 0  # as Sphinx writes modules
        lines.append(f"{name} {role} {priority} {uri} -\n")
    return header + zlib.compress("".join(lines).encode(), 9)


def write_all(out_dir: Path = HERE) -> list[Path]:
    """(Re)write both inventories in ``out_dir``; only touch files whose bytes change."""
    written = []
    for fname, project, version, entries in (
        ("python.inv", "Python", "3", PYTHON),
        ("torch.inv", "PyTorch", "stable", TORCH),
        ("matplotlib.inv", "Matplotlib", "stable", MATPLOTLIB),
        ("numpy.inv", "NumPy", "stable", NUMPY),
    ):
        path = out_dir / fname
        data = render(project, version, entries)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p)
