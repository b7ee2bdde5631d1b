"""Save, load, merge and compose adapters in peft's own format (``adapter_config.json`` + safetensors).

Anything saved here loads with stock ``peft.PeftModel.from_pretrained`` once ``verticals.core`` is
imported (that import registers verticals' own methods with peft).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from verticals.core.adapters.modules_to_save import restrict_modules_to_save

COMBINATIONS = (
    "cat",
    "linear",
    "svd",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write what was trained to ``directory``.

    A ``PeftModel`` writes peft's ``adapter_config.json`` + ``adapter_model.safetensors``; a model trained
    without an adapter (linear probe, full fine-tuning) writes its trainable tensors to
    ``trainable.safetensors``.  Never pickles.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(str(directory), safe_serialization=True)
    else:
        tensors = {
            name: parameter.detach().contiguous().cpu()
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        }
        save_file(tensors, str(directory / "trainable.safetensors"))
    return directory


def load_adapter(model: nn.Module, directory: str | Path, *, is_trainable: bool = False) -> nn.Module:
    """Load what ``save_adapter`` wrote onto a freshly built ``model`` (the same backbone)."""
    directory = Path(directory)
    if (directory / "adapter_config.json").is_file():
        loaded = PeftModel.from_pretrained(model, str(directory), is_trainable=is_trainable)
        restrict_modules_to_save(loaded)  # as when it was trained: only the modules named train
        return loaded
    trainable_file = directory / "trainable.safetensors"
    if not trainable_file.is_file():
        raise FileNotFoundError(
            f"No adapter in {directory}: expected adapter_config.json (a peft adapter) or trainable.safetensors "
            "(a linear probe / full fine-tune) written by verticals.core.save_adapter."
        )
    tensors = load_file(str(trainable_file))
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(
            f"{trainable_file} holds tensors this model lacks: {unknown[:5]}… Was it saved from a different model?"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            if own[name].shape != tensor.shape:
                raise ValueError(
                    f"Shape mismatch for {name}: file {tuple(tensor.shape)}, model {tuple(own[name].shape)}."
                )
            own[name].copy_(tensor)
    return model


def load_adapter_ensemble(
    model: nn.Module, directories: Sequence[str | Path], names: Sequence[str] | None = None
) -> PeftModel:
    """Several saved peft adapters (e.g. one LoRA per training seed) on one frozen copy of ``model``.

    Each is loaded under its own name (default ``member_0``, ``member_1``, …), so
    :func:`verticals.core.metrics.adapter_ensemble_probabilities` can switch between them: K members cost one
    backbone in memory, not K.  The first one is active; all are frozen (inference).
    """
    directories = [Path(directory) for directory in directories]
    names = list(names) if names is not None else [f"member_{index}" for index in range(len(directories))]
    if not directories or len(names) != len(directories) or len(set(names)) != len(names):
        raise ValueError(
            f"Expected one distinct name per adapter directory; got {len(directories)} directories and names {names}."
        )
    not_peft = [str(directory) for directory in directories if not (directory / "adapter_config.json").is_file()]
    if not_peft:
        raise FileNotFoundError(
            f"An ensemble needs peft adapters (adapter_config.json, written by save_adapter from a PeftModel); "
            f"none in {not_peft}."
        )
    ensemble = PeftModel.from_pretrained(model, str(directories[0]), adapter_name=names[0])
    for directory, name in zip(directories[1:], names[1:], strict=True):
        ensemble.load_adapter(str(directory), adapter_name=name)
    ensemble.set_adapter(names[0])
    ensemble.requires_grad_(False)
    return ensemble.eval()


def merge(model: PeftModel) -> nn.Module:
    """Fold the active adapter into the base weights and return the plain model (no inference cost)."""
    _require_peft(model, "merge")
    return model.merge_and_unload()


def merge_in_place(model: PeftModel) -> PeftModel:
    """Merge but keep the adapter layers, so ``unmerge`` can restore the base weights."""
    _require_peft(model, "merge_in_place")
    model.merge_adapter()
    return model


def unmerge(model: PeftModel) -> PeftModel:
    """Undo ``merge_in_place``."""
    _require_peft(model, "unmerge")
    model.unmerge_adapter()
    return model


def compose(
    model: PeftModel,
    adapters: Sequence[str],
    weights: Sequence[float],
    *,
    name: str,
    combination: str = "cat",
    density: float | None = None,
) -> PeftModel:
    """Adapter arithmetic: a new adapter ``name`` = Σ wᵢ · adapterᵢ (a negative weight negates).

    ``cat`` sums the weight updates exactly; ``ties`` / ``dare_*`` / ``magnitude_prune`` are peft's
    merging methods and need ``density``.  Only LoRA-family adapters can be composed this way.
    """
    _require_peft(model, "compose")
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(
            f"compose needs one weight per adapter, got {len(adapters)} adapters and {len(weights)} weights."
        )
    missing = [adapter for adapter in adapters if adapter not in model.peft_config]
    if missing:
        raise ValueError(f"Unknown adapter(s) {missing}; this model has {sorted(model.peft_config)}.")
    if combination not in COMBINATIONS:
        raise ValueError(f"Unknown combination {combination!r}; choose one of {COMBINATIONS}.")
    if not hasattr(model.base_model, "add_weighted_adapter"):
        raise TypeError(
            f"{type(model.base_model).__name__} adapters can't be composed: only LoRA-family methods support "
            "weighted adapter arithmetic."
        )
    kwargs = {"density": density} if density is not None else {}
    model.add_weighted_adapter(list(adapters), list(weights), name, combination_type=combination, **kwargs)
    return model


def negate(model: PeftModel, adapter: str, *, name: str) -> PeftModel:
    """A new adapter that subtracts ``adapter``'s update (task negation / forgetting)."""
    return compose(model, [adapter], [-1.0], name=name, combination="cat")


def _require_peft(model: nn.Module, action: str) -> None:
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"{action} needs a peft.PeftModel (from verticals.core.adapt), got {type(model).__name__}."
        )
