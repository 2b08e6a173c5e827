"""Fixtures for the real-browser check of the built documentation site.

The machinery (local server, Chromium, problem collection) is in ``docs_browser.py``;
the checks of what a page shows are in ``site_checks.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_browser import (
    BLOCKING_PROXY,
    CHROMIUM_ARGS,
    LocalSite,
    Problems,
    chromium_executable,
    html_dir_path,
    missing_html_message,
    open_browser,
    serve,
)


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def html_dir_problem() -> str | None:
    """None if the docs build is there, else why not (for the test that fails on it)."""
    return missing_html_message(html_dir_path())


@pytest.fixture(scope="session")
def html_dir() -> Path:
    path = html_dir_path()
    msg = missing_html_message(path)
    if msg:
        pytest.fail(msg, pytrace=False)
    return path


@pytest.fixture(scope="session")
def site(html_dir: Path):
    with serve(html_dir) as local_site:
        yield local_site


@pytest.fixture(scope="session")
def problems() -> Problems:
    return Problems()


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the whole session (each site gets its own context)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - environment problem
        pytest.fail(
            f"playwright for Python is not installed ({exc}); pip install 'playwright>=1.45'",
            pytrace=False,
        )
    exe = chromium_executable()
    with sync_playwright() as pw:
        try:
            launched = pw.chromium.launch(
                executable_path=exe, args=CHROMIUM_ARGS, headless=True, proxy=BLOCKING_PROXY
            )
        except Exception as exc:
            pytest.fail(f"Could not launch Chromium at {exe}: {exc}", pytrace=False)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def browser(chromium, site: LocalSite, problems: Problems):
    with open_browser(chromium, site, problems) as opened:
        yield opened
