"""The template every verticals task follows: backbone + adapter + head + loss + metrics.

Subclasses fill ``configure_losses``, ``configure_metrics`` and ``_step``; the base owns the model build
(from the registry or a ready ``nn.Module``), the adapter and its lifecycle (the method's regulariser in the
training loss, its schedule stepped after each optimizer step: see ``verticals.core.adapters.lifecycle``),
the optional group objective (group-DRO, a mutual-information penalty: ``verticals.core.group_objective``),
an optimizer over trainable parameters only, checkpoints that hold only what was trained, and the run's
callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.fused import use_fused_lora
from verticals.core.adapters.lifecycle import AdapterHooks, adapter_hooks, adapter_tuner, tuner_class
from verticals.core.adapters.merging import merge_for_predict, unmerge
from verticals.core.adapters.summary import ParameterSummary, parameter_summary
from verticals.core.checkpoint import check_backbone, fingerprint, statistics_buffer_names, trainable_state
from verticals.core.group_objective import (
    GroupObjective,
    GroupObjectiveLoss,
    WorstGroupLoss,
    check_feature_split,
)
from verticals.core.prefix_cache import FrozenPrefixCache, PrefixCacheOptions
from verticals.core.registry import build_model

# Substrings of a monitored metric's name that say which way is better (checked in this order).
_LOWER_IS_BETTER = ("gap", "loss", "error", "mse", "mae", "wer", "cer", "ece", "hd95")
#: Lightning strategies that shard parameters, so peft can't merge an adapter into whole weights there.
_SHARDING_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
_HIGHER_IS_BETTER = ("auroc", "accuracy", "f1", "dice", "iou", "precision", "recall")


class AdapterTask(L.LightningModule):
    """Base task. ``model`` is a registered model name or ``{class_path, init_args}`` naming any importable
    ``nn.Module`` class or factory (configs; see :func:`verticals.core.registry.build_model`), or a ready
    ``nn.Module`` (Python).

    ``monitor`` / ``monitor_mode`` override the metric that picks the best checkpoint (the class default,
    e.g. ``val_accuracy``); a ``monitor`` without ``monitor_mode`` gets the mode its name implies (``max``
    for AUROC, accuracy, F1, Dice, IoU; ``min`` for losses, errors and gaps). With ``val_fraction: 0``
    validation runs on the training set, and ``monitor: val_loss`` then keeps the best-fitting (usually the
    last) epoch.

    ``group_objective`` (a :class:`~verticals.core.group_objective.GroupObjective` or a dict of its fields)
    trains over the groups of batches that carry ``"group"``: group-DRO, a CLUB / adversarial penalty on
    the information the features keep about a sensitive attribute; tasks whose ``accepts_group_objective``
    is true take it. They then log ``{stage}_worst_group_loss`` (and ``{stage}_mi_estimate`` with a penalty).

    The built model should expose its frozen pretrained part as ``.backbone`` (used for the backbone
    fingerprint and the trainable-% figure) and may list ``unused_parameters`` (regexes) that the
    backbone count leaves out, such as a word-embedding table a non-text model never reads.

    Args:
        model: the network to adapt: a registered model name (``timeseries.patch_transformer``; see
            ``verticals.core.registry.registered_models``) or ``{class_path, init_args}`` naming your own
            ``nn.Module`` class or factory; from Python, a ready ``nn.Module`` too.
        model_args: keyword arguments for the model's builder (``encoder``, ``checkpoint``, ``size`` …: see
            the builder's own ``Args``); a name the builder does not take is an error, not ignored.
        adapter: what to adapt and how (``method``, ``targets``, ``trainable``, ``options``; see
            ``AdapterSpec``); required: a peft method, or ``linear_probe`` / ``bitfit`` / ``full`` /
            ``frozen`` to compare against one.
        input_shape: shape of one input without the batch axis (``[channels, length]``, ``[3, 224, 224]``);
            default: the datamodule's ``input_shape``. Give it to build the model before a Trainer runs.
        learning_rate: learning rate of the task's AdamW over the trainable parameters (the peak of the
            cosine schedule).
        weight_decay: AdamW's decoupled weight decay (0 turns it off).
        warmup_fraction: share of the run's optimizer steps (0..1) spent ramping the learning rate up
            linearly before the cosine decay; used only with ``scheduler: cosine``.
        scheduler: ``cosine`` (linear warm-up, then cosine decay to 0 over the run's steps) or ``constant``
            (``learning_rate`` throughout).
        monitor: the logged metric that picks the best checkpoint (and the one tested), e.g. ``val_loss``
            or ``val_worst_group_auroc``; default: the task's own (``val_accuracy``, ``val_mse`` …).
        monitor_mode: ``min`` or ``max``, whether lower or higher ``monitor`` is better; default: the mode
            the metric's name implies.
        group_objective: train over the data's groups (group-DRO, a mutual-information penalty on a
            sensitive attribute): a ``GroupObjective`` or a dict of its fields; None trains on the mean loss.
        cache_frozen_prefix: compute the frozen modules before the first trained one once per sample and replay
            them (``true``, or ``{dtype: float16, max_gb: 8, directory: PATH}``; see
            :class:`~verticals.core.prefix_cache.PrefixCacheOptions`). Off by default: it costs memory, and float16
            storage changes results slightly. The run report says whether it was used. Not saved in checkpoints.
        fused_lora: run peft's LoRA/DoRA ``Linear`` layers through verticals' fused kernels
            (:func:`verticals.kernels.enable_fused_lora`, switched on once the adapted model is built, so also
            after a checkpoint loads): Triton on CUDA tensors, peft's own forward everywhere else (on CPU the
            option changes nothing). A setting of how to run, like the device: not saved in checkpoints.
    """

    monitor = "val_loss"
    mode = "min"
    #: Whether the task computes per-sample losses and hands them to :meth:`group_objective_loss`.
    accepts_group_objective = False
    #: Set by a test step to tensors of whole examples the run report may draw (segmentation: ``x``,
    #: ``truth``, ``predicted``; forecasting: ``x``, ``y``, ``forecast``), one row per sample of the batch:
    #: references, not copies; the report keeps a few rows and clears it (``verticals.core.report_outputs``).
    report_examples: dict[str, torch.Tensor] | None = None

    def __init__(
        self,
        model: str | dict[str, Any],
        model_args: dict[str, Any] | None = None,
        adapter: AdapterSpec | dict[str, Any] | None = None,
        input_shape: list[int] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        scheduler: str = "cosine",
        monitor: str | None = None,
        monitor_mode: str | None = None,
        group_objective: GroupObjective | dict[str, Any] | None = None,
        fused_lora: bool = False,
        cache_frozen_prefix: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        if monitor is not None:
            self.monitor = monitor
        if monitor_mode is not None:
            if monitor_mode not in ("min", "max"):
                raise ValueError(f"`monitor_mode` must be 'min' or 'max', got {monitor_mode!r}.")
            self.mode = monitor_mode
        elif monitor is not None:
            self.mode = monitor_mode_of(monitor, default=self.mode)
        if isinstance(model, nn.Module):
            self._given_model: nn.Module | None = model
            model_name = type(model).__name__
        else:
            self._given_model = None
            # A registered name, or {class_path, init_args} kept as a plain dict (weights_only checkpoints).
            model_name = model if isinstance(model, str) else _plain(model)
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"`scheduler` must be 'cosine' or 'constant', got {scheduler!r}.")
        spec = adapter if isinstance(adapter, AdapterSpec) or adapter is None else AdapterSpec(**adapter)
        self.adapter_spec = spec
        # The options as given: run-dependent ones (AdaLoRA's total_step) are filled from them per fit.
        self._given_adapter_options = dict(spec.options) if spec is not None else {}
        objective = GroupObjective.coerce(group_objective)
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        # `fused_lora` is how to run, not what was trained: a checkpoint's value must not override the command's.
        # So is `cache_frozen_prefix`.
        self.save_hyperparameters(
            ignore=["model", "adapter", "group_objective", "fused_lora", "cache_frozen_prefix"]
        )
        self.fused_lora = fused_lora
        self.prefix_cache_options = PrefixCacheOptions.coerce(cache_frozen_prefix)
        self.prefix_cache: FrozenPrefixCache | None = None
        #: What the last fit's frozen-prefix cache did (:meth:`FrozenPrefixCache.summary`); the run report shows it.
        self.prefix_cache_summary: dict[str, Any] = {"used": False}
        self.hparams["model"] = model_name
        self.hparams["adapter"] = dataclasses.asdict(spec) if spec is not None else None
        self.hparams["group_objective"] = dataclasses.asdict(objective) if objective is not None else None
        self.group_objective: GroupObjective | None = self.configure_group_objective()
        if self.group_objective is not None and not self.accepts_group_objective:
            raise ValueError(
                f"{type(self).__name__} does not take a `group_objective`: its steps compute no per-sample "
                "losses. Classification, forecasting and segmentation tasks take one."
            )
        self.net: nn.Module | None = None
        self.group_loss: GroupObjectiveLoss | None = None
        self.backbone_reference: dict[str, Any] = {}
        self.strict_loading = False  # checkpoints hold only trained tensors; on_load_checkpoint checks them
        self._adapter_loss_added = False
        self._output_loss_regularized = False
        self._options_steps: int | None = None  # the run length the adapter's options were filled for
        self.configure_losses()
        if self._given_model is not None or (input_shape is not None and self._shapes_known()):
            self.configure_model()

    # -- hooks for subclasses -------------------------------------------------------------
    def configure_losses(self) -> None:
        raise NotImplementedError

    def configure_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def model_outputs_kwargs(self) -> dict[str, Any]:
        """Task-specific build arguments (``num_outputs``) passed to the model builder."""
        raise NotImplementedError

    def configure_group_objective(self) -> GroupObjective | None:
        """The group objective this task trains with (default: the ``group_objective`` argument)."""
        return GroupObjective.coerce(self.hparams.get("group_objective"))

    def configure_group_metrics(self, sensitive_names: list[str]) -> None:
        """Called once the group objective is built: a task may add per-group metrics of the sensitive
        attribute's groups (``sensitive_names``) here."""

    def _shapes_known(self) -> bool:
        return True

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        """Fill missing shape arguments from the datamodule (called before the model is built)."""
        if self.hparams.get("input_shape") is None:
            self._set_inferred("input_shape", list(datamodule.input_shape))

    def _set_inferred(self, key: str, value: Any) -> None:
        """Record a value taken from the datamodule, so checkpoints and logged hparams carry it."""
        self.hparams[key] = value
        initial = getattr(self, "_hparams_initial", None)
        if initial is not None:
            initial[key] = value

    # -- model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.net is None:
            self._build_network()
        self._configure_group_loss()

    def _build_network(self) -> None:
        if self.adapter_spec is None:
            raise ValueError("`adapter` is required: a peft method, 'linear_probe' or 'full'.")
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "datamodule", None) is not None:
            self._infer_from_datamodule(trainer.datamodule)
        if self._given_model is not None:
            network = self._given_model
        else:
            if self.hparams.get("input_shape") is None:
                raise ValueError(
                    f"{type(self).__name__} needs `input_shape` (or a datamodule that provides it) to build "
                    f"model {self.hparams['model']!r}."
                )
            network = build_model(
                self.hparams["model"],
                input_shape=tuple(self.hparams["input_shape"]),
                **self.model_outputs_kwargs(),
                model_args=self.hparams.get("model_args"),
            )
        backbone = getattr(network, "backbone", network)
        self.backbone_reference = {
            "source": getattr(network, "backbone_source", type(backbone).__name__),
            "fingerprint": fingerprint(backbone),
        }
        if self.adapter_hooks().configure_options is not None:
            self._options_steps = self._fit_steps()
            self._set_adapter_options(self._adapter_options(self._options_steps))
        self.net = adapt(network, self.adapter_spec)
        if self.fused_lora:
            use_fused_lora(self.net, self.adapter_spec.method)
        self._watch_output_loss()
        _freeze_unused(self.net, getattr(network, "unused_parameters", ()))
        self.train_metrics, self.val_metrics, self.test_metrics = self._metric_clones()

    @property
    def model(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError("The model is built in configure_model(); call it (or run a Trainer) first.")
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def parameter_summary(self) -> ParameterSummary:
        """Counts, with the trainable % relative to the pretrained weights: the network's ``backbone`` unless it
        names its pretrained parts in a ``pretrained_prefix`` regex (a SAM's encoder *and* its decoder)."""
        network = self._base_network()
        unused = getattr(network, "unused_parameters", ())
        prefix = getattr(network, "pretrained_prefix", r"(?:^|\.)backbone\.")
        return parameter_summary(self.model, backbone_prefix=prefix, ignore=unused)

    def _base_network(self) -> nn.Module:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # -- adapter lifecycle ---------------------------------------------------------------
    def adapter_tuner(self) -> nn.Module | None:
        """The peft tuner of the adapter (``peft_model.base_model``); None for ``full`` / ``linear_probe`` /
        ``bitfit``."""
        return adapter_tuner(self.model)

    def adapter_hooks(self) -> AdapterHooks:
        """The adapter method's training-loop hooks (see ``verticals.core.adapters.lifecycle``)."""
        tuner = self.adapter_tuner() if self.net is not None else None
        if tuner is not None:
            return adapter_hooks(type(tuner))
        return (
            adapter_hooks(tuner_class(self.adapter_spec.method))
            if self.adapter_spec is not None
            else AdapterHooks()
        )

    def regularization_loss(self) -> torch.Tensor | None:
        """The adapter's own regulariser (S2-LoRA's ``β Σ‖λ‖₁``, AdaLoRA's orthogonality term), if it has one."""
        hook = self.adapter_hooks().regularization_loss
        tuner = self.adapter_tuner()
        return hook(tuner) if hook is not None and tuner is not None else None

    def adapter_loss(self, loss: torch.Tensor, stage: str = "train") -> torch.Tensor:
        """``loss`` plus the adapter's regulariser when training (logged as ``train_adapter_regularization``).

        Call it on the loss ``_step`` returns; ``training_step`` calls it when ``_step`` did not, so no task
        trains without the regulariser. A regulariser the tuner's forward already put into the model
        output's ``.loss`` (AdaLoRA under a peft task model) is logged, not added again.
        """
        if stage != "train":
            return loss
        self._adapter_loss_added = True
        penalty = self.regularization_loss()
        in_output, self._output_loss_regularized = self._output_loss_regularized, False
        if penalty is None:
            return loss
        self.log(
            "train_adapter_regularization",
            penalty.detach(),
            on_step=True,
            on_epoch=True,
            batch_size=1,
            sync_dist=True,
        )
        return loss if in_output else loss + penalty

    def after_optimizer_step(self, step: int) -> None:
        """Run the adapter's per-step hook (AdaLoRA's rank allocation); ``step`` counts the optimizer steps
        taken before this one."""
        hook = self.adapter_hooks().after_optimizer_step
        tuner = self.adapter_tuner()
        if hook is not None and tuner is not None:
            hook(tuner, step)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        # Lightning zeroes the gradients in the next step's closure, so the hook still sees this step's.
        step = self.global_step  # optimizer steps completed before this one
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_optimizer_step(step)

    def on_fit_start(self) -> None:
        """Before the first step: the method's state derived from the training data (its
        ``prepare_from_data`` hook), and, for a model built before the trainer (a ready module, a known input
        shape), the run-dependent adapter options of this fit (AdaLoRA's ``total_step``) on its live config."""
        self._unmerge_after_predict()
        self._prepare_adapter_from_data()
        self._attach_prefix_cache()
        if self.adapter_spec is None or self.adapter_hooks().configure_options is None:
            return
        steps = self._fit_steps()
        if steps == self._options_steps:
            return  # built in this fit, with its step count
        self._options_steps = steps
        options = self._adapter_options(steps)
        changed = {
            key: value for key, value in options.items() if self.adapter_spec.options.get(key) != value
        }
        tuner = self.adapter_tuner()
        if not changed or tuner is None:
            return
        for config in tuner.peft_config.values():
            for key, value in changed.items():
                setattr(config, key, value)
        self._set_adapter_options(options)

    def _attach_prefix_cache(self) -> None:
        """With ``cache_frozen_prefix`` on, cache for this fit (set up on its first training batch)."""
        self._detach_prefix_cache()
        if self.prefix_cache_options.enabled:
            self.prefix_cache = FrozenPrefixCache(self.model, self.prefix_cache_options, self._fit_samples())
            self.prefix_cache_summary = self.prefix_cache.summary()

    def _detach_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache_summary = self.prefix_cache.summary()
            self.prefix_cache.remove()
            self.prefix_cache = None

    def on_fit_end(self) -> None:
        """The frozen-prefix cache lives for one fit: testing and predicting after it run every module."""
        self._detach_prefix_cache()

    def _fit_samples(self) -> int | None:
        """Training + validation samples of this fit (for the cache's up-front size message); None if unknown."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sizes = []
        for split in ("train", "val"):
            try:
                sizes.append(len(datamodule.split_dataset(split)))
            except Exception:  # no verticals datamodule, or a split without a length: say nothing up front
                return None
        return sum(sizes)

    def on_train_epoch_start(self) -> None:
        """Apply the network's own train-mode policy before each training epoch (see :func:`apply_train_policy`)."""
        apply_train_policy(self.model)

    def _prepare_adapter_from_data(self) -> None:
        prepare = self.adapter_hooks().prepare_from_data
        tuner = self.adapter_tuner()
        if prepare is None or tuner is None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            raise ValueError(
                f"Adapter method {self.adapter_spec.method!r} reads the training data once before training "
                "(its prepare_from_data hook), but this fit has no datamodule: pass one "
                "(trainer.fit(task, datamodule=...))."
            )
        if hasattr(datamodule, "dataloader"):  # a verticals datamodule
            loader = datamodule.dataloader("train", shuffle=False)
        else:  # any LightningDataModule: its training loader, in dataset order
            loader = datamodule.train_dataloader()
            if isinstance(loader, DataLoader):
                loader = DataLoader(
                    loader.dataset,
                    batch_size=loader.batch_size or 1,
                    shuffle=False,
                    collate_fn=loader.collate_fn,
                    num_workers=loader.num_workers,
                )
        device = self.device

        def inputs() -> Iterator[torch.Tensor]:
            for batch in loader:
                yield (batch["x"] if isinstance(batch, dict) else batch[0]).to(device)

        with evaluation_mode(self.model), torch.no_grad():
            prepare(tuner, inputs())

    def _adapter_options(self, total_steps: int | None) -> dict[str, Any]:
        configure = self.adapter_hooks().configure_options
        options = dict(self._given_adapter_options)
        return dict(configure(options, total_steps)) if configure is not None else options

    def _set_adapter_options(self, options: dict[str, Any]) -> None:
        if options != self.adapter_spec.options:
            self.adapter_spec = dataclasses.replace(self.adapter_spec, options=dict(options))
        if self.hparams.get("adapter") is not None:
            self.hparams["adapter"]["options"] = dict(options)

    def _fit_steps(self) -> int | None:
        """The fit's optimizer steps (Lightning's estimate); None outside ``fit`` or for an endless run."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        estimate = trainer.estimated_stepping_batches
        return int(estimate) if math.isfinite(estimate) else None

    def _watch_output_loss(self) -> None:
        """Note when the tuner's own forward puts its regulariser into an output's ``.loss``."""
        tuner = self.adapter_tuner()
        if tuner is None or not adapter_hooks(type(tuner)).regularizer_in_output_loss:
            return

        def note(module: nn.Module, args: Any, output: Any) -> None:
            self._output_loss_regularized = isinstance(getattr(output, "loss", None), torch.Tensor)

        tuner.register_forward_hook(note)

    # -- group objective -----------------------------------------------------------------
    def _configure_group_loss(self) -> None:
        """Build the group objective's nets and weights once the groups are known (given, or the datamodule's)."""
        objective = self.group_objective
        if objective is None or self.group_loss is not None or self.net is None:
            return
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if objective.group_attributes is None and getattr(datamodule, "group_attributes", None):
            objective = dataclasses.replace(
                objective,
                group_attributes=list(datamodule.group_attributes),
                group_names=objective.group_names
                or {key: list(value) for key, value in datamodule.group_names.items()},
            )
            self.group_objective = objective
            self._record_group_objective()
        if not objective.group_attributes:
            return
        attribute = objective.attribute or objective.group_attributes[0]
        names = (objective.group_names or {}).get(attribute) or []
        self.configure_group_metrics(list(names))
        self.group_loss = GroupObjectiveLoss(
            objective,
            group_attributes=objective.group_attributes,
            group_names=objective.group_names or {},
            num_classes=self.hparams.get("num_classes"),
            feature_dim=self._group_feature_width(),
        )
        count = self.group_loss.group_count()
        self.val_group_loss, self.test_group_loss = WorstGroupLoss(count), WorstGroupLoss(count)

    def _record_group_objective(self) -> None:
        """Keep groups taken from the datamodule in the hparams, so a checkpoint rebuilds the objective."""
        self._set_inferred("group_objective", dataclasses.asdict(self.group_objective))

    def _group_feature_width(self) -> int | None:
        """Width of ``z`` for the penalty: ``feature_dim``, ``num_classes`` (on logits),
        ``model.num_features`` or a probe forward."""
        objective = self.group_objective
        if objective is None or not objective.needs_features:
            return None
        network = self._base_network()
        if objective.penalty_on == "logits":
            check_feature_split(network)
            if self.hparams.get("num_classes"):
                return int(self.hparams["num_classes"])
            return self._probe_width(lambda x: self.model.forward_head(self.model.forward_features(x)))
        if objective.feature_dim:
            return int(objective.feature_dim)
        check_feature_split(network)
        width = getattr(network, "num_features", None)
        if isinstance(width, int) and width > 0:
            return width
        return self._probe_width(self.model.forward_features)

    def _probe_width(self, function: Callable[[torch.Tensor], torch.Tensor]) -> int:
        from verticals.core.group_objective import pool_features

        shape = self.hparams.get("input_shape")
        if shape is None:
            raise ValueError(
                "Pass the group objective's `feature_dim` (the width of z) or `input_shape` to probe it."
            )
        with evaluation_mode(self.model), torch.no_grad():
            width = pool_features(function(torch.zeros(2, *shape))).shape[-1]
        return int(width)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(z, output)``: ``z`` is what the group objective's penalty reads (``forward_features`` or, with
        ``penalty_on: logits``, the output), None when it needs none; the output is ``forward(x)``'s."""
        objective = self.group_objective
        if objective is None or not objective.needs_features:
            return None, self(x)
        features = self.model.forward_features(x)
        output = self.model.forward_head(features)
        return (output if objective.penalty_on == "logits" else features), output

    def group_objective_loss(
        self,
        per_sample: torch.Tensor,
        batch: Mapping[str, Any],
        stage: str,
        *,
        features: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(task loss, loss to train on)`` from per-sample losses ``[N]``.

        Without a group objective both are their mean. With one, the task loss is group-DRO's weighted loss
        (training) or the mean, and the training loss adds the penalty on ``features`` (``z`` from
        :meth:`forward_with_features`); ``target`` (``[N]`` class labels) serves ``conditional`` and
        ``groups: sensitive_label``. Log the task loss as ``{stage}_loss`` and return the training loss.
        """
        objective = self.group_objective
        if objective is None:
            mean = per_sample.mean()
            return mean, mean
        groups = batch.get("group")
        if groups is not None and groups.ndim == 1:
            groups = groups[:, None]
        if objective.penalty != "none" or objective.group_dro:
            if groups is None:
                raise ValueError(
                    "The group objective (penalty / group-DRO) needs batches with a 'group' entry (LongTensor[N, A] "
                    "codes of the group attributes); this batch has keys " + str(sorted(batch)) + "."
                )
            if self.group_loss is None:
                raise ValueError(
                    f"{type(self).__name__}'s group objective does not know the groups: pass "
                    "`group_objective.group_attributes` and `group_names`, or use a datamodule that exposes them."
                )
        if self.group_loss is None or groups is None:
            mean = per_sample.mean()
            return mean, mean
        task_loss, loss, estimate = self.group_loss(
            per_sample,
            groups,
            target=target,
            features=features,
            train=stage == "train",
            epochs_done=self._epochs_done(),
        )
        size = len(per_sample)
        if estimate is not None:
            self.log(
                f"{stage}_mi_estimate",
                estimate,
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=True,
            )
        if stage == "train" and loss is not task_loss:
            self.log("train_total_loss", loss, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        worst = getattr(self, f"{stage}_group_loss", None)
        if worst is not None:
            worst.update(per_sample, self.group_loss.group_codes(groups, target))
            self.log(f"{stage}_worst_group_loss", worst, on_step=False, on_epoch=True, batch_size=size)
        return task_loss, loss

    def _epochs_done(self) -> float | None:
        """Training epochs completed, in fractions (for the penalty's warm-up); None outside a trainer."""
        trainer = self._trainer
        if trainer is None:
            return None
        batches = trainer.num_training_batches
        per_epoch = batches if isinstance(batches, int) and batches > 0 else 1
        return self.global_step / per_epoch

    # -- training ------------------------------------------------------------------------
    def _metric_clones(self) -> tuple[MetricCollection, MetricCollection, MetricCollection]:
        metrics = self.configure_metrics()
        return metrics.clone(prefix="train_"), metrics.clone(prefix="val_"), metrics.clone(prefix="test_")

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._adapter_loss_added = False
        loss = self._step(batch, "train")
        return loss if self._adapter_loss_added else self.adapter_loss(loss)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"])

    #: Whether ``predict`` merges the adapter into its weights first (peft's ``merge_adapter``; see
    #: :mod:`verticals.core.adapters.merging` for which methods can). ``verticals predict --merge_adapter false``
    #: sets it to False for a run; from Python, set it on the task.
    merge_for_predict: bool = True
    _merged_for_predict = False

    def on_predict_start(self) -> None:
        """Merge the adapter for predict (no adapter cost per sample), when ``merge_for_predict`` is on and the
        method can merge; a method that can't runs unmerged, and one log line says why."""
        strategy = getattr(self._trainer, "strategy", None)
        sharded = any(klass.__name__ in _SHARDING_STRATEGIES for klass in type(strategy).__mro__)
        self._merged_for_predict = merge_for_predict(
            self.model, wanted=self.merge_for_predict, sharded=sharded
        )

    def on_predict_end(self) -> None:
        """Unmerge after predict, so the task trains, validates and tests on its adapter layers as before."""
        self._unmerge_after_predict()

    def _unmerge_after_predict(self) -> None:
        # Also called when another stage starts: a predict that raised never reached on_predict_end.
        if self._merged_for_predict and self.net is not None:
            unmerge(self.net)
        self._merged_for_predict = False

    def on_validation_start(self) -> None:
        self._unmerge_after_predict()

    def on_test_start(self) -> None:
        self._unmerge_after_predict()

    #: ``--optimizer`` / ``--lr_scheduler`` from the command line (``{class_path, init_args}``); see
    #: :meth:`use_optimizer`.
    optimizer_init: dict[str, Any] | None = None
    lr_scheduler_init: dict[str, Any] | None = None

    def use_optimizer(
        self, optimizer: dict[str, Any] | None = None, lr_scheduler: dict[str, Any] | None = None
    ) -> None:
        """Train with this optimizer and/or scheduler (``{class_path, init_args}``, as LightningCLI's
        ``--optimizer`` / ``--lr_scheduler`` give them), built over the trainable parameters when Lightning asks
        for them (after ``configure_model``). As in LightningCLI, an optimizer without a scheduler trains at
        a constant rate: it replaces the task's AdamW and its schedule. A scheduler without an optimizer
        schedules the task's AdamW (``learning_rate``, ``weight_decay``) instead of its own schedule."""
        self.optimizer_init, self.lr_scheduler_init = optimizer, lr_scheduler

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the trainable parameters, less those of the group objective's own
        auxiliary optimiser."""
        objective = self.group_loss
        own = {id(parameter) for parameter in objective.own_parameters()} if objective is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in own]

    def configure_optimizers(self) -> Any:
        parameters = self.optimizer_parameters()
        if not parameters:
            if self.adapter_spec is not None and self.adapter_spec.method == "frozen":
                return None  # a zero-shot evaluation: nothing to optimise
            raise ValueError("Nothing to train: the adapter left no trainable parameters.")
        if self.optimizer_init is not None or self.lr_scheduler_init is not None:
            from lightning.pytorch.cli import LightningCLI, instantiate_class

            optimizer = (
                instantiate_class(parameters, self.optimizer_init)
                if self.optimizer_init is not None
                else self._default_optimizer(parameters)
            )
            scheduler = (
                instantiate_class(optimizer, self.lr_scheduler_init)
                if self.lr_scheduler_init is not None
                else None
            )
            return LightningCLI.configure_optimizers(self, optimizer, scheduler)
        optimizer = self._default_optimizer(parameters)
        if self.hparams["scheduler"] == "constant":
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.hparams["warmup_fraction"] * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _default_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            parameters, lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )

    def configure_callbacks(self) -> list[L.Callback]:
        """The run's callbacks (``verticals.core.callbacks.default_callbacks``): its checkpoints, adapter
        export, timing and report. A checkpoint callback the user gave the Trainer (``--trainer.callbacks``)
        is kept, and the task then adds none of its own; with ``enable_checkpointing=False`` neither."""
        from verticals.core.callbacks import default_callbacks

        # The same instances on every trainer call, so fit's timing reaches the report written at test.
        if getattr(self, "_run_callbacks", None) is None:
            callbacks = default_callbacks(monitor=self.monitor, mode=self.mode)
            if not self._adds_checkpoints():
                callbacks = [callback for callback in callbacks if not isinstance(callback, ModelCheckpoint)]
            self._run_callbacks = callbacks
            report = self.group_report_callback()
            if report is not None:
                self._run_callbacks.append(report)
        # Only those this trainer does not hold yet: `run` asks again for its test, and Lightning's override of
        # attached callbacks matches by type over a set, so a ModelCheckpoint subclass could be attached twice
        # and (by set order) become the trainer's `checkpoint_callback` in place of the best one.
        attached = (
            {id(callback) for callback in self._trainer.callbacks} if self._trainer is not None else set()
        )
        returned = [callback for callback in self._run_callbacks if id(callback) not in attached]
        if self._trainer is not None and any(isinstance(callback, ModelCheckpoint) for callback in returned):
            # Lightning's own default ModelCheckpoint() gives way to the task's checkpoints. Taken out here, not
            # left for Lightning to replace, which prints "... will override existing callbacks" on every run.
            self._trainer.callbacks = [
                callback
                for callback in self._trainer.callbacks
                if not isinstance(callback, ModelCheckpoint) or is_user_checkpoint(callback)
            ]
        return returned

    def _adds_checkpoints(self) -> bool:
        """Whether the task adds its checkpoint callbacks: no trainer yet, or one that checkpoints with
        only Lightning's own default ``ModelCheckpoint()`` (a user's one stays; disabled stays disabled)."""
        trainer = self._trainer
        if trainer is None:
            return True
        found = trainer.checkpoint_callbacks
        return bool(found) and not any(is_user_checkpoint(callback) for callback in found)

    def group_report_callback(self) -> L.Callback | None:
        """The per-group report this run writes at test end: a ``GroupReport`` when the task has a
        ``report_bootstrap`` (number of bootstrap resamples, 0 for none) that is not None, else none."""
        bootstrap = self.hparams.get("report_bootstrap")
        if bootstrap is None:
            return None
        from verticals.core.group_report import GroupReport

        return GroupReport(n_bootstrap=bootstrap)

    # -- checkpoints ---------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def checkpoint_names(self) -> list[str]:
        """What a checkpoint keeps: the trainable parameters, the norm layers' running statistics and the
        adapter's tensors that are not trained (a memory bank a method derives from the training data)."""
        names = [*self.trainable_names(), *statistics_buffer_names(self)]
        return [*names, *sorted(set(self.frozen_adapter_names()) - set(names))]

    def frozen_adapter_names(self) -> list[str]:
        """State-dict names of the active adapter's tensors that are not trained (empty for most methods)."""
        tuner = self.adapter_tuner()
        prefix = getattr(tuner, "prefix", None) if tuner is not None else None
        if not prefix:
            return []
        # By tensor, not by name: a module reachable under two names lists its trained parameters under one.
        return [
            name
            for name, tensor in self.state_dict(keep_vars=True).items()
            if not tensor.requires_grad and any(part.startswith(prefix) for part in name.split("."))
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trainable_state(checkpoint["state_dict"], self.checkpoint_names())
        checkpoint["verticals"] = {
            "backbone": dict(self.backbone_reference),
            "trainable": self.trainable_names(),
        }
        if self.group_loss is not None:
            checkpoint["verticals"].update(self.group_loss.checkpoint_state())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from verticals.core.file_errors import VerticalsFileError, check_tensors

        source = getattr(self._trainer, "ckpt_path", None) or "checkpoint"
        saved = (checkpoint.get("hyper_parameters") or {}).get("adapter")
        differences = adapter_differences(self._given_adapter(), saved)
        if differences:
            rows = "\n".join(
                f"  adapter.{field}: the checkpoint has {value!r}, this task has {given!r}"
                for field, given, value in differences
            )
            raise VerticalsFileError(
                f"{source}: the checkpoint was trained with another adapter than this task is configured with:\n"
                f"{rows}\nA checkpoint loads only onto the adapter it was trained with: configure the task "
                f"with the checkpoint's values ({type(self).__name__}.load_from_checkpoint(path) does), or "
                "train a new run with the new ones.",
                None if source == "checkpoint" else source,
            )
        self.configure_model()
        path = None if source == "checkpoint" else source
        info = checkpoint.get("verticals")
        if info is None:
            raise VerticalsFileError(
                f"{source}: this checkpoint was not written by a verticals task (no 'verticals' entry): it can't "
                "be checked against the backbone. Load weights with verticals.core.load_adapter instead.",
                path,
            )
        try:
            check_backbone(
                info["backbone"],
                self.backbone_reference,
                "checkpoint" if path is None else f"checkpoint {source}",
            )
        except ValueError as error:
            raise VerticalsFileError(str(error), path) from None
        # Checkpoints of FairClassificationTask before the group objective kept q at the task's top level.
        checkpoint["state_dict"] = {
            (f"group_loss.{name}" if name.startswith("attribute_net.") else name): tensor
            for name, tensor in checkpoint["state_dict"].items()
        }
        own = set(self.trainable_names())
        saved = set(checkpoint["state_dict"])
        missing, unexpected = sorted(own - saved), sorted(saved - set(self.state_dict()))
        if missing or unexpected:
            raise VerticalsFileError(
                f"{source}: the checkpoint's trained tensors don't match this task's adapter: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}. Was it trained with another adapter config?",
                path,
            )
        check_tensors(
            checkpoint["state_dict"],
            self.state_dict(),
            source,
            fix="Load it into the task (and adapter options) it was trained with, or start a new run.",
            allow_missing=True,
        )
        if self.group_loss is not None:
            self.group_loss.load_checkpoint_state(info)

    def _given_adapter(self) -> dict[str, Any] | None:
        """The adapter as configured (options as given, before the run fills any), for checkpoint checks."""
        adapter = self.hparams.get("adapter")
        if adapter is None:
            return None
        return {**adapter, "options": dict(self._given_adapter_options)}


#: An adapter option a checkpoint does not set (it was trained with the method's default).
NOT_SET = type("NotSet", (), {"__repr__": lambda self: "not set (the method's default)"})()


def apply_train_policy(network: nn.Module) -> None:
    """Run ``network.train()``'s overrides (e.g. a backbone that keeps its BatchNorm statistics, see
    :func:`~verticals.core.adapters.batchnorm.keep_batchnorm_statistics`) without switching anything else on.

    Lightning never calls ``train()`` at fit start, and after each validation it restores every module's
    ``training`` flag directly, so a model's ``train()`` override would otherwise not run: a frozen backbone's
    BatchNorms would update their running statistics on every batch. Only what the override turns *off*
    is kept: a module left in eval mode on purpose (a pretrained encoder's dropout) stays in eval mode.

    Args:
        network: the task's network (backbone, adapter and head), changed in place.
    """
    before = {module: module.training for module in network.modules()}
    network.train()
    for module, was_training in before.items():
        module.training = module.training and was_training


@contextmanager
def evaluation_mode(network: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every module's own mode back (not ``train(was_training)``, which would
    switch on a frozen encoder's dropout that loading left off).

    Args:
        network: the module to put in eval mode for the block.
    """
    before = {module: module.training for module in network.modules()}
    network.eval()
    try:
        yield
    finally:
        for module, was_training in before.items():
            module.training = was_training


def adapter_differences(given: Any, saved: Any) -> list[tuple[str, Any, Any]]:
    """``(field, given, saved)`` for each adapter setting where a configured adapter (``given``) differs
    from a checkpoint's (``saved``, its ``hyper_parameters["adapter"]``): ``method``, ``targets``,
    ``trainable`` and every option ``given`` sets (``options.r``). Options only the checkpoint has are not
    differences: a method fills some per run (AdaLoRA's ``total_step``). Empty when either side is None."""
    given, saved = _plain(given), _plain(saved)
    if not isinstance(given, dict) or not isinstance(saved, dict):
        return []
    differences = [
        (field, given.get(field), saved.get(field))
        for field in ("method", "targets", "trainable")
        if field in given and not _same_setting(given.get(field), saved.get(field))
    ]
    saved_options = saved.get("options") or {}
    for name, value in sorted((given.get("options") or {}).items()):
        if name not in saved_options:
            differences.append((f"options.{name}", value, NOT_SET))
        elif not _same_setting(value, saved_options[name]):
            differences.append((f"options.{name}", value, saved_options[name]))
    return differences


def _same_setting(given: Any, saved: Any) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return list(given) == list(saved)
    if given in (None, []) and saved in (None, []):
        return True
    return bool(given == saved)


def mark_user_checkpoint(callback: ModelCheckpoint) -> None:
    """Mark a ``ModelCheckpoint`` as the user's (the CLI marks those in ``--trainer.callbacks``): the task
    keeps it and adds no checkpoint callback of its own, even when its arguments are all defaults."""
    callback._verticals_given = True  # type: ignore[attr-defined]


def is_user_checkpoint(callback: ModelCheckpoint) -> bool:
    """A checkpoint callback the user gave: marked, or any but Lightning's own default ``ModelCheckpoint()``
    (the one a Trainer adds when it was given none; a ``Trainer(callbacks=[ModelCheckpoint()])`` from
    Python can't be told from it)."""
    if getattr(callback, "_verticals_given", False) or type(callback) is not ModelCheckpoint:
        return True
    return _checkpoint_settings(callback) != _checkpoint_settings(ModelCheckpoint())


def _checkpoint_settings(callback: ModelCheckpoint) -> tuple[Any, ...]:
    names = (
        "dirpath", "filename", "monitor", "verbose", "save_last", "save_top_k", "save_on_exception",
        "save_weights_only", "mode", "auto_insert_metric_name", "_every_n_train_steps", "_every_n_epochs",
        "_train_time_interval", "_save_on_train_epoch_end",
    )  # fmt: skip
    return tuple(getattr(callback, name, None) for name in names)


def monitor_mode_of(name: str, default: str = "min") -> str:
    """``min`` or ``max`` for a monitored metric's name (``val_worst_group_auroc`` -> ``max``,
    ``val_auroc_gap`` -> ``min``); ``default`` when the name does not say."""
    lowered = name.lower()
    if any(key in lowered for key in _LOWER_IS_BETTER):
        return "min"
    if any(key in lowered for key in _HIGHER_IS_BETTER):
        return "max"
    return default


def _freeze_unused(model: nn.Module, patterns: tuple[str, ...]) -> None:
    """Parameters the model never reads (e.g. a word-embedding table) don't train or get saved, even in full FT."""
    compiled = [re.compile(pattern) for pattern in patterns]
    for name, parameter in model.named_parameters():
        if any(pattern.search(name) for pattern in compiled):
            parameter.requires_grad_(False)


def _plain(value: Any) -> Any:
    """Nested dicts/lists of plain values (jsonargparse may hand over its Namespace objects)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
