"""Open the built llmref documentation in headless Chromium and check what a reader sees.

Run after building the docs:  ``tox -e docs && tox -e browser``.
See browser_tests/README.md.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

THEORY_PAGE = "theory/attention/scaled-dot-product.html"
GALLERY_INDEX = "auto_examples/index.html"
API_INDEX = "api/index.html"
NAIVE_ATTENTION = "llmref.attention.naive_attention"
NAIVE_ATTENTION_PAGE = f"api/generated/{NAIVE_ATTENTION}.html"
SEARCH_TERM = "naive_attention"

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

# Resolves when every <img> has finished loading (or failed); lazy images are made eager.
JS_IMAGES = """
async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(res => {
    img.addEventListener("load", res, {once: true});
    img.addEventListener("error", res, {once: true});
    setTimeout(res, 10000);
  })));
  return imgs.map(img => ({
    src: img.currentSrc || img.src,
    attr: img.getAttribute("src"),
    alt: img.alt,
    cls: img.className,
    natural: img.naturalWidth,
    complete: img.complete,
    gallery: /(^|\\s)sphx-glr-/.test(img.className)
             || !!img.closest(".sphx-glr-thumbcontainer, .sphx-glr-horizontal"),
  }));
}
"""

JS_LINKS = """
(sel) => Array.from(document.querySelectorAll(sel)).filter(a => a.href).map(a => a.href)
"""


def _fail_if(failures: list[str], header: str) -> None:
    if failures:
        pytest.fail(header + "\n  - " + "\n  - ".join(failures), pytrace=False)


def _context(text: str, pos: int, width: int = 60) -> str:
    snippet = text[max(0, pos - width) : pos + width].replace("\n", " ")
    return f"...{snippet}..."


def _check_images(page, rel: str) -> tuple[list[str], list[dict]]:
    """Return (problems, image records) for the images on an open page."""
    imgs = page.evaluate(JS_IMAGES)
    bad = [
        f"{rel}: image {img['attr']!r} (resolved {img['src']}) did not load "
        f"(naturalWidth={img['natural']}, complete={img['complete']}, alt={img['alt']!r})"
        for img in imgs
        if not img["natural"]
    ]
    return bad, imgs


def _html_links(page, site, selector: str, under: str | None = None) -> list[str]:
    """Unique site-relative paths of same-origin .html links matching ``selector``."""
    out: list[str] = []
    for href in page.evaluate(JS_LINKS, selector):
        if not site.is_local(href):
            continue
        rel = site.rel(href)
        if not rel.endswith(".html") or (under and not rel.startswith(under)):
            continue
        if rel not in out:
            out.append(rel)
    return out


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
        links = _html_links(page, site, "a[href]")
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


def test_gallery_images_load(browser, site):
    """2. Every image on the gallery index and on every example page loads."""
    if not (site.root / GALLERY_INDEX).is_file():
        pytest.fail(
            f"Gallery index {GALLERY_INDEX} is missing from the build {site.root}", pytrace=False
        )

    failures: list[str] = []
    # Gallery index pages (the root one plus any sub-gallery index) -> example pages.
    indexes, examples, seen = [GALLERY_INDEX], [], set()
    while indexes:
        rel = indexes.pop(0)
        if rel in seen:
            continue
        seen.add(rel)
        with browser.page(rel) as page:
            bad, _ = _check_images(page, rel)
            failures += bad
            thumbs = _html_links(
                page, site, ".sphx-glr-thumbcontainer a[href]", under="auto_examples/"
            )
            if not thumbs:  # other layouts: any link into the gallery from the page body
                thumbs = _html_links(
                    page, site, "main a[href], [role=main] a[href]", under="auto_examples/"
                )
        for t in thumbs:
            if t.endswith("index.html"):
                indexes.append(t)
            elif not t.endswith("sg_execution_times.html") and t not in examples:
                examples.append(t)

    if not examples:
        pytest.fail(
            f"The gallery index {GALLERY_INDEX} links to no example pages (no thumbnails).",
            pytrace=False,
        )

    figures: dict[str, int] = {}
    for rel in examples:
        with browser.page(rel) as page:
            bad, imgs = _check_images(page, rel)
            failures += bad
            figures[rel] = sum(1 for i in imgs if i["gallery"])

    if not any(figures.values()):
        failures.append(
            f"none of the {len(examples)} example pages shows a figure (no sphx-glr image): "
            f"{figures}"
        )
    print(f"gallery example pages and figure counts: {figures}")
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
        bad, _ = _check_images(page, rel)
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


def test_no_console_errors_or_failed_requests(browser, site, problems):
    """5. No console errors, JS exceptions, 404s or requests to other origins on any visited page.

    Runs last: it also sees everything the tests above recorded. Pages linked from the
    front page that no test has opened yet are opened here, so it is meaningful alone too.
    """
    with browser.page("index.html") as page:
        extra = _html_links(page, site, "a[href]")
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
