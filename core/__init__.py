"""verticals.core: domain-agnostic adapters, tasks, metrics, IO and the CLI.

Importing it registers verticals' own PEFT methods with peft, so their adapters load with stock
``peft.PeftModel.from_pretrained``.  A domain plugs in through three registries, each filled by one
keyword-only call at import of the domain's own modules: :func:`register_family` (backbone families and
their target presets), :func:`register_method` (PEFT methods) and :func:`register_model` (model builders).
"""

from verticals.core.adapters.api import AdapterSpec, adapt, build_peft_config, peft_methods
from verticals.core.adapters.families import (
    BackboneFamily,
    detect_families,
    detect_family,
    register_family,
    registered_families,
)
from verticals.core.adapters.io import (
    compose,
    load_adapter,
    load_adapter_ensemble,
    merge,
    merge_in_place,
    negate,
    save_adapter,
    unmerge,
)
from verticals.core.adapters.summary import ParameterSummary, parameter_summary
from verticals.core.adapters.targets import resolve_targets
from verticals.core.peft_methods import register_method, registered_methods
from verticals.core.registry import build_model, register_model, registered_models

__all__ = [
    "AdapterSpec",
    "BackboneFamily",
    "ParameterSummary",
    "adapt",
    "build_model",
    "build_peft_config",
    "compose",
    "detect_families",
    "detect_family",
    "load_adapter",
    "load_adapter_ensemble",
    "merge",
    "merge_in_place",
    "negate",
    "parameter_summary",
    "peft_methods",
    "register_family",
    "register_method",
    "register_model",
    "registered_families",
    "registered_methods",
    "registered_models",
    "resolve_targets",
    "save_adapter",
    "unmerge",
]
