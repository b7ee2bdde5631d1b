"""verticals.core: domain-agnostic adapters, tasks, metrics, IO and the CLI.

Importing it registers verticals' own PEFT methods with peft, so their adapters load with stock
``peft.PeftModel.from_pretrained``.
"""

from verticals.core.adapters.api import AdapterSpec, adapt, build_peft_config, peft_methods
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
from verticals.core.adapters.targets import detect_families, detect_family, resolve_targets
from verticals.core.registry import build_model, register_model, registered_models

__all__ = [
    "AdapterSpec",
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
    "register_model",
    "registered_models",
    "resolve_targets",
    "save_adapter",
    "unmerge",
]
