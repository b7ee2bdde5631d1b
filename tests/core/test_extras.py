"""A missing extra is named in one line: read from a distribution's metadata (a fake one built here), checked
before a config is parsed and before a plug-in package is imported."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest

import verticals.domains
from verticals.core import cli, extras
from verticals.core.extras import (
    ExtraImportCheck,
    MissingExtra,
    MissingExtraError,
    declared_extras,
    is_installed,
    missing_extra,
    missing_extras,
    packages_named_in,
    require_extra,
)

FAKE = "fakeverticals"
EXTRA = "widgets"  # the extra of the throwaway plug-in package verticals.domains.widgets
PACKAGE = f"{extras.PLUGIN_PACKAGE}.{EXTRA}"


def _dist_info(root: Path, name: str, metadata: str, record: list[str] | None = None, top: str | None = None):
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{metadata}")
    if record is not None:
        (info / "RECORD").write_text("".join(f"{line},,\n" for line in record))
    if top is not None:
        (info / "top_level.txt").write_text(top)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """On sys.path: a distribution FAKE declaring the extra `widgets` (needs `gadgetlib`, installed here as a
    module found through its RECORD, and `nowhere-lib`, not installed) and `tools` (needs `toolmod`, found
    through top_level.txt); the plug-in package verticals.domains.widgets; FAKE is the distribution read."""
    site = tmp_path / "site"
    site.mkdir()
    _dist_info(
        site,
        FAKE,
        "Provides-Extra: widgets\nProvides-Extra: tools\nProvides-Extra: all\n"
        "Requires-Dist: basedep\n"
        'Requires-Dist: platformdep; sys_platform != "no-such-platform"\n'
        'Requires-Dist: gadgetlib>=1; extra == "widgets"\n'
        'Requires-Dist: nowhere-lib; extra == "widgets"\n'
        'Requires-Dist: otherplatform; sys_platform == "no-such-platform" and extra == "widgets"\n'
        'Requires-Dist: toolmod; extra == "tools"\n'
        f'Requires-Dist: {FAKE}[tools,widgets]; extra == "all"\n',
    )
    _dist_info(site, "gadgetlib", "", record=["gadgetlib.py", "gadgetlib-1.0.dist-info/METADATA"])
    (site / "gadgetlib.py").write_text("")
    _dist_info(site, "toolmod", "", top="toolmod\n")
    (site / "toolmod").mkdir()
    (site / "toolmod" / "__init__.py").write_text("")
    plugins = tmp_path / "plugins"
    (plugins / EXTRA).mkdir(parents=True)
    (plugins / EXTRA / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(verticals.domains, "__path__", [*verticals.domains.__path__, str(plugins)])
    monkeypatch.setattr(extras, "DISTRIBUTION", FAKE)
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    importlib.invalidate_caches()
    extras._declared_extras.cache_clear()
    yield site
    sys.modules.pop(PACKAGE, None)
    extras._declared_extras.cache_clear()


def test_declared_extras_read_the_distribution_metadata(fake):
    # Base requirements (with or without a platform marker), requirements for another platform and the
    # `all` alias of other extras are no extra's own requirements.
    assert declared_extras() == {"widgets": ("gadgetlib", "nowhere-lib"), "tools": ("toolmod",), "all": ()}
    assert declared_extras("no-such-distribution-here") == {}


def test_a_requirement_is_installed_when_its_distribution_and_an_import_name_are_found(fake, monkeypatch):
    assert is_installed("gadgetlib")  # import name from RECORD
    assert is_installed("toolmod")  # import name from top_level.txt
    assert not is_installed("nowhere-lib")  # no distribution
    monkeypatch.setitem(sys.modules, "gadgetlib", None)  # the distribution is there, the module blocked
    assert not is_installed("gadgetlib")


def test_a_module_refused_by_an_import_hook_counts_as_missing(fake, monkeypatch):
    class Refuse:
        def find_spec(self, fullname, path, target=None):
            if fullname == "toolmod":
                raise ModuleNotFoundError(f"{fullname} is blocked", name=fullname)
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    assert not is_installed("toolmod")


def test_missing_extra_names_only_the_missing_requirements(fake, monkeypatch):
    assert missing_extra(PACKAGE) == MissingExtra(EXTRA, ("nowhere-lib",), FAKE)
    assert missing_extra(PACKAGE + ".data.reader") == MissingExtra(EXTRA, ("nowhere-lib",), FAKE)
    monkeypatch.setitem(sys.modules, "gadgetlib", None)
    assert missing_extra(PACKAGE).missing == ("gadgetlib", "nowhere-lib")
    assert missing_extra(f"{extras.PLUGIN_PACKAGE}.tools") is None  # complete
    assert missing_extra(f"{extras.PLUGIN_PACKAGE}.unknown") is None  # no extra of that name: none needed
    assert missing_extra("some.other.package") is None


def test_the_message_is_one_line_with_the_pip_command():
    missing = MissingExtra("widgets", ("a-lib", "b-lib"), "pkg")
    assert missing.install == "pip install 'pkg[widgets]'"
    assert missing.message("widgets/demo") == (
        "widgets/demo needs the widgets extra: pip install 'pkg[widgets]' (missing: a-lib, b-lib)"
    )


def test_packages_named_in_a_text_in_order():
    text = (
        f"model:\n  class_path: {PACKAGE}.models.Net\ndata:\n  class_path: {extras.PLUGIN_PACKAGE}.tools.Data\n"
        f"other: {PACKAGE}.x\ncallback: lightning.pytorch.callbacks.EarlyStopping\n"
    )
    assert packages_named_in(text) == [PACKAGE, f"{extras.PLUGIN_PACKAGE}.tools"]
    assert packages_named_in("verticals.core.tasks.ClassificationTask") == []


def test_missing_extras_names_each_extra_once(fake):
    found = missing_extras([PACKAGE, PACKAGE + ".models", f"{extras.PLUGIN_PACKAGE}.tools"])
    assert found == [MissingExtra(EXTRA, ("nowhere-lib",), FAKE)]


def test_importing_a_package_whose_extra_is_missing_raises_an_import_error_naming_it(fake, monkeypatch):
    assert any(isinstance(finder, ExtraImportCheck) for finder in sys.meta_path)  # installed by the namespace
    with pytest.raises(MissingExtraError) as raised:
        importlib.import_module(PACKAGE)
    assert isinstance(raised.value, ImportError) and raised.value.name == PACKAGE
    assert str(raised.value) == (
        f"{PACKAGE} needs the {EXTRA} extra: pip install '{FAKE}[{EXTRA}]' (missing: nowhere-lib)"
    )
    with pytest.raises(MissingExtraError):
        require_extra(PACKAGE)
    # Once the requirement is installed, the package imports.
    _dist_info(fake, "nowhere_lib", "", top="nowhere_lib\n")
    (fake / "nowhere_lib.py").write_text("")
    importlib.invalidate_caches()
    assert importlib.import_module(PACKAGE).VALUE == 1
    require_extra(PACKAGE)


def test_the_cli_names_the_missing_extra_before_parsing_the_config(fake, tmp_path, monkeypatch, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(f"model:\n  class_path: {PACKAGE}.models.Net\n")
    expected = f"verticals: {config} needs the {EXTRA} extra: pip install '{FAKE}[{EXTRA}]' (missing: nowhere-lib)"
    assert cli.missing_extras_message(["fit", str(config)]) == expected
    assert cli.missing_extras_message(["fit", "--config", str(config), "--trainer.max_epochs", "1"]) == expected
    assert cli.missing_extras_message(["fit", f"--config={config}"]) == expected
    assert cli.missing_extras_message(["fit", "--model", f"{PACKAGE}.models.Net"]) == (
        f"verticals: this command needs the {EXTRA} extra: pip install '{FAKE}[{EXTRA}]' (missing: nowhere-lib)"
    )
    assert cli.missing_extras_message(["fit", str(tmp_path / "absent.yaml")]) is None  # resolve_config's error

    def never(*args, **kwargs):
        raise AssertionError("the config was parsed")

    monkeypatch.setattr(cli, "VerticalsCLI", never)
    with pytest.raises(SystemExit) as exited:
        cli.run_cli(["fit", str(config)])
    assert exited.value.code == expected


def test_a_packaged_config_needs_the_extra_of_its_own_package(monkeypatch):
    # With this project's own metadata: the first packaged config whose package declares an extra, with that
    # extra's first requirement blocked.
    extras._declared_extras.cache_clear()
    declared = declared_extras()
    named = [
        (name, name.split("/", 1)[0])
        for name in cli.packaged_configs()
        if declared.get(extras.normalize(name.split("/", 1)[0]))
    ]
    if not named:
        pytest.skip("the installed distribution declares no extra of a packaged config's package")
    name, package = named[0]
    requirement = declared[extras.normalize(package)][0]
    for module in extras._import_names(importlib.metadata.distribution(requirement)):
        monkeypatch.setitem(sys.modules, module, None)
    message = cli.missing_extras_message(["run", name])
    assert message is not None and "\n" not in message
    assert message.startswith(f"verticals: {name} needs the {package} extra: pip install 'verticals[{package}]'")
    assert f"(missing: {requirement}" in message


def test_the_command_exits_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(f"data:\n  class_path: {extras.PLUGIN_PACKAGE}.needs_extra.Data\n")
    monkeypatch.setattr(extras, "_declared_extras", lambda distribution: {"needs-extra": ("no-such-dist-here",)})
    with pytest.raises(SystemExit) as exited:
        cli.main(["fit", str(config)])
    # SystemExit with a message: Python prints it alone on stderr (no traceback) and exits with status 1.
    assert exited.value.code == (
        f"verticals: {config} needs the needs_extra extra: pip install 'verticals[needs_extra]' "
        "(missing: no-such-dist-here)"
    )
    assert capsys.readouterr().out == ""
