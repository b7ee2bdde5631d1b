"""The core's tests run with every domain package blocked when ``VERTICALS_BLOCK_DOMAINS=1``.

``VERTICALS_BLOCK_DOMAINS=1 pytest tests/core`` makes any import of a shipped domain package
(``verticals.domains.<name>`` for each folder of ``domains/``) fail (a meta-path hook raising
``ModuleNotFoundError``), so a core module or core test that needs a domain shows up as a failure; a
throwaway domain a test builds in a temporary folder still imports. Tests that exercise a domain on purpose (a packaged config, a domain's model by name)
say so with ``@pytest.mark.domains`` (or a module-level ``pytestmark``) and are skipped in that run.
``scripts/test.sh`` (what CI runs) makes that run after the full suite.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

import pytest

BLOCK_VARIABLE = "VERTICALS_BLOCK_DOMAINS"
DOMAINS = "verticals.domains."
SHIPPED = frozenset(
    path.name
    for path in (Path(__file__).resolve().parents[2] / "domains").iterdir()
    if (path / "__init__.py").is_file()
)


def _is_shipped_domain(name: str) -> bool:
    return name.startswith(DOMAINS) and name.split(".")[2] in SHIPPED


class DomainBlocker(importlib.abc.MetaPathFinder):
    """Refuses every import of a shipped domain package (the ``verticals.domains`` namespace stays)."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if _is_shipped_domain(fullname):
            raise ModuleNotFoundError(
                f"{fullname} is blocked: the core's tests run without domain packages ({BLOCK_VARIABLE}=1).",
                name=fullname,
            )
        return None


def block_domains() -> None:
    """Install the blocker first on ``sys.meta_path`` and forget any domain module imported already."""
    if not any(isinstance(finder, DomainBlocker) for finder in sys.meta_path):
        sys.meta_path.insert(0, DomainBlocker())
    for name in [name for name in sys.modules if _is_shipped_domain(name)]:
        del sys.modules[name]


def domains_blocked() -> bool:
    return os.environ.get(BLOCK_VARIABLE, "") not in ("", "0")


if domains_blocked():
    block_domains()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"domains: the test uses a domain package on purpose (skipped with {BLOCK_VARIABLE}=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not domains_blocked():
        return
    skip = pytest.mark.skip(reason=f"uses a domain package; {BLOCK_VARIABLE}=1 blocks them")
    for item in items:
        if item.get_closest_marker("domains") is not None:
            item.add_marker(skip)
