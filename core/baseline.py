"""The baseline beside the adapter: what a practitioner of the task would try first, on the same test samples.

A number for an adapter means little without the cheap thing it should beat beside it. ``verticals run``
(:meth:`~verticals.core.cli.VerticalsTrainer.run`, unless ``--baseline false``) ends by scoring the tested
model and each applicable baseline on the same test samples, and writes, in the run directory,
``baseline.json``, the key ``"baseline"`` of ``report.json`` and a ``## Baseline`` section of ``report.md``
with a one-line verdict per baseline: "the adapter is 4.2 points above MiniRocket on test accuracy
(…; 95% CI of the difference [0.7, 7.9] points, paired bootstrap over 150 test samples)".

Which baseline: domain packages register theirs from their own folder, in one keyword-only call that
refuses a duplicate name (:func:`register_baseline`: a name, a line saying what it is, which tasks and
datamodules it ``applies`` to, how it ``predict``-s the test samples, and optionally when the config ``is``
the baseline itself, such as a zero-shot config). Every registered baseline that applies runs; when none
does, the generic one does: a linear probe on the frozen backbone's features
(:mod:`verticals.core.linear_probe`), or a skip with its reason in the report.

How they are compared: :mod:`verticals.core.baseline_scoring` scores both per test sample with the task's
metric (accuracy, MSE, Dice, the text metric's error rate), and :func:`compare` draws one set of bootstrap
resamples for both (:func:`verticals.core.seeds.paired_bootstrap`), so the test set's own noise cancels out
of the difference. The tested samples are those the Trainer tested (``limit_test_batches`` applies), in
dataset order, on the main process only.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from verticals.core.baseline_scoring import TaskScoring, concatenate, scoring_for, split_batches
from verticals.core.callbacks import run_directory
from verticals.core.checkpoint import fingerprint
from verticals.core.metrics.report import _json_safe
from verticals.core.registry import build_model
from verticals.core.seeds import CONFIDENCE, paired_bootstrap
from verticals.core.tasks.base import AdapterTask

__all__ = [
    "Baseline",
    "BaselineContext",
    "BaselineSkipped",
    "BuildRandomState",
    "add_baseline_to_report",
    "baseline_markdown",
    "baselines_for",
    "compare",
    "nothing_trained",
    "register_baseline",
    "registered_baselines",
    "run_baseline_step",
    "run_baselines",
    "verdict",
]

#: Bootstrap resamples of the paired difference (one set, shared by adapter and baseline).
N_BOOTSTRAP = 1000
#: How verdicts write a metric's name.
METRIC_NAMES = {"mse": "MSE", "mae": "MAE", "wer": "WER", "cer": "CER", "dice": "Dice", "miou": "mIoU"}
SECTION = "## Baseline"


class BaselineSkipped(Exception):
    """Raised by a baseline that can't run on this task or data; the message is the reason in the report."""


@dataclass(frozen=True)
class Baseline:
    """A registered baseline (see :func:`register_baseline`)."""

    name: str
    description: str
    applies: Callable[[AdapterTask, Any], bool]
    predict: Callable[[BaselineContext], Any]
    is_config: Callable[[BaselineContext], bool] | None = None


_BASELINES: dict[str, Baseline] = {}


def register_baseline(
    *,
    name: str,
    description: str,
    applies: Callable[[AdapterTask, Any], bool],
    predict: Callable[[BaselineContext], Any],
    is_config: Callable[[BaselineContext], bool] | None = None,
) -> Baseline:
    """Register the baseline a practitioner of a domain would try first, for the runs it ``applies`` to.

    Args:
        name: the baseline's name in reports (``"MiniRocket"``); unique.
        description: one line saying what it is and what it is fit on.
        applies: ``applies(task, datamodule)``: whether this baseline belongs beside this run.
        predict: ``predict(context)``: predictions for the ``context.test_count`` first test samples, in
            the task's form (see :mod:`verticals.core.baseline_scoring`: class indices, forecasts, label
            maps, texts); raise :class:`BaselineSkipped` with a reason when it can't run.
        is_config: ``is_config(context)``: whether the run's config is this baseline itself (a zero-shot or
            linear-probe config), which then is not compared with itself.

    Returns:
        The registered :class:`Baseline`.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A baseline needs a non-empty `name`, got {name!r}.")
    if name in _BASELINES:
        raise KeyError(f"A baseline called {name!r} is already registered; choose another name.")
    for label, function in (("applies", applies), ("predict", predict), ("is_config", is_config)):
        if function is not None and not callable(function):
            raise TypeError(f"`{label}` of baseline {name!r} must be callable, got {function!r}.")
    baseline = Baseline(name, description, applies, predict, is_config)
    _BASELINES[name] = baseline
    return baseline


def registered_baselines() -> list[str]:
    """Names of the registered baselines (of the domains imported so far)."""
    return sorted(_BASELINES)


def _unregister_baseline(name: str) -> None:
    """Undo :func:`register_baseline` (for tests that register throwaway baselines)."""
    if _BASELINES.pop(name, None) is None:
        raise KeyError(f"{name!r} is not a registered baseline; registered: {sorted(_BASELINES)}.")


def baselines_for(task: AdapterTask, datamodule: Any) -> list[Baseline]:
    """The registered baselines that apply to this run, in registration order; the generic linear probe when
    none does.

    Args:
        task: the run's task.
        datamodule: the run's datamodule.
    """
    found = [baseline for baseline in _BASELINES.values() if baseline.applies(task, datamodule)]
    if found:
        return found
    from verticals.core.linear_probe import LINEAR_PROBE

    return [LINEAR_PROBE]


def nothing_trained(context: BaselineContext) -> bool:
    """Whether the run took no optimizer step (``max_epochs: 0``): the tested model is the frozen one, so a
    zero-shot baseline is the config itself.

    Args:
        context: the run's baseline context (its Trainer counts the steps).
    """
    trainer = context.trainer
    return trainer is not None and int(trainer.global_step) == 0


# -- what a baseline sees ------------------------------------------------------------------------------------
@dataclass
class BaselineContext:
    """What a baseline's ``predict`` gets: the run's task, datamodule and Trainer, the scoring of the task,
    and how many test samples (the first ``test_count``, in dataset order) it must predict.

    ``rng_state``: torch's random state when the Trainer set the run up (see :class:`BuildRandomState`), so
    :meth:`frozen_network` rebuilds a randomly initialised backbone as the run built it. ``seed``: for a
    baseline's own randomness (the run's ``seed_everything`` seed, else 0).
    """

    task: AdapterTask
    datamodule: Any
    trainer: L.Trainer | None
    scoring: TaskScoring
    test_count: int
    test_batch_limit: int | None = None
    rng_state: dict[str, Any] | None = None
    seed: int = 0

    @property
    def device(self) -> torch.device:
        return self.task.device

    def batches(self, split: str) -> Iterator[Any]:
        """Every batch of ``split`` in dataset order, on the task's device (see ``split_batches``).

        Args:
            split: ``train``, ``val`` or ``test``.
        """
        return split_batches(self.datamodule, split, self.device)

    def test_batches(self) -> Iterator[Any]:
        """The test batches the adapter was scored on (the first ``test_count`` samples)."""
        return split_batches(self.datamodule, "test", self.device, limit=self.test_batch_limit)

    def predictions(self, forward: Callable[[Any], Any]) -> Any:
        """``forward(batch)`` over :meth:`test_batches`, joined (no gradients).

        Args:
            forward: a batch's predictions in the task's form (see :mod:`verticals.core.baseline_scoring`).
        """
        with torch.no_grad():
            return concatenate([forward(batch) for batch in self.test_batches()])

    def network_predictions(self, network: nn.Module) -> Any:
        """The predictions of ``network`` (a model of the kind the task trains) on the test samples.

        Args:
            network: e.g. the frozen model from :meth:`frozen_network`.
        """
        return self.predictions(lambda batch: self.scoring.network_predictions(network, batch))

    @contextmanager
    def frozen_network(
        self, *, model_args: Mapping[str, Any] | None = None, verify: bool = True
    ) -> Iterator[nn.Module]:
        """The task's network as built before training, without adapter, in eval mode on the task's device.

        Rebuilt from the task's model name (or ``class_path``) and ``model_args`` updated with
        ``model_args``; with ``verify``, its backbone must have the run's backbone fingerprint (otherwise
        the rebuild gave other weights). When it can't be rebuilt (a ready module, random weights that
        came out otherwise) and no ``model_args`` change was asked, a peft-wrapped model is used with its
        adapter switched off. Anything else raises :class:`BaselineSkipped`.

        Args:
            model_args: builder arguments that replace the task's own (a zero-shot head, real weights).
            verify: check the rebuilt backbone against the run's fingerprint.
        """
        task = self.task
        network, reason = None, ""
        if getattr(task, "_given_model", None) is not None:
            reason = "the model was given as a ready module, so it can't be rebuilt without its adapter"
        else:
            network = self._rebuild(model_args or {})
            expected = task.backbone_reference.get("fingerprint")
            found = fingerprint(getattr(network, "backbone", network))
            if verify and expected is not None and found != expected:
                reason = (
                    f"rebuilding {task.hparams['model']!r} gave another backbone than the run's (fingerprint "
                    f"{found[:12]}… instead of {str(expected)[:12]}…: random weights drawn otherwise?)"
                )
                network = None
        if network is not None:
            network.requires_grad_(False)
            network.to(self.device).eval()
            try:
                with torch.no_grad():
                    yield network
            finally:
                del network
            return
        model = task.model
        if not model_args and hasattr(model, "disable_adapter"):
            was_training = model.training
            model.eval()
            try:
                with model.disable_adapter(), torch.no_grad():
                    yield model
            finally:
                model.train(was_training)
            return
        raise BaselineSkipped(f"no frozen model to start from: {reason}.")

    def _rebuild(self, model_args: Mapping[str, Any]) -> nn.Module:
        task = self.task
        shape = task.hparams.get("input_shape")
        if shape is None:
            raise BaselineSkipped("the task does not know its `input_shape`, so its model can't be rebuilt.")
        args = {**(task.hparams.get("model_args") or {}), **model_args}
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        # On the device the Trainer built the network on (its random draws come from that device's generator).
        initialise = torch.device(self.device) if self.trainer is not None else nullcontext()
        with torch.random.fork_rng(devices=devices):
            if self.rng_state is not None:
                torch.set_rng_state(self.rng_state["cpu"])
                if devices and self.rng_state.get("cuda") is not None:
                    torch.cuda.set_rng_state_all(self.rng_state["cuda"])
            with initialise:
                return build_model(
                    task.hparams["model"],
                    input_shape=tuple(shape),
                    **task.model_outputs_kwargs(),
                    model_args=args,
                )


class BuildRandomState(L.Callback):
    """Keeps torch's random state at the first ``fit`` setup, just before the task builds its network, so
    a baseline can rebuild a randomly initialised backbone as it was (:meth:`BaselineContext.frozen_network`).
    Holds nothing in checkpoints."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.state is None:
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
            self.state = {"cpu": torch.get_rng_state(), "cuda": cuda}


# -- the comparison ------------------------------------------------------------------------------------------
def compare(
    statistic: Callable[[Mapping[str, np.ndarray]], float],
    adapter: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The adapter's and the baseline's statistic on the same samples and the paired difference.

    Args:
        statistic: the metric of the per-sample arrays of any samples.
        adapter: the adapter's per-sample arrays (first dimension = samples).
        baseline: the baseline's, on the same samples in the same order.
        n_bootstrap: resamples of the percentile interval (shared by both: paired).
        seed: seeds the resamples.
        confidence: the interval's level.

    Returns:
        ``{"baseline", "adapter", "difference": {"estimate", "low", "high", "confidence"}, "n_bootstrap"}``
        with the difference ``adapter - baseline``.
    """
    result = paired_bootstrap(statistic, baseline, adapter, n_bootstrap=n_bootstrap, seed=seed)
    difference = result.difference(confidence=confidence)
    return {
        "baseline": float(result.reference[0]),
        "adapter": float(result.other[0]),
        "difference": {
            "estimate": difference["value"],
            "low": difference["low"],
            "high": difference["high"],
            "confidence": confidence,
        },
        "n_bootstrap": n_bootstrap,
    }


def verdict(
    name: str,
    metric: str,
    comparison: Mapping[str, Any],
    *,
    higher_is_better: bool,
    in_points: bool,
    samples: int,
) -> str:
    """The one-line verdict: "The adapter is 4.2 points above MiniRocket on test accuracy (better; 0.913 vs
    0.871; 95% CI of the difference [0.7, 7.9] points, paired bootstrap over 150 test samples)."

    Args:
        name: the baseline's name.
        metric: the metric's name (``accuracy``, ``wer``, ``mse`` …).
        comparison: what :func:`compare` returned.
        higher_is_better: the metric's direction (says "better" or "worse").
        in_points: the metric is a share: the difference is given in percentage points (× 100).
        samples: how many test samples were compared.
    """
    difference = comparison["difference"]
    estimate, low, high = (float(difference[key]) for key in ("estimate", "low", "high"))
    scale, unit = (100.0, " points") if in_points else (1.0, "")

    def amount(value: float) -> str:
        return f"{value * scale:.1f}" if in_points else f"{value:.4g}"

    shown = "{:.4f}" if in_points else "{:.4g}"
    values = f"{shown.format(comparison['adapter'])} vs {shown.format(comparison['baseline'])}"
    metric = METRIC_NAMES.get(metric, metric)
    level = f"{round(float(difference.get('confidence', CONFIDENCE)) * 100)}%"
    if math.isnan(estimate):
        return f"The adapter and {name} could not be compared on test {metric} ({values})."
    if estimate == 0:
        where, judged = f"level with {name}", "no difference"
    else:
        side = "above" if estimate > 0 else "below"
        where = f"{amount(abs(estimate))}{unit} {side} {name}"
        judged = "better" if (estimate > 0) == higher_is_better else "worse"
    interval = (
        f"{level} CI of the difference [{amount(low)}, {amount(high)}]{unit}"
        if not (math.isnan(low) or math.isnan(high))
        else "no CI (too few samples to resample)"
    )
    line = (
        f"The adapter is {where} on test {metric} ({judged}; {values}; {interval}, paired bootstrap over "
        f"{samples} test sample{'s' if samples != 1 else ''})."
    )
    if not (math.isnan(low) or math.isnan(high)) and low <= 0 <= high:
        line += " The interval includes 0: this test set does not tell them apart."
    return line


# -- running them --------------------------------------------------------------------------------------------
def run_baselines(
    task: AdapterTask,
    datamodule: Any,
    *,
    trainer: L.Trainer | None = None,
    rng_state: dict[str, Any] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[dict[str, Any]]:
    """Score the tested task and every baseline for it on the same test samples; one entry per baseline.

    Args:
        task: the trained (and tested) task.
        datamodule: the run's datamodule (its test split is scored; baselines fit on its training split).
        trainer: the run's Trainer: its ``limit_test_batches`` and step count, and the device setup.
        rng_state: torch's random state before the network was built (:class:`BuildRandomState`).
        n_bootstrap: resamples of the paired interval.
        seed: seeds the resamples and the baselines' own randomness.
        confidence: the interval's level.

    Returns:
        Per baseline ``{"name", "description", "metric", "higher_is_better", …}`` with, when compared,
        ``"baseline"``, ``"adapter"``, ``"difference"``, ``"samples"``, ``"seconds"`` and ``"verdict"``; with
        ``"is_config": true`` when the config is the baseline itself; or ``"skipped"`` (the reason).
    """
    scoring = scoring_for(task)
    candidates = baselines_for(task, datamodule)
    if scoring is None:
        reason = f"{type(task).__name__} has no per-sample scoring to compare a baseline with"
        return [_skipped(candidate, None, reason) for candidate in candidates]
    limit = _test_batch_limit(datamodule, trainer)
    model = task.model
    was_training = model.training
    model.eval()
    truths, predictions = [], []
    started = time.perf_counter()
    try:
        with torch.no_grad():
            for batch in split_batches(datamodule, "test", task.device, limit=limit):
                truths.append(scoring.truth(batch))
                predictions.append(scoring.adapter_predictions(batch))
    finally:
        model.train(was_training)
    truth = concatenate(truths)
    adapter = scoring.per_sample(concatenate(predictions), truth)
    adapter_seconds = time.perf_counter() - started
    context = BaselineContext(
        task, datamodule, trainer, scoring, len(truth), limit, rng_state=rng_state, seed=seed
    )
    entries = []
    for candidate in candidates:
        entry = _run_one(candidate, context, adapter, truth, n_bootstrap, confidence)
        entry["adapter_seconds"] = adapter_seconds
        entries.append(entry)
    return entries


def _run_one(
    baseline: Baseline,
    context: BaselineContext,
    adapter: dict[str, np.ndarray],
    truth: Any,
    n_bootstrap: int,
    confidence: float,
) -> dict[str, Any]:
    scoring = context.scoring
    if context.test_count == 0:
        return _skipped(baseline, scoring, "the test split is empty")
    started = time.perf_counter()
    try:
        if baseline.is_config is not None and baseline.is_config(context):
            value = scoring.statistic(adapter)
            return {
                **_head(baseline, scoring),
                "is_config": True,
                "baseline": value,
                "adapter": value,
                "difference": None,
                "samples": context.test_count,
                "verdict": (
                    f"This config is the baseline ({baseline.name}): test "
                    f"{METRIC_NAMES.get(scoring.metric, scoring.metric)} "
                    f"{(f'{value:.4f}' if scoring.in_points else f'{value:.4g}')} on {context.test_count} test "
                    "samples; there is nothing to compare it with."
                ),
            }
        predictions = baseline.predict(context)
        count = len(predictions)
        if count != context.test_count:
            raise ValueError(
                f"baseline {baseline.name!r} gave {count} predictions for {context.test_count} test samples."
            )
        arrays = scoring.per_sample(predictions, truth)
    except BaselineSkipped as skipped:
        return _skipped(baseline, scoring, str(skipped))
    except ImportError as error:
        return _skipped(baseline, scoring, f"it needs a package that is not installed ({error})")
    except Exception as error:  # a finished run keeps its report; the failure is said, not hidden
        message = f"it failed: {type(error).__name__}: {error}"
        print(f"verticals: baseline {baseline.name!r}: {message}", file=sys.stderr, flush=True)
        return _skipped(baseline, scoring, message)
    seconds = time.perf_counter() - started
    comparison = compare(
        scoring.statistic, adapter, arrays, n_bootstrap=n_bootstrap, seed=context.seed, confidence=confidence
    )
    line = verdict(
        baseline.name,
        scoring.metric,
        comparison,
        higher_is_better=scoring.higher_is_better,
        in_points=scoring.in_points,
        samples=context.test_count,
    )
    return {
        **_head(baseline, scoring),
        **comparison,
        "samples": context.test_count,
        "seconds": seconds,
        "verdict": line,
    }


def _head(baseline: Baseline, scoring: TaskScoring | None) -> dict[str, Any]:
    return {
        "name": baseline.name,
        "description": baseline.description,
        "metric": scoring.metric if scoring is not None else None,
        "higher_is_better": scoring.higher_is_better if scoring is not None else None,
        "in_points": scoring.in_points if scoring is not None else None,
    }


def _skipped(baseline: Baseline, scoring: TaskScoring | None, reason: str) -> dict[str, Any]:
    reason = reason.rstrip(".")
    return {
        **_head(baseline, scoring),
        "skipped": reason,
        "verdict": f"No {baseline.name} baseline: {reason}.",
    }


def _test_batch_limit(datamodule: Any, trainer: L.Trainer | None) -> int | None:
    """Test batches the Trainer's ``limit_test_batches`` allowed over all processes (None: all): with
    ``k`` batches per process, the first ``k`` x processes batches of the unsharded loader are the samples
    the processes tested between them (a sampler without shuffling deals the samples out in turn)."""
    limit = getattr(trainer, "limit_test_batches", None) if trainer is not None else None
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return None
    if limit == 0:
        return 0
    if isinstance(limit, int):  # per process: the processes together tested this many batches each
        return limit * max(1, int(getattr(trainer, "world_size", 1)))
    loader = datamodule.dataloader("test", shuffle=False) if hasattr(datamodule, "dataloader") else None
    if loader is None:
        loader = datamodule.test_dataloader()
    return max(1, int(len(loader) * float(limit)))


# -- the run's report ----------------------------------------------------------------------------------------
def add_baseline_to_report(run_dir: Path | str, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``baseline.json`` into ``run_dir``, set ``report.json["baseline"]`` (the entry, or the list of
    them when there are several) and put a ``## Baseline`` section at the end of ``report.md``, replacing one
    written before. A report file that is not there is left alone.

    Args:
        run_dir: the run directory.
        results: the entries :func:`run_baselines` returned.

    Returns:
        The content of ``baseline.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = _json_safe([dict(entry) for entry in results])
    payload = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "baselines": entries}
    (run_dir / "baseline.json").write_text(json.dumps(payload, indent=2) + "\n")
    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report["baseline"] = entries[0] if len(entries) == 1 else entries
        report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown_path = run_dir / "report.md"
    if markdown_path.is_file():
        text = _without_section(markdown_path.read_text(), SECTION).rstrip("\n")
        markdown_path.write_text(text + "\n\n" + baseline_markdown(entries))
    return payload


def baseline_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """The ``## Baseline`` section: one bullet per baseline, its description and verdict.

    Args:
        results: the entries :func:`run_baselines` returned.
    """
    lines = [SECTION, ""]
    for entry in results:
        lines.append(
            f"- **{entry['name']}** ({entry.get('description') or 'no description'}): {entry['verdict']}"
        )
    if not results:
        lines.append("- No baseline applies to this run.")
    return "\n".join(lines) + "\n"


def _without_section(text: str, heading: str) -> str:
    """``text`` without the section that starts at ``heading`` (up to the next heading of its level)."""
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    return pattern.sub("", text)


def run_baseline_step(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: Any,
    *,
    rng_state: dict[str, Any] | None = None,
) -> list[dict[str, Any]] | None:
    """What ``verticals run`` does after testing: the baselines and their report, on the main process
    (the others wait at a barrier); nothing under ``fast_dev_run``. Keeps the run's random state as it was.

    Args:
        trainer: the run's Trainer, after ``test``.
        model: the tested task.
        datamodule: the run's datamodule.
        rng_state: torch's random state before the network was built (:class:`BuildRandomState`).

    Returns:
        The baseline entries on the main process, None elsewhere or when nothing ran.
    """
    if trainer.fast_dev_run:
        return None
    directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
    entries = None
    if trainer.is_global_zero:
        what = ""
        if not isinstance(model, AdapterTask) or datamodule is None:
            what = (
                "no datamodule" if datamodule is None else f"{type(model).__name__} is not a verticals task"
            )
        else:
            seed = int(os.environ.get("PL_GLOBAL_SEED", "0") or 0)
            try:
                with _kept_random_state():
                    entries = run_baselines(
                        model, datamodule, trainer=trainer, rng_state=rng_state, seed=seed
                    )
            except Exception as error:  # the finished run keeps its report; the failure is said, not raised
                what = f"scoring the test samples failed: {type(error).__name__}: {error}"
                print(f"verticals: {what}", file=sys.stderr, flush=True)
        if entries is None:
            entries = [{"name": "baseline", "skipped": what, "verdict": f"No baseline: {what}."}]
        add_baseline_to_report(directory, entries)
        for entry in entries:
            print(f"Baseline: {entry['verdict']}", flush=True)
    trainer.strategy.barrier("verticals_baseline")
    return entries


@contextmanager
def _kept_random_state() -> Iterator[None]:
    """Python's, numpy's and torch's random states as they were after the baselines ran."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
