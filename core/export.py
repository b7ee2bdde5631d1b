"""``verticals export RUN_DIR``: a run's adapter merged into its backbone, as one safetensors file.

Why: a merged model costs at inference what the bare backbone costs and loads without peft. The task is
rebuilt from the run (its ``config.yaml`` names the task class; the checkpoint holds the hyperparameters and
the trained tensors, read with ``torch.load(weights_only=True)``), and the output folder (default
``RUN_DIR/export``) gets:

- ``model.safetensors``: the merged network's full state dict (peft's ``merge_and_unload``), safetensors only;
- ``adapter/``: the adapter of the same checkpoint, in peft's format (``save_adapter``);
- ``export.json`` and ``README.md``: what was merged, from which checkpoint, and the largest difference
  between the merged and the adapter model's outputs on a seeded probe input.

A method that can't merge (bottleneck, Earth-Adapter, prompt tuning: see
:mod:`verticals.core.adapters.merging`) is refused, naming the method and what to use instead, and nothing is
written: an "export" that silently kept the adapter layers would not be what the command promises. A run
without an adapter (``linear_probe``, ``bitfit``, ``full``, ``frozen``) has nothing to merge: its network's
state dict is written as it is, and ``export.json`` says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from verticals.core.adapters.io import save_adapter
from verticals.core.adapters.merging import adapter_method, has_adapter, merge_refusal

__all__ = ["EXPORT_HELP", "ExportError", "Exported", "export_main", "export_run"]

EXPORT_HELP = (
    "Write a run's adapter merged into its model (model.safetensors) beside the adapter: "
    "`verticals export RUN_DIR [--output DIR] [--checkpoint best|last|PATH]`."
)
MODEL_NAME = "model.safetensors"
ADAPTER_DIR = "adapter"
#: Batch size of the seeded probe input the merged and the adapter model are compared on.
PROBE_ROWS = 2


class ExportError(ValueError):
    """A run that can't be exported as asked; the message names the path or method and what to do."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote.

    Args:
        directory: the output folder.
        merged: whether an adapter was merged (False for a run without one).
        summary: the content of ``export.json``.
    """

    directory: Path
    merged: bool
    summary: dict[str, Any]


def export_run(
    run_dir: str | Path, *, output: str | Path | None = None, checkpoint: str = "best"
) -> Exported:
    """Rebuild a run's task from ``run_dir`` and write its merged model and adapter (see the module docstring).

    Args:
        run_dir: a run directory (``<root>/version_N``) that ``verticals fit`` or ``run`` wrote.
        output: the folder to write (created; files of the same names are replaced); default
            ``run_dir/export``.
        checkpoint: ``best`` or ``last`` (``run_dir/checkpoints/<name>.ckpt``) or a checkpoint file's path.
    """
    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    checkpoint_path = _checkpoint_file(run_dir, checkpoint)
    task = _load_task(config, checkpoint_path, run_dir)
    network = task.model
    method = adapter_method(network) or (task.adapter_spec.method if task.adapter_spec else "unknown")
    refusal = merge_refusal(network)
    if refusal is not None:
        raise ExportError(
            f"{run_dir} was trained with adapter method {method!r}, which can't be merged into the model, so "
            f"nothing was written. {refusal} Its adapter is in {run_dir / ADAPTER_DIR} (load it onto the same "
            "backbone with verticals.core.load_adapter or peft's PeftModel.from_pretrained)."
        )
    directory = Path(output) if output is not None else run_dir / "export"
    directory.mkdir(parents=True, exist_ok=True)
    save_adapter(network, directory / ADAPTER_DIR)
    probe = _probe_input(task)
    before = _outputs(network, probe)
    merged = has_adapter(network)
    plain = network.merge_and_unload() if merged else network
    after = _outputs(plain, probe)
    _save_state(plain, directory / MODEL_NAME, run_dir)
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint_path),
        "task": config["model"]["class_path"],
        "model": task.hparams.get("model"),
        "model_args": task.hparams.get("model_args"),
        "input_shape": task.hparams.get("input_shape"),
        "method": method,
        "merged": merged,
        "note": (
            f"the {method!r} adapter is merged into the weights (peft's merge_and_unload)"
            if merged
            else f"{method!r} trains the model's own weights: there was no adapter to merge"
        ),
        "files": {"model": MODEL_NAME, "adapter": ADAPTER_DIR},
        "max_abs_difference": _difference(before, after),
    }
    (directory / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(_readme(summary), encoding="utf-8")
    return Exported(directory=directory, merged=merged, summary=summary)


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml``; a path that is not a run directory is an error saying which to pass."""
    example = "e.g. runs/timeseries/gunpoint_lora/version_0"
    if not run_dir.is_dir():
        raise ExportError(
            f"{run_dir} is not a directory. Pass a run directory that `verticals fit` or `verticals run` wrote "
            f"({example}): it holds config.yaml and checkpoints/."
        )
    path = run_dir / "config.yaml"
    if not path.is_file():
        versions = sorted(run_dir.glob("version_*/config.yaml"), key=lambda found: found.stat().st_mtime)
        hint = (
            f" It holds runs: pass one of them, e.g. the newest, {versions[-1].parent}."
            if versions
            else f" Pass the version_N folder of a run ({example})."
        )
        raise ExportError(f"{run_dir} is not a run directory: it has no config.yaml.{hint}")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("class_path"), str):
        raise ExportError(
            f"{path} names no task (`model.class_path`): it is not the config a verticals run saved. Pass the "
            "run's own directory, where `verticals fit` wrote config.yaml."
        )
    return config


def _checkpoint_file(run_dir: Path, checkpoint: str) -> Path:
    """``best`` / ``last`` in ``run_dir/checkpoints``, or a file; a missing one lists those that exist."""
    path = (
        run_dir / "checkpoints" / f"{checkpoint}.ckpt" if checkpoint in ("best", "last") else Path(checkpoint)
    )
    if path.is_file():
        return path
    found = sorted(str(item.name) for item in (run_dir / "checkpoints").glob("*.ckpt"))
    listed = f"{run_dir / 'checkpoints'} holds {found}" if found else f"{run_dir / 'checkpoints'} holds none"
    raise ExportError(
        f"Checkpoint {path} does not exist ({listed}). Pass --checkpoint best, last or a checkpoint file's path."
    )


def _load_task(config: dict[str, Any], checkpoint: Path, run_dir: Path) -> Any:
    """The run's task class (``config.yaml``'s ``model.class_path``) loaded from ``checkpoint`` on the CPU."""
    from verticals.core.tasks.base import AdapterTask

    class_path = config["model"]["class_path"]
    module_name, _, name = class_path.rpartition(".")
    try:
        task_class = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ExportError(
            f"{run_dir / 'config.yaml'} names task {class_path!r}, which can't be imported ({error}). Install "
            "what the run used, or export from the environment that trained it."
        ) from error
    if not (isinstance(task_class, type) and issubclass(task_class, AdapterTask)):
        raise ExportError(
            f"{run_dir / 'config.yaml'} names {class_path!r}, which is not a verticals task (AdapterTask): export "
            "rebuilds a verticals task's backbone and adapter."
        )
    with warnings.catch_warnings():
        # The frozen backbone comes from its builder, not the checkpoint (which holds only what was trained);
        # the task's on_load_checkpoint checks the backbone's fingerprint and every trained tensor instead.
        warnings.filterwarnings(
            "ignore", "Found keys that are in the model state dict but not in the checkpoint"
        )
        task = task_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    return task.eval()


def _probe_input(task: Any) -> torch.Tensor | None:
    """A seeded input of the task's ``input_shape`` (None when the task has none recorded)."""
    shape = task.hparams.get("input_shape")
    if not shape:
        return None
    generator = torch.Generator().manual_seed(0)
    return torch.randn(PROBE_ROWS, *shape, generator=generator)


def _outputs(network: nn.Module, probe: torch.Tensor | None) -> torch.Tensor | None:
    """``network(probe)`` when it is a tensor; None when there is no probe or the network takes other inputs."""
    if probe is None:
        return None
    try:
        with torch.no_grad():
            output = network(probe)
    except (TypeError, ValueError, RuntimeError):  # a network whose inputs are not one tensor (seq2seq)
        return None
    return output.detach().clone() if isinstance(output, torch.Tensor) else None


def _difference(before: torch.Tensor | None, after: torch.Tensor | None) -> float | None:
    if before is None or after is None or before.shape != after.shape:
        return None
    return float((before.float() - after.float()).abs().max())


def _save_state(network: nn.Module, path: Path, run_dir: Path) -> None:
    """The network's state dict as safetensors, replaced whole; tensors sharing memory (tied weights) are
    copied, since safetensors refuses shared storage."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if pointer in storages else tensor.contiguous()
        storages.add(pointer)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary), metadata={"format": "pt", "verticals_run": str(run_dir)})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _readme(summary: dict[str, Any]) -> str:
    difference = summary["max_abs_difference"]
    checked = (
        f"On a seeded probe input the merged model's outputs differ from the adapter model's by at most "
        f"{difference:.3g}."
        if difference is not None
        else "The outputs were not compared (the task's network takes more than one input tensor)."
    )
    return (
        f"# Exported model\n\n"
        f"From run `{summary['run_dir']}`, checkpoint `{summary['checkpoint']}`; task `{summary['task']}`, model "
        f"`{summary['model']}`, adapter method `{summary['method']}`: {summary['note']}.\n\n"
        f"- `{MODEL_NAME}`: the full network's state dict (safetensors). Build the same network (the run's "
        "config, or `Task.load_from_checkpoint(...).model.unload()`) and `load_state_dict` it.\n"
        f"- `{ADAPTER_DIR}/`: the adapter alone, in peft's format (`verticals.core.load_adapter`).\n\n"
        f"{checked}\n"
    )


def export_parser() -> argparse.ArgumentParser:
    """The ``verticals export`` command line."""
    parser = argparse.ArgumentParser(prog="verticals export", description=EXPORT_HELP)
    parser.add_argument(
        "run_dir", help="the run directory (<root>/version_N) that `verticals fit` or `run` wrote"
    )
    parser.add_argument("--output", default=None, help="the folder to write (default: RUN_DIR/export)")
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best or last (RUN_DIR/checkpoints/<name>.ckpt), or a checkpoint file's path (default: best)",
    )
    return parser


def export_main(argv: Sequence[str]) -> Exported:
    """``verticals export RUN_DIR [--output DIR] [--checkpoint best|last|PATH]``; an error exits with its message.

    Args:
        argv: the arguments after ``export``.
    """
    args = export_parser().parse_args(list(argv))
    try:
        exported = export_run(args.run_dir, output=args.output, checkpoint=args.checkpoint)
    except ExportError as error:
        raise SystemExit(f"verticals export: {error}") from None
    state = "merged model" if exported.merged else "model (no adapter to merge)"
    print(f"verticals export: wrote the {state} to {exported.directory / MODEL_NAME}")
    print(f"  adapter: {exported.directory / ADAPTER_DIR}; details: {exported.directory / 'export.json'}")
    return exported
