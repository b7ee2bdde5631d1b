"""The adapter folder's ``README.md``: a model card in the Hugging Face format, filled from the run.

peft writes an empty card template beside every adapter it saves. Verticals writes its own instead:

- :func:`adapter_card` when an adapter is saved on its own (``save_adapter``): the method, its peft type
  and targets, the trained tensors and how to load them;
- :func:`run_model_card` at the end of a run's test (the run report): YAML front matter (``base_model``
  where the backbone is a Hub model, ``library_name: peft``, ``tags``, ``license`` when the backbone
  declares one) and a body naming the base model (source and weights fingerprint), the data (dataset,
  splits, seed), the method with its targets and options, the trainable parameters, the test metrics and a
  loading snippet that uses plain peft (``import verticals.core`` first: it registers verticals' own
  methods with peft).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

#: Where verticals lives, for the cards' links.
PROJECT = "verticals"
CARD_NAME = "README.md"
TRAINABLE_NAME = "trainable.safetensors"
# A Hugging Face Hub model id: ``owner/name`` (letters, digits, ``-_.``), not a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")



def tag_of(name: str) -> str:
    """A Hub tag for a free-text name: lower case, runs of other characters as one hyphen
    ("generated point-cloud shapes (clean and scanned)" -> "generated-point-cloud-shapes-clean-and-scanned").

    Args:
        name: the dataset's (or any) display name.
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")

def hub_model_id(source: Any) -> str | None:
    """``source`` when it reads as a Hugging Face Hub model id (``google-bert/bert-base-uncased``) and is not a
    file on this machine; else None (the card's ``base_model`` is for Hub ids only).

    Args:
        source: the backbone's source as the network records it (``backbone_source``).
    """
    if not isinstance(source, str) or not _HUB_ID.match(source) or Path(source).exists():
        return None
    return source


def backbone_license(network: nn.Module | None) -> str | None:
    """The licence the network or its backbone declares: a ``license`` attribute, or timm's
    ``pretrained_cfg["license"]``; None when neither says.

    Args:
        network: the network a task adapted (its ``backbone`` is looked at too); None gives None.
    """
    if network is None:
        return None
    for holder in (network, getattr(network, "backbone", None)):
        if holder is None:
            continue
        license_ = getattr(holder, "license", None)
        if isinstance(license_, str) and license_:
            return license_
        config = getattr(holder, "pretrained_cfg", None)
        if isinstance(config, Mapping) and isinstance(config.get("license"), str):
            return config["license"]
    return None


def front_matter(metadata: Mapping[str, Any]) -> str:
    """The YAML block a Hub card starts with; keys whose value is None or empty are left out.

    Args:
        metadata: the card's metadata (``base_model``, ``library_name``, ``license``, ``tags`` …), in order.
    """
    kept = {key: value for key, value in metadata.items() if value not in (None, [], "")}
    return "---\n" + yaml.safe_dump(kept, sort_keys=False, allow_unicode=True) + "---\n"


def write_card(directory: Path | str, text: str) -> Path:
    """Write ``text`` as ``directory/README.md``, replacing the old card whole (written beside it, then
    renamed, as ``save_adapter`` writes its files).

    Args:
        directory: the adapter folder.
        text: the card.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CARD_NAME
    handle, staging = tempfile.mkstemp(prefix=".card-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


# -- a saved adapter on its own ----------------------------------------------------------------------------
def adapter_card(model: nn.Module) -> str:
    """A card for an adapter saved outside a run: what it is and how to load it.

    Args:
        model: the model ``save_adapter`` saved (a ``PeftModel``, or a network trained without an adapter).
    """
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    config = _peft_config(model)
    if config is None:
        lines = [
            "# Trained weights (no adapter)",
            "",
            f"Saved by `verticals.core.save_adapter`: the {trainable:,} parameters that were trained (a linear "
            f"probe, BitFit or full fine-tuning), in `{TRAINABLE_NAME}`, named as in the network.",
            "",
            "## How to load",
            "",
            _regime_snippet("network = ...  # the network these weights were trained in, built the same way"),
        ]
        return front_matter({"tags": [PROJECT]}) + "\n" + "\n".join(lines) + "\n"
    method = _method_name(config)
    targets = getattr(config, "target_modules", None)
    lines = [
        f"# {method} adapter",
        "",
        f"Saved by `verticals.core.save_adapter` (peft type `{method.upper()}`): {trainable:,} trainable "
        f"parameters, target modules `{_short(targets)}`"
        + (
            f", trained in full: `{_short(config.modules_to_save)}`"
            if getattr(config, "modules_to_save", None)
            else ""
        )
        + ".",
        "",
        "## How to load",
        "",
        _peft_snippet("network = ...  # the network this adapter was trained on, built the same way"),
        "",
        f"A `{PROJECT} run` replaces this card with one that names the base model, data, method and test metrics.",
    ]
    metadata = {
        "base_model": hub_model_id(getattr(config, "base_model_name_or_path", None)),
        "library_name": "peft",
        "tags": [PROJECT, method],
    }
    return front_matter(metadata) + "\n" + "\n".join(lines) + "\n"


def _peft_config(model: nn.Module) -> Any:
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        return None
    name = getattr(model, "active_adapter", None)
    return configs.get(name) if isinstance(name, str) and name in configs else next(iter(configs.values()))


def _method_name(config: Any) -> str:
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type)).lower()


def _short(value: Any, limit: int = 160) -> str:
    text = str(sorted(value) if isinstance(value, (set, frozenset)) else value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- a run's card ------------------------------------------------------------------------------------------
def network_call(task: Any) -> str | None:
    """Python that builds the network a task adapted, as the task built it: ``build_model(...)`` with its
    model name (or ``{class_path, init_args}``), input shape, output arguments and ``model_args``; None for
    a network handed to the task ready-made (there is no recipe to quote).

    Args:
        task: a verticals task (its hparams and ``model_outputs_kwargs``).
    """
    if getattr(task, "_given_model", None) is not None:
        return None
    hparams = getattr(task, "hparams", {})
    arguments = [repr(hparams.get("model"))]
    if hparams.get("input_shape") is not None:
        arguments.append(f"input_shape={tuple(int(size) for size in hparams['input_shape'])!r}")
    try:
        outputs = dict(task.model_outputs_kwargs())
    except (NotImplementedError, KeyError, TypeError):
        outputs = {}
    arguments += [f"{key}={value!r}" for key, value in outputs.items()]
    if hparams.get("model_args"):
        arguments.append(f"model_args={dict(hparams['model_args'])!r}")
    return "build_model(\n" + "".join(f"    {argument},\n" for argument in arguments) + ")"


def _fingerprint_lines(fingerprint: str | None) -> tuple[list[str], list[str]]:
    """The import and the check that the network holds the weights the adapter was trained on."""
    if not fingerprint:
        return [], []
    return ["from verticals.core.checkpoint import fingerprint"], [
        "# The backbone weights it was trained on (verticals' fingerprint of their tensors):",
        f'assert fingerprint(getattr(network, "backbone", network)) == "{fingerprint}"',
    ]


def _peft_snippet(build: str, directory: str = "path/to/this/folder", fingerprint: str | None = None) -> str:
    imports, check = _fingerprint_lines(fingerprint)
    lines = [
        "```python",
        "import verticals.core  # registers verticals' own adapter methods (bottleneck, s2lora …) with peft",
        "from peft import PeftModel",
        "from verticals.core import build_model",
        *imports,
        "",
        build,
        *check,
        f"model = PeftModel.from_pretrained(network, {directory!r}).eval()",
        "```",
    ]
    return "\n".join(lines)


def _regime_snippet(
    build: str, directory: str = "path/to/this/folder", fingerprint: str | None = None
) -> str:
    imports, check = _fingerprint_lines(fingerprint)
    lines = [
        "```python",
        "from pathlib import Path",
        "",
        "from safetensors.torch import load_file",
        "from verticals.core import build_model",
        *imports,
        "",
        build,
        *check,
        f"trained = load_file(Path({directory!r}) / {TRAINABLE_NAME!r})",
        "missing, unexpected = network.load_state_dict(trained, strict=False)",
        "assert not unexpected  # `missing` are the tensors that stayed as they were (frozen)",
        "network.eval()",
        "```",
        "",
        "`verticals.core.load_adapter(network, folder)` does the same after checking every tensor's name and shape.",
    ]
    return "\n".join(lines)


def run_model_card(report: Mapping[str, Any], *, task: Any, directory: Path | str, peft_adapter: bool) -> str:
    """The card of a run's adapter, from its report (``report.json``'s content) and its task.

    Args:
        report: the run report (``model``, ``adapter``, ``backbone``, ``parameters``, ``data``, ``test`` …).
        task: the tested task (the network's build arguments, the backbone's licence).
        directory: the adapter folder, quoted in the loading snippet.
        peft_adapter: whether the folder holds a peft adapter (else ``trainable.safetensors`` of a regime).
    """
    adapter = report.get("adapter") or {}
    method = str(adapter.get("method"))
    data = report.get("data") or {}
    backbone = report.get("backbone") or {}
    parameters = report.get("parameters") or {}
    source, fingerprint = backbone.get("source"), backbone.get("fingerprint")
    task_name = str(report.get("task"))
    network = _network_of(task)
    metadata = {
        "base_model": hub_model_id(source),
        "library_name": "peft" if peft_adapter else None,
        "license": backbone_license(network),
        "tags": [PROJECT, method, task_name, *([tag_of(str(data["dataset"]))] if data.get("dataset") else [])],
    }
    title = f"{method} on {report.get('model')}" + (f" for {data['dataset']}" if data.get("dataset") else "")
    build = network_call(task)
    build_line = (
        f"network = {build}"
        if build is not None
        else f"network = ...  # the {report.get('model')} the task was given ready-made, built the same way"
    )
    folder = str(directory)
    snippet = (
        _peft_snippet(build_line, folder, fingerprint)
        if peft_adapter
        else _regime_snippet(build_line, folder, fingerprint)
    )
    lines = [
        f"# {title}",
        "",
        f"A {task_name} adapter trained with {PROJECT} (`verticals run`); the run's config is `config.yaml` and "
        "its full report `report.md` in the run folder that holds this one.",
        "",
        "## Base model",
        "",
        f"- network: `{report.get('model')}`"
        + (f" with `model_args` `{report.get('model_args')}`" if report.get("model_args") else ""),
        f"- backbone weights: `{source}`, fingerprint `{fingerprint}` (the adapter loads onto these weights only)",
        "",
        "## Data",
        "",
        *_data_lines(data),
        "",
        "## Method",
        "",
        f"- method: `{method}` on targets `{adapter.get('targets')}`"
        + (f", trained in full: `{adapter.get('trainable')}`" if adapter.get("trainable") else ""),
        f"- options: `{adapter.get('options') or {}}`",
    ]
    if parameters:
        lines.append(
            f"- trainable parameters: {parameters.get('trainable', 0):,} of {parameters.get('backbone', 0):,} "
            f"backbone parameters ({parameters.get('trainable_percent', 0.0):.3f}%)"
        )
    if report.get("adapter_file_bytes"):
        lines.append(f"- adapter file: {report['adapter_file_bytes']:,} bytes")
    test = report.get("test") or {}
    lines += ["", "## Test metrics", ""]
    if test:
        lines += [
            "The test split, scored with the best checkpoint"
            + (f" (best `{report['best_validation']['monitor']}`)" if report.get("best_validation") else "")
            + ":",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {name.removeprefix('test_')} | {value:.4f} |" for name, value in sorted(test.items())),
        ]
    else:
        lines.append("Not tested yet.")
    lines += ["", "## How to load", "", snippet, ""]
    return front_matter(metadata) + "\n" + "\n".join(lines)


def _data_lines(data: Mapping[str, Any]) -> list[str]:
    if not data:
        return ["- not recorded (the run had no datamodule)"]
    splits = data.get("splits") or {}
    sizes = ", ".join(
        f"{split} {size:,}" if size is not None else f"{split} —" for split, size in splits.items()
    )
    lines = [f"- dataset: {data.get('dataset')} (`{data.get('datamodule')}`)"]
    if sizes:
        lines.append(f"- samples per split: {sizes}")
    lines.append(f"- seed: {data.get('seed')}")
    return lines


def _network_of(task: Any) -> nn.Module | None:
    """The task's network before adaptation, when it is built (for its licence)."""
    try:
        network = task._base_network()
    except Exception:  # noqa: BLE001 - a task without a built network has no licence to read
        return None
    return network if isinstance(network, nn.Module) else None
