"""Checks of a built Sphinx/sphinx-gallery site, run on pages open in the browser.

Each ``check_*`` function takes an open Playwright page (plus the page's site-relative
path, for messages) and returns a list of problems -- empty when the page is fine.
The same functions run on the real documentation (``test_docs_in_browser.py``) and on
a small, deliberately broken fake site (``test_checks_catch_a_broken_site.py``), which
proves that each of them fails when it should.

Pages are discovered from the built HTML directory itself, never from a hard-coded list:

* every ``.html`` file (minus Sphinx's ``_sources``/``_static``/``_modules``) is a page;
* ``auto_examples/**/index.html`` are the gallery index pages;
* every other ``auto_examples/**/*.html`` except ``sg_execution_times.html`` is an
  example page, and those named ``plot_*`` were executed (the gallery's
  ``filename_pattern``) and so must show a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GALLERY_DIR = "auto_examples"
# Example files sphinx-gallery runs (docs/conf.py: filename_pattern = "/plot_").
EXECUTED_PREFIX = "plot_"
# Sphinx output that is not a page a reader navigates to.
SKIP_DIRS = ("_sources", "_static", "_images", "_downloads", "_modules")
NOT_EXAMPLES = ("index.html", "sg_execution_times.html")

# sphinx-gallery's stock thumbnails: a failing example gets ``broken_example.png`` and one
# without a figure gets ``no_image.png``, both scaled into the thumbnail box. Sphinx copies
# them into ``_static/`` (sphinx-gallery adds its static dir to ``html_static_path``).
STOCK_THUMBNAILS = {
    "BROKEN (sphinx-gallery's failing-example thumbnail)": "_static/broken_example.png",
    "no figure (sphinx-gallery's no_image thumbnail)": "_static/no_image.png",
}
# Pearson correlation of the downsampled grey levels above which a thumbnail *is* the
# stock image. A rescaled copy correlates at > 0.95; unrelated plots stay far below.
STOCK_THUMBNAIL_CORRELATION = 0.9

# The content column, in order of preference (pydata-sphinx-theme, other Sphinx themes).
CONTENT_COLUMNS = ("article.bd-article", "[role=main]", "div.body", "main")
# Pixels an element may stick out of its box: sub-pixel layout and glyph boxes (a MathJax
# accent overhangs its inline-flex math span by 1.25px on the FlashAttention page).
OVERFLOW_TOLERANCE_PX = 2.0
# The viewport every page is measured in (a laptop screen).
VIEWPORT = {"width": 1280, "height": 800}


# --------------------------------------------------------------------------- #
# Discovering the pages of a build
# --------------------------------------------------------------------------- #
def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def all_pages(root: Path) -> list[str]:
    """Every HTML page of the build, site-relative, sorted."""
    return sorted(
        _rel(p, root)
        for p in root.rglob("*.html")
        if not any(part in SKIP_DIRS for part in p.relative_to(root).parts)
    )


def gallery_index_pages(root: Path) -> list[str]:
    """The gallery's index pages (the top one and one per subsection)."""
    base = root / GALLERY_DIR
    return sorted(_rel(p, root) for p in base.rglob("index.html")) if base.is_dir() else []


def example_pages(root: Path) -> list[str]:
    """Every gallery example page."""
    base = root / GALLERY_DIR
    if not base.is_dir():
        return []
    return sorted(_rel(p, root) for p in base.rglob("*.html") if p.name not in NOT_EXAMPLES)


def is_executed_example(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith(EXECUTED_PREFIX)


# --------------------------------------------------------------------------- #
# Waiting until a page is laid out
# --------------------------------------------------------------------------- #
# JavaScript statements: wait until every <img> has loaded or failed (lazy ones made eager).
WAIT_FOR_IMAGES = """
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(res => {
    img.addEventListener("load", res, {once: true});
    img.addEventListener("error", res, {once: true});
    setTimeout(res, 10000);
  })));
"""

# Resolves once images have loaded (or failed), web fonts are in and MathJax -- if the
# page loads it -- has typeset everything: only then are the widths final.
JS_SETTLE = (
    "async () => {"
    + WAIT_FOR_IMAGES
    + """
  if (document.fonts && document.fonts.ready) await document.fonts.ready;
  const wantsMathJax = Array.from(document.scripts).some(
      s => /mathjax|tex-(chtml|svg|mml)/i.test(s.src || ""));
  if (!wantsMathJax) return {mathjax: null};
  const t0 = Date.now();
  while (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
    if (Date.now() - t0 > 10000) return {mathjax: "MathJax never started"};
    await new Promise(r => setTimeout(r, 50));
  }
  try {
    await window.MathJax.startup.promise;
    if (window.MathJax.typesetPromise) await window.MathJax.typesetPromise();
  } catch (e) { return {mathjax: "MathJax failed: " + e}; }
  if (document.fonts && document.fonts.ready) await document.fonts.ready;
  return {mathjax: "ok"};
}
"""
)


def settle(page) -> dict:
    """Wait until images, fonts and math are in place (see ``JS_SETTLE``)."""
    return page.evaluate(JS_SETTLE)


# --------------------------------------------------------------------------- #
# Images and links
# --------------------------------------------------------------------------- #
# Resolves when every <img> has finished loading (or failed), with what each one shows.
JS_IMAGES = (
    "async () => {"
    + WAIT_FOR_IMAGES
    + """
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
)

JS_LINKS = """
(sel) => Array.from(document.querySelectorAll(sel)).filter(a => a.href).map(a => a.href)
"""


def check_images(page, rel: str) -> tuple[list[str], list[dict]]:
    """Return (problems, image records) for the images on an open page."""
    imgs = page.evaluate(JS_IMAGES)
    bad = [
        f"{rel}: image {img['attr']!r} (resolved {img['src']}) did not load "
        f"(naturalWidth={img['natural']}, complete={img['complete']}, alt={img['alt']!r})"
        for img in imgs
        if not img["natural"]
    ]
    return bad, imgs


def html_links(page, site, selector: str, under: str | None = None) -> list[str]:
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
# Gallery example pages: a figure, no traceback
# --------------------------------------------------------------------------- #
JS_EXAMPLE_STATE = """
() => {
  const figs = Array.from(document.querySelectorAll(
      "img.sphx-glr-single-img, img.sphx-glr-multi-img, ul.sphx-glr-horizontal img"));
  const figures = figs.map(img => {
    const r = img.getBoundingClientRect();
    return {src: img.getAttribute("src"), natural: img.naturalWidth,
            shown: r.width > 0 && r.height > 0};
  });
  // sphinx-gallery renders a failing example's exception as a ``pytb`` code block in the
  // script output; also look for the traceback header anywhere in the page text.
  const pytb = Array.from(document.querySelectorAll(".highlight-pytb, .highlight-py3tb"))
                    .map(el => el.innerText.trim().slice(0, 300));
  const text = document.body.innerText;
  const at = text.indexOf("Traceback (most recent call last)");
  return {figures, pytb, traceback: at < 0 ? null : text.slice(at, at + 400)};
}
"""


def check_example_page(page, rel: str) -> list[str]:
    """Problems of an open gallery example page: a traceback, or (if executed) no figure."""
    state = page.evaluate(JS_EXAMPLE_STATE)
    problems = []
    if state["pytb"] or state["traceback"]:
        shown = state["traceback"] or state["pytb"][0]
        problems.append(
            f"{rel}: shows a traceback (the example failed when the gallery was built): "
            f"{shown.strip()!r}"
        )
    if is_executed_example(rel):
        good = [f for f in state["figures"] if f["natural"] > 0 and f["shown"]]
        if not good:
            detail = (
                "no sphinx-gallery figure (img.sphx-glr-single-img / sphx-glr-multi-img) at all"
                if not state["figures"]
                else "none of its figures loaded: "
                + ", ".join(
                    f"{f['src']} (naturalWidth={f['natural']}, shown={f['shown']})"
                    for f in state["figures"]
                )
            )
            problems.append(f"{rel}: shows no figure: {detail}")
    return problems


# --------------------------------------------------------------------------- #
# Gallery index pages: no BROKEN (or no-image) thumbnail
# --------------------------------------------------------------------------- #
# For every thumbnail, the Pearson correlation between its grey levels and those of each
# stock image scaled into the same box the way sphinx-gallery does (aspect kept, centred,
# transparent margins), both drawn on white and downsampled to SIG_W x SIG_H.
JS_THUMBNAILS = """
async ({stock}) => {
  const SIG_W = 40, SIG_H = 28;
  const load = src => new Promise(res => {
    const im = new Image();
    im.onload = () => res(im);
    im.onerror = () => res(null);
    im.src = src;
  });
  const signature = (img, boxW, boxH) => {
    const c = document.createElement("canvas");
    c.width = SIG_W; c.height = SIG_H;
    const g = c.getContext("2d");
    g.fillStyle = "#fff"; g.fillRect(0, 0, SIG_W, SIG_H);
    const iw = img.naturalWidth, ih = img.naturalHeight;
    const s = Math.min(boxW / iw, boxH / ih);   // contain-fit into the thumbnail box
    const w = iw * s, h = ih * s;
    const k = SIG_W / boxW;                     // box -> signature scale
    g.drawImage(img, (boxW - w) / 2 * k, (boxH - h) / 2 * (SIG_H / boxH),
                w * k, h * (SIG_H / boxH));
    const d = g.getImageData(0, 0, SIG_W, SIG_H).data;
    const out = new Float64Array(SIG_W * SIG_H);
    for (let i = 0; i < out.length; i++)
      out[i] = 0.299 * d[4 * i] + 0.587 * d[4 * i + 1] + 0.114 * d[4 * i + 2];
    return out;
  };
  const corr = (a, b) => {
    const n = a.length;
    let ma = 0, mb = 0;
    for (let i = 0; i < n; i++) { ma += a[i]; mb += b[i]; }
    ma /= n; mb /= n;
    let sab = 0, saa = 0, sbb = 0;
    for (let i = 0; i < n; i++) {
      const x = a[i] - ma, y = b[i] - mb;
      sab += x * y; saa += x * x; sbb += y * y;
    }
    return saa && sbb ? sab / Math.sqrt(saa * sbb) : (saa === sbb ? 1 : 0);
  };
  const refs = [];
  for (const [label, url] of Object.entries(stock)) {
    const im = await load(url);
    if (im) refs.push({label, im});
  }
  const thumbs = Array.from(document.querySelectorAll(".sphx-glr-thumbcontainer img"));
  return {
    stock: refs.map(r => r.label),
    thumbs: thumbs.map(img => {
      const box = img.closest(".sphx-glr-thumbcontainer");
      const link = box && box.querySelector("a[href]");
      const title = box && box.querySelector(".sphx-glr-thumbnail-title");
      const rec = {
        src: img.getAttribute("src"),
        natural: img.naturalWidth,
        href: link ? link.getAttribute("href") : null,
        title: (title || link || {textContent: ""}).textContent.trim().slice(0, 120),
        tooltip: box ? (box.getAttribute("tooltip") || "") : "",
        matches: [],
      };
      if (!img.naturalWidth) return rec;
      const mine = signature(img, img.naturalWidth, img.naturalHeight);
      for (const r of refs) {
        const c = corr(mine, signature(r.im, img.naturalWidth, img.naturalHeight));
        rec.matches.push({label: r.label, corr: Math.round(c * 1000) / 1000});
      }
      return rec;
    }),
  };
}
"""


def thumbnails(page, site) -> dict:
    """Thumbnails of an open, settled gallery index page, each compared with the stock
    images."""
    stock = {
        label: site.url(path)
        for label, path in STOCK_THUMBNAILS.items()
        if (site.root / path).is_file()
    }
    return page.evaluate(JS_THUMBNAILS, {"stock": stock})


def check_gallery_index(page, rel: str, site) -> list[str]:
    """Problems of an open, settled (``settle``) gallery index page: BROKEN, no-image or
    unloaded thumbnails."""
    state = thumbnails(page, site)
    problems = []
    for label, path in STOCK_THUMBNAILS.items():
        if label not in state["stock"]:
            problems.append(
                f"{rel}: sphinx-gallery's {path} did not load, so a thumbnail that is "
                f"{label} could not be recognised"
            )
    text = page.evaluate("() => document.body.innerText")
    if "BROKEN" in text:
        problems.append(f"{rel}: the page text says 'BROKEN'")
    for t in state["thumbs"]:
        name = f"thumbnail {t['src']!r} of {t['href'] or t['title']!r}"
        if not t["natural"]:
            problems.append(f"{rel}: {name} did not load")
        for m in t["matches"]:
            if m["corr"] >= STOCK_THUMBNAIL_CORRELATION:
                problems.append(
                    f"{rel}: {name} is {m['label']} (grey-level correlation {m['corr']})"
                )
    return problems


# --------------------------------------------------------------------------- #
# Every page: nothing wider than its column
# --------------------------------------------------------------------------- #
# Walks the content column (elements and text). An element or text run that ends beyond
# the column's left/right edge is reported ("outside"), and its descendants are not.
# Below an element with overflow-x auto/scroll (a code block, a scrolling table or
# equation) nothing is checked: the scroller itself had to fit, and it scrolls. Below one
# with overflow-x hidden/clip, content is measured against that element instead: what
# sticks out of it is cut off for the reader ("clipped").
JS_OVERFLOW = """
({columns, tol}) => {
  const col = columns.map(s => document.querySelector(s)).find(Boolean);
  if (!col) return {column: null, items: [], doc: null};
  const box = (el) => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return {left: r.left + parseFloat(s.borderLeftWidth),
            right: r.right - parseFloat(s.borderRightWidth)};
  };
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    for (const c of Array.from(el.classList).slice(0, 3)) s += "." + c;
    return s;
  };
  const path = (el) => {
    const parts = [];
    for (let e = el; e && e !== col && parts.length < 4; e = e.parentElement)
      parts.unshift(name(e));
    return parts.join(" > ");
  };
  const section = (el) => {
    const sec = el.closest("section[id]");
    return sec ? sec.id : null;
  };
  const colBox = box(col);
  const items = [];
  const report = (el, r, limit, kind, text) => {
    items.push({
      kind, element: path(el), section: section(el),
      text: (text || el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 80),
      left: Math.round(r.left), right: Math.round(r.right), width: Math.round(r.width),
      limit_left: Math.round(limit.left), limit_right: Math.round(limit.right),
      limit_width: Math.round(limit.right - limit.left),
      by: limit.el ? name(limit.el) : name(col),
    });
  };
  const CLIPPING = new Set(["block", "inline-block", "flow-root", "list-item", "flex",
                            "inline-flex", "grid", "inline-grid", "table-cell", "table-caption"]);
  const sticksOut = (r, limit) => r.right > limit.right + tol || r.left < limit.left - tol;
  // clip: null (only the column limits), {scroll: true}, or {el, left, right}
  const walk = (node, clip) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        if (!child.data.trim() || (clip && clip.scroll)) continue;
        const range = document.createRange();
        range.selectNodeContents(child);
        const r = range.getBoundingClientRect();
        if (!r.width) continue;
        const limit = clip || colBox;
        if (sticksOut(r, limit))
          report(child.parentElement, r, limit, clip ? "clipped" : "outside", child.data);
        continue;
      }
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const s = getComputedStyle(child);
      if (s.display === "none" || s.visibility === "hidden" || s.position === "fixed"
          || s.opacity === "0") continue;
      const r = child.getBoundingClientRect();
      // visually-hidden helpers (screen-reader text): 1px boxes or clip rectangles
      if ((r.width <= 1 && r.height <= 1 && s.overflow !== "visible") || s.clip !== "auto")
        continue;
      if (!(clip && clip.scroll) && (r.width > 0 || r.height > 0)) {
        const limit = clip || colBox;
        if (sticksOut(r, limit)) {
          report(child, r, limit, clip ? "clipped" : "outside");
          continue;  // its descendants are part of the same problem
        }
      }
      let inner = clip;
      // overflow only clips (or scrolls) on boxes that contain blocks: not on inline
      // elements (inline math is a span with overflow: hidden that clips nothing)
      if (!(clip && clip.scroll) && s.overflowX !== "visible" && CLIPPING.has(s.display)) {
        inner = (s.overflowX === "auto" || s.overflowX === "scroll")
          ? {scroll: true} : {el: child, ...box(child)};
      }
      walk(child, inner);
    }
  };
  walk(col, null);
  const de = document.documentElement;
  return {
    column: name(col), colLeft: Math.round(colBox.left), colRight: Math.round(colBox.right),
    items, doc: {scrollWidth: de.scrollWidth, clientWidth: de.clientWidth},
  };
}
"""


@dataclass(frozen=True)
class Overflow:
    """One element (or text run) that does not fit in its column on one page."""

    page: str
    kind: str  # "outside" the column, "clipped" by an overflow:hidden box, or "page"
    element: str  # CSS-like path from the column down to the element
    section: str | None  # id of the enclosing <section>
    text: str
    left: int
    right: int
    width: int
    limit_left: int
    limit_right: int
    limit_width: int
    by: str  # the box it does not fit in

    def __str__(self) -> str:
        where = "extends outside the column" if self.kind == "outside" else "is cut off by"
        if self.kind == "page":
            return (
                f"{self.page}: the page scrolls sideways: document {self.width}px wide "
                f"in a {self.limit_width}px viewport"
            )
        return (
            f"{self.page}: {self.element} (section {self.section!r}, text {self.text!r}) "
            f"{where} {self.by}: it spans x={self.left}..{self.right} ({self.width}px), "
            f"the box x={self.limit_left}..{self.limit_right} ({self.limit_width}px)"
        )


def find_overflows(page, rel: str) -> tuple[list[Overflow], str | None]:
    """(overflows, error) of an open, settled page; error when there is no content column."""
    state = page.evaluate(
        JS_OVERFLOW, {"columns": list(CONTENT_COLUMNS), "tol": OVERFLOW_TOLERANCE_PX}
    )
    if state["column"] is None:
        return [], f"{rel}: no content column found (looked for {', '.join(CONTENT_COLUMNS)})"
    found = [Overflow(page=rel, **item) for item in state["items"]]
    doc = state["doc"]
    if doc["scrollWidth"] > doc["clientWidth"] + OVERFLOW_TOLERANCE_PX:
        found.append(
            Overflow(
                page=rel,
                kind="page",
                element="html",
                section=None,
                text="",
                left=0,
                right=doc["scrollWidth"],
                width=doc["scrollWidth"],
                limit_left=0,
                limit_right=doc["clientWidth"],
                limit_width=doc["clientWidth"],
                by="viewport",
            )
        )
    return found, None


# --------------------------------------------------------------------------- #
# All checks of one page
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class PageReport:
    """What the checks found on one page (``example``/``index`` only on such pages)."""

    overflows: list[Overflow]
    no_column: str | None
    images: list[str]  # images that did not load
    example: list[str] | None = None
    index: list[str] | None = None
    thumbnail_links: list[str] | None = None  # gallery pages an index's thumbnails link to
    settle: str | None = None  # why the page did not settle (MathJax failed ...)


def check_page(page, rel: str, site) -> PageReport:
    """Settle an open page of ``site`` and run every check that applies to it."""
    settled = settle(page)
    overflows, no_column = find_overflows(page, rel)
    parts = rel.split("/")
    in_gallery = parts[0] == GALLERY_DIR
    is_index = in_gallery and parts[-1] == "index.html"
    is_example = in_gallery and parts[-1] not in NOT_EXAMPLES
    return PageReport(
        overflows=overflows,
        no_column=no_column,
        images=check_images(page, rel)[0],
        example=check_example_page(page, rel) if is_example else None,
        index=check_gallery_index(page, rel, site) if is_index else None,
        thumbnail_links=(
            html_links(page, site, ".sphx-glr-thumbcontainer a[href]", under=GALLERY_DIR + "/")
            if is_index
            else None
        ),
        settle=None if settled["mathjax"] in (None, "ok") else settled["mathjax"],
    )
