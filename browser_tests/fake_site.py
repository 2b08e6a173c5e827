"""A tiny, deliberately broken documentation site, to prove the browser checks fail.

``write_site(root)`` writes plain HTML that copies the structure the checks read on the
real build (pydata-sphinx-theme's ``article.bd-article`` column, sphinx-gallery's
thumbnails, figures and failure output) -- a good example next to each broken one, so
the tests also see that the checks do not fire on a healthy page:

* ``auto_examples/index.html``: a good thumbnail, a BROKEN one and a "no image" one
  (stand-ins for sphinx-gallery's ``broken_example.png`` and ``no_image.png``, scaled
  into the thumbnail box the way sphinx-gallery does it);
* ``auto_examples/plot_good.html``: a figure, a wide code block and a wide table that
  both scroll inside boxes that fit (fine);
* ``auto_examples/plot_failing.html``: a traceback and no figure (a failed example);
* ``auto_examples/plot_missing_figure.html``: a figure whose image does not load;
* ``wide.html``: a table wider than the column, an unbreakable word running out of its
  paragraph, and a heading cut off by an ``overflow: hidden`` box.

The images are drawn here, pixel by pixel, into PNG files (no imaging library needed).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

RGBA = tuple[int, int, int, int]
Drawing = Callable[[float, float], RGBA]  # (u, v) in [0, 1]^2 -> colour

WHITE: RGBA = (255, 255, 255, 255)
CLEAR: RGBA = (255, 255, 255, 0)
THUMB_BOX = (200, 140)  # half sphinx-gallery's default thumbnail_size (fewer pixels to draw)

# What each page is expected to produce; the tests assert on these.
GOOD_EXAMPLE = "auto_examples/plot_good.html"
FAILING_EXAMPLE = "auto_examples/plot_failing.html"
MISSING_FIGURE_EXAMPLE = "auto_examples/plot_missing_figure.html"
GALLERY_INDEX = "auto_examples/index.html"
WIDE_PAGE = "wide.html"


# --------------------------------------------------------------------------- #
# Pictures
# --------------------------------------------------------------------------- #
def broken_stamp(u: float, v: float) -> RGBA:
    """A red stamp: a frame and a cross (stands in for sphinx-gallery's "BROKEN")."""
    red = (220, 20, 30, 255)
    if min(u, v, 1 - u, 1 - v) < 0.06:
        return red
    if abs(u - v) < 0.08 or abs(u + v - 1) < 0.08:
        return red
    return WHITE


def no_image(u: float, v: float) -> RGBA:
    """A grey disc (stands in for sphinx-gallery's "no image" thumbnail)."""
    return (150, 150, 150, 255) if (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.16 else WHITE


def line_plot(u: float, v: float) -> RGBA:
    """A blue curve over black axes, like a matplotlib figure."""
    if (0.10 <= u <= 0.12 and v <= 0.90) or (0.88 <= v <= 0.90 and u >= 0.10):
        return (0, 0, 0, 255)
    if abs(v - (0.5 - 0.3 * math.sin(4 * math.pi * u))) < 0.03 and u > 0.12:
        return (31, 119, 180, 255)
    return WHITE


def png(width: int, height: int, pixel: Callable[[int, int], RGBA]) -> bytes:
    """Encode an RGBA image given pixel by pixel as PNG."""
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 (none)
        for x in range(width):
            row.extend(pixel(x, y))
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def picture(drawing: Drawing, width: int, height: int) -> bytes:
    """``drawing`` filling a ``width`` x ``height`` image."""
    return png(width, height, lambda x, y: drawing((x + 0.5) / width, (y + 0.5) / height))


def thumbnail(drawing: Drawing, width: int, height: int) -> bytes:
    """``drawing`` at ``width`` x ``height``, scaled into the thumbnail box the way
    sphinx-gallery's ``scale_image`` does it: aspect kept, centred, transparent margins."""
    box_w, box_h = THUMB_BOX
    scale = min(box_w / width, box_h / height)
    w, h = round(width * scale), round(height * scale)
    x0, y0 = (box_w - w) // 2, (box_h - h) // 2

    def pixel(x: int, y: int) -> RGBA:
        if not (x0 <= x < x0 + w and y0 <= y < y0 + h):
            return CLEAR
        return drawing((x - x0 + 0.5) / w, (y - y0 + 0.5) / h)

    return png(box_w, box_h, pixel)


# --------------------------------------------------------------------------- #
# Pages
# --------------------------------------------------------------------------- #
CSS = """
body { margin: 0; font: 16px/1.5 sans-serif; }
.bd-container { display: flex; width: 1000px; margin: 0 auto; }
.bd-sidebar { width: 200px; flex: none; }
.bd-article-container { width: 700px; flex: none; }
article.bd-article { padding: 0 16px; }
div.highlight { overflow-x: auto; }
pre { margin: 0; }
.pst-scrollable-table-container { overflow-x: auto; }
.sphx-glr-thumbcontainer { display: inline-block; width: 160px; margin: 8px; }
.sphx-glr-thumbcontainer img { width: 160px; }
img.sphx-glr-single-img { max-width: 100%; }
.title-box { overflow: hidden; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style></head>
<body><div class="bd-container">
<div class="bd-sidebar"><nav>Sections</nav></div>
<div class="bd-article-container"><article class="bd-article" role="main">
{body}
</article></div></div></body></html>
"""

THUMB = """<div class="sphx-glr-thumbcontainer" tooltip="{title}">
<img alt="" src="../_images/{img}">
<p><a class="reference internal" href="{href}"><span>{title}</span></a></p>
<div class="sphx-glr-thumbnail-title">{title}</div></div>"""

FIGURE = '<img alt="{alt}" class="sphx-glr-single-img" src="../_images/{img}">'

TRACEBACK = """<div class="sphx-glr-script-out highlight-pytb notranslate"><div class="highlight">
<pre><span></span>Traceback (most recent call last):
  File "plot_failing.py", line 12, in &lt;module&gt;
    results = load_results("results/bench_attention.json")
FileNotFoundError: [Errno 2] No such file or directory: 'results/bench_attention.json'
</pre></div></div>"""

LONG_LINE = "x = " + " + ".join(f"term_{i}" for i in range(60))
WIDE_TABLE = "<table><tr>" + "".join(f"<td>column&nbsp;{i:02d}</td>" for i in range(40))
WIDE_TABLE += "</tr></table>"


def _code(text: str) -> str:
    pre = f'<div class="highlight"><pre>{text}</pre></div>'
    return f'<div class="highlight-python notranslate">{pre}</div>'


PAGES = {
    GALLERY_INDEX: (
        "Gallery",
        "<h1>Gallery</h1>\n"
        + THUMB.format(title="A good example", img="thumb_good.png", href="plot_good.html")
        + THUMB.format(title="A failing example", img="thumb_failing.png", href="plot_failing.html")
        + THUMB.format(
            title="An example whose figure is missing",
            img="thumb_missing_figure.png",
            href="plot_missing_figure.html",
        ),
    ),
    GOOD_EXAMPLE: (
        "A good example",
        "<h1>A good example</h1>"
        + _code(LONG_LINE)  # wide, but it scrolls inside a box that fits: fine
        + FIGURE.format(alt="a plot", img="figure_good.png")
        + '<div class="pst-scrollable-table-container">'
        + WIDE_TABLE
        + "</div>",
    ),
    FAILING_EXAMPLE: (
        "A failing example",
        "<h1>A failing example</h1>" + _code("results = load_results()") + TRACEBACK,
    ),
    MISSING_FIGURE_EXAMPLE: (
        "An example whose figure is missing",
        "<h1>An example whose figure is missing</h1>"
        + _code("plt.plot(x, y)")
        + FIGURE.format(alt="a plot", img="no_such_figure.png"),
    ),
    WIDE_PAGE: (
        "A page with things wider than the column",
        '<h1>Wide things</h1><section id="wide-table"><h2>A table</h2>'
        + WIDE_TABLE
        + '</section><section id="long-word"><h2>A long word</h2><p>'
        + "llmref.quant.methods."
        + "a_very_long_dotted_name_without_breaks_" * 5
        + '</p></section><section id="clipped-title"><div class="title-box">'
        + '<h2 style="white-space: nowrap">'
        + "A heading far too long for its column, " * 4
        + "</h2></div></section>",
    ),
}


def write_site(root: Path) -> Path:
    """Write the fake site under ``root`` and return ``root``."""
    images = {
        "_static/broken_example.png": picture(broken_stamp, 200, 200),
        "_static/no_image.png": picture(no_image, 180, 120),
        "_images/thumb_missing_figure.png": thumbnail(no_image, 180, 120),
        "_images/thumb_failing.png": thumbnail(broken_stamp, 200, 200),
        "_images/figure_good.png": picture(line_plot, 320, 240),
        "_images/thumb_good.png": thumbnail(line_plot, 320, 240),
    }
    for rel, data in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, (title, body) in PAGES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PAGE.format(title=title, css=CSS, body=body), encoding="utf-8")
    (root / "index.html").write_text(
        PAGE.format(
            title="Fake site",
            css=CSS,
            body='<h1>Fake site</h1><p><a href="auto_examples/index.html">Gallery</a></p>',
        ),
        encoding="utf-8",
    )
    return root
