"""Finding the llmref source tree, and results files named explicitly.

Gallery scripts run with the working directory set to their own folder (and
sphinx-gallery does not define ``__file__``), so they locate the repository
root by searching upwards from a few starting points.

The benchmark gallery never reads ``results/`` on its own (the docs would
then depend on whether ``tox -e bench`` ran before): it plots a results file
only when one is named in an environment variable (:data:`BENCH_JSON_ENV`,
:data:`MEMORY_JSON_ENV`; see :func:`explicit_results_file`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BENCH_JSON_ENV",
    "MEMORY_JSON_ENV",
    "ROOT_ENV",
    "explicit_results_file",
    "find_project_root",
    "results_dir",
]

ROOT_ENV = "LLMREF_ROOT"
"""Environment variable that names the repository root explicitly."""
BENCH_JSON_ENV = "LLMREF_BENCH_JSON"
"""Environment variable naming a pytest-benchmark JSON file for the benchmark gallery
to plot instead of measuring its own small sweep."""
MEMORY_JSON_ENV = "LLMREF_MEMORY_JSON"
"""Environment variable naming a ``python -m llmref.bench.memory`` JSON file for the
memory gallery example to plot instead of measuring its own small sweep."""


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


def explicit_results_file(env: str) -> Path | None:
    """The results file named by the environment variable ``env``, if it is set.

    Parameters
    ----------
    env : str
        Name of the variable, e.g. :data:`BENCH_JSON_ENV`.

    Returns
    -------
    Path or None
        ``None`` when the variable is unset or empty; a relative path is taken
        from the repository root when that is known, else from the working
        directory.

    Raises
    ------
    FileNotFoundError
        If the variable names a file that does not exist.

    Examples
    --------
    >>> import os
    >>> os.environ.pop("LLMREF_EXAMPLE_JSON", None)
    >>> explicit_results_file("LLMREF_EXAMPLE_JSON") is None
    True
    """
    value = os.environ.get(env, "")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        root = find_project_root()
        path = (root if root is not None else Path.cwd()) / path
    if not path.is_file():
        raise FileNotFoundError(f"{env} names {value!r}, which is not a file ({path})")
    return path
