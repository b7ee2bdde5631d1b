"""One entry point to adapt any ``nn.Module``: a peft config, or a method name plus options.

Besides every peft method (``lora``, ``adalora``, ``ia3``, ``loha``, ``ln_tuning`` …) and the methods
verticals registers with peft (``bottleneck``, ``s2lora`` …), three training regimes that are not adapters
are accepted so that one config key can compare them all: ``linear_probe`` (only ``trainable`` modules
train), ``bitfit`` (only bias terms train, Ben Zaken et al. 2022), ``full`` (everything trains) and
``frozen`` (nothing trains: a zero-shot baseline evaluated with ``max_epochs: 0``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from collections.abc import Sequence
from typing import Any

from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch import nn

from verticals.core.adapters import bottleneck as _bottleneck  # noqa: F401  (registers "bottleneck" with peft)
from verticals.core.adapters import s2lora as _s2lora  # noqa: F401  (registers "s2lora" with peft)
from verticals.core.adapters.modules_to_save import restrict_modules_to_save
from verticals.core.adapters.options import AdapterOptionError, check_options
from verticals.core.adapters.targets import resolve_targets
from verticals.core.peft_methods import target_kinds

REGIMES = ("linear_probe", "bitfit", "full", "frozen")


@dataclasses.dataclass
class AdapterSpec:
    """What to adapt and how, as it appears under ``model.adapter`` in a config file.

    Args:
        method: a peft method name (``lora``, ``adalora``, ``ln_tuning`` …), a verticals method
            (``bottleneck``, ``s2lora``), or a regime: ``linear_probe`` / ``bitfit`` / ``full`` / ``frozen``.
        targets: a preset (``attention``, ``qv``, ``mlp``, ``all-linear``, ``blocks``, ``layernorm``, or
            one a backbone family adds, such as ``clip_qkv``), a regex over module names, or a list of
            module names; resolved per backbone family (``verticals.core.adapters.families``) and narrowed
            to the module kinds the method declares (``target_kinds`` on its config class).
        trainable: modules trained in full beside the adapter (heads, patch embeddings); saved with it.
        options: the method's own config fields (``r``, ``lora_alpha``, ``bottleneck_dim`` …), checked
            against the config class's field types before peft sees them
            (:mod:`verticals.core.adapters.options`): a bad value is an ``AdapterOptionError`` naming it.
    """

    method: str = "lora"
    targets: str | list[str] | None = "attention"
    trainable: list[str] = dataclasses.field(default_factory=list)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def peft_methods() -> list[str]:
    """Names of every method ``adapt`` accepts."""
    return sorted(str(peft_type.value).lower() for peft_type in PEFT_TYPE_TO_CONFIG_MAPPING) + list(REGIMES)


def build_peft_config(
    model: nn.Module,
    method: str,
    targets: str | Sequence[str] | None,
    trainable: Sequence[str] = (),
    **options: Any,
) -> PeftConfig:
    """A peft config for ``method`` with presets resolved to the anchored module names of ``model``.

    Options are checked first (:func:`~verticals.core.adapters.options.check_options`); a value peft's own
    config then refuses is an :class:`AdapterOptionError` as well.

    Args:
        model: the backbone the targets are resolved on.
        method: a peft method name (``lora``, ``ia3`` …) or one verticals registers (``bottleneck``,
            ``s2lora``).
        targets: a preset (``attention``, ``qv``, ``mlp``, ``all-linear`` …), a regex over module names or a
            list of names; None leaves ``target_modules`` to peft's default for the model.
        trainable: modules trained in full beside the adapter (peft's ``modules_to_save``).
        **options: the method config's own fields (``r``, ``lora_alpha`` …).
    """
    config_cls = _config_class(method)
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - field_names)
    if unknown:
        raise AdapterOptionError(
            f"Unknown option(s) {unknown} for method {method!r}; {config_cls.__name__} accepts: "
            f"{sorted(name for name in field_names if not name.startswith('_'))}."
        )
    check_options(config_cls, options, method)
    kwargs = dict(options)
    if targets is not None and "target_modules" in field_names:
        kwargs["target_modules"] = resolve_targets(model, targets, kinds=target_kinds(config_cls))
    if trainable:
        kwargs["modules_to_save"] = resolve_targets(model, list(trainable), kinds=(nn.Module,))
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise AdapterOptionError(
            f"Method {method!r} refuses options {dict(options)}: {_sentence(error)} Fix the adapter's options "
            f"(see {config_cls.__name__})."
        ) from error


def adapt(
    model: nn.Module,
    method: str | PeftConfig | AdapterSpec = "lora",
    *,
    targets: str | Sequence[str] | None = "attention",
    trainable: Sequence[str] = (),
    adapter_name: str = "default",
    **options: Any,
) -> nn.Module:
    """Freeze ``model`` and add an adapter; returns a ``peft.PeftModel`` (or ``model`` for the regimes).

    ``adapt(backbone, "lora", targets="attention", r=8, lora_alpha=16)`` or ``adapt(backbone, LoraConfig(...))``.

    Args:
        model: the backbone; its parameters are frozen in place but for what the method trains (``full``:
            all), and peft methods wrap it.
        method: a method name (see :func:`peft_methods`; ``linear_probe`` / ``bitfit`` / ``full`` /
            ``frozen`` too), a ready peft config (its string ``target_modules`` may name a preset), or an
            :class:`AdapterSpec` (its fields replace ``targets``, ``trainable`` and the options).
        targets: a preset (``attention``, ``qv``, ``mlp``, ``all-linear``, ``blocks``, ``layernorm`` or a
            family's own), a regex over module names, or a list of names; resolved per backbone family.
        trainable: modules trained in full beside the adapter (heads, patch embeddings); saved with it.
        adapter_name: peft's name for the adapter; give another to hold several on one model.
        **options: the method's config fields (``r``, ``lora_alpha``, ``lora_dropout`` …), checked before
            peft sees them; the regimes take none.
    """
    if isinstance(method, AdapterSpec):
        return adapt(
            model,
            method.method,
            targets=method.targets,
            trainable=method.trainable,
            adapter_name=adapter_name,
            **method.options,
        )
    if isinstance(method, PeftConfig):
        config = method
        check_options(type(config), _changed_fields(config), _method_name(config))
        if isinstance(getattr(config, "target_modules", None), str):
            resolved = resolve_targets(model, config.target_modules, kinds=target_kinds(type(config)))
            config = dataclasses.replace(config, target_modules=resolved)
        return _peft_model(model, config, adapter_name)

    name = method.lower()
    if name in REGIMES:
        if options:
            raise ValueError(f"Method {name!r} takes no options, got {sorted(options)}.")
        _set_regime(model, name, trainable, targets)
        return model
    config = build_peft_config(model, name, targets, trainable, **options)
    return _peft_model(model, config, adapter_name)


def _peft_model(model: nn.Module, config: PeftConfig, adapter_name: str) -> nn.Module:
    """``get_peft_model``, with ``modules_to_save`` kept to the modules named (see ``modules_to_save.py``).

    peft checks some values only while it builds the layers (LoRA's ``r: 0``); such a ``ValueError`` is an
    :class:`AdapterOptionError` naming the method and its options.
    """
    try:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    except ValueError as error:
        options = _changed_fields(config)
        raise AdapterOptionError(
            f"Building the {_method_name(config)!r} adapter failed: {_sentence(error)} Its options were "
            f"{options}; fix them (see {type(config).__name__})."
        ) from error
    restrict_modules_to_save(peft_model)
    return peft_model


def _sentence(error: Exception) -> str:
    text = str(error).strip()
    return text if text.endswith((".", "!", "?")) else text + "."


#: Fields peft fills in itself (bookkeeping), never options a user chose.
_BOOKKEEPING = frozenset(
    {
        "target_modules",
        "modules_to_save",
        "peft_type",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "auto_mapping",
        "task_type",
    }
)


def _method_name(config: PeftConfig) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type)).lower()


def _changed_fields(config: PeftConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from their defaults (what a user set), targets excepted."""
    changed = {}
    for field in dataclasses.fields(config):
        if field.name in _BOOKKEEPING or field.name.startswith("_"):
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, field.name, default)
        try:
            same = bool(value == default)
        except Exception:  # a value whose comparison is not a plain bool
            same = False
        if not same:
            changed[field.name] = value
    return changed


def _config_class(method: str) -> type[PeftConfig]:
    config_cls = _registered_config_class(method)
    if config_cls is None:
        # A method a domain registers (in its ``adapters.py``) is known once that module is imported; a config
        # naming such a method on a backbone of its own has imported nothing of the domain yet.
        _import_domain_adapters()
        config_cls = _registered_config_class(method)
    if config_cls is None:
        raise ValueError(f"Unknown adapter method {method!r}. Choose one of: {', '.join(peft_methods())}.")
    return config_cls


def _registered_config_class(method: str) -> type[PeftConfig] | None:
    for peft_type, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if str(peft_type.value).lower() == method.lower():
            return config_cls
    return None


def _import_domain_adapters() -> None:
    """Import every installed ``verticals.domains.<name>.adapters`` module, skipping domains whose extra is
    not installed (their methods then stay unknown, and the error lists what is)."""
    import verticals.domains

    for module in pkgutil.iter_modules(verticals.domains.__path__):
        name = f"verticals.domains.{module.name}.adapters"
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except ImportError:
            continue


def _set_regime(
    model: nn.Module, regime: str, trainable: Sequence[str], targets: str | Sequence[str] | None = None
) -> None:
    if regime == "full":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    if regime == "frozen":
        if trainable:
            raise ValueError(
                f"Method 'frozen' trains nothing, but `trainable` names {list(trainable)}: use 'linear_probe' to "
                "train those modules."
            )
        return
    if regime == "bitfit":
        _enable_biases(model, targets)
        for name in resolve_targets(model, list(trainable), kinds=(nn.Module,)) if trainable else []:
            model.get_submodule(name).requires_grad_(True)
        return
    if not trainable:
        raise ValueError(
            "Method 'linear_probe' needs `trainable` (e.g. ['head']): otherwise nothing would train."
        )
    for name in resolve_targets(model, list(trainable), kinds=(nn.Module,)):
        model.get_submodule(name).requires_grad_(True)


def _enable_biases(model: nn.Module, targets: str | Sequence[str] | None) -> None:
    """BitFit: train the bias terms of every module (``targets=None``) or of the ``targets`` modules only."""
    modules = (
        [model]
        if targets is None
        else [model.get_submodule(name) for name in resolve_targets(model, targets, kinds=(nn.Module,))]
    )
    biases = [
        parameter
        for module in modules
        for name, parameter in module.named_parameters()
        if name == "bias" or name.endswith(".bias")
    ]
    if not biases:
        raise ValueError(
            f"Method 'bitfit' found no bias parameters in {type(model).__name__} under targets {targets!r}; "
            "choose targets whose modules have biases (or targets: null for the whole model)."
        )
    for parameter in biases:
        parameter.requires_grad_(True)
