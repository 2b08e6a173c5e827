"""Open the built llmref documentation in headless Chromium and check what a reader sees.

Run after building the docs:  ``tox -e docs && tox -e browser``.
See browser_tests/README.md.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import site_checks
from docs_browser import NotChecked, html_dir_path

THEORY_PAGE = "theory/attention/scaled-dot-product.html"
GALLERY_INDEX = "auto_examples/index.html"
API_INDEX = "api/index.html"
NAIVE_ATTENTION = "llmref.attention.naive_attention"
NAIVE_ATTENTION_PAGE = f"api/generated/{NAIVE_ATTENTION}.html"
SEARCH_TERM = "naive_attention"

# The pages of the build under test, found at collection time (site_checks.py says how).
# With no build these are empty and test_docs_html_was_built fails.
_BUILD = html_dir_path()
ALL_PAGES = site_checks.all_pages(_BUILD) if _BUILD.is_dir() else []
GALLERY_INDEXES = site_checks.gallery_index_pages(_BUILD) if _BUILD.is_dir() else []
EXAMPLE_PAGES = site_checks.example_pages(_BUILD) if _BUILD.is_dir() else []


# How many typeset formulas make "many" on the scaled-dot-product page.
MIN_FORMULAS = 5

# Test 5 also opens up to this many pages linked from index.html (keeps the run short).
MAX_EXTRA_PAGES = 30

# Raw TeX that must not survive typesetting (checked in visible, non-code text).
RAW_TEX_PATTERNS = [
    (
        re.compile(r"\\[A-Za-z]{2,}"),
        "a TeX control sequence such as \\frac, \\sqrt, \\operatorname",
    ),
    (re.compile(r"\$\$"), "a $$ display-math delimiter"),
    (re.compile(r"\\[()\[\]]"), "a \\( \\) \\[ \\] math delimiter"),
    (
        re.compile(r"(?<![\w$])\$[^$\s][^$\n]{0,200}?[\\^_{][^$\n]{0,200}?\$"),
        "a $...$ inline-math span",
    ),
]

# Fails with a clear message when MathJax never becomes ready.
JS_WAIT_MATHJAX = """
async () => {
  const t0 = Date.now();
  while (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
    if (Date.now() - t0 > 10000)
      return {ok: false, why: "window.MathJax.startup.promise never appeared"};
    await new Promise(r => setTimeout(r, 50));
  }
  try { await window.MathJax.startup.promise; }
  catch (e) { return {ok: false, why: "MathJax.startup.promise rejected: " + e}; }
  // typesetPromise resolves when any pending typesetting is finished
  if (window.MathJax.typesetPromise) {
    try { await window.MathJax.typesetPromise(); }
    catch (e) { return {ok: false, why: "MathJax.typesetPromise rejected: " + e}; }
  }
  return {ok: true, version: window.MathJax.version || null};
}
"""

JS_MATH_STATE = """
() => {
  const mathEls = Array.from(document.querySelectorAll(".math"));
  const untypeset = mathEls.filter(el => !el.querySelector("mjx-container"))
                           .map(el => el.textContent.trim().slice(0, 120));
  const errors = Array.from(document.querySelectorAll("mjx-merror")).map(
      el => (el.getAttribute("data-mjx-error") || el.textContent || "").slice(0, 200));
  const scripts = Array.from(document.querySelectorAll("script[src]")).map(s => s.src)
                       .filter(src => /mathjax|tex-(chtml|svg|mml)/i.test(src));
  // visible text without code blocks / inline code (they may legitimately contain backslashes)
  const style = document.createElement("style");
  style.textContent = "pre, code, kbd, samp, .highlight { display: none !important; }";
  document.head.appendChild(style);
  const text = document.body.innerText;
  style.remove();
  return {
    containers: document.querySelectorAll("mjx-container").length,
    mathEls: mathEls.length,
    untypeset, errors, scripts, text,
  };
}
"""


def _fail_if(failures: list[str], header: str) -> None:
    if failures:
        pytest.fail(header + "\n  - " + "\n  - ".join(failures), pytrace=False)


def _context(text: str, pos: int, width: int = 60) -> str:
    snippet = text[max(0, pos - width) : pos + width].replace("\n", " ")
    return f"...{snippet}..."


# --------------------------------------------------------------------------- #
# Session helpers
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def naive_attention_page(browser, site) -> str:
    """Site-relative path of the API page of llmref.attention.naive_attention."""
    if (site.root / NAIVE_ATTENTION_PAGE).is_file():
        return NAIVE_ATTENTION_PAGE
    if not (site.root / API_INDEX).is_file():
        pytest.fail(
            f"Neither {NAIVE_ATTENTION_PAGE} nor {API_INDEX} exists in the build {site.root}: "
            "the API reference was not generated.",
            pytrace=False,
        )
    with browser.page(API_INDEX) as page:
        links = site_checks.html_links(page, site, "a[href]")
    cands = [r for r in links if r.rsplit("/", 1)[-1].startswith(NAIVE_ATTENTION)]
    cands += [r for r in links if SEARCH_TERM in r and r not in cands]
    if not cands:
        pytest.fail(
            f"{API_INDEX} links to no page for {NAIVE_ATTENTION} "
            f"(expected {NAIVE_ATTENTION_PAGE}); its links are: {links}",
            pytrace=False,
        )
    return cands[0]


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
def test_docs_html_was_built(html_dir_problem):
    if html_dir_problem is not None:
        pytest.fail(html_dir_problem, pytrace=False)


def test_math_is_rendered_by_local_mathjax(browser, site):
    """1. The theory page's formulas are typeset by MathJax served from the site itself."""
    if not (site.root / THEORY_PAGE).is_file():
        pytest.fail(
            f"Theory page {THEORY_PAGE} is missing from the build {site.root}", pytrace=False
        )
    with browser.page(THEORY_PAGE) as page:
        ready = page.evaluate(JS_WAIT_MATHJAX)
        state = page.evaluate(JS_MATH_STATE)

    failures: list[str] = []
    scripts = state["scripts"]
    if not scripts:
        failures.append("no <script> loading MathJax found on the page (is sphinx.ext.mathjax on?)")
    for src in scripts:
        if not site.is_local(src):
            failures.append(
                f"MathJax is loaded from another origin: {src} -- the site must be self-contained "
                "(serve MathJax from _static/, e.g. with sphinx-mathjax-offline)"
            )
    if not ready["ok"]:
        failures.append(f"MathJax did not finish: {ready['why']} (scripts: {scripts})")
    if state["containers"] < MIN_FORMULAS:
        failures.append(
            f"only {state['containers']} <mjx-container> elements (expected at least "
            f"{MIN_FORMULAS}; the page has {state['mathEls']} .math elements)"
        )
    if state["untypeset"]:
        failures.append(
            f"{len(state['untypeset'])} of {state['mathEls']} .math elements were not "
            f"typeset, e.g. {state['untypeset'][:5]}"
        )
    if state["errors"]:
        failures.append(f"MathJax reported TeX errors (mjx-merror): {state['errors'][:10]}")
    text = state["text"]
    for pattern, what in RAW_TEX_PATTERNS:
        hits = [_context(text, m.start()) for m in pattern.finditer(text)]
        if hits:
            failures.append(
                f"raw TeX left in the visible text ({what}), {len(hits)}x, e.g. {hits[:3]}"
            )

    _fail_if(failures, f"Math on {THEORY_PAGE} is not rendered properly:")


def test_gallery_images_load(page_reports, site):
    """2. Every image on every gallery page loads, and the gallery indexes link to every
    example page (and to nothing missing)."""
    if not (site.root / GALLERY_INDEX).is_file():
        pytest.fail(
            f"Gallery index {GALLERY_INDEX} is missing from the build {site.root}", pytrace=False
        )
    failures: list[str] = []
    linked: set[str] = set()
    for rel in GALLERY_INDEXES:
        report = _report(page_reports, rel)
        failures += report.images
        linked.update(report.thumbnail_links or [])
    for rel in EXAMPLE_PAGES:
        failures += _report(page_reports, rel).images
    linked = {rel for rel in linked if rel.rsplit("/", 1)[-1] not in site_checks.NOT_EXAMPLES}
    if not linked:
        pytest.fail(
            f"The gallery index {GALLERY_INDEX} links to no example pages (no thumbnails).",
            pytrace=False,
        )
    failures += [
        f"a thumbnail links to {rel}, which is not in the build"
        for rel in sorted(linked - set(EXAMPLE_PAGES))
    ]
    failures += [
        f"the example page {rel} has no thumbnail on any gallery index"
        for rel in sorted(set(EXAMPLE_PAGES) - linked)
    ]
    _fail_if(failures, "Gallery images are broken:")


def test_api_page_shows_examples_using(browser, site, naive_attention_page):
    """3. The naive_attention API page has its sphinx-gallery "Examples using" section."""
    rel = naive_attention_page
    with browser.page(rel) as page:
        info = page.evaluate(
            """
            () => {
              const all = Array.from(document.querySelectorAll(
                  "h1, h2, h3, h4, h5, h6, p.rubric, .rubric, p, div.admonition-title"));
              const head = all.find(el => /Examples using/.test(el.textContent));
              if (!head) return {head: null, links: []};
              const links = Array.from(document.querySelectorAll("a[href]"))
                .filter(a => head.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING)
                .map(a => ({href: a.href, inThumb: !!a.closest(".sphx-glr-thumbcontainer")}));
              return {head: head.textContent.trim().slice(0, 200), links};
            }
            """
        )
        bad, _ = site_checks.check_images(page, rel)
    if not info["head"]:
        pytest.fail(
            f"The API page {rel} has no 'Examples using ...' section (sphinx-gallery "
            "backreferences / minigallery missing from the autosummary template?)",
            pytrace=False,
        )
    gallery_links = [
        link["href"]
        for link in info["links"]
        if site.is_local(link["href"])
        and site.rel(link["href"]).startswith("auto_examples/")
        and not site.rel(link["href"]).endswith("index.html")
    ]
    if not gallery_links:
        pytest.fail(
            f"The API page {rel} has the heading {info['head']!r} but no link/thumbnail to a "
            f"gallery example after it (links after it: {[x['href'] for x in info['links']][:10]})",
            pytrace=False,
        )
    missing = [u for u in gallery_links if not (site.root / site.rel(u)).is_file()]
    _fail_if(
        [f"link to missing page {u}" for u in missing],
        f"The 'Examples using' section of {rel} is broken:",
    )
    _fail_if(bad, f"Broken thumbnails on {rel}:")


def test_search_finds_naive_attention(browser, site, naive_attention_page):
    """4. The Sphinx search page finds naive_attention and links to its API page."""
    rel = f"search.html?q={SEARCH_TERM}"
    if not (site.root / "search.html").is_file():
        pytest.fail(f"search.html is missing from the build {site.root}", pytrace=False)
    with browser.page(rel) as page:
        try:
            page.wait_for_function(
                """() => {
                  const s = document.querySelector(
                      "#search-results .search-summary, #search-results p");
                  return s && /Search finished|did not match|found/i.test(s.textContent);
                }""",
                timeout=15_000,
            )
        except Exception as exc:
            summary = page.evaluate(
                "() => (document.querySelector('#search-results') || document.body)"
                ".innerText.slice(0, 300)"
            )
            pytest.fail(
                f"The search on {rel} did not finish within 15 s ({type(exc).__name__}); "
                f"#search-results shows: {summary!r}",
                pytrace=False,
            )
        results = page.evaluate(
            """() => Array.from(document.querySelectorAll("#search-results ul.search li a[href], "
                                                          + "#search-results li a[href]"))
                          .map(a => ({href: a.href, text: a.textContent.trim()}))"""
        )
        summary = page.evaluate(
            "() => document.querySelector('#search-results .search-summary, #search-results p')"
            ".textContent.trim()"
        )
    hits = [
        r
        for r in results
        if site.is_local(r["href"]) and site.rel(r["href"]) == naive_attention_page
    ]
    if not hits:
        pytest.fail(
            (
                f"Searching {SEARCH_TERM!r} on {rel} gave no result linking to the API page "
                f"{naive_attention_page}. Summary: {summary!r}; results: "
                f"{[(r['text'], urlsplit(r['href']).path) for r in results][:15]}"
            ),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def page_reports(browser, site) -> dict:
    """Every page of the build, loaded once and checked (``site_checks.check_page``)."""
    return browser.sweep(ALL_PAGES, lambda page, rel: site_checks.check_page(page, rel, site))


def _report(page_reports, rel: str) -> site_checks.PageReport:
    report = page_reports.get(rel)
    if report is None:
        pytest.fail(f"{rel} was not checked (not found when the build was swept)", pytrace=False)
    if isinstance(report, NotChecked):
        pytest.fail(f"{rel}: {report.why}", pytrace=False)
    return report


def test_gallery_pages_were_found(html_dir):
    """The gallery checks below run on the pages found here; none found is a failure."""
    if not GALLERY_INDEXES or not EXAMPLE_PAGES:
        pytest.fail(
            f"The build {html_dir} has {len(GALLERY_INDEXES)} gallery index pages and "
            f"{len(EXAMPLE_PAGES)} example pages under {site_checks.GALLERY_DIR}/: the "
            "sphinx-gallery output is missing.",
            pytrace=False,
        )


@pytest.mark.parametrize("rel", EXAMPLE_PAGES)
def test_gallery_example_page(page_reports, rel):
    """6. Every gallery example page shows no traceback, and a figure if it was executed."""
    _fail_if(_report(page_reports, rel).example, f"The gallery example page {rel} is broken:")


@pytest.mark.parametrize("rel", GALLERY_INDEXES)
def test_gallery_index_page(page_reports, rel):
    """7. No gallery index page shows a BROKEN (or no-image) thumbnail."""
    _fail_if(_report(page_reports, rel).index, f"The gallery index {rel} shows a broken example:")


@pytest.mark.parametrize("rel", ALL_PAGES)
def test_page_fits_its_column(page_reports, rel):
    """8. Nothing on any page sticks out of, or is cut off by, its content column.

    Boxes that scroll sideways (code blocks, scrolling tables and equations) are fine
    when they themselves fit. Nothing is excused: fix the page or the site's CSS.
    """
    report = _report(page_reports, rel)
    if report.no_column:
        pytest.fail(report.no_column, pytrace=False)
    if report.settle:
        pytest.fail(f"{rel} could not be measured: {report.settle}", pytrace=False)
    _fail_if(
        [str(o) for o in report.overflows],
        f"On {rel}, {len(report.overflows)} element(s) do not fit their column at "
        f"{site_checks.VIEWPORT['width']}x{site_checks.VIEWPORT['height']}:",
    )


def test_no_console_errors_or_failed_requests(browser, site, problems):
    """5. No console errors, JS exceptions, 404s or requests to other origins on any visited page.

    Runs last: it also sees everything the tests above recorded. Pages linked from the
    front page that no test has opened yet are opened here, so it is meaningful alone too.
    """
    with browser.page("index.html") as page:
        extra = site_checks.html_links(page, site, "a[href]")
    for rel in extra[:MAX_EXTRA_PAGES]:
        if rel not in problems.visited and (site.root / rel).is_file():
            with browser.page(rel):
                pass

    report = []
    if problems.foreign:
        report.append(
            "Requests to other origins (the site must work offline; they were blocked):\n    "
            + "\n    ".join(dict.fromkeys(problems.foreign))
        )
    if problems.items:
        report.append(
            "Console errors / page errors / failed requests:\n    "
            + "\n    ".join(dict.fromkeys(problems.items))
        )
    print(f"pages visited: {len(problems.visited)}: {problems.visited}")
    if report:
        pytest.fail(
            f"Problems seen in the browser on {len(problems.visited)} visited pages:\n  "
            + "\n  ".join(report),
            pytrace=False,
        )
