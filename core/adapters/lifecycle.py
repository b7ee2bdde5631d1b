"""What a PEFT method needs from the training loop, declared once per method and called by every task.

Some methods are more than a forward pass: S2-LoRA adds an L1 penalty on its rank coefficients, AdaLoRA
adds an orthogonality regulariser and reallocates ranks on a schedule that must know the run's length.
Their hooks are found by the method's peft tuner class (``type(peft_model.base_model)``):

- ``regularization_loss(tuner) -> Tensor | None``: a term added to the training loss;
- ``configure_options(options, total_steps) -> options``: fills run-dependent options before the adapter is
  built (AdaLoRA's ``total_step``); ``total_steps`` is ``None`` outside a fit. An option it fills must be
  one the tuner reads from its config at run time: when the model was built before the trainer knew the
  run's length, the task applies the fit's value to the live config;
- ``after_optimizer_step(tuner, step)``: called after each optimizer step, before the gradients are
  zeroed, with ``step`` the number of optimizer steps taken before this one (peft's ``i_step``);
- ``prepare_from_data(tuner, inputs)``: called once at the start of every fit, before the first step, with
  an iterable of the training split's model inputs (unshuffled batches on the model's device), for methods
  that derive non-trained state from the training data (a memory bank of the frozen model's features). Such
  state lives in the adapter's own tensors, so checkpoints and exported adapters carry it.

Methods written in verticals (and in domain packages) declare them as methods of their own tuner class
(``S2LoRAModel.regularization_loss``); peft's built-ins get them through :func:`register_adapter_hooks`
(AdaLoRA's, below). ``verticals.core.tasks.AdapterTask`` calls them for every task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from peft import PeftModel
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.adalora import AdaLoraModel
from torch import nn

__all__ = [
    "HOOK_NAMES",
    "AdapterHooks",
    "adapter_hooks",
    "adapter_tuner",
    "register_adapter_hooks",
    "tuner_class",
]

RegularizationLoss = Callable[[nn.Module], "torch.Tensor | None"]
ConfigureOptions = Callable[[dict[str, Any], "int | None"], dict[str, Any]]
AfterOptimizerStep = Callable[[nn.Module, int], None]
PrepareFromData = Callable[[nn.Module, Iterable[torch.Tensor]], None]

#: The hook names; a tuner class may define any of them as a method (``configure_options`` as a
#: staticmethod or classmethod, since it runs before the tuner exists).
HOOK_NAMES = ("regularization_loss", "configure_options", "after_optimizer_step", "prepare_from_data")


@dataclasses.dataclass(frozen=True)
class AdapterHooks:
    """The training-loop hooks of one PEFT method (each ``None`` when the method has none).

    ``regularizer_in_output_loss``: the tuner's own ``forward`` already adds the regulariser to an output's
    ``.loss`` (peft's AdaLoRA does when its forward is called, e.g. under ``PeftModelForSeq2SeqLM``); the
    task then logs it without adding it a second time.

    Attributes:
        regularization_loss: ``(tuner) -> Tensor | None``, a term added to the training loss.
        configure_options: ``(options, total_steps) -> options``, filling run-dependent options before the
            adapter is built (``total_steps`` is None outside a fit).
        after_optimizer_step: ``(tuner, step)``, called after each optimizer step (``step``: the optimizer
            steps taken before it).
        prepare_from_data: ``(tuner, inputs)``, called once at the start of every fit with the training
            split's model inputs, in order.
        regularizer_in_output_loss: the tuner's own ``forward`` already adds the regulariser to an output's
            ``.loss``, so the task logs it without adding it again.
    """

    regularization_loss: RegularizationLoss | None = None
    configure_options: ConfigureOptions | None = None
    after_optimizer_step: AfterOptimizerStep | None = None
    prepare_from_data: PrepareFromData | None = None
    regularizer_in_output_loss: bool = False

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in HOOK_NAMES)


_REGISTERED: dict[type, AdapterHooks] = {}


def register_adapter_hooks(
    tuner_cls: type[nn.Module],
    *,
    regularization_loss: RegularizationLoss | None = None,
    configure_options: ConfigureOptions | None = None,
    after_optimizer_step: AfterOptimizerStep | None = None,
    prepare_from_data: PrepareFromData | None = None,
    regularizer_in_output_loss: bool = False,
) -> None:
    """Declare the hooks of a tuner class that can't carry them itself (a peft built-in).

    Registering the same hooks again is a no-op; different hooks for a registered class are an error.

    Args:
        tuner_cls: the peft tuner class (``AdaLoraModel``); its subclasses get the hooks too.
        regularization_loss: ``(tuner) -> Tensor | None``, a term added to the training loss.
        configure_options: ``(options, total_steps) -> options``, filling run-dependent options before the
            adapter is built (``total_steps`` is None outside a fit).
        after_optimizer_step: ``(tuner, step)``, called after each optimizer step (``step``: the optimizer
            steps taken before it).
        prepare_from_data: ``(tuner, inputs)``, called once at the start of every fit with the training
            split's model inputs, in order.
        regularizer_in_output_loss: the tuner's own ``forward`` already adds the regulariser to an output's
            ``.loss``, so the task logs it without adding it again.
    """
    if not isinstance(tuner_cls, type):
        raise TypeError(f"`tuner_cls` must be a peft tuner class (e.g. AdaLoraModel), got {tuner_cls!r}.")
    hooks = AdapterHooks(
        regularization_loss,
        configure_options,
        after_optimizer_step,
        prepare_from_data,
        regularizer_in_output_loss,
    )
    if not hooks:
        raise ValueError(
            f"register_adapter_hooks({tuner_cls.__qualname__}) was given no hook; pass at least one."
        )
    existing = _REGISTERED.get(tuner_cls)
    if existing is not None and existing != hooks:
        raise ValueError(
            f"Adapter hooks for {tuner_cls.__module__}.{tuner_cls.__qualname__} are already registered "
            f"({existing}); got different ones ({hooks}). Subclass the tuner to give it other hooks."
        )
    _REGISTERED[tuner_cls] = hooks


def adapter_hooks(tuner_cls: type[nn.Module] | None) -> AdapterHooks:
    """The hooks of a tuner class: registered ones (nearest class in its MRO) over its own methods.

    Args:
        tuner_cls: a peft tuner class (``type(peft_model.base_model)``); None gives no hooks.
    """
    if tuner_cls is None:
        return AdapterHooks()
    registered = next(
        (_REGISTERED[klass] for klass in tuner_cls.__mro__ if klass in _REGISTERED), AdapterHooks()
    )
    found = {name: getattr(registered, name) or getattr(tuner_cls, name, None) for name in HOOK_NAMES}
    return AdapterHooks(**found, regularizer_in_output_loss=registered.regularizer_in_output_loss)


def tuner_class(method: str) -> type[nn.Module] | None:
    """The peft tuner class of a method name (``"adalora"`` -> ``AdaLoraModel``); None for a training regime
    (``full``, ``linear_probe``, ``bitfit``) or a prompt-learning method without a tuner.

    Args:
        method: a method name, case-insensitive (``lora``, ``adalora``, ``s2lora`` …).
    """
    for peft_type, model_cls in PEFT_TYPE_TO_TUNER_MAPPING.items():
        if str(getattr(peft_type, "value", peft_type)).lower() == method.lower():
            return model_cls
    return None


def adapter_tuner(model: nn.Module) -> nn.Module | None:
    """The tuner (``peft_model.base_model``) whose class keys the hooks; None for a model without adapter.

    Args:
        model: a model returned by :func:`~verticals.core.adapters.api.adapt`.
    """
    return model.base_model if isinstance(model, PeftModel) else None


# -- peft's AdaLoRA --------------------------------------------------------------------------------
def _adalora_total_step(options: dict[str, Any], total_steps: int | None) -> dict[str, Any]:
    """``total_step`` from the run's optimizer steps when the config leaves it unset."""
    if options.get("total_step"):
        return options
    tinit, tfinal = int(options.get("tinit", 0)), int(options.get("tfinal", 0))
    minimum = tinit + tfinal + 1  # AdaLoraConfig needs a budgeting phase: tinit < total_step - tfinal
    if total_steps is not None and total_steps < minimum:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"AdaLoRA's tinit ({tinit}) + tfinal ({tfinal}) leave no rank-budgeting phase in this run's "
            f"{total_steps} optimizer steps: total_step is set to {minimum}, so no rank is reallocated. Lower "
            "`tinit`/`tfinal` or train for more steps."
        )
    return {**options, "total_step": max(total_steps or 0, minimum)}


def _adalora_orthogonality(tuner: nn.Module) -> torch.Tensor | None:
    """``orth_reg_weight`` × the mean ‖PPᵀ − I‖_F over the adapter's A and B, the term peft's
    ``AdaLoraModel.forward`` adds to an output's ``.loss`` (same order of operations)."""
    name = getattr(tuner, "trainable_adapter_name", None)
    if name is None:  # every adapter in inference mode: nothing trains
        return None
    weight = tuner.peft_config[name].orth_reg_weight
    total: Any = 0
    count = 0
    for parameter_name, parameter in tuner.model.named_parameters():
        if ("lora_A" in parameter_name or "lora_B" in parameter_name) and name in parameter_name:
            covariance = parameter @ parameter.T if "lora_A" in parameter_name else parameter.T @ parameter
            identity = torch.eye(*covariance.size(), out=torch.empty_like(covariance))
            total = total + torch.norm(covariance - identity, p="fro")
            count += 1
    if count == 0:
        return None
    return weight * (total / count)


def _adalora_allocate(tuner: nn.Module, step: int) -> None:
    if getattr(tuner, "trainable_adapter_name", None) is not None:
        tuner.update_and_allocate(step)


register_adapter_hooks(
    AdaLoraModel,
    regularization_loss=_adalora_orthogonality,
    configure_options=_adalora_total_step,
    after_optimizer_step=_adalora_allocate,
    regularizer_in_output_loss=True,
)
