"""Configuration of Sparsely-Shared LoRA (S2-LoRA): one low-rank pair per weight shape, sparse coefficients."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from peft.config import PeftConfig
from peft.utils import PeftType
from torch import nn


@dataclass
class S2LoRAConfig(PeftConfig):
    """Configuration of an :class:`S2LoRAModel`.

    Every adapted ``nn.Linear`` of shape (out, in) gets ``ΔW_m = s · B diag(λ_m) A``, where the pair
    ``A: r×in``, ``B: out×r`` is shared by all adapted weights of that shape and only the rank-coefficient
    vector ``λ_m`` (length r) is the weight's own. ``sparsity_weight`` β sets the L1 penalty
    ``β Σ_m ‖λ_m‖₁`` that :meth:`S2LoRAModel.regularization_loss` returns (the verticals tasks add it to
    the loss), pushing unneeded ranks of each weight to zero. This reading of the S2-LoRA abstract (shared
    pair per shape, per-weight diagonal, L1 on the diagonal) is ours; the paper's code was not available.

    Args:
        target_modules (`Union[list[str], str]`):
            Names of the ``nn.Linear`` modules to adapt: a list of names or name endings, or a regex that must
            match the full module name. Defaults to peft's LoRA targets for the transformers architectures it
            knows (such as ``q_proj``/``v_proj``).
        exclude_modules (`Optional[Union[list[str], str]]`):
            Names (list) or a regex (string) of modules not to adapt.
        r (`int`):
            Rank of the shared pairs (length of each ``λ_m``). Defaults to 8.
        alpha (`float`):
            Scale numerator: ``s = alpha / r`` (as LoRA's ``lora_alpha``). Defaults to 8.
        dropout (`float`):
            Dropout on the adapter branch's input. Defaults to 0.
        lambda_init (`float`):
            Initial value of every rank coefficient. Defaults to 1.0 (the shared ``B`` starts at zero, so the
            adapted model starts as the base model whatever this value is).
        sparsity_weight (`float`):
            β in the L1 penalty ``β Σ_m ‖λ_m‖₁``. Defaults to 1e-4; 0 turns the penalty off.
        init_weights (`bool`):
            True (default): ``A`` Kaiming-uniform, ``B`` zero, so ΔW = 0 at the start. False: ``B`` random too
            (for tests that need a non-zero update).
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save, e.g. a new head.
    """

    #: S2-LoRA adapts nn.Linear layers only (one shared low-rank pair per weight shape).
    target_kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "Names of the nn.Linear modules to adapt: a list of names or name endings, or a regex matched "
                "against the full module name."
            )
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Names (list) or a regex (string) of modules not to adapt."}
    )
    r: int = field(default=8, metadata={"help": "Rank of the shared low-rank pairs (length of each λ)."})
    alpha: float = field(
        default=8.0, metadata={"help": "Scale numerator: the update is scaled by alpha / r."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter's input."})
    lambda_init: float = field(default=1.0, metadata={"help": "Initial value of every rank coefficient λ."})
    sparsity_weight: float = field(
        default=1e-4, metadata={"help": "β of the L1 penalty β Σ_m ||λ_m||_1 on the rank coefficients."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: B starts at zero (ΔW = 0). False: B random too (for tests)."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules besides the adapters to train and save, e.g. a freshly initialised head."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType("S2LORA")
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"`r` must be a positive integer, got {self.r!r}.")
        for name in ("alpha", "lambda_init", "sparsity_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        if self.sparsity_weight < 0:
            raise ValueError(
                f"`sparsity_weight` must be >= 0 (0 turns the L1 penalty off), got {self.sparsity_weight}."
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a probability in [0, 1), got {self.dropout!r}.")
