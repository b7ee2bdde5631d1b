"""What the run report keeps from a test to draw its figures: per-sample outputs and a few examples.

Two things, both cheap:

- the per-sample tensors a task's ``test_step`` returns (classification's ``probs`` / ``target``,
  segmentation's per-class Dice, ``group`` codes …): small rows, concatenated across batches and gathered
  from every process at the end (:class:`CollectedOutputs`, which the ``GroupReport`` collects with too);
- up to ``max_examples`` whole examples a task offers in its ``report_examples`` attribute during a test step
  (segmentation's image, true and predicted masks; a forecast with its context and truth), kept on the first
  process only, copied to the CPU, so memory stays bounded whatever the test set's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: Examples kept for the figures that show samples (overlay grids, forecasts).
MAX_EXAMPLES = 4


def per_sample_tensors(outputs: Any) -> dict[str, torch.Tensor]:
    """The tensors of a test step's output dict that have one row per sample (the same first dimension);
    empty when the output is not such a dict (a task whose ``test_step`` returns nothing).

    Args:
        outputs: what ``test_step`` returned.
    """
    if not isinstance(outputs, Mapping):
        return {}
    tensors = {
        str(key): value
        for key, value in outputs.items()
        if isinstance(value, torch.Tensor) and value.ndim >= 1
    }
    if len({len(value) for value in tensors.values()}) != 1:
        return {}
    if "group" in tensors and tensors["group"].ndim == 1:
        tensors["group"] = tensors["group"][:, None]
    return tensors


class CollectedOutputs(Metric):
    """The test step's per-sample tensors, concatenated across batches and devices (uneven sizes allowed).

    Args:
        keys: the names of the per-sample tensors each ``update`` receives.
    """

    full_state_update = False

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__()
        self.keys = tuple(keys)
        for index in range(len(self.keys)):
            self.add_state(f"column_{index}", default=[], dist_reduce_fx="cat")

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        for index, key in enumerate(self.keys):
            value = outputs[key].detach()
            if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
                value = value.float()  # numpy has no bfloat16
            getattr(self, f"column_{index}").append(value)

    def compute(self) -> dict[str, np.ndarray]:
        return {
            key: dim_zero_cat(getattr(self, f"column_{index}")).cpu().numpy()
            for index, key in enumerate(self.keys)
        }


class ReportOutputs:
    """Collects a test's per-sample outputs and a bounded number of examples for the run report.

    Call :meth:`reset` when a test starts, :meth:`add` after each test batch and :meth:`compute` on every
    process when it ends (the gather is collective). Batches whose outputs change keys or are not per-sample
    are left out of the per-sample arrays (the figures then use the batches that were), never an error: a
    report's figures must not stop a run that trained for hours.

    Args:
        max_examples: how many examples of ``report_examples`` to keep (0: none).
    """

    def __init__(self, max_examples: int = MAX_EXAMPLES) -> None:
        if max_examples < 0:
            raise ValueError(f"`max_examples` must be >= 0, got {max_examples}.")
        self.max_examples = max_examples
        self.reset()

    def reset(self) -> None:
        """Forget the previous test's outputs and examples."""
        self._collected: CollectedOutputs | None = None
        self._examples: dict[str, list[torch.Tensor]] = {}
        self.examples_kept = 0
        self.skipped_batches = 0

    def add(self, outputs: Any, pl_module: Any, *, keep_examples: bool = True) -> None:
        """Take one test batch: its per-sample ``outputs`` and, with ``keep_examples`` (the first process),
        the examples the task left in ``pl_module.report_examples`` (which is then cleared)."""
        tensors = per_sample_tensors(outputs)
        if tensors:
            if self._collected is None:
                self._collected = CollectedOutputs(sorted(tensors)).to(tensors[next(iter(tensors))].device)
            if set(tensors) == set(self._collected.keys):
                self._collected.update(tensors)
            else:
                self.skipped_batches += 1
        examples = getattr(pl_module, "report_examples", None)
        if examples is not None:
            pl_module.report_examples = None
            if keep_examples:
                self._keep_examples(examples)

    def _keep_examples(self, examples: Mapping[str, torch.Tensor]) -> None:
        need = self.max_examples - self.examples_kept
        tensors = {key: value for key, value in examples.items() if isinstance(value, torch.Tensor)}
        if need <= 0 or not tensors or set(tensors) != (set(self._examples) or set(tensors)):
            return
        count = min(need, *(len(value) for value in tensors.values()))
        for key, value in tensors.items():
            kept = value[:count].detach()
            if kept.is_floating_point() and kept.dtype not in (torch.float32, torch.float64):
                kept = kept.float()  # numpy has no bfloat16
            self._examples.setdefault(key, []).append(kept.cpu().clone())
        self.examples_kept += count

    def compute(self) -> dict[str, np.ndarray]:
        """The per-sample arrays of the whole test, gathered from every process (call it on each)."""
        if self._collected is None or not self._collected.update_called:
            return {}
        arrays = self._collected.compute()
        self._collected = None
        return arrays

    def examples(self) -> dict[str, np.ndarray]:
        """The kept examples, one array per key with one row per example (empty without any)."""
        return {key: torch.cat(parts).numpy() for key, parts in self._examples.items()}
