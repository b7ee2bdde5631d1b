"""The documentation site, built once per test session with the project's own MkDocs (``mkdocs build --strict``),
and served from a local HTTP server for the browser test."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
HOOK = REPOSITORY / "docs" / "hooks" / "site_files.py"
#: Debian's package installs the browser here (scripts/setup_docs_browser.sh); VERTICALS_CHROMIUM overrides it.
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")


def _missing(what: str, fix: str) -> None:
    """Fail under CI (the dev extra and scripts/setup_docs_browser.sh provide everything), skip elsewhere."""
    message = f"{what} is not available: {fix}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def hook() -> ModuleType:
    """The build hook as a module, to test its helpers without a build."""
    if importlib.util.find_spec("mkdocs") is None:
        _missing("MkDocs", "install the dev extra: pip install -e '.[dev]'")
    spec = importlib.util.spec_from_file_location("verticals_docs_site_files", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class BuiltSite:
    directory: Path
    returncode: int
    output: str
    seconds: float


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> BuiltSite:
    """``mkdocs build --strict`` of the whole site into a temporary folder (run once, shared by the tests)."""
    if importlib.util.find_spec("mkdocs") is None:
        _missing("MkDocs", "install the dev extra: pip install -e '.[dev]'")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPOSITORY / "mkdocs.yml")]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "-d", str(site)], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - start
    print(f"mkdocs build --strict: {seconds:.1f} s")
    return BuiltSite(site, result.returncode, result.stdout + result.stderr, seconds)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def site_url(built_site: BuiltSite) -> Iterator[str]:
    """The built site served on 127.0.0.1 at a free port, for as long as the session needs it."""
    if built_site.returncode != 0:
        pytest.fail(f"the site did not build:\n{built_site.output[-4000:]}")
    handler = functools.partial(_QuietHandler, directory=str(built_site.directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def chromium_executable() -> str | None:
    given = os.environ.get("VERTICALS_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium from Debian's packages, driven by Playwright (its own browser download is not used)."""
    if importlib.util.find_spec("playwright") is None:
        _missing("Playwright", "install the dev extra: pip install -e '.[dev]'")
    executable = chromium_executable()
    if executable is None:
        _missing("Chromium", "run `bash scripts/setup_docs_browser.sh` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()
