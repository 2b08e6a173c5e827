"""Checks on what the sphinx-gallery examples produce.

``matplotlib_scraper``
    sphinx-gallery's matplotlib scraper, preceded by a check that every axes
    of every figure it is about to save has something drawn in it.  A figure
    is saved at the end of the ``# %%`` cell that leaves it open, so a figure
    created in one cell and finished in the next is saved half-drawn, with an
    empty panel; the check turns that into an example error, which fails the
    build (``only_warn_on_example_error`` is false).  Use it in ``conf.py`` as
    ``"image_scrapers": ("llmref_gallery.matplotlib_scraper",)``.

Stray object reprs
    An example whose cell ends in an expression such as ``ax.legend()`` prints
    ``<matplotlib.legend.Legend object at 0x...>`` into the page.  Any
    ``<... object at 0x...>`` in a generated example page is a warning.

``reset_torch_threads``
    A ``reset_modules`` entry: every example starts with the thread count the
    build started with.  Examples run one after another in one process, and
    some lower the count (tiny models run fastest on one thread); without the
    reset every later example, the timed ones included, would inherit it.  Use
    it as ``"reset_modules": (..., "llmref_gallery.reset_torch_threads")``.

What "something drawn" means
    An axes counts as drawn when it holds at least one *visible* artist among
    its lines, patches, collections, images, texts, tables and other artists
    (``ax.artists``), where a line must have data, a text must have non-blank
    text and a collection must have paths (and a scatter must have points).
    Titles, axis labels, ticks, grids, spines and legends do not count: they
    are furniture that is drawn whatever the data.  Axes at the same position
    (``twinx``/``twiny``) are judged together, and an inset counts for its
    parent.  An ``axis("off")`` panel that holds text or a table is drawn; an
    ``axis("off")`` panel that holds nothing is not (remove it with
    ``ax.remove()`` instead).
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

_TORCH_THREADS: int | None = None


def reset_torch_threads(gallery_conf: Any, fname: str, when: str = "before") -> None:
    """Restore PyTorch's intra-op thread count to the one of the first call."""
    global _TORCH_THREADS
    import torch

    if _TORCH_THREADS is None:
        _TORCH_THREADS = torch.get_num_threads()
    elif torch.get_num_threads() != _TORCH_THREADS:
        torch.set_num_threads(_TORCH_THREADS)


_OBJECT_REPR = re.compile(r"<[A-Za-z_][\w.]* object at 0x[0-9a-fA-F]+>")


class EmptyAxesError(RuntimeError):
    """A figure about to be saved by sphinx-gallery has an axes with nothing drawn."""


def _has_content(artist: Any) -> bool:
    from matplotlib.collections import Collection, PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.text import Text

    if not artist.get_visible():
        return False
    if isinstance(artist, Line2D):
        return len(artist.get_xdata(orig=False)) > 0
    if isinstance(artist, Text):
        return bool(artist.get_text().strip())
    if isinstance(artist, PathCollection):
        return len(artist.get_paths()) > 0 and len(artist.get_offsets()) > 0
    if isinstance(artist, Collection):
        return len(artist.get_paths()) > 0
    return True


def axes_drawn(ax: Any) -> bool:
    """Whether ``ax`` itself, or an inset of it, has something drawn."""
    artists = [
        *ax.lines,
        *ax.patches,
        *ax.collections,
        *ax.images,
        *ax.texts,
        *ax.tables,
        *ax.artists,
    ]
    if any(_has_content(a) for a in artists):
        return True
    return any(axes_drawn(child) for child in getattr(ax, "child_axes", []))


def empty_axes(fig: Any) -> list[tuple[int, Any]]:
    """``(index, axes)`` for every visible axes of ``fig`` with nothing drawn.

    Axes that share their position (``twinx``, ``twiny``) are one panel: it is
    empty only when all of them are.
    """
    axes = [ax for ax in fig.axes if ax.get_visible()]
    panels: dict[tuple[float, ...], list[Any]] = {}
    for ax in axes:
        key = tuple(round(v, 6) for v in ax.get_position().bounds)
        panels.setdefault(key, []).append(ax)
    empty = []
    for i, ax in enumerate(axes, start=1):
        key = tuple(round(v, 6) for v in ax.get_position().bounds)
        if not any(axes_drawn(other) for other in panels[key]):
            empty.append((i, ax))
        # An inset (ax.inset_axes) is not in fig.axes; an empty one is an empty panel too.
        empty += [(i, inset) for inset in _insets(ax) if not axes_drawn(inset)]
    return empty


def _insets(ax: Any) -> list[Any]:
    found = []
    for child in getattr(ax, "child_axes", []):
        if child.get_visible():
            found += [child, *_insets(child)]
    return found


def _describe(i: int, n: int, ax: Any) -> str:
    title = ax.get_title() or ax.get_title("left") or ax.get_title("right")
    label = f", title {title!r}" if title else ""
    x0, y0, w, h = ax.get_position().bounds
    what = f"axes {i} of {n}" if ax in ax.figure.axes else f"an inset of axes {i} of {n}"
    return f"{what}{label} at figure position ({x0:.2f}, {y0:.2f}, {w:.2f}, {h:.2f})"


def check_open_figures(block: Any = None, block_vars: Any = None) -> None:
    """Raise :class:`EmptyAxesError` if an open pyplot figure has an empty axes."""
    import matplotlib.pyplot as plt

    problems = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        empty = empty_axes(fig)
        if empty:
            n = len([ax for ax in fig.axes if ax.get_visible()])
            where = "; ".join(_describe(i, n, ax) for i, ax in empty)
            problems.append(f"figure {num}: nothing drawn in {where}")
    if not problems:
        return
    cell = ""
    if block is not None and getattr(block, "lineno", None) is not None:
        cell = f" at the end of the cell that starts at line {block.lineno}"
    src = ""
    if isinstance(block_vars, dict) and block_vars.get("src_file"):
        src = f" of {block_vars['src_file']}"
    raise EmptyAxesError(
        f"sphinx-gallery would save a figure with an empty panel{cell}{src}: "
        + "; ".join(problems)
        + ". A figure is saved at the end of the '# %%' cell that leaves it open: draw all "
        "its axes in one cell, or add '# sphinx_gallery_defer_figures' to the earlier "
        "cell; remove an axes you do not need with ax.remove()."
    )


def matplotlib_scraper(block: Any, block_vars: Any, gallery_conf: Any, **kwargs: Any) -> str:
    """sphinx-gallery's matplotlib scraper, refusing figures with an empty axes.

    The figures are saved (and closed) first either way, so a failing cell
    leaves no figure behind for the next one.
    """
    from sphinx_gallery.scrapers import matplotlib_scraper as scrape

    try:
        check_open_figures(block, block_vars)
    except EmptyAxesError:
        scrape(block, block_vars, gallery_conf, **kwargs)
        raise
    return scrape(block, block_vars, gallery_conf, **kwargs)


def _gallery_dirs(app: Sphinx) -> tuple[str, ...]:
    conf = getattr(app.config, "sphinx_gallery_conf", None) or {}
    dirs = conf.get("gallery_dirs", ("auto_examples",))
    dirs = [dirs] if isinstance(dirs, str) else list(dirs)
    return tuple(d.strip("/") + "/" for d in dirs)


def _check_reprs(app: Sphinx, docname: str, source: list[str]) -> None:
    if not docname.startswith(_gallery_dirs(app)):
        return
    for match in _OBJECT_REPR.finditer(source[0]):
        line = source[0].count("\n", 0, match.start()) + 1
        logger.warning(
            "a gallery example printed the default repr %s: end the cell with a statement "
            "(assign the result, or call plt.show()) instead of an expression",
            match.group(0),
            type="llmref",
            subtype="gallery",
            location=(docname, line),
        )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _check_reprs)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
