"""Serving a built site locally and opening its pages in headless Chromium.

The built HTML directory (``LLMREF_DOCS_HTML``, default ``docs/_build/html``)
is served over ``http.server`` on 127.0.0.1 and opened in headless Chromium
(Debian's ``/usr/bin/chromium``; Playwright must not download its own browser).

Everything the browser reports while the tests run -- console errors, uncaught
page errors, failed or 4xx/5xx requests to the local server, and *any* request
to another origin (which is blocked) -- is collected in a ``Problems`` list; the
fixtures in ``conftest.py`` share one for the whole session, which
``test_no_console_errors_or_failed_requests`` asserts is empty.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urljoin, urlsplit

import pytest
from site_checks import VIEWPORT

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HTML_DIR = "docs/_build/html"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Per-action timeout in the browser (ms). Pages are local, so this is generous.
TIMEOUT_MS = 15_000
# Every request leaves through this proxy, where nothing listens, except those to the
# local server (Chromium never proxies loopback): the site must work offline.
BLOCKING_PROXY = {"server": "http://127.0.0.1:9", "bypass": "127.0.0.1,localhost"}
# How many pages Browser.sweep loads at once.
SWEEP_TABS = 3
# What Chromium reports for a request cancelled because its page went away.
ABORTED = "net::ERR_ABORTED"


# --------------------------------------------------------------------------- #
# Locating the build and the browser
# --------------------------------------------------------------------------- #
def html_dir_path() -> Path:
    """The built HTML directory; a relative ``LLMREF_DOCS_HTML`` is taken from the repo root."""
    raw = os.environ.get("LLMREF_DOCS_HTML", DEFAULT_HTML_DIR)
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def missing_html_message(path: Path) -> str | None:
    """None if ``path`` looks like a Sphinx HTML build, else an explanation."""
    if not path.is_dir():
        what = f"the built documentation directory {path} does not exist"
    elif not (path / "index.html").is_file():
        what = f"{path} exists but has no index.html (incomplete or failed docs build)"
    else:
        return None
    return (
        f"{what}. Build the docs first with `tox -e docs` (or set LLMREF_DOCS_HTML "
        f"to a built HTML directory), then run `tox -e browser` again."
    )


def chromium_executable() -> str:
    env = os.environ.get("LLMREF_CHROMIUM")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"LLMREF_CHROMIUM={env!r} does not point to a file", pytrace=False)
        return env
    for cand in CHROMIUM_CANDIDATES:
        if Path(cand).is_file():
            return cand
    pytest.fail(
        "No Chromium found (looked at LLMREF_CHROMIUM, "
        + ", ".join(CHROMIUM_CANDIDATES)
        + "). Install Debian's browser: `apt-get install -y chromium`. "
        "(Playwright's own browser download is not used.)",
        pytrace=False,
    )


# --------------------------------------------------------------------------- #
# Local HTTP server
# --------------------------------------------------------------------------- #
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # Make sure the MIME types that matter to a browser are right whatever the
    # host's /etc/mime.types says (module scripts are refused with a wrong type).
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".woff": "font/woff",
        ".woff2": "font/woff2",
        ".wasm": "application/wasm",
        ".txt": "text/plain",
    }

    def log_message(self, format, *args):
        pass  # keep pytest output clean; failures are recorded by the browser


@dataclass
class LocalSite:
    root: Path
    base_url: str  # always ends with "/"

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def url(self, rel: str) -> str:
        return urljoin(self.base_url, rel)

    def rel(self, url: str) -> str:
        """Site-relative path of a URL of this site (query/fragment dropped)."""
        path = urlsplit(url).path
        return path[1:] if path.startswith("/") else path

    def is_local(self, url: str) -> bool:
        return url.startswith(self.origin + "/") or url == self.origin


# --------------------------------------------------------------------------- #
# Problem collection
# --------------------------------------------------------------------------- #
@dataclass
class Problems:
    """Everything that went wrong in the browser, across all pages visited."""

    items: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)

    def add(self, page: str, kind: str, detail: str) -> None:
        self.items.append(f"[{page}] {kind}: {detail}")


@dataclass(frozen=True)
class NotChecked:
    """A page ``Browser.sweep`` could not open or check, and why."""

    why: str


class Browser:
    """Opens site pages in one Chromium context and records what goes wrong."""

    def __init__(self, context, site: LocalSite, problems: Problems):
        self.context = context
        self.site = site
        self.problems = problems

    def _watch(self, page, label: str) -> dict:
        """Record ``page``'s problems under ``state["label"]``; returns that state.

        Each navigation of the page bumps ``state["visit"]``. A request aborted while the
        page is being closed (``state["closing"]``) or after it moved on to another visit
        (a late favicon request, say) is not a problem.
        """
        page.set_default_timeout(TIMEOUT_MS)
        state = {"closing": False, "label": label, "visit": 0}
        owner: dict = {}  # request -> the visit that made it
        problems, site = self.problems, self.site

        def on_request(req):
            owner[req] = state["visit"]

        def on_console(msg):
            if msg.type == "error":
                loc = msg.location or {}
                where = loc.get("url", "")
                if loc.get("lineNumber") is not None and where:
                    where += f":{loc['lineNumber']}"
                problems.add(
                    state["label"],
                    "console error",
                    msg.text + (f"  (at {where})" if where else ""),
                )

        def on_pageerror(err):
            problems.add(state["label"], "uncaught JavaScript exception", str(err))

        def on_requestfailed(req):
            if state["closing"] or not site.is_local(req.url):
                return  # foreign requests are reported by open_browser
            if owner.pop(req, state["visit"]) != state["visit"] and req.failure == ABORTED:
                return  # cancelled because the page navigated on
            problems.add(state["label"], "request failed", f"{req.url} ({req.failure})")

        def on_response(resp):
            if resp.status >= 400 and site.is_local(resp.url):
                problems.add(
                    state["label"],
                    f"HTTP {resp.status}",
                    f"{resp.url} (missing file in the build?)",
                )

        page.on("request", on_request)
        page.on("requestfinished", lambda req: owner.pop(req, None))
        page.on("console", on_console)
        page.on("pageerror", on_pageerror)
        page.on("requestfailed", on_requestfailed)
        page.on("response", on_response)
        return state

    def open(self, rel: str, *, wait_until: str = "load"):
        """Open ``rel`` (site-relative, may carry ?query) in a new page and return it.

        The caller must ``close()`` it (use ``with browser.page(rel) as page``).
        """
        page = self.context.new_page()
        state = self._watch(page, rel)

        def close():
            state["closing"] = True
            page.close()

        page._llmref_close = close
        page._llmref_label = rel
        self.problems.visited.append(rel)
        resp = page.goto(self.site.url(rel), wait_until=wait_until)
        if resp is None or resp.status >= 400:
            status = "no response" if resp is None else f"HTTP {resp.status}"
            close()
            pytest.fail(f"Could not open page {rel}: {status} from the local server", pytrace=False)
        return page

    def page(self, rel: str, **kw):
        return _PageCtx(self, rel, kw)

    def sweep(self, rels: list[str], check, *, tabs: int = SWEEP_TABS) -> dict:
        """``{rel: check(page, rel)}`` for every page in ``rels``, each loaded in full.

        Up to ``tabs`` pages load at once (in reused tabs: much cheaper than a new page
        per visit) while the one loaded first is checked. Problems are recorded as for
        ``page()``. A page that cannot be opened, or whose check raises, maps to a
        ``NotChecked`` saying why.
        """
        out: dict = {}
        queue = deque(rels)
        loading: deque = deque()
        pool = [self.context.new_page() for _ in range(min(tabs, len(rels)))]
        pool = [(page, self._watch(page, "")) for page in pool]

        def start(page, state) -> None:
            while queue:
                rel = queue.popleft()
                state["visit"] += 1
                state["label"] = rel
                self.problems.visited.append(rel)
                try:
                    resp = page.goto(self.site.url(rel), wait_until="commit")
                except Exception as exc:
                    out[rel] = NotChecked(f"could not open it: {type(exc).__name__}: {exc}")
                    continue
                if resp is None or resp.status >= 400:
                    status = "no response" if resp is None else f"HTTP {resp.status}"
                    out[rel] = NotChecked(f"could not open it: {status} from the local server")
                    continue
                loading.append((page, state, rel))
                return

        try:
            for page, state in pool:
                start(page, state)
            while loading:
                page, state, rel = loading.popleft()
                try:
                    page.wait_for_load_state("load")
                    out[rel] = check(page, rel)
                except Exception as exc:
                    out[rel] = NotChecked(f"checking it failed: {type(exc).__name__}: {exc}")
                start(page, state)
        finally:
            for page, state in pool:
                state["closing"] = True
                page.close()
        return out


class _PageCtx:
    def __init__(self, browser: Browser, rel: str, kw):
        self.browser, self.rel, self.kw, self.pg = browser, rel, kw, None

    def __enter__(self):
        self.pg = self.browser.open(self.rel, **self.kw)
        return self.pg

    def __exit__(self, *exc):
        if self.pg is not None:
            try:
                # let late requests (search summaries, lazy fonts) finish so they are checked
                self.pg.wait_for_load_state("networkidle", timeout=5_000)
            except Exception:
                pass
            self.pg._llmref_close()
        return False


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[LocalSite]:
    """Serve ``directory`` over HTTP on a free port of 127.0.0.1 while in the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, name="docs-http", daemon=True)
    thread.start()
    try:
        yield LocalSite(root=directory, base_url=f"http://{host}:{port}/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def open_browser(chromium, site: LocalSite, problems: Problems) -> Iterator[Browser]:
    """A fresh browser context on ``site`` that records what goes wrong in ``problems``.

    Chromium is launched with a proxy that does not exist (``BLOCKING_PROXY``), so that a
    request to any other origin fails; each one is recorded in ``problems.foreign``.
    (Blocking them with ``context.route`` instead would turn off the HTTP cache and make
    every page load half as fast again.)
    """
    # service workers would hide requests from the listener below
    context = chromium.new_context(service_workers="block", viewport=VIEWPORT)

    def on_request(req):
        url = req.url
        if site.is_local(url) or url.startswith(("data:", "blob:", "about:")):
            return
        frame_url = ""
        try:
            frame_url = site.rel(req.frame.url)
        except Exception:
            pass
        problems.foreign.append(
            f"[{frame_url or '?'}] {req.resource_type} request to another origin (blocked): {url}"
        )

    context.on("request", on_request)
    try:
        yield Browser(context, site, problems)
    finally:
        context.close()
