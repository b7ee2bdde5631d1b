"""The documentation site as a reader gets it: built with ``mkdocs build --strict`` (once per session, see
conftest.py), every page the navigation promises written, then opened in headless Chromium — the pages a reader
lands on render, their figures load, and search works.

All in one file so that ``pytest -n 2 --dist loadfile`` builds the site once. Set
``VERTICALS_DOCS_SCREENSHOTS=<folder>`` to keep a full-page screenshot of each page the browser checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly(built_site):
    assert built_site.returncode == 0, f"mkdocs build --strict failed:\n{built_site.output[-6000:]}"
    assert (built_site.directory / "index.html").is_file()
    assert (built_site.directory / "search" / "search_index.json").is_file()


def _html(site: Path, page: str) -> Path:
    """The HTML file MkDocs writes for source page ``page`` (directory URLs)."""
    stem = page.removesuffix(".md").removesuffix(".ipynb")
    if stem.endswith("index"):
        return site / stem.removesuffix("index") / "index.html"
    return site / stem / "index.html"


def test_every_generated_page_is_in_the_site(hook, built_site):
    pages = list(hook.iter_generated_pages())
    assert len(pages) > 30
    assert any(page.endswith(".ipynb") for page in pages)
    assert any(page.startswith("reference/") for page in pages)
    for page in pages:
        assert _html(built_site.directory, page).is_file(), page


def test_every_hand_written_page_is_in_the_site(built_site):
    for source in (REPOSITORY / "docs").rglob("*.md"):
        page = source.relative_to(REPOSITORY / "docs").as_posix()
        assert _html(built_site.directory, page).is_file(), page


def test_benchmark_charts_are_copied_beside_their_reports(hook, built_site):
    charts = [p for p in hook.benchmark_files() if p.suffix == ".png"]
    assert charts, "benchmarks/results holds no chart"
    for chart in charts:
        assert (built_site.directory / chart.relative_to(REPOSITORY)).is_file(), chart


# (name, path, text the page's first heading contains, CSS selector that must match in the article)
PAGES = [
    ("home", "/", "verticals", "table"),
    ("domain", "/domains/pointcloud/", "Point clouds", "table"),
    ("reference", "/reference/core/", "verticals.core", ".doc.doc-object"),
    ("notebook", "/notebooks/timeseries_adaptation/", "frozen text transformer", ".jp-Cell"),
    ("benchmark", "/benchmarks/results/pointcloud/", "Point clouds", "table"),
]
# Pages whose figures must all load (and that must have at least one).
PAGES_WITH_FIGURES = ("domain", "benchmark")


@pytest.fixture
def page(browser, site_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and response.url.startswith(site_url)
            else None
        ),
    )
    page.problems = problems
    yield page
    context.close()


def _images(page) -> list[dict]:
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('article img')).map(img => ({
            src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth}))"""
    )


@pytest.mark.parametrize(("name", "path", "heading", "selector"), PAGES, ids=[p[0] for p in PAGES])
def test_a_page_renders(page, site_url, name, path, heading, selector):
    response = page.goto(site_url + path, wait_until="load")
    assert response is not None and response.status == 200, f"{path}: HTTP {response and response.status}"
    assert "404" not in page.title()
    first_heading = page.locator("article h1").first.inner_text()
    assert heading.lower() in first_heading.lower(), f"{path}: first heading {first_heading!r}"
    assert page.locator(f"article {selector}").count() > 0, f"{path}: nothing matches {selector!r}"
    assert "```" not in page.locator("article").inner_text(), f"{path}: raw markdown fences in the page"
    images = _images(page)
    broken = [image["src"] for image in images if not image["complete"] or image["width"] == 0]
    assert not broken, f"{path}: images that did not load: {broken}"
    if name in PAGES_WITH_FIGURES:
        assert images, f"{path}: no figure on the page"
    assert not page.problems, f"{path}: {page.problems}"
    folder = os.environ.get("VERTICALS_DOCS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_search_finds_lora(page, site_url):
    page.goto(site_url + "/", wait_until="load")
    search = page.locator("input.md-search__input")  # in the header at desktop widths
    search.click()
    search.press_sequentially("LoRA", delay=20)
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible", timeout=30_000)
    assert results.count() > 0
    assert "lora" in results.first.inner_text().lower()
    assert not page.problems, page.problems
