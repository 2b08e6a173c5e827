"""Sphinx configuration for the llmref documentation.

Build (from the repository root; zero warnings is the bar)::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

The build needs no network: intersphinx reads small inventories shipped in
``docs/_intersphinx/``, MathJax is bundled by ``sphinx-mathjax-offline`` and
copied into ``_static/``, and the figures of the theory pages are drawn from
llmref by ``docs/_scripts/make_figures.py`` right here, at configuration time.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Document the working tree, even when an older llmref is installed.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS / "_scripts"))
sys.path.insert(0, str(DOCS / "_intersphinx"))

# Gallery examples run with the example's folder as working directory; a results
# file named by LLMREF_BENCH_JSON / LLMREF_MEMORY_JSON is resolved against the
# repository root, which llmref.bench.paths.find_project_root finds through this
# variable (nothing under results/ is read unless named).
os.environ.setdefault("LLMREF_ROOT", str(ROOT))

import llmref_docs  # noqa: E402
import make_figures  # noqa: E402
import make_inventories  # noqa: E402

import llmref  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "llmref"
author = "llmref developers"
copyright = "llmref developers"
release = llmref.__version__
version = ".".join(release.split(".")[:2])

# -- Extensions --------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # ships MathJax 3 and sets mathjax_path to _static/mathjax
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
    "sphinx_gallery.gen_gallery",
    "llmref_docs",  # docs/_ext: registry tables, API pages, reference resolution
    "llmref_sections",  # docs/_ext: every theory page has the canonical sections
    "llmref_gallery",  # docs/_ext: no empty panels, no stray reprs in the gallery
    "llmref_landing",  # docs/_ext: the landing page's headline results
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
html_static_path = ["_static"]
exclude_patterns = [
    "_build",
    "_generated",
    "_intersphinx",
    "_scripts",
    "_ext",
    "_templates",
    "**.ipynb_checkpoints",
    "auto_examples/**/*.ipynb",
    "auto_examples/**/*.py",
    "theory/quant/ptq-results.md",  # generated; included by theory/quant/ptq.md
    "_data",  # headlines.json and the script that measures it (read by llmref_landing)
]

# -- The section check (docs/_ext/llmref_sections.py) ----------------------------
#
# Every page under theory/ except index pages has the level-2 sections Complexity and
# memory, How implementations differ, Pitfalls, See it run, References, and a figure;
# exceptions are listed, each with a reason, in this file (the build prints them).
llmref_sections_optout = "theory/sections-optout.toml"
# Every theory page is complete: an opt-out whose reason starts with "TODO" is an error.
llmref_sections_allow_todo = False

# Every cross-reference must resolve (run with -n).  Nothing is ignored
# wholesale; add a specific (type, target) pair here only with a reason.
nitpicky = True
nitpick_ignore: list[tuple[str, str]] = [
    # Registry's spec type variable (Registry(Mapping[str, S], Generic[S])): autodoc
    # names it in the base classes and signatures; a TypeVar has no page to link to.
    ("py:class", "llmref._registry.S"),
    ("py:obj", "llmref._registry.S"),
]

# -- MyST --------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc / autosummary / numpydoc ----------------------------------------

# One API page per public subpackage (docs/api/packages/, git-ignored), written
# from its __all__ before autosummary scans the sources for what to generate.
llmref_docs.write_api_pages(DOCS / "api" / "packages")
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# A method that overrides a documented llmref method without a docstring of its
# own (a cache's ``update``) shows the base class's documentation; overrides of
# torch.nn.Module methods without one are skipped by docs/_ext/llmref_docs.py.
autodoc_inherit_docstrings = True
add_module_names = False
python_use_unqualified_type_names = True

# Annotations that are only imported under TYPE_CHECKING (matplotlib in
# llmref.bench.plot) or are aliases (llmref.bench.cases.Builder) cannot be
# evaluated by autodoc; tell it what they name so the signature links resolve.
autodoc_type_aliases = {
    "Axes": "matplotlib.axes.Axes",
    "Figure": "matplotlib.figure.Figure",
    # Builder = Callable[[int, torch.device], Callable[[], Any]] (not exported)
    "Builder": "collections.abc.Callable",
}

# Docstrings are numpydoc-format, rendered by numpydoc itself.  (napoleon was
# tried: it reads the first line of a data docstring such as "The sweeps: ..."
# as an inline "type: description", inventing broken references.)
# Parameter types become links where a word is a known alias below; other
# words ("of shape", "optional", "default") stay text.
numpydoc_show_class_members = False  # autodoc's :members: lists them
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"
numpydoc_xref_aliases = {
    "Tensor": ":class:`Tensor <torch.Tensor>`",
    "torch.Tensor": ":class:`torch.Tensor`",
    "torch.device": ":class:`torch.device`",
    "torch.dtype": ":class:`torch.dtype`",
    "torch.nn.Linear": ":class:`torch.nn.Linear`",
    "torch.nn.Module": ":class:`torch.nn.Module`",
    "torch.nn.MultiheadAttention": ":class:`torch.nn.MultiheadAttention`",
    "Mapping": ":class:`~collections.abc.Mapping`",
    "mapping": ":term:`python:mapping`",
    "Path": ":class:`~pathlib.Path`",
    "Figure": ":class:`~matplotlib.figure.Figure`",
    "Axes": ":class:`~matplotlib.axes.Axes`",
    "Registry": ":class:`~llmref.Registry`",
    "RegistryEntry": ":class:`~llmref.RegistryEntry`",
    "MultiHeadAttention": ":class:`~llmref.attention.MultiHeadAttention`",
}

# -- intersphinx: offline by construction ------------------------------------
#
# The docs must build with no network, under -n -W.  Intersphinx normally
# downloads each project's objects.inv; offline that fails with a warning (an
# error under -W), and a blocked connection can stall the build until the
# timeout.  So each mapping names only a local inventory, written by
# docs/_intersphinx/make_inventories.py with the real URLs of the objects these
# docs mention: no fetch is ever attempted, and the links still point at
# docs.python.org and docs.pytorch.org.  To link something new, add it to that
# script (it runs below on every build, so the .inv files cannot go stale).
make_inventories.write_all()
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_intersphinx/python.inv"),
    "torch": ("https://docs.pytorch.org/docs/stable", "_intersphinx/torch.inv"),
    "matplotlib": ("https://matplotlib.org/stable", "_intersphinx/matplotlib.inv"),
    "numpy": ("https://numpy.org/doc/stable", "_intersphinx/numpy.inv"),
}
intersphinx_disabled_reftypes = ["std:doc"]

# -- Figures drawn from llmref at build time ---------------------------------

make_figures.make_all(DOCS / "_generated" / "figures")

# -- Bibliography --------------------------------------------------------------
#
# One citation bibliography for the whole site (references.md, ``:all:``):
# every ``{cite}`` -- in theory pages and in API docstrings alike -- links
# there, so a key cited on several pages is never a duplicate citation.
# Theory pages end with a bullet-list ``{bibliography}`` filtered to the keys
# they cite; bullet lists are not citation targets, so they cannot clash.
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# -- sphinx-gallery ------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": ["../gallery"],
    "gallery_dirs": ["auto_examples"],
    # Execute files whose name starts with plot_; others are shown, not run.
    "filename_pattern": re.escape(os.sep) + r"plot_",
    "ignore_pattern": r"(__init__|conftest)\.py|/_",
    # One subsection per folder (attention/, benchmarks/, ...), benchmarks last.
    "subsection_order": ["../gallery/attention", "*", "../gallery/benchmarks"],
    "within_subsection_order": "FileNameSortKey",
    # Backreferences: every API page lists the examples that use the object.
    "doc_module": ("llmref",),
    "backreferences_dir": "api/generated/backreferences",
    # No "reference_url": recent sphinx-gallery (0.22 here) ignores it with a
    # deprecation notice and links example code from this build and intersphinx.
    # matplotlib's scraper, refusing a figure with an empty axes (a figure is saved at
    # the end of the cell that leaves it open: a panel drawn in the next cell is lost).
    "image_scrapers": ("llmref_gallery.matplotlib_scraper",),
    # A cell ending in ax.legend() would print "<matplotlib.legend.Legend object at 0x..>".
    "ignore_repr_types": r"matplotlib[.]",
    # Each example starts with the build's thread count (some set 1 for tiny models).
    "reset_modules": ("matplotlib", "llmref_gallery.reset_torch_threads"),
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    # The timing pages load DataTables from a CDN; the docs must work offline.
    "write_computation_times": False,
}

# -- HTML ----------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"llmref {release}"
html_favicon = "_static/favicon.svg"
html_theme_options = {
    "logo": {"text": "llmref"},
    "github_url": "https://github.com/llmref/llmref",
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_depth": 3,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# pydata-sphinx-theme logs "Got invalid theme mode" to the console on a reader's first
# visit unless a default mode is set (the browser check fails on console errors).
html_context = {"default_mode": "auto"}
html_css_files = ["llmref.css"]
html_show_sourcelink = True

# Copy code without prompts (>>> , ... , $ ).
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
