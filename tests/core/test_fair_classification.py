"""FairClassificationTask through Lightning: penalties, group-DRO, checkpoints and the fairness report."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from verticals.core.group_objective import GroupObjective, GroupObjectiveLoss
from verticals.core.group_report import GroupReport
from verticals.core.tasks import FairClassificationTask
from verticals.core.tasks.fair_classification import club_upper_bound, pool_features, reverse_gradient

ATTRIBUTES = ["sex", "age_band"]
NAMES = {"sex": ["F", "M"], "age_band": ["<40", "40-60", "60+"]}
LORA = {"method": "lora", "targets": ["backbone.0", "backbone.2"], "trainable": ["head"], "options": {"r": 2}}


class TinyEncoder(nn.Module):
    """timm's split: pooled ``forward_features`` then ``forward_head``."""

    def __init__(self, in_features: int = 6, width: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class GroupedSet(Dataset):
    """Label signal in x[0]; sex leaks through x[1] and adds noise to the signal for sex=F."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=generator)
        self.group = torch.stack(
            [torch.randint(0, 2, (n,), generator=generator), torch.randint(0, 3, (n,), generator=generator)],
            1,
        )
        noise = torch.where(self.group[:, 0] == 0, 1.5, 0.5)
        self.x = torch.randn(n, 6, generator=generator)
        self.x[:, 0] = self.y * 2.0 - 1.0 + noise * self.x[:, 0]
        self.x[:, 1] += 2.0 * self.group[:, 0]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index], "group": self.group[index]}


class GroupedData(L.LightningDataModule):
    num_classes = 2
    input_shape = (6,)
    group_attributes = ATTRIBUTES
    group_names = NAMES

    def __init__(self, n: int = 96) -> None:
        super().__init__()
        self.n = n

    def train_dataloader(self) -> DataLoader:
        return DataLoader(GroupedSet(self.n, 0), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(GroupedSet(self.n, 1), batch_size=32)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(GroupedSet(self.n, 2), batch_size=32)


def _task(**kwargs) -> FairClassificationTask:
    torch.manual_seed(0)
    return FairClassificationTask(
        model=TinyEncoder(), adapter=LORA, num_classes=2, report_bootstrap=20, **kwargs
    )


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=2,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("penalty", ["club", "adversarial"])
def test_penalty_fit_logs_group_metrics_and_checkpoints_the_auxiliary_net(tmp_path, penalty):
    task = _task(fairness_penalty=penalty, fairness_weight=0.5, monitor="val_worst_group_auroc")
    trainer = _trainer(tmp_path)
    trainer.fit(task, GroupedData())
    assert task.mode == "max" and task.hparams["group_names"] == NAMES
    metrics = trainer.callback_metrics
    for key in (
        "val_auroc",
        "val_worst_group_auroc",
        "val_auroc_gap",
        "val_ece/F",
        "val_mi_estimate",
        "train_total_loss",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in task.group_loss.attribute_net.parameters()} <= optimised
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(name.startswith("group_loss.attribute_net.") for name in checkpoint["state_dict"])
    assert not any("backbone.0.base_layer" in name for name in checkpoint["state_dict"])
    restored = FairClassificationTask.load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", model=_fresh_encoder(), weights_only=True
    )
    x = torch.randn(5, 6)
    task.eval(), restored.eval()
    torch.testing.assert_close(restored(x), task(x))
    torch.testing.assert_close(
        restored.group_loss.attribute_net[0].weight, task.group_loss.attribute_net[0].weight
    )


def _fresh_encoder() -> TinyEncoder:
    torch.manual_seed(0)  # the same frozen backbone the task was trained on (its fingerprint is checked)
    return TinyEncoder()


def test_group_dro_upweights_the_harder_group_and_weights_survive_the_checkpoint(tmp_path):
    task = _task(group_dro=True, dro_step_size=0.5)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(task, GroupedData(n=128))
    weights = task.group_loss.dro_weights
    assert weights.shape == (2,) and float(weights.sum()) == pytest.approx(1.0)
    assert weights[0] > weights[1]  # sex=F has the noisier signal, so the larger loss
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["verticals"]["group_dro_weights"] == pytest.approx(weights.tolist())
    restored = FairClassificationTask.load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", model=_fresh_encoder(), weights_only=True
    )
    torch.testing.assert_close(restored.group_loss.dro_weights, weights)


def test_intersectional_dro_groups_and_codes():
    task = _task(
        group_dro=True,
        dro_groups="intersectional",
        group_attributes=ATTRIBUTES,
        group_names=NAMES,
    )
    task.configure_model()
    assert task.group_loss.dro_weights.shape == (6,)
    codes = task.group_loss.group_codes(torch.tensor([[0, 0], [1, 2], [1, 0]]), torch.tensor([0, 1, 0]))
    assert codes.tolist() == [0, 5, 3]
    label_task = _task(
        group_dro=True,
        dro_groups="sensitive_label",
        group_attributes=ATTRIBUTES,
        group_names=NAMES,
    )
    label_task.configure_model()
    assert label_task.group_loss.group_codes(torch.tensor([[1, 0]]), torch.tensor([1])).tolist() == [3]


def test_test_run_writes_the_fairness_report_files(tmp_path):
    task = _task(fairness_penalty="club")
    trainer = _trainer(tmp_path, max_epochs=1)
    data = GroupedData()
    trainer.fit(task, data)
    trainer.test(task, data)
    for name in (
        "fairness.json",
        "fairness.md",
        "reliability.png",
        "fairness_auroc_sex.png",
        "fairness_auroc_sex_x_age_band.png",
    ):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "fairness.json").read_text())
    sex_rows = [row for row in report["fairness"]["groups"] if row["grouping"] == "sex"]
    assert [row["group"] for row in sex_rows] == ["F", "M"] and sum(row["count"] for row in sex_rows) == 96
    assert report["fairness"]["n_bootstrap"] == 20 and "ece" in report["uncertainty"]["sex"]["F"]
    assert "test_worst_group_auroc" in trainer.callback_metrics
    callback = next(c for c in trainer.callbacks if isinstance(c, GroupReport))
    assert callback.extra is not None and "sex & age_band" in callback.extra.summary  # FairnessResults
    groups = json.loads((tmp_path / "groups.json").read_text())  # AUROC and accuracy per group, with CIs
    assert set(groups["groupings"]) == {"sex", "age_band", "sex & age_band"}
    assert groups["bootstrap"]["resamples"] == 20 and groups["count"] == 96
    for grouping in ("sex", "age_band", "sex & age_band"):  # the same groups and counts as the fairness table
        rows = [row for row in report["fairness"]["groups"] if row["grouping"] == grouping]
        assert {row["group"]: row["count"] for row in rows} == {
            name: row["count"] for name, row in groups["groupings"][grouping]["groups"].items()
        }
        for row in rows:
            auroc = groups["groupings"][grouping]["groups"][row["group"]]["auroc"]["value"]
            assert (auroc is None and row["auroc"] is None) or auroc == pytest.approx(row["auroc"])
    assert groups["overall"]["accuracy"]["value"] == pytest.approx(
        float(trainer.callback_metrics["test_accuracy"])
    )
    assert (tmp_path / "groups_auroc.png").is_file() and (tmp_path / "groups.md").is_file()
    predictions = trainer.predict(task, data.test_dataloader())
    assert set(predictions[0]) == {"logits", "probs", "target", "group"}


def test_plain_task_without_penalty_and_clear_errors(tmp_path):
    task = _task()
    _trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(task, GroupedData())
    assert task.group_loss is not None and not hasattr(task.group_loss, "attribute_net")
    with pytest.raises(ValueError, match="fairness_penalty"):
        FairClassificationTask(model=TinyEncoder(), adapter=LORA, fairness_penalty="mmd")
    with pytest.raises(ValueError, match="'skin' is not one of"):  # checked as soon as the model is built
        _task(
            fairness_penalty="club",
            sensitive_attribute="skin",
            group_attributes=ATTRIBUTES,
            group_names=NAMES,
        )

    class NoSplit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    with pytest.raises(TypeError, match="forward_features"):
        FairClassificationTask(
            model=NoSplit(),
            adapter={"method": "linear_probe", "trainable": ["head"]},
            fairness_penalty="club",
            group_attributes=ATTRIBUTES,
            group_names=NAMES,
            num_classes=2,
        )


def test_building_blocks():
    independent = torch.log_softmax(torch.randn(1, 3), -1).expand(8, 3)  # q(a|z) ignores z
    assert float(club_upper_bound(independent, torch.randint(0, 3, (8,)))) == pytest.approx(0.0, abs=1e-6)
    attribute = torch.tensor([0, 1, 0, 1])
    informative = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]] * 2))
    assert float(club_upper_bound(informative, attribute)) > 0.6
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.5))
    assert pool_features(torch.zeros(2, 5, 7)).shape == (2, 7) and pool_features(
        torch.zeros(2, 7, 3, 3)
    ).shape == (2, 7)


def test_club_penalty_is_clamped_at_zero_so_the_encoder_cannot_fool_a_lagging_q():
    objective = GroupObjectiveLoss(
        GroupObjective(penalty="club", weight=5.0),
        group_attributes=["sex"],
        group_names={"sex": ["F", "M"]},
        feature_dim=2,
    )
    objective.attribute_net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        objective.attribute_net.weight.copy_(3 * torch.eye(2))
    attribute = torch.tensor([0, 0, 1, 1])
    # q predicts the *other* group for every sample, so the CLUB estimate is negative.
    features = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss, estimate = objective.penalty(features, attribute)
    assert float(estimate) < 0
    loss.backward()
    assert torch.count_nonzero(features.grad) == 0  # q's own loss sees detached features; no penalty push
    informative = features.detach().flip(1).requires_grad_(True)  # q right: a positive estimate pushes
    loss, estimate = objective.penalty(informative, attribute)
    loss.backward()
    assert float(estimate) > 0 and torch.count_nonzero(informative.grad) > 0


def test_conditional_club_ignores_what_the_label_explains():
    attribute = torch.tensor([0, 0, 1, 1, 0, 1])
    log_q = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]]))[attribute]  # q knows a perfectly
    assert float(club_upper_bound(log_q, attribute)) > 0.6
    # a equals the label: given y nothing is left to know, so I(z; a | y) = 0 ...
    assert float(club_upper_bound(log_q, attribute, attribute)) == pytest.approx(0.0, abs=1e-6)
    # ... while with a label independent of a, the conditional bound is the unconditional one.
    attribute, label = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    log_q = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]]))[attribute]
    assert float(club_upper_bound(log_q, attribute, label)) == pytest.approx(
        float(club_upper_bound(log_q, attribute)), abs=1e-6
    )


@pytest.mark.parametrize("penalty", ["club", "adversarial"])
def test_separate_auxiliary_optimiser_conditional_logit_penalty_and_warmup(tmp_path, penalty):
    task = _task(
        fairness_penalty=penalty,
        fairness_weight=2.0,
        penalty_on="logits",
        fairness_conditional=True,
        fairness_warmup_epochs=4,
        auxiliary_steps=3,
        auxiliary_learning_rate=0.01,
        group_attributes=ATTRIBUTES,
        group_names=NAMES,
    )
    trainer = _trainer(tmp_path, max_epochs=2)
    data = GroupedData()
    task.configure_model()
    net = task.group_loss.attribute_net
    assert net[0].in_features == 2 + 2  # two logits + the one-hot label
    before = net[0].weight.detach().clone()
    trainer.fit(task, data)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not {id(p) for p in net.parameters()} & optimised  # it has its own optimiser
    assert optimised and not torch.equal(net[0].weight, before)  # ... and it was trained
    weight = task.group_loss.penalty_weight(task._epochs_done())
    assert task.global_step == 6 and weight == pytest.approx(2.0 * (6 / 3) / 4)
    assert torch.isfinite(trainer.callback_metrics["val_mi_estimate"])
    assert all(parameter.requires_grad for parameter in net.parameters())  # trained, by its own optimiser
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(name.startswith("group_loss.attribute_net.") for name in checkpoint["state_dict"])
    # q's own Adam state is saved too, and a resumed fit continues it instead of starting cold.
    saved = checkpoint["verticals"]["auxiliary_optimizer"]["state"]
    assert saved and all(int(entry["step"]) == 6 * 3 for entry in saved.values())  # 6 batches x 3 steps
    restored = FairClassificationTask.load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", model=_fresh_encoder(), weights_only=True
    )
    restored.train()
    restored.group_loss.train_auxiliary(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))
    resumed = restored.group_loss._auxiliary_optimizer.state_dict()["state"]
    assert {k: int(v["step"]) for k, v in resumed.items()} == {
        k: int(v["step"]) + 3 for k, v in saved.items()
    }
    with pytest.raises(ValueError, match="penalty_on"):
        _task(fairness_penalty=penalty, penalty_on="pixels")
    with pytest.raises(ValueError, match="auxiliary_steps"):
        _task(fairness_penalty=penalty, auxiliary_steps=-1)


def test_plain_classifier_gets_the_same_report_from_the_callback(tmp_path):
    """ClassificationTask + GroupReport in trainer.callbacks: the per-group report without a fair loss."""
    from verticals.core.tasks import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(model=TinyEncoder(), adapter=LORA, num_classes=2)
    callback = GroupReport(n_bootstrap=20)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[callback])
    trainer.fit(task, GroupedData())
    trainer.test(task, GroupedData())
    assert (tmp_path / "fairness.json").is_file() and (tmp_path / "reliability.png").is_file()
    rows = json.loads((tmp_path / "fairness.json").read_text())["fairness"]["groups"]
    assert sum(row["count"] for row in rows if row["grouping"] == "sex") == 96
    assert callback.extra is not None and "sex & age_band" in callback.extra.summary
    assert "sex & age_band" in callback.results.summary and (tmp_path / "groups.json").is_file()


class _WorstGroupHistory(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_worst_group_auroc"]))


def test_checkpoint_is_selected_on_worst_group_auroc(tmp_path):
    task = _task(group_dro=True, monitor="val_worst_group_auroc")
    history = _WorstGroupHistory()
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[history])
    trainer.fit(task, GroupedData())
    checkpoint = trainer.checkpoint_callback
    assert checkpoint.monitor == "val_worst_group_auroc" and checkpoint.mode == "max"
    assert len(history.values) == 4
    assert float(checkpoint.best_model_score) == pytest.approx(max(history.values))


# -- the group objective as an option of any task -------------------------------------------------------


def _fit_and_state(task, tmp_path) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    _trainer(tmp_path, max_epochs=2).fit(task, GroupedData())
    task.eval()
    with torch.no_grad():
        state = {"logits": task(GroupedSet(16, 5).x)}
    state.update({name: tensor.detach() for name, tensor in task.group_loss.named_parameters()})
    state.update({name: tensor.detach() for name, tensor in task.group_loss.named_buffers()})
    return state


def test_classification_with_a_group_objective_trains_as_the_fair_task(tmp_path):
    """The option and the packaged subclass are one computation: bit-identical logits, q and DRO weights."""
    from verticals.core.tasks import ClassificationTask

    fair = _task(fairness_penalty="club", fairness_weight=0.5, group_dro=True, dro_groups="sensitive_label")
    torch.manual_seed(0)
    option = ClassificationTask(
        model=TinyEncoder(),
        adapter=LORA,
        num_classes=2,
        group_objective={"penalty": "club", "weight": 0.5, "group_dro": True, "groups": "sensitive_label"},
    )
    expected, got = _fit_and_state(fair, tmp_path / "fair"), _fit_and_state(option, tmp_path / "option")
    assert set(got) == set(expected) >= {"logits", "attribute_net.0.weight", "dro_weights"}
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # The groups came from the datamodule and are recorded, so the checkpoint rebuilds the objective alone.
    assert option.hparams["group_objective"]["group_names"] == NAMES
    restored = ClassificationTask.load_from_checkpoint(
        tmp_path / "option" / "checkpoints" / "last.ckpt", model=_fresh_encoder(), weights_only=True
    )
    torch.testing.assert_close(restored.group_loss.dro_weights, option.group_loss.dro_weights)
    with pytest.raises(ValueError, match="not both"):
        FairClassificationTask(model=TinyEncoder(), adapter=LORA, group_objective={"group_dro": True})


def test_a_checkpoint_of_the_fair_task_before_the_group_objective_still_loads(tmp_path):
    task = _task(fairness_penalty="adversarial")
    _trainer(tmp_path, max_epochs=1).fit(task, GroupedData())
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint[
        "state_dict"
    ] = {  # q's parameters at the task's top level, as FairClassificationTask kept them
        name.removeprefix("group_loss."): tensor for name, tensor in checkpoint["state_dict"].items()
    }
    assert any(name.startswith("attribute_net.") for name in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "old.ckpt")
    restored = FairClassificationTask.load_from_checkpoint(
        tmp_path / "old.ckpt", model=_fresh_encoder(), weights_only=True
    )
    torch.testing.assert_close(
        restored.group_loss.attribute_net[2].weight, task.group_loss.attribute_net[2].weight
    )


class _Forecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _GroupedSeries(Dataset):
    """Series whose noise level is set by their site: site 0's forecasts are harder."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.group = torch.randint(0, 2, (n, 1), generator=generator)
        noise = torch.where(self.group == 0, 1.0, 0.1)[:, :, None]
        self.series = torch.linspace(0, 1, 10).expand(n, 1, 10) + noise * torch.randn(
            n, 1, 10, generator=generator
        )

    def __len__(self) -> int:
        return len(self.group)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        series = self.series[index]
        return {"x": series[:, :8], "y": series[:, 8:], "group": self.group[index]}


class _GroupedSeriesData(L.LightningDataModule):
    group_attributes = ["site"]
    group_names = {"site": ["noisy", "clean"]}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_GroupedSeries(64, 0), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_GroupedSeries(64, 1), batch_size=16)


def test_forecasting_takes_group_dro_and_logs_the_worst_group(tmp_path):
    from verticals.core.tasks import ForecastingTask

    torch.manual_seed(0)
    task = ForecastingTask(
        model=_Forecaster(),
        horizon=2,
        adapter={"method": "lora", "targets": ["backbone.0"], "trainable": ["head"], "options": {"r": 2}},
        group_objective={"group_dro": True, "dro_step_size": 0.5},
        monitor="val_worst_group_loss",
    )
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(task, _GroupedSeriesData())
    assert task.mode == "min" and task.hparams["group_objective"]["group_attributes"] == ["site"]
    weights = task.group_loss.dro_weights
    assert weights[0] > weights[1]  # the noisy site weighs more
    metrics = trainer.callback_metrics
    assert float(metrics["val_worst_group_loss"]) > float(metrics["val_loss"])  # the noisy site is worse
    task.eval()
    per_series, sites = [], []
    with torch.no_grad():
        for batch in _GroupedSeriesData().val_dataloader():
            per_series.append(((task(batch["x"]) - batch["y"]) ** 2).flatten(1).mean(1))
            sites.append(batch["group"][:, 0])
    per_series, site = torch.cat(per_series), torch.cat(sites)
    worst = max(float(per_series[site == code].mean()) for code in (0, 1))
    assert float(metrics["val_worst_group_loss"]) == pytest.approx(worst, rel=1e-5)


def test_group_objective_errors_name_the_fix():
    from verticals.core.tasks import ForecastingTask, Seq2SeqTask
    from verticals.core.tasks.base import monitor_mode_of

    with pytest.raises(ValueError, match="Seq2SeqTask does not take a `group_objective`"):
        Seq2SeqTask(model="any.model", group_objective={"group_dro": True})
    with pytest.raises(ValueError, match=r"Unknown `group_objective` field\(s\) \['lambda'\]"):
        GroupObjective.coerce({"lambda": 1.0})
    with pytest.raises(ValueError, match="`penalty` must be one of"):
        GroupObjective(penalty="mmd")
    with pytest.raises(ValueError, match="need per-sample class labels"):  # a forecaster has no classes
        ForecastingTask(
            model=_Forecaster(),
            horizon=2,
            adapter={"method": "full"},
            group_objective={"group_dro": True, "groups": "sensitive_label", "group_attributes": ["site"]}
            | {"group_names": {"site": ["a", "b"]}},
        )
    assert [
        monitor_mode_of(name) for name in ("val_worst_group_auroc", "val_auroc_gap", "val_dice", "val_loss")
    ] == [
        "max",
        "min",
        "max",
        "min",
    ]
    assert monitor_mode_of("val_score", default="max") == "max"
