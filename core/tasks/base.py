"""The template every verticals task follows: backbone + adapter + head + loss + metrics.

Subclasses fill ``configure_losses``, ``configure_metrics`` and ``_step``; the base owns the model build
(from the registry or a ready ``nn.Module``), the adapter, an optimizer over trainable parameters only,
checkpoints that hold only what was trained, and the run's callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.summary import ParameterSummary, parameter_summary
from verticals.core.checkpoint import check_backbone, fingerprint, statistics_buffer_names, trainable_state
from verticals.core.registry import build_model


class AdapterTask(L.LightningModule):
    """Base task. ``model`` is a registered model name (configs) or a ready ``nn.Module`` (Python).

    ``monitor`` / ``monitor_mode`` override the metric that picks the best checkpoint (the class default,
    e.g. ``val_accuracy``); with ``val_fraction: 0`` validation runs on the training set, and
    ``monitor: val_loss`` then keeps the best-fitting (usually the last) epoch.

    The built model should expose its frozen pretrained part as ``.backbone`` (used for the backbone
    fingerprint and the trainable-% figure) and may list ``unused_parameters`` (regexes) that the
    backbone count leaves out, such as a word-embedding table a non-text model never reads.
    """

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self,
        model: str,
        model_args: dict[str, Any] | None = None,
        adapter: AdapterSpec | dict[str, Any] | None = None,
        input_shape: list[int] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        scheduler: str = "cosine",
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__()
        if monitor is not None:
            self.monitor = monitor
        if monitor_mode is not None:
            if monitor_mode not in ("min", "max"):
                raise ValueError(f"`monitor_mode` must be 'min' or 'max', got {monitor_mode!r}.")
            self.mode = monitor_mode
        if isinstance(model, nn.Module):
            self._given_model: nn.Module | None = model
            model_name = type(model).__name__
        else:
            self._given_model = None
            model_name = model
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"`scheduler` must be 'cosine' or 'constant', got {scheduler!r}.")
        spec = adapter if isinstance(adapter, AdapterSpec) or adapter is None else AdapterSpec(**adapter)
        self.adapter_spec = spec
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["model", "adapter"])
        self.hparams["model"] = model_name
        self.hparams["adapter"] = dataclasses.asdict(spec) if spec is not None else None
        self.net: nn.Module | None = None
        self.backbone_reference: dict[str, Any] = {}
        self.strict_loading = False  # checkpoints hold only trained tensors; on_load_checkpoint checks them
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
        if self.net is not None:
            return
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
                **(self.hparams.get("model_args") or {}),
            )
        backbone = getattr(network, "backbone", network)
        self.backbone_reference = {
            "source": getattr(network, "backbone_source", type(backbone).__name__),
            "fingerprint": fingerprint(backbone),
        }
        self.net = adapt(network, self.adapter_spec)
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
        unused = getattr(self._base_network(), "unused_parameters", ())
        return parameter_summary(self.model, backbone_prefix=r"(?:^|\.)backbone\.", ignore=unused)

    def _base_network(self) -> nn.Module:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # -- training ------------------------------------------------------------------------
    def _metric_clones(self) -> tuple[MetricCollection, MetricCollection, MetricCollection]:
        metrics = self.configure_metrics()
        return metrics.clone(prefix="train_"), metrics.clone(prefix="val_"), metrics.clone(prefix="test_")

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"])

    def configure_optimizers(self) -> Any:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        if not parameters:
            raise ValueError("Nothing to train: the adapter left no trainable parameters.")
        optimizer = torch.optim.AdamW(
            parameters, lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )
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

    def configure_callbacks(self) -> list[L.Callback]:
        from verticals.core.callbacks import default_callbacks

        # The same instances on every trainer call, so fit's timing reaches the report written at test.
        if getattr(self, "_run_callbacks", None) is None:
            self._run_callbacks = default_callbacks(monitor=self.monitor, mode=self.mode)
        return self._run_callbacks

    # -- checkpoints ---------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def checkpoint_names(self) -> list[str]:
        """What a checkpoint keeps: the trainable parameters and the norm layers' running statistics."""
        return [*self.trainable_names(), *statistics_buffer_names(self)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trainable_state(checkpoint["state_dict"], self.checkpoint_names())
        checkpoint["verticals"] = {
            "backbone": dict(self.backbone_reference),
            "trainable": self.trainable_names(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        info = checkpoint.get("verticals")
        if info is None:
            raise ValueError(
                "This checkpoint was not written by a verticals task (no 'verticals' entry): it can't be "
                "checked against the backbone. Load weights with verticals.core.load_adapter instead."
            )
        check_backbone(info["backbone"], self.backbone_reference)
        own = set(self.trainable_names())
        saved = set(checkpoint["state_dict"])
        missing, unexpected = sorted(own - saved), sorted(saved - set(self.state_dict()))
        if missing or unexpected:
            raise ValueError(
                "The checkpoint's trained tensors don't match this task's adapter: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}. Was it trained with another adapter config?"
            )


def _freeze_unused(model: nn.Module, patterns: tuple[str, ...]) -> None:
    """Parameters the model never reads (e.g. a word-embedding table) don't train or get saved, even in full FT."""
    compiled = [re.compile(pattern) for pattern in patterns]
    for name, parameter in model.named_parameters():
        if any(pattern.search(name) for pattern in compiled):
            parameter.requires_grad_(False)
