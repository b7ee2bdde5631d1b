"""``--model.help`` / ``--data.help`` explain every option: each constructor argument of a task, a datamodule
or a registered model builder that a config can set has a description.

The descriptions are read the way the CLI reads them: jsonargparse builds the options of a class (its own
arguments and, through ``*args`` / ``**kwargs``, its bases') and takes each one's help from the Google-style
``Args:`` sections of the class docstring, its ``__init__`` docstring and its bases' (docstring-parser). A
missing or misspelt entry leaves that option's help empty, which is what these tests catch.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from jsonargparse import ArgumentParser

from verticals.core.cli import packaged_configs
from verticals.core.extras import MissingExtraError

#: The core's own tasks, datamodules and the dataclasses a config nests under them (``adapter:``,
#: ``group_objective:``), documented whether or not a packaged config names them.
CORE_CLASSES = (
    "verticals.core.tasks.AdapterTask",
    "verticals.core.tasks.ClassificationTask",
    "verticals.core.tasks.FairClassificationTask",
    "verticals.core.tasks.ForecastingTask",
    "verticals.core.tasks.SegmentationTask",
    "verticals.core.tasks.Seq2SeqTask",
    "verticals.core.adapters.api.AdapterSpec",
    "verticals.core.group_objective.GroupObjective",
    "verticals.core.data.BaseDataModule",
    "verticals.core.data.ArrayClassificationDataModule",
    "verticals.core.manifest_data.ManifestDataModule",
)

#: Public datamodules of the domains that no packaged config names (real datasets a user points at).
OTHER_DOMAIN_DATAMODULES = (
    "verticals.domains.timeseries.data.CSVClassificationDataModule",
    "verticals.domains.speech.data.LibriSpeechDataModule",
    "verticals.domains.speech.data.CommonVoiceDataModule",
    "verticals.domains.medical.data.ManifestDataModule",
    "verticals.domains.medical.segmentation_layouts.DecathlonDataModule",
    "verticals.domains.medical.segmentation_layouts.BTCVDataModule",
    "verticals.domains.medical.segmentation_layouts.ISICSegmentationDataModule",
    "verticals.domains.pointcloud.data.ShapeNetPartDataModule",
)

PREFIX = "options"


def _configs() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(path.read_text()) or {} for name, path in packaged_configs().items()}


def configured_class_paths() -> list[str]:
    """Every ``model.class_path`` and ``data.class_path`` of the packaged configs."""
    found = set()
    for config in _configs().values():
        for section in ("model", "data"):
            entry = config.get(section)
            if isinstance(entry, dict) and isinstance(entry.get("class_path"), str):
                found.add(entry["class_path"])
    return sorted(found)


def configured_models() -> list[str]:
    """Every registered model name (``model.init_args.model``) the packaged configs build."""
    found = set()
    for config in _configs().values():
        init_args = (config.get("model") or {}).get("init_args") or {}
        if isinstance(init_args.get("model"), str):
            found.add(init_args["model"])
    return sorted(found)


def _in_core(path: str) -> bool:
    return path.startswith("verticals.core.")


def _params(paths: list[str]) -> list[Any]:
    """One test per class path; those of a domain are marked ``domains`` (skipped when domains are blocked)."""
    return [
        pytest.param(path, id=path, marks=() if _in_core(path) else pytest.mark.domains)
        for path in sorted(set(paths))
    ]


def _import_domain(module_name: str) -> Any:
    """Import a domain module; skip the test when its extra (or a package of it) is not installed."""
    try:
        return importlib.import_module(module_name)
    except MissingExtraError as error:
        pytest.skip(str(error))
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "verticals":
            raise  # our own module is missing: a real failure
        pytest.skip(f"{module_name} needs {error.name}, which is not installed")


def _import(path: str) -> Any:
    """The object at ``path``; a domain whose extra is not installed skips the test."""
    module_name, _, name = path.rpartition(".")
    module = importlib.import_module(module_name) if _in_core(path) else _import_domain(module_name)
    return getattr(module, name)


def option_help(component: type | Callable[..., Any]) -> dict[str, str | None]:
    """Option name -> its ``--help`` text, as the CLI builds them for a class or a function."""
    parser = ArgumentParser(exit_on_error=False)
    if inspect.isclass(component):
        parser.add_class_arguments(component, PREFIX, fail_untyped=False, sub_configs=True)
    else:
        parser.add_function_arguments(component, PREFIX, fail_untyped=False)
    options = {}
    for action in parser._actions:
        name = action.dest.removeprefix(PREFIX + ".")
        if action.dest.startswith(PREFIX + ".") and "." not in name:
            options[name] = action.help
    return options


def own_arguments(component: type | Callable[..., Any]) -> list[str]:
    """The named arguments of a class's ``__init__`` (or a function), without ``self`` / ``*args`` / ``**kwargs``."""
    function = component.__init__ if inspect.isclass(component) else component
    return [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.name != "self"
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def undocumented(component: type | Callable[..., Any]) -> list[str]:
    """Arguments a config can set whose ``--help`` says nothing; an argument the CLI can't offer counts too."""
    options = option_help(component)
    missing = [name for name in own_arguments(component) if name not in options]
    empty = [name for name, text in options.items() if not (text or "").strip()]
    return sorted(set(missing) | set(empty))


# -- the check itself -------------------------------------------------------------------------------------
def test_the_check_finds_an_undocumented_option():
    class Documented:
        """A class.

        Args:
            size: how big.
        """

        def __init__(self, size: int = 1) -> None:
            self.size = size

    class Extended(Documented):
        """Adds an argument and forgets one entry.

        Args:
            name: what it is called.
        """

        def __init__(self, *args: Any, name: str = "", colour: str = "red", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    def build(input_shape: list[int], depth: int = 2) -> None:
        """A builder.

        Args:
            input_shape: the shape.
        """

    assert undocumented(Documented) == []
    assert option_help(Extended)["size"] == "how big."  # a base's entry documents the inherited option
    assert undocumented(Extended) == ["colour"]
    assert undocumented(build) == ["depth"]


def test_the_packaged_configs_name_tasks_and_datamodules():
    paths = configured_class_paths()
    assert "verticals.core.tasks.ClassificationTask" in paths
    assert any(path.endswith("DataModule") for path in paths)
    assert configured_models()


# -- tasks, datamodules and the dataclasses under them ------------------------------------------------------
@pytest.mark.parametrize(
    "path", _params([*CORE_CLASSES, *configured_class_paths(), *OTHER_DOMAIN_DATAMODULES])
)
def test_every_option_has_a_help_text(path):
    component = _import(path)
    options = option_help(component)
    assert options, f"{path}: the CLI offers no option at all"
    assert undocumented(component) == [], (
        f"{path}: add these arguments to an `Args:` section of its docstring (or of the base that takes them), "
        "so `--model.help` / `--data.help` explain them"
    )


# -- the registered models a config names (their `model_args`) ---------------------------------------------
@pytest.mark.domains
@pytest.mark.parametrize("name", configured_models())
def test_every_model_argument_is_documented(name):
    from verticals.core import registry

    _import_domain(f"verticals.domains.{name.split('.')[0]}")
    builder = registry._registered_builder(name)
    assert undocumented(builder) == [], (
        f"{name} ({builder.__module__}.{builder.__qualname__}): document these in its `Args:` section, the "
        "`model_args` a config may give"
    )
