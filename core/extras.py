"""Optional extras: which one a package or a config needs, and a one-line error naming it when it is missing.

A plug-in package ``verticals.domains.<name>`` needs the extra of the same name, as the installed
distribution's metadata declares it (``Requires-Dist: <requirement>; extra == "<name>"``, written from
pyproject.toml's ``[project.optional-dependencies]``): one source of truth, nothing listed twice. A
package with no extra of its name (a plug-in from another distribution) needs none from here.

Two places use it: ``verticals fit CONFIG`` checks the packages a config names before the config is parsed
(:func:`missing_extras`, one line instead of a traceback), and importing such a package checks its extra
first (:func:`install_import_check`, an ``ImportError`` that names the ``pip install`` to run).
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

#: The distribution whose extras are read.
DISTRIBUTION = "verticals"
#: The namespace whose sub-packages each need the extra of their name.
PLUGIN_PACKAGE = "verticals.domains"


class MissingExtraError(ImportError):
    """A package's extra is not installed; the message names the ``pip install`` that adds it."""


@dataclass(frozen=True)
class MissingExtra:
    """An extra with some of its requirements missing.

    Args:
        extra: The extra's name, spelled as the package that needs it (pip normalises ``_`` and ``-``).
        missing: The requirements (distribution names, as declared) that are not installed.
        distribution: The distribution that declares the extra.
    """

    extra: str
    missing: tuple[str, ...]
    distribution: str = DISTRIBUTION

    @property
    def install(self) -> str:
        """The command that installs the extra."""
        return f"pip install '{self.distribution}[{self.extra}]'"

    def message(self, subject: str) -> str:
        """``SUBJECT needs the X extra: pip install 'verticals[X]' (missing: a, b)``.

        Args:
            subject: What needs the extra: a config's name, a package.
        """
        return f"{subject} needs the {self.extra} extra: {self.install} (missing: {', '.join(self.missing)})"


def normalize(name: str) -> str:
    """A distribution or extra name as packaging compares them (PEP 503 / 685): lower case, ``-`` for runs
    of ``-``, ``_`` and ``.``.

    Args:
        name: A name as written, e.g. ``"Remote_Sensing"``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras(distribution: str | None = None) -> dict[str, tuple[str, ...]]:
    """Each extra the installed ``distribution`` declares (normalised name) and its requirements' names that
    apply on this platform; empty when the distribution is not installed (a source tree on ``sys.path``).

    Args:
        distribution: The distribution whose metadata is read; None: ``DISTRIBUTION``.
    """
    return dict(_declared_extras(distribution or DISTRIBUTION))


@cache
def _declared_extras(distribution: str) -> dict[str, tuple[str, ...]]:
    from packaging.requirements import Requirement  # lightning, transformers and pip depend on it

    try:
        meta = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return {}
    requirements = [Requirement(line) for line in meta.requires or []]
    extras: dict[str, tuple[str, ...]] = {}
    for extra in meta.metadata.get_all("Provides-Extra") or []:
        names = [
            requirement.name
            for requirement in requirements
            if requirement.marker is not None
            and requirement.marker.evaluate({"extra": extra})
            and not requirement.marker.evaluate({"extra": ""})  # a platform marker alone: a base requirement
            and normalize(requirement.name) != normalize(distribution)  # `verticals[a,b]`: an alias of others
        ]
        extras[normalize(extra)] = tuple(dict.fromkeys(names))
    return extras


def is_installed(requirement: str) -> bool:
    """Whether a distribution is installed and at least one of its top-level import names can be found
    (without importing it); a name that an import hook refuses counts as missing.

    Args:
        requirement: A distribution name, e.g. ``"scikit-learn"``.
    """
    try:
        meta = importlib.metadata.distribution(requirement)
    except importlib.metadata.PackageNotFoundError:
        return False
    names = _import_names(meta)
    return not names or any(_findable(name) for name in names)


def _import_names(meta: importlib.metadata.Distribution) -> list[str]:
    """The top-level modules a distribution installs: its ``top_level.txt``, else the first part of each
    file it installed (``pkg/...`` or ``module.py``, not its metadata or shared-library folders)."""
    listed = meta.read_text("top_level.txt")
    if listed:
        return [name for name in listed.split() if name.isidentifier()]
    names = []
    for file in meta.files or []:
        first = file.parts[0]
        name = first.split(".", 1)[0] if len(file.parts) == 1 else first
        if name.isidentifier() and (len(file.parts) > 1 or first.endswith((".py", ".so", ".pyd"))):
            names.append(name)
    return list(dict.fromkeys(names))


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook that refuses the name
        return False
    except ValueError:  # imported already, without a __spec__: present
        return True


def missing_extra(package: str, distribution: str | None = None) -> MissingExtra | None:
    """The extra a package ``<PLUGIN_PACKAGE>.<name>`` needs, when some of its requirements are missing;
    None when they are all installed or the distribution declares no extra ``<name>``.

    Args:
        package: A module name; only its part right after ``PLUGIN_PACKAGE`` counts (``a.b.c.d`` -> ``c``).
        distribution: The distribution that declares the extras; None: ``DISTRIBUTION``.
    """
    distribution = distribution or DISTRIBUTION
    if not package.startswith(PLUGIN_PACKAGE + "."):
        return None
    name = package[len(PLUGIN_PACKAGE) + 1 :].split(".", 1)[0]
    requirements = _declared_extras(distribution).get(normalize(name))
    if not requirements:
        return None
    missing = tuple(requirement for requirement in requirements if not is_installed(requirement))
    return MissingExtra(name, missing, distribution) if missing else None


def packages_named_in(text: str) -> list[str]:
    """The packages ``<PLUGIN_PACKAGE>.<name>`` that a text names (a config's ``class_path`` values, the
    command line), in order of first mention.

    Args:
        text: Any text, e.g. a YAML config read before it is parsed.
    """
    pattern = re.escape(PLUGIN_PACKAGE) + r"\.([A-Za-z_]\w*)"
    return list(dict.fromkeys(f"{PLUGIN_PACKAGE}.{name}" for name in re.findall(pattern, text)))


def missing_extras(packages: Iterable[str], distribution: str | None = None) -> list[MissingExtra]:
    """The extras (one each) that the given packages need and that are not complete.

    Args:
        packages: Module names, e.g. from :func:`packages_named_in`.
        distribution: The distribution that declares the extras; None: ``DISTRIBUTION``.
    """
    found: dict[str, MissingExtra] = {}
    for package in packages:
        missing = missing_extra(package, distribution)
        if missing is not None:
            found.setdefault(normalize(missing.extra), missing)
    return list(found.values())


def require_extra(package: str, distribution: str | None = None) -> None:
    """Raise :class:`MissingExtraError` naming the extra when ``package`` needs one that is not complete.

    Args:
        package: The package being imported, e.g. ``__name__`` of its ``__init__``.
        distribution: The distribution that declares the extras; None: ``DISTRIBUTION``.
    """
    missing = missing_extra(package, distribution)
    if missing is not None:
        raise MissingExtraError(missing.message(package), name=package)


class ExtraImportCheck(importlib.abc.MetaPathFinder):
    """Checks the extra of a package ``<PLUGIN_PACKAGE>.<name>`` (:func:`require_extra`) before Python looks
    for it, so a missing dependency is named with its extra rather than met deep inside the package's
    imports. Python asks only on the first import; sub-modules are covered by their package."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: object = None) -> None:
        if fullname.rpartition(".")[0] == PLUGIN_PACKAGE:
            require_extra(fullname)
        return None  # the usual finders then find the package


def install_import_check() -> None:
    """Put an :class:`ExtraImportCheck` first on ``sys.meta_path`` (once): ``PLUGIN_PACKAGE``'s
    ``__init__`` calls it, so it is in place before any of its sub-packages is looked for."""
    if not any(isinstance(finder, ExtraImportCheck) for finder in sys.meta_path):
        sys.meta_path.insert(0, ExtraImportCheck())
