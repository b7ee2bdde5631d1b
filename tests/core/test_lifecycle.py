"""The adapter lifecycle under every task: each method's hooks run, whatever the task (a table of methods x tasks).

Every row trains a few optimizer steps with a Trainer on tiny generated data and checks the hook's effect:
AdaLoRA's ranks are reallocated from the initial budget (``total_step`` taken from the trainer), S2-LoRA's
rank coefficients depend on ``sparsity_weight``, and the logged regulariser is positive; LoRA, without
hooks, is the control. The models are in-test ``nn.Module`` s (no domain package).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.adalora import AdaLoraModel
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers.modeling_outputs import Seq2SeqLMOutput

from verticals.core.adapters.lifecycle import (
    AdapterHooks,
    adapter_hooks,
    register_adapter_hooks,
    tuner_class,
)
from verticals.core.adapters.s2lora import S2LoRALayer, S2LoRAModel
from verticals.core.peft_methods import registered_methods
from verticals.core.tasks import (
    AdapterTask,
    ClassificationTask,
    ForecastingTask,
    SegmentationTask,
    Seq2SeqTask,
)

WIDTH, VOCAB, SAMPLES, BATCH = 16, 7, 48, 16
STEPS = 2 * SAMPLES // BATCH  # two epochs of three batches
LINEAR_TARGETS = ["backbone.0", "backbone.2"]  # every model below has this backbone


def _backbone(in_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU())


# -- tiny models, one per task --------------------------------------------------------------------------
class Classifier(nn.Module):
    """``[N, 6] -> [N, 2]`` logits, with timm's ``forward_features`` / ``forward_head`` split."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head, self.num_features = _backbone(6), nn.Linear(WIDTH, 2), WIDTH

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Forecaster(nn.Module):
    """``[N, 1, 12]`` context -> ``[N, 1, 4]`` forecast."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = _backbone(12), nn.Linear(WIDTH, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class EncoderDecoder(nn.Module):
    """An encoder over ``input_features [N, 4, 5]`` and a one-layer decoder; returns ``.loss`` from ``labels``
    (-100 ignored), as a Hugging Face sequence-to-sequence model does."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.embed, self.head = (
            _backbone(4),
            nn.Embedding(VOCAB, WIDTH),
            nn.Linear(WIDTH, VOCAB),
        )

    def forward(
        self, input_features: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> Seq2SeqLMOutput:
        memory = self.backbone(input_features.transpose(1, 2)).mean(dim=1)
        tokens = labels.clamp_min(0) if labels is not None else torch.zeros(len(memory), 1, dtype=torch.long)
        logits = self.head(self.embed(tokens) + memory[:, None])
        loss = (
            None
            if labels is None
            else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        )
        return Seq2SeqLMOutput(loss=loss, logits=logits)

    # What peft's PeftModelForSeq2SeqLM reads from a Hugging Face model.
    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def _prepare_encoder_decoder_kwargs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return kwargs


class Segmenter(nn.Module):
    """Per-pixel MLP: ``[N, 3, 4, 4]`` image -> ``[N, 2, 4, 4]`` class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = _backbone(3), nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x.movedim(1, -1))).movedim(-1, 1)


# -- tiny data -----------------------------------------------------------------------------------------
class Samples(Dataset):
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _items(task: str) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(SAMPLES):
        if task == "classification":
            y = torch.randint(0, 2, (), generator=generator)
            items.append({"x": torch.randn(6, generator=generator) + y, "y": y})
        elif task == "forecasting":
            series = torch.randn(1, 16, generator=generator).cumsum(dim=1)
            items.append({"x": series[:, :12], "y": series[:, 12:]})
        elif task == "seq2seq":
            items.append(
                {
                    "input_features": torch.randn(4, 5, generator=generator),
                    "labels": torch.randint(0, VOCAB, (3,), generator=generator),
                    "text": "a b",
                }
            )
        else:
            mask = torch.randint(0, 2, (4, 4), generator=generator)
            items.append({"x": torch.randn(3, 4, 4, generator=generator) + mask, "y": mask})
    return items


def _loader(task: str) -> DataLoader:
    return DataLoader(Samples(_items(task)), batch_size=BATCH)


def _trainer(tmp_path, **kwargs: Any) -> L.Trainer:
    defaults = dict(
        max_epochs=STEPS * BATCH // SAMPLES,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return L.Trainer(**{**defaults, **kwargs})


# -- the table -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    options: dict[str, Any]
    targets: tuple[str, ...] = tuple(LINEAR_TARGETS)


METHODS = {
    "lora": Method({"r": 2}),  # the control: no hooks
    "adalora": Method({"init_r": 4, "target_r": 1, "deltaT": 1}),
    "s2lora": Method({"r": 2, "sparsity_weight": 1e-4, "init_weights": False}),
    "bottleneck": Method({"bottleneck_dim": 4}, targets=("backbone.2",)),
}
TASKS = ("classification", "forecasting", "seq2seq", "segmentation")


def _task(task: str, method: str, seed: int = 0, **options: Any) -> AdapterTask:
    row = METHODS[method]
    adapter = {
        "method": method,
        "targets": list(row.targets),
        "trainable": ["head"],
        "options": {**row.options, **options},
    }
    torch.manual_seed(seed)
    common = dict(adapter=adapter, learning_rate=1e-2, scheduler="constant")
    if task == "classification":
        return ClassificationTask(model=Classifier(), num_classes=2, **common)
    if task == "forecasting":
        return ForecastingTask(model=Forecaster(), horizon=4, **common)
    if task == "seq2seq":
        return Seq2SeqTask(model=EncoderDecoder(), generate_at_validation=False, **common)
    return SegmentationTask(model=Segmenter(), num_classes=2, **common)


def _fit(tmp_path, task: str, method: str, **options: Any) -> tuple[AdapterTask, L.Trainer]:
    model = _task(task, method, **options)
    trainer = _trainer(tmp_path)
    trainer.fit(model, train_dataloaders=_loader(task))
    assert trainer.global_step == STEPS
    return model, trainer


def _lambdas(model: AdapterTask) -> torch.Tensor:
    layers = [module for module in model.model.modules() if isinstance(module, S2LoRALayer)]
    assert len(layers) == len(LINEAR_TARGETS)
    return torch.cat([layer.s2lora_lambda["default"].detach().flatten() for layer in layers])


def test_the_table_covers_every_verticals_method_of_the_core():
    core_methods = {
        name
        for name, config in registered_methods().items()
        if config.__module__.startswith("verticals.core")
    }
    assert core_methods <= set(METHODS), f"add a row to METHODS for {sorted(core_methods - set(METHODS))}"
    with_hooks = {name for name in METHODS if adapter_hooks(tuner_class(name))}
    assert {"adalora", "s2lora"} <= with_hooks and "lora" not in with_hooks


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_hooks_under_every_task(tmp_path, task, method):
    model, trainer = _fit(tmp_path, task, method)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss_epoch"])
    hooks = model.adapter_hooks()
    if hooks.regularization_loss is None:
        assert model.regularization_loss() is None and "train_adapter_regularization_epoch" not in metrics
    else:
        assert float(metrics["train_adapter_regularization_epoch"]) > 0
    tuner = model.adapter_tuner()
    if method == "adalora":
        assert isinstance(tuner, AdaLoraModel)
        config = tuner.peft_config["default"]
        # The model was built before the trainer: the fit's step count reached the live config.
        assert config.total_step == STEPS == model.adapter_spec.options["total_step"]
        assert model.hparams["adapter"]["options"]["total_step"] == STEPS
        initial_budget = 4 * len(LINEAR_TARGETS)
        assert config.rank_pattern is not None, "update_and_allocate never masked a rank"
        kept = sum(sum(mask) for mask in config.rank_pattern.values())
        assert kept < initial_budget
        zeros = sum(
            int((parameter == 0).sum()) for name, parameter in tuner.named_parameters() if "lora_E" in name
        )
        assert zeros >= initial_budget - kept  # the masked singular values are zero
    if method == "s2lora":
        assert isinstance(tuner, S2LoRAModel)
        strong, _ = _fit(tmp_path / "strong", task, method, sparsity_weight=10.0)
        weak, strong_lambdas = _lambdas(model), _lambdas(strong)
        assert not torch.equal(weak, strong_lambdas)
        assert strong_lambdas.abs().sum() < weak.abs().sum()


def test_training_step_adds_the_regulariser_once_and_logs_it():
    model = _task("classification", "s2lora", sparsity_weight=0.5)
    batch = next(iter(_loader("classification")))
    model.train()
    plain = F.cross_entropy(model(batch["x"]), batch["y"])
    penalty = model.regularization_loss()
    assert penalty is not None and float(penalty) == pytest.approx(
        0.5 * 2 * len(LINEAR_TARGETS)
    )  # β·r·layers, λ=1
    torch.testing.assert_close(model.training_step(batch, 0), plain + penalty)


class _Unregularised(ClassificationTask):
    """A task whose ``_step`` forgets the base helper: ``training_step`` adds the regulariser anyway."""

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        return F.cross_entropy(self(batch["x"]), batch["y"])


def test_a_step_without_the_helper_still_gets_the_regulariser():
    torch.manual_seed(0)
    row = METHODS["s2lora"]
    adapter = {
        "method": "s2lora",
        "targets": list(row.targets),
        "options": {**row.options, "sparsity_weight": 0.5},
    }
    model = _Unregularised(model=Classifier(), num_classes=2, adapter=adapter)
    batch = next(iter(_loader("classification")))
    plain = F.cross_entropy(model(batch["x"]), batch["y"])
    torch.testing.assert_close(model.training_step(batch, 0), plain + model.regularization_loss())


@pytest.mark.parametrize("task_type", [None, "SEQ_2_SEQ_LM"])
def test_adalora_orthogonality_is_counted_once(task_type):
    """peft adds AdaLoRA's orthogonal regulariser to ``outputs.loss`` only when its tuner's forward runs (a peft
    task model such as PeftModelForSeq2SeqLM); the task adds it otherwise, and never twice."""
    options = {"task_type": task_type} if task_type else {}
    model = _task("seq2seq", "adalora", **options)
    batch = next(iter(_loader("seq2seq")))
    model.train()
    features, labels = batch["input_features"], batch["labels"]
    raw = model.model.get_base_model()(
        input_features=features, labels=labels
    ).loss  # adapters on, no tuner forward
    regulariser = model.regularization_loss()
    assert regulariser is not None and float(regulariser) > 0
    through_peft = model(features, labels=labels).loss
    if task_type:  # peft added exactly this term: the hook mirrors peft's formula
        torch.testing.assert_close(through_peft, raw + regulariser)
    else:
        torch.testing.assert_close(through_peft, raw)
    torch.testing.assert_close(model.training_step(batch, 0), raw + regulariser)


def test_after_optimizer_step_runs_once_per_optimizer_step_with_peft_step_indices(tmp_path):
    model = _task("classification", "adalora")
    steps: list[int] = []
    original = model.after_optimizer_step
    model.after_optimizer_step = lambda step: (steps.append(step), original(step))  # type: ignore[method-assign]
    trainer = _trainer(tmp_path, accumulate_grad_batches=2, max_epochs=2)
    trainer.fit(model, train_dataloaders=_loader("classification"))
    assert steps == list(range(trainer.global_step)) and trainer.global_step == 4  # 2 epochs x ceil(3 / 2)
    assert model.adapter_tuner().peft_config["default"].total_step == 4


def test_adalora_total_step_given_is_kept_and_a_short_run_warns(tmp_path):
    model = _task("classification", "adalora", total_step=50)
    _trainer(tmp_path).fit(model, train_dataloaders=_loader("classification"))
    assert model.adapter_tuner().peft_config["default"].total_step == 50
    short = _task("classification", "adalora", tinit=5, tfinal=5)
    with pytest.warns(UserWarning, match=r"tinit \(5\) \+ tfinal \(5\) leave no rank-budgeting phase"):
        _trainer(tmp_path / "short").fit(short, train_dataloaders=_loader("classification"))
    assert short.adapter_tuner().peft_config["default"].total_step == 11


# -- hooks of a method written outside peft --------------------------------------------------------------
class _Tuner:
    """Stands for a verticals method's tuner class: hooks as its own methods."""

    def regularization_loss(self) -> torch.Tensor:
        return torch.tensor(1.0)

    def after_optimizer_step(self, step: int) -> None: ...

    @staticmethod
    def configure_options(options: dict[str, Any], total_steps: int | None) -> dict[str, Any]:
        return options


class _SubTuner(_Tuner):
    pass


def test_hooks_come_from_the_tuner_class_or_the_registry():
    hooks = adapter_hooks(_SubTuner)
    assert hooks.regularization_loss is _Tuner.regularization_loss
    assert hooks.after_optimizer_step is _Tuner.after_optimizer_step and hooks.configure_options is not None
    assert not adapter_hooks(nn.Linear) and adapter_hooks(None) == AdapterHooks()
    assert adapter_hooks(S2LoRAModel).regularization_loss is S2LoRAModel.regularization_loss
    adalora = adapter_hooks(tuner_class("adalora"))
    assert adalora.after_optimizer_step is not None and adalora.regularizer_in_output_loss
    assert tuner_class("full") is None and tuner_class("lora").__name__ == "LoraModel"


def test_register_adapter_hooks_rejects_conflicts_and_accepts_repeats():
    def penalty(tuner: nn.Module) -> None:
        return None

    class Tuner(nn.Module):
        pass

    register_adapter_hooks(Tuner, regularization_loss=penalty)
    register_adapter_hooks(Tuner, regularization_loss=penalty)  # the same again: a no-op
    assert adapter_hooks(Tuner).regularization_loss is penalty
    with pytest.raises(ValueError, match="already registered"):
        register_adapter_hooks(Tuner, regularization_loss=lambda tuner: None)
    with pytest.raises(ValueError, match="no hook"):
        register_adapter_hooks(nn.Conv1d)
    with pytest.raises(TypeError, match="tuner class"):
        register_adapter_hooks("AdaLoraModel", regularization_loss=penalty)  # type: ignore[arg-type]


# -- state a method derives from the training data ---------------------------------------------------------
class _TrainData(L.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(Samples(_items("classification")), batch_size=BATCH, shuffle=True)


def test_prepare_from_data_sees_the_training_inputs_once_before_training(tmp_path, monkeypatch):
    from verticals.core.adapters.bottleneck import BottleneckModel

    calls: list[dict[str, Any]] = []

    def prepare(tuner: nn.Module, inputs) -> None:
        batches = list(inputs)
        calls.append(
            {
                "inputs": torch.cat(batches),
                "training": tuner.model.training,
                "grad": torch.is_grad_enabled(),
                "steps": tuner.model.head.weight.grad is None,
            }
        )

    monkeypatch.setattr(BottleneckModel, "prepare_from_data", prepare, raising=False)
    model = _task("classification", "bottleneck")
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=_TrainData())
    assert len(calls) == 1  # once per fit, not per epoch
    expected = torch.stack([item["x"] for item in _items("classification")])
    torch.testing.assert_close(calls[0]["inputs"], expected)  # every training input, in order (unshuffled)
    assert calls[0]["training"] is False and calls[0]["grad"] is False and calls[0]["steps"]
    assert model.model.training  # training mode back for the fit

    with pytest.raises(ValueError, match="reads the training data once.*no datamodule"):
        _trainer(tmp_path).fit(
            _task("classification", "bottleneck"), train_dataloaders=_loader("classification")
        )


def test_checkpoints_keep_adapter_tensors_that_are_not_trained():
    model = _task("classification", "bottleneck")
    model.configure_model()
    assert model.frozen_adapter_names() == []  # every tensor of a bottleneck adapter trains
    name, parameter = next(
        (n, p) for n, p in model.named_parameters() if "bottleneck_up" in n and n.endswith("weight")
    )
    parameter.requires_grad_(False)  # as a memory bank a method fills from the data
    frozen = model.frozen_adapter_names()  # the tensor under each name it has (the task holds the model twice)
    assert name in frozen and all(n.endswith("backbone.2.bottleneck_up.default.weight") for n in frozen)
    assert name in model.checkpoint_names() and name not in model.trainable_names()
    assert not any(
        "backbone.0.base_layer" in n for n in model.frozen_adapter_names()
    )  # the frozen backbone isn't
