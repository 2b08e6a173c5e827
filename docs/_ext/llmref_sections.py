"""The section check: every theory page has the sections the site promises.

Every page under ``docs/theory/`` except the ``index`` pages must have these
level-2 headings (``## `` in MyST, exact text)::

    Complexity and memory
    How implementations differ
    Pitfalls
    See it run
    References

and at least one figure (a ``figure`` or ``image`` directive, or a Markdown
image, anywhere on the page, included files counted; the gallery thumbnails
of a ``minigallery`` do not count).

A page may go without one of them only through an entry in
``docs/theory/sections-optout.toml``, with a reason; the build prints every
opt-out.  Only the pages that file declares *results* pages may opt out of
"How implementations differ"; a technique page may not, except temporarily,
with a reason that starts with ``TODO``, while ``llmref_sections_allow_todo``
is true in ``conf.py``.  An entry for a section the page has (or for a page
that does not exist) is an error too, so the file cannot go stale.

Every problem is a Sphinx warning of type ``llmref.sections``; under
``sphinx-build -W`` (``tox -e docs``) the build fails with the list.

The opt-out file::

    # Pages that report measurements rather than teach a technique.
    [results]
    "quant/ptq-results" = "why it is a results page"

    # Per page (its path under docs/theory/ without ".md"): what it lacks, and why.
    [optout."quant/ptq"]
    "See it run" = "why"
    figure = "why"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10 with tomli installed
    import tomli as tomllib  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

SECTIONS = (
    "Complexity and memory",
    "How implementations differ",
    "Pitfalls",
    "See it run",
    "References",
)
FIGURE = "figure"
NEVER_FOR_TECHNIQUES = "How implementations differ"


def _is_checked(docname: str, root: str) -> bool:
    return docname.startswith(root + "/") and docname.rsplit("/", 1)[-1] != "index"


def _level2_titles(doctree: nodes.document) -> list[str]:
    """Titles of the sections directly under the page's top-level section(s)."""
    titles = []
    for top in doctree.children:
        if not isinstance(top, nodes.section):
            continue
        for child in top.children:
            if isinstance(child, nodes.section) and child.children:
                title = child.next_node(nodes.title)
                if title is not None:
                    titles.append(title.astext().strip())
    return titles


def _record(app: Sphinx, doctree: nodes.document) -> None:
    docname = app.env.docname
    if not _is_checked(docname, app.config.llmref_sections_root):
        return
    store = _store(app.env)
    store[docname] = {
        "sections": _level2_titles(doctree),
        "figures": sum(1 for img in doctree.findall(nodes.image) if _is_figure(img)),
    }


def _is_figure(image: nodes.image) -> bool:
    """An image on the page, not a gallery thumbnail.

    sphinx-gallery's ``minigallery`` (the "See it run" lists) puts each example's
    thumbnail on the page as an image node too (``.../images/thumb/sphx_glr_*``).
    """
    return "/images/thumb/sphx_glr_" not in "/" + str(image.get("uri", ""))


def _store(env: Any) -> dict[str, dict[str, Any]]:
    if not hasattr(env, "llmref_sections"):
        env.llmref_sections = {}
    return env.llmref_sections


def _purge(app: Sphinx, env: Any, docname: str) -> None:
    _store(env).pop(docname, None)


def _merge(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    mine, theirs = _store(env), _store(other)
    for docname in docnames:
        if docname in theirs:
            mine[docname] = theirs[docname]


def _warn(message: str, location: str | None = None) -> None:
    logger.warning(message, type="llmref", subtype="sections", location=location)


def load_optouts(
    path: Path, shown: Path | str | None = None
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``(results pages, opt-outs per page)`` from the TOML file; problems are warned.

    ``shown`` is how messages name the file (default: ``path``).
    """
    if not path.exists():
        return {}, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        _warn(f"cannot read {path}: {exc}")
        return {}, {}
    path = Path(shown) if shown is not None else path
    unknown = set(data) - {"results", "optout"}
    if unknown:
        _warn(f'{path}: unknown table(s) {sorted(unknown)}; expected [results] and [optout."page"]')
    results = data.get("results", {})
    optouts = data.get("optout", {})
    for page, reason in results.items():
        if not isinstance(reason, str) or not reason.strip():
            _warn(f"{path}: [results] {page!r} needs a reason (a non-empty string)")
    for page, entries in optouts.items():
        if not isinstance(entries, dict):
            _warn(f'{path}: [optout."{page}"] must be a table of section = "reason"')
            continue
        for key, reason in entries.items():
            if key not in (*SECTIONS, FIGURE):
                _warn(
                    f'{path}: [optout."{page}"] {key!r} is neither a canonical section '
                    f"({', '.join(SECTIONS)}) nor {FIGURE!r}"
                )
            if not isinstance(reason, str) or not reason.strip():
                _warn(f'{path}: [optout."{page}"] {key!r} needs a reason (a non-empty string)')
    # Only well-formed entries count: an empty reason opts nothing out.
    return (
        {p: r for p, r in results.items() if isinstance(r, str) and r.strip()},
        {
            p: {k: r for k, r in e.items() if isinstance(r, str) and r.strip()}
            for p, e in optouts.items()
            if isinstance(e, dict)
        },
    )


def check_sections(app: Sphinx, env: Any) -> None:
    root = app.config.llmref_sections_root
    path = Path(app.srcdir) / app.config.llmref_sections_optout
    shown = path.relative_to(Path(app.srcdir).parent) if path.is_absolute() else path
    results, optouts = load_optouts(path, shown)
    allow_todo = app.config.llmref_sections_allow_todo
    pages = {d for d in env.found_docs if _is_checked(d, root)}
    store = _store(env)
    prefix = root + "/"

    for page in sorted(set(results) | set(optouts)):
        if prefix + page not in pages:
            _warn(f"{shown}: there is no page {root}/{page}.md (remove or correct its entry)")

    granted: list[str] = []
    todo: list[str] = []
    for docname in sorted(pages):
        page = docname[len(prefix) :]
        info = store.get(docname)
        if info is None:
            continue  # not read in this build (cannot happen after a full read)
        have = set(info["sections"])
        entries = optouts.get(page, {})
        missing = [s for s in SECTIONS if s not in have]
        if info["figures"] == 0:
            missing.append(FIGURE)
        for key in missing:
            reason = entries.get(key)
            if reason is None:
                what = "a figure" if key == FIGURE else f"the section '## {key}'"
                _warn(
                    f"{docname}: lacks {what}. Add it, or opt out in {shown} with a reason "
                    f'([optout."{page}"] "{key}" = "why")',
                    location=docname,
                )
                continue
            is_todo = reason.strip().upper().startswith("TODO")
            if is_todo and not allow_todo:
                _warn(
                    f"{docname}: '{key}' is opted out as {reason!r}; TODO opt-outs are no longer "
                    "allowed (llmref_sections_allow_todo = False): write the section",
                    location=docname,
                )
            elif key == NEVER_FOR_TECHNIQUES and page not in results and not is_todo:
                _warn(
                    f"{docname}: a technique page may not opt out of '{key}' "
                    f"(only pages listed under [results] in {shown} may)",
                    location=docname,
                )
            else:
                (todo if is_todo else granted).append(f"  {page}: {key} -- {reason}")
        for key in entries:
            if key in SECTIONS and key in have:
                _warn(
                    f"{docname}: has '## {key}' but {shown} still opts it out: remove the entry",
                    location=docname,
                )
            elif key == FIGURE and info["figures"]:
                _warn(
                    f"{docname}: has a figure but {shown} still opts '{FIGURE}' out: "
                    "remove the entry",
                    location=docname,
                )

    checked = len(pages)
    logger.info(
        f"theory sections: {checked} pages checked for {', '.join(SECTIONS)} and a figure; "
        f"opt-outs from {shown}:"
    )
    for page, reason in sorted(results.items()):
        logger.info(f"  {page}: results page -- {reason}")
    for line in granted:
        logger.info(line)
    if todo:
        logger.info(f"  temporary (TODO) opt-outs: {len(todo)}")
        for line in todo:
            logger.info(line)
    if not (results or granted or todo):
        logger.info("  (none)")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("llmref_sections_root", "theory", "env", types=[str])
    app.add_config_value(
        "llmref_sections_optout", "theory/sections-optout.toml", "env", types=[str]
    )
    app.add_config_value("llmref_sections_allow_todo", True, "env", types=[bool])
    app.connect("doctree-read", _record)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", check_sections)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
