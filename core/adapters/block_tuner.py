"""What every tuner that wraps whole blocks shares (the bottleneck adapter in the core, the block adapters
domains register): ``target_modules`` is required, only the outermost of nested matches is wrapped, the
layer creates its adapters on the wrapped block's device, and merging is refused because the adapter is
nonlinear in the block's output."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from peft.utils import PeftType
from torch import nn

__all__ = ["BlockAdapterConfig", "BlockAdapterTuner", "nonlinear_merge_error"]


def nonlinear_merge_error(method: str, why: str) -> str:
    """The message of a refused merge: ``method`` adapters are nonlinear (``why``), so no weight change equals
    them."""
    return (
        f"{method} adapters cannot be merged: {why}, so no change to the wrapped block's weights is equivalent "
        "to them. Keep the PeftModel for inference, or call `unload()` to get the base model back without them."
    )


@dataclass
class BlockAdapterConfig(PeftConfig):
    """The fields every block-adapter config has: which blocks to wrap (required), which not, and which other
    modules train beside the adapters. Subclasses add their own fields and call :meth:`_check_targets`."""

    #: Block adapters wrap whole blocks (any module), not single layers.
    target_kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "Blocks to wrap (required). A list matches exact names or name endings; a string is a regex "
                "matched against the full module name."
            )
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Names (list) or a regex (string) of modules not to wrap."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules besides the adapters to train and save, e.g. a freshly initialised head."},
    )

    def _check_targets(self, peft_type: str) -> None:
        """Set the peft type, turn target lists into sets (as peft's own configs do) and check target regexes."""
        self.peft_type = PeftType(peft_type)
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
            elif isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as error:
                    raise ValueError(
                        f"`{name}` {value!r} is not a valid regex ({error}); give a regex or a list of names."
                    ) from None


class BlockAdapterTuner(BaseTuner):
    """A peft ``BaseTuner`` for adapters around blocks. Subclasses set ``prefix``, ``tuner_layer_cls`` (the
    layer class, subclass of peft's ``BaseTunerLayer``), ``adapter_noun`` and ``target_hint`` for messages,
    implement ``_create_and_replace`` and ``merge_error``."""

    # Block names differ per architecture, so there are no defaults: `target_modules` is required.
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}
    #: How messages name the adapters ("bottleneck adapters").
    adapter_noun: ClassVar[str] = "block adapters"
    #: What a user could write instead, for the missing-targets error.
    target_hint: ClassVar[str] = "target_modules=['blocks.0', 'blocks.1'] or a regex like r'.*blocks\\.\\d+'"

    def merge_error(self) -> str:
        """Why merging is refused and what to do instead."""
        raise NotImplementedError(f"{type(self).__name__} must implement `merge_error`.")

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        if peft_config.target_modules is None:
            raise ValueError(
                f"`target_modules` is required for {self.adapter_noun} (there is no default per architecture): "
                f"name the modules to wrap, e.g. {self.target_hint}."
            )
        return peft_config

    def _check_target_module_exists(self, peft_config: PeftConfig, key: str) -> bool | re.Match[str] | None:
        matched = check_target_module_exists(peft_config, key)
        if matched and self._inside_adapter_layer(key):
            # A target inside a module wrapped moments ago: peft could not even look it up any more.
            warnings.warn(
                f"Module '{key}' matches `target_modules` but lies inside a module that was just wrapped with "
                f"{self.adapter_noun}; only the outermost match is adapted. Narrow `target_modules` to silence "
                "this.",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        return matched

    def _inside_adapter_layer(self, key: str) -> bool:
        module = self.model
        for part in key.split(".")[:-1]:
            module = module._modules.get(part)
            if module is None:
                return False
            if isinstance(module, self.tuner_layer_cls):
                return True
        return False

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # BaseTuner's version moves the adapters to `child.weight`'s device, which a block doesn't have; the
        # layer already creates its adapters on the device and dtype of the module it wraps.
        setattr(parent, child_name, new_module)

    def _check_merge_allowed(self) -> None:
        raise ValueError(self.merge_error())
