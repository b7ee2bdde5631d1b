"""Save, load, merge and compose adapters in peft's own format (``adapter_config.json`` + safetensors).

Anything saved here loads with stock ``peft.PeftModel.from_pretrained`` once ``verticals.core`` is
imported (that import registers verticals' own methods with peft).

Saving replaces each file whole (written beside it, then renamed), so a full disk never leaves a
half-written adapter over a good one. Loading is all-or-nothing: the config, the weights and their fit to
the model (every tensor's name, shape and values) are checked before the model is touched, and any
problem is a :class:`~verticals.core.file_errors.VerticalsFileError` naming the file and what to do.
Adapter weights are read from safetensors only; a pickle is read only on request (``allow_pickle``), as
tensors (``torch.load(weights_only=True)``), never as code.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from verticals.core.adapters.api import _config_class, peft_methods
from verticals.core.adapters.modules_to_save import restrict_modules_to_save
from verticals.core.adapters.options import option_problem
from verticals.core.file_errors import (
    MissingFileError,
    VerticalsFileError,
    check_finite,
    check_tensors,
    load_json_file,
    load_safetensors_file,
    load_torch_file,
)
from verticals.core.model_card import CARD_NAME, adapter_card

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

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS_NAME = "adapter_model.bin"
TRAINABLE_NAME = "trainable.safetensors"

_RESAVE = "Save the adapter again with verticals.core.save_adapter, or copy the whole adapter folder again."


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write what was trained to ``directory``.

    A ``PeftModel`` writes peft's ``adapter_config.json`` + ``adapter_model.safetensors``; a model trained
    without an adapter (linear probe, full fine-tuning) writes its trainable tensors to
    ``trainable.safetensors``.  Never pickles. Files are written to a staging folder inside ``directory``
    and then renamed over the old ones (weights first, the config last), so a failed save (a full disk)
    leaves the previous adapter as it was. The ``README.md`` beside them is a model card that says what the
    folder holds and how to load it (:func:`verticals.core.model_card.adapter_card`; peft's own template
    is empty); a ``verticals run`` replaces it with the run's card (base model, data, metrics).

    Args:
        model: the trained model: a ``PeftModel`` (from :func:`~verticals.core.adapters.api.adapt`), or a
            plain module whose trainable parameters are what was trained.
        directory: the folder to write (created if missing); files already there are replaced.

    Returns:
        ``directory``, as a ``Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory))
    try:
        if isinstance(model, PeftModel):
            model.save_pretrained(str(staging), safe_serialization=True)
        else:
            tensors = {
                name: parameter.detach().contiguous().cpu()
                for name, parameter in model.named_parameters()
                if parameter.requires_grad
            }
            save_file(tensors, str(staging / TRAINABLE_NAME))
        (staging / CARD_NAME).write_text(adapter_card(model), encoding="utf-8")  # in place of peft's template
        written = sorted(
            (path for path in staging.rglob("*") if path.is_file()), key=lambda path: path.name == CONFIG_NAME
        )
        for path in written:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        for path in written:
            target = directory / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_adapter(
    model: nn.Module, directory: str | Path, *, is_trainable: bool = False, allow_pickle: bool = False
) -> nn.Module:
    """Load what ``save_adapter`` wrote onto a freshly built ``model`` (the same backbone).

    All or nothing: the files and their fit to ``model`` are checked first, and ``model`` is left untouched
    when anything is wrong (a :class:`~verticals.core.file_errors.VerticalsFileError` names the file, the
    tensors and what to do). ``model`` must not hold an adapter already (use ``load_adapter_ensemble`` or
    ``PeftModel.load_adapter`` to hold several). ``allow_pickle`` reads ``adapter_model.bin`` when there is no
    safetensors file, as tensors only. The fit is checked on a weightless (meta-device) copy of ``model``; for
    the rare method whose initialisation can't run there (LoRA's PiSSA), a mismatch is found while loading,
    still as a ``VerticalsFileError``.

    Args:
        model: the backbone as built for training, without an adapter.
        directory: a folder written by :func:`save_adapter`.
        is_trainable: load a peft adapter trainable (to continue training it); False loads it frozen, for
            inference.
        allow_pickle: read ``adapter_model.bin`` (tensors only) when the folder has no safetensors file.

    Returns:
        A ``PeftModel`` for a peft adapter; ``model`` itself, with its trained tensors copied in, otherwise.
    """
    directory = Path(directory)
    if (directory / CONFIG_NAME).exists():
        _refuse_adapted(model, directory)
        config, _ = read_peft_adapter(directory, model, allow_pickle=allow_pickle)
        loaded = _load_checked(
            lambda: PeftModel.from_pretrained(
                model, str(directory), config=config, is_trainable=is_trainable
            ),
            directory,
        )
        restrict_modules_to_save(loaded)  # as when it was trained: only the modules named train
        return loaded
    trainable_file = directory / TRAINABLE_NAME
    if not trainable_file.is_file():
        raise MissingFileError(
            f"No adapter in {directory}: expected {CONFIG_NAME} (a peft adapter) or {TRAINABLE_NAME} "
            "(a linear probe / full fine-tune) written by verticals.core.save_adapter.",
            directory,
        )
    fix = "Load it onto the model it was saved from, or save it again with verticals.core.save_adapter."
    tensors = load_safetensors_file(trainable_file, kind="trainable-weights file", fix=fix)
    own = dict(model.named_parameters())
    check_tensors(tensors, own, trainable_file, fix=fix, allow_missing=True)
    with torch.no_grad():  # every check passed: copy all or nothing
        for name, tensor in tensors.items():
            own[name].copy_(tensor)
    return model


def read_peft_adapter(
    directory: str | Path, model: nn.Module | None = None, *, allow_pickle: bool = False
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The checked config and weights of the peft adapter in ``directory``; with ``model``, also checks that
    they fit it (every tensor's name and shape), without changing ``model``.

    Any problem is a :class:`~verticals.core.file_errors.VerticalsFileError` naming the file.

    Args:
        directory: a folder holding ``adapter_config.json`` and the adapter's weights.
        model: the backbone to check the adapter against (left unchanged); None checks the files alone.
        allow_pickle: read ``adapter_model.bin`` (tensors only) when there is no safetensors file.
    """
    directory = Path(directory)
    config = _read_config(directory / CONFIG_NAME)
    weights_file, tensors = _read_weights(directory, allow_pickle)
    base = getattr(config, "base_model_name_or_path", None)
    fix = (
        "Load it onto the backbone it was trained on"
        + (f" ({base})" if base else "")
        + ", built the same way (depth, width, module names), or train an adapter for this backbone."
    )
    expected = _expected_tensors(model, config, directory) if model is not None else None
    if expected is None:
        check_finite(tensors, weights_file, fix=fix)
    else:
        adapter, whole = expected
        check_tensors(
            tensors,
            adapter,
            weights_file,
            fix=fix,
            # A file may also hold whole layers peft saves beside the adapter (resized embeddings).
            extra_ok=lambda name, tensor: name in whole and tuple(whole[name].shape) == tuple(tensor.shape),
        )
    return config, tensors


def _read_config(path: Path) -> PeftConfig:
    data = load_json_file(path, kind="adapter config", fix=_RESAVE)
    if not isinstance(data, dict):
        raise VerticalsFileError(
            f"{path}: holds a JSON {type(data).__name__}, but an adapter config is a JSON object with "
            f"`peft_type` and the method's options. {_RESAVE}",
            path,
        )
    peft_type = data.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        raise VerticalsFileError(
            f'{path}: `peft_type` is {peft_type!r}; it names the adapter\'s method (e.g. "LORA"). {_RESAVE}',
            path,
        )
    try:
        config_cls = _config_class(peft_type)
    except ValueError:
        raise VerticalsFileError(
            f"{path}: `peft_type` {peft_type!r} is a method this installation doesn't know (known: "
            f"{', '.join(peft_methods())}). Install or import the package that registers it, or check the file.",
            path,
        ) from None
    problem = option_problem(config_cls, data)
    if problem:
        raise VerticalsFileError(f"{path}: option {problem}. {_RESAVE}", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # options from a newer peft are dropped, as peft itself does
            return config_cls.from_peft_type(
                **{key: value for key, value in data.items() if key != "peft_type"}
            )
    except Exception as error:  # peft's own checks: ValueError, TypeError, KeyError …
        raise VerticalsFileError(
            f"{path}: peft refuses these settings ({type(error).__name__}: {error}). {_RESAVE}", path
        ) from None


def _read_weights(directory: Path, allow_pickle: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    safe, pickled = directory / WEIGHTS_NAME, directory / PICKLED_WEIGHTS_NAME
    if safe.exists():
        return safe, load_safetensors_file(safe, kind="adapter weights file", fix=_RESAVE)
    if pickled.exists():
        if not allow_pickle:
            raise VerticalsFileError(
                f"{pickled}: the adapter's weights are a pickle ({PICKLED_WEIGHTS_NAME}), which verticals doesn't "
                f"read unless asked. Ask for {WEIGHTS_NAME}, or pass allow_pickle=True: the file is then read as "
                "tensors only (torch.load with weights_only=True), never run as code.",
                pickled,
            )
        state = load_torch_file(pickled, kind="adapter weights file", fix=_RESAVE)
        if not isinstance(state, dict):
            raise VerticalsFileError(
                f"{pickled}: holds a {type(state).__name__}, not a mapping of tensor names to tensors. {_RESAVE}",
                pickled,
            )
        return pickled, state
    raise MissingFileError(
        f"{directory}: has {CONFIG_NAME} but no weights ({WEIGHTS_NAME}): only part of the adapter was saved or "
        f"copied. Copy {WEIGHTS_NAME} beside the config, or save the adapter again.",
        directory,
    )


def _expected_tensors(
    model: nn.Module, config: PeftConfig, directory: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """The tensors (on the meta device) an adapter with ``config`` has on ``model``, and every tensor of the
    adapted model, built on a weightless copy of ``model`` so that ``model`` itself is not touched.

    None when no weightless copy can be built (a model that refuses to be copied, a method that can't be
    built on the meta device): the checks then happen after loading.
    """
    try:
        skeleton = _weightless_copy(model)
    except Exception:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapted = get_peft_model(skeleton, copy.deepcopy(config))
            adapter = get_peft_model_state_dict(adapted, save_embedding_layers=False)
            whole = adapted.state_dict()
    except (RuntimeError, NotImplementedError):  # e.g. an initialisation (PiSSA's SVD) that can't run on meta
        return None
    except Exception as error:
        raise VerticalsFileError(
            f"{directory / CONFIG_NAME}: its settings build no adapter on this model ({type(error).__name__}: "
            f"{error}). Load it onto the backbone it was trained on, or check the file.",
            directory / CONFIG_NAME,
        ) from None
    return dict(adapter), dict(whole)


def _weightless_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (no memory, no copy)."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        meta = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(model, memo)


def _refuse_adapted(model: nn.Module, directory: Path) -> None:
    """An adapter loads onto a bare backbone: peft would nest a second PeftModel, with fresh weights."""
    held: list[str] = []
    if isinstance(model, PeftModel):
        held = [_describe_config(name, config) for name, config in model.peft_config.items()]
    elif any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        held = ["(adapter layers injected into the model)"]
    if held:
        raise VerticalsFileError(
            f"{directory}: this model already holds adapter(s) {', '.join(held)}; loading another onto it would "
            "wrap it in a second PeftModel with freshly initialised weights. Load onto a freshly built backbone, "
            f"or add it beside the first with model.load_adapter({str(directory)!r}, adapter_name='another') "
            "(or verticals.core.load_adapter_ensemble).",
            directory,
        )


def _describe_config(name: str, config: PeftConfig) -> str:
    method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
    rank = getattr(config, "r", None)
    return f"{name!r} ({method}{f', r={rank}' if rank is not None else ''})"


def _load_checked(load: Any, directory: Path) -> PeftModel:
    """Run peft's loader; a mismatch that only loading could find (no weightless copy) is still ours."""
    try:
        return load()
    except Exception as error:
        raise VerticalsFileError(
            f"{directory}: the adapter could not be loaded onto this model ({type(error).__name__}: "
            f"{str(error)[:500]}). Load it onto the backbone it was trained on.",
            directory,
        ) from error


def load_adapter_ensemble(
    model: nn.Module, directories: Sequence[str | Path], names: Sequence[str] | None = None
) -> PeftModel:
    """Several saved peft adapters (e.g. one LoRA per training seed) on one frozen copy of ``model``.

    Each is loaded under its own name (default ``member_0``, ``member_1``, …), so
    :func:`verticals.core.metrics.adapter_ensemble_probabilities` can switch between them: K members cost one
    backbone in memory, not K.  The first one is active; all are frozen (inference). Every member is checked
    against ``model`` (as in :func:`load_adapter`) before any is loaded.

    Args:
        model: the backbone, without an adapter.
        directories: folders written by :func:`save_adapter` from a ``PeftModel``, one per member.
        names: a distinct adapter name per directory; default ``member_0``, ``member_1``, ….
    """
    directories = [Path(directory) for directory in directories]
    names = list(names) if names is not None else [f"member_{index}" for index in range(len(directories))]
    if not directories or len(names) != len(directories) or len(set(names)) != len(names):
        raise ValueError(
            f"Expected one distinct name per adapter directory; got {len(directories)} directories and names {names}."
        )
    not_peft = [str(directory) for directory in directories if not (directory / CONFIG_NAME).is_file()]
    if not_peft:
        raise MissingFileError(
            f"An ensemble needs peft adapters ({CONFIG_NAME}, written by save_adapter from a PeftModel); "
            f"none in {not_peft}."
        )
    _refuse_adapted(model, directories[0])
    configs = [read_peft_adapter(directory, model)[0] for directory in directories]
    ensemble = _load_checked(
        lambda: PeftModel.from_pretrained(
            model, str(directories[0]), adapter_name=names[0], config=configs[0]
        ),
        directories[0],
    )
    for directory, name in zip(directories[1:], names[1:], strict=True):
        _load_checked(lambda: ensemble.load_adapter(str(directory), adapter_name=name), directory)  # noqa: B023
    ensemble.set_adapter(names[0])
    ensemble.requires_grad_(False)
    return ensemble.eval()


def merge(model: PeftModel) -> nn.Module:
    """Fold the active adapter into the base weights and return the plain model (no inference cost).

    Args:
        model: an adapted model; its adapter layers are removed, so keep a saved copy of the adapter.
    """
    _require_peft(model, "merge")
    return model.merge_and_unload()


def merge_in_place(model: PeftModel) -> PeftModel:
    """Merge but keep the adapter layers, so ``unmerge`` can restore the base weights.

    Args:
        model: an adapted model; changed in place and returned.
    """
    _require_peft(model, "merge_in_place")
    model.merge_adapter()
    return model


def unmerge(model: PeftModel) -> PeftModel:
    """Undo ``merge_in_place``.

    Args:
        model: a model merged by :func:`merge_in_place`; changed in place and returned.
    """
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

    Args:
        model: a ``PeftModel`` holding the adapters (e.g. from :func:`load_adapter_ensemble`).
        adapters: names of the adapters to combine.
        weights: one weight per adapter (negative subtracts its update).
        name: the name of the new adapter (added beside the others; activate it with ``set_adapter``).
        combination: peft's combination type: ``cat`` (exact sum, ranks concatenated), ``linear``, ``svd``,
            ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` and their ``_svd`` variants.
        density: share in (0, 1] of each update's entries kept by the pruning combinations (``ties``,
            ``dare_*``, ``magnitude_prune``).
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
    """A new adapter that subtracts ``adapter``'s update (task negation / forgetting).

    Args:
        model: a ``PeftModel`` holding ``adapter``.
        adapter: the adapter whose update is negated.
        name: the name of the new adapter.
    """
    return compose(model, [adapter], [-1.0], name=name, combination="cat")


def _require_peft(model: nn.Module, action: str) -> None:
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"{action} needs a peft.PeftModel (from verticals.core.adapt), got {type(model).__name__}."
        )
