"""The browser checks fail on a broken site: run them on a small, deliberately broken one.

``fake_site.write_site`` writes a failed gallery example (traceback, no figure), one whose
figure does not load, a gallery index with a BROKEN thumbnail and a page with a table, a
word and a heading wider than their column -- each next to a healthy counterpart. The same
check functions that ``test_docs_in_browser.py`` runs on the real build must flag every
broken thing and nothing healthy; and ``test_docs_in_browser.py`` itself, pointed at the
fake site, must fail exactly the tests of the broken pages. Needs no docs build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fake_site
import pytest
import site_checks
from docs_browser import NotChecked, Problems, open_browser, serve

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return fake_site.write_site(tmp_path_factory.mktemp("broken_site"))


@pytest.fixture(scope="module")
def fake(chromium, fake_root):
    """A browser on the fake site (with its own problem list)."""
    with serve(fake_root) as local, open_browser(chromium, local, Problems()) as browser:
        yield browser


def _run(browser, rel, check):
    """``check(page)`` on page ``rel``, loaded and settled as the real-site tests do."""

    def settled(page, rel):
        site_checks.settle(page)
        return check(page)

    result = browser.sweep([rel], settled)[rel]
    assert not isinstance(result, NotChecked), result
    return result


def test_discovery_finds_the_fake_pages(fake_root):
    assert site_checks.gallery_index_pages(fake_root) == [fake_site.GALLERY_INDEX]
    assert site_checks.example_pages(fake_root) == sorted(
        [fake_site.GOOD_EXAMPLE, fake_site.FAILING_EXAMPLE, fake_site.MISSING_FIGURE_EXAMPLE]
    )
    pages = site_checks.all_pages(fake_root)
    assert fake_site.WIDE_PAGE in pages and "index.html" in pages
    assert not any(p.startswith(("_static/", "_images/")) for p in pages)


def test_example_check_passes_a_good_example(fake):
    rel = fake_site.GOOD_EXAMPLE
    assert _run(fake, rel, lambda page: site_checks.check_example_page(page, rel)) == []


def test_example_check_catches_a_failed_example(fake):
    rel = fake_site.FAILING_EXAMPLE
    found = _run(fake, rel, lambda page: site_checks.check_example_page(page, rel))
    assert len(found) == 2, found
    assert "shows a traceback" in found[0] and "FileNotFoundError" in found[0]
    assert "shows no figure" in found[1] and "at all" in found[1]


def test_example_check_catches_a_figure_that_does_not_load(fake):
    rel = fake_site.MISSING_FIGURE_EXAMPLE
    found = _run(fake, rel, lambda page: site_checks.check_example_page(page, rel))
    assert len(found) == 1, found
    assert "none of its figures loaded" in found[0] and "no_such_figure.png" in found[0]


def test_gallery_index_check_catches_the_broken_thumbnails(fake):
    rel = fake_site.GALLERY_INDEX
    found = _run(fake, rel, lambda page: site_checks.check_gallery_index(page, rel, fake.site))
    # the failing example's and the figure-less example's thumbnails, not the good one
    assert len(found) == 2, found
    assert "BROKEN" in found[0] and "plot_failing.html" in found[0]
    assert "no figure" in found[1] and "plot_missing_figure.html" in found[1]
    for problem in found:
        corr = float(re.search(r"correlation (-?[0-9.]+)", problem).group(1))
        assert corr > 0.95, problem


def test_gallery_index_check_needs_the_stock_thumbnail(chromium, fake_root, tmp_path):
    """Without broken_example.png in the build, the check says it cannot work."""
    root = shutil.copytree(fake_root, tmp_path / "site")
    (root / "_static" / "broken_example.png").unlink()
    with serve(root) as local, open_browser(chromium, local, Problems()) as browser:
        rel = fake_site.GALLERY_INDEX
        found = _run(browser, rel, lambda page: site_checks.check_gallery_index(page, rel, local))
    assert len(found) == 2, found  # the no-image thumbnail is still recognised
    assert "broken_example.png did not load" in found[0] and "BROKEN" in found[0]
    assert "no figure" in found[1] and "plot_missing_figure.html" in found[1]


def test_overflow_check_passes_content_that_scrolls_inside_the_column(fake):
    rel = fake_site.GOOD_EXAMPLE
    found, error = _run(fake, rel, lambda page: site_checks.find_overflows(page, rel))
    assert error is None
    assert found == []


def test_overflow_check_catches_wide_elements(fake):
    rel = fake_site.WIDE_PAGE
    found, error = _run(fake, rel, lambda page: site_checks.find_overflows(page, rel))
    assert error is None
    by_section = {o.section: o for o in found if o.kind != "page"}
    assert set(by_section) == {"wide-table", "long-word", "clipped-title"}, [str(o) for o in found]

    table = by_section["wide-table"]
    assert table.kind == "outside" and table.element.endswith("table")
    assert table.right > table.limit_right and table.limit_width == 700
    word = by_section["long-word"]
    assert word.kind == "outside" and word.element.endswith("p")
    assert "a_very_long_dotted_name" in word.text
    title = by_section["clipped-title"]
    assert title.kind == "clipped" and "h2" in title.element and "title-box" in title.by
    # the table also makes the whole page scroll sideways
    assert any(o.kind == "page" for o in found)
    assert "extends outside the column" in str(table) and "px" in str(table)


def test_overflow_check_needs_a_content_column(chromium, tmp_path):
    (tmp_path / "bare.html").write_text("<!DOCTYPE html><p>no column here</p>")
    with serve(tmp_path) as local, open_browser(chromium, local, Problems()) as browser:
        found, error = _run(browser, "bare.html", lambda p: site_checks.find_overflows(p, "x"))
    assert found == [] and "no content column" in error


def test_sweep_reports_a_page_it_cannot_open(fake):
    found = fake.sweep(["no_such_page.html", fake_site.WIDE_PAGE], lambda page, rel: rel)
    assert found[fake_site.WIDE_PAGE] == fake_site.WIDE_PAGE
    assert isinstance(found["no_such_page.html"], NotChecked)
    assert "HTTP 404" in found["no_such_page.html"].why


def test_the_real_site_tests_fail_on_the_broken_site(fake_root):
    """``test_docs_in_browser.py`` itself, pointed at the fake site, fails the broken pages."""
    env = {**os.environ, "LLMREF_DOCS_HTML": str(fake_root)}
    env.pop("PYTEST_ADDOPTS", None)
    selected = "gallery_example_page or gallery_index_page or page_fits_its_column"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_docs_in_browser.py"), "-k", selected,
         "-p", "no:cacheprovider", "-q", "-rA", "--no-header"],
        env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    outcomes = dict(
        (m.group(2), m.group(1))
        for m in re.finditer(
            r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED)\S* \S+?::(\S+)", out, re.M
        )
    )
    expected = {
        f"test_gallery_example_page[{fake_site.GOOD_EXAMPLE}]": "PASSED",
        f"test_gallery_example_page[{fake_site.FAILING_EXAMPLE}]": "FAILED",
        f"test_gallery_example_page[{fake_site.MISSING_FIGURE_EXAMPLE}]": "FAILED",
        f"test_gallery_index_page[{fake_site.GALLERY_INDEX}]": "FAILED",
        f"test_page_fits_its_column[{fake_site.WIDE_PAGE}]": "FAILED",
        f"test_page_fits_its_column[{fake_site.GOOD_EXAMPLE}]": "PASSED",
        f"test_page_fits_its_column[{fake_site.GALLERY_INDEX}]": "PASSED",
    }
    assert {k: outcomes.get(k) for k in expected} == expected, out
