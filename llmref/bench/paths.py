"""Finding the llmref source tree and its benchmark results.

Gallery scripts run with the working directory set to their own folder (and
sphinx-gallery does not define ``__file__``), so they locate the repository
root by searching upwards from a few starting points.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ROOT_ENV", "find_project_root", "results_dir"]

ROOT_ENV = "LLMREF_ROOT"
"""Environment variable that names the repository root explicitly."""


def _is_root(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "llmref" / "__init__.py").is_file()


def _starts() -> list[Path]:
    starts = [Path.cwd()]
    if sys.argv and sys.argv[0]:
        starts.append(Path(sys.argv[0]).resolve().parent)
    import llmref

    if llmref.__file__:
        starts.append(Path(llmref.__file__).resolve().parent.parent)
    return starts


def find_project_root(starts: Iterable[str | Path] | None = None) -> Path | None:
    """Return the llmref repository root, or ``None`` if it cannot be found.

    The root is the first directory holding both ``pyproject.toml`` and
    ``llmref/__init__.py``: ``$LLMREF_ROOT`` if set, else the first such
    directory at or above each start.

    Parameters
    ----------
    starts : iterable of str or Path, optional
        Where to search from; default: the working directory, the running
        script's folder (``sys.argv[0]``) and the folder above the imported
        ``llmref`` package (an editable install lives in the repository).

    Returns
    -------
    Path or None

    Raises
    ------
    ValueError
        If ``$LLMREF_ROOT`` is set but is not an llmref repository root.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if not _is_root(root):
            raise ValueError(
                f"{ROOT_ENV} must point at the llmref repository root "
                f"(with pyproject.toml and llmref/), got {env!r}"
            )
        return root
    for start in _starts() if starts is None else [Path(s) for s in starts]:
        start = start.resolve()
        for candidate in (start, *start.parents):
            if _is_root(candidate):
                return candidate
    return None


def results_dir() -> Path | None:
    """The ``results/`` folder that ``tox -e bench`` writes, if the root is known.

    Returns
    -------
    Path or None
        ``<root>/results`` (which may not exist yet), or ``None``.
    """
    root = find_project_root()
    return None if root is None else root / "results"
