"""The baseline beside the adapter: the registry, the paired verdict and its CI, the report merge, the generic
linear probe (classes and masks) on tiny generated data with a planted, linearly separable signal, a config
that is its own baseline, the ``--baseline false`` flag, and the ways a baseline can fail to run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from verticals.core.baseline import (
    BaselineSkipped,
    _unregister_baseline,
    add_baseline_to_report,
    baseline_markdown,
    baselines_for,
    compare,
    register_baseline,
    registered_baselines,
    run_baselines,
    verdict,
)
from verticals.core.baseline_scoring import ClassificationScoring, SegmentationScoring, scoring_for
from verticals.core.checkpoint import fingerprint
from verticals.core.cli import VerticalsTrainer, run_cli
from verticals.core.data import ArrayClassificationDataModule, BaseDataModule
from verticals.core.linear_probe import LINEAR_PROBE, fit_probe
from verticals.core.metrics.bootstrap import bootstrap_indices
from verticals.core.registry import _unregister_model, register_model
from verticals.core.tasks import ClassificationTask, SegmentationTask


# -- tiny models and data with a planted signal -------------------------------------------------------------
class ProbeNet(nn.Module):
    """A random frozen projection (``backbone``) of a series and a linear head: timm's feature split."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, task: str = "classification") -> None:
        super().__init__()
        width = int(np.prod(input_shape))
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.Tanh())
        self.head = nn.Linear(16, num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SegNet(nn.Module):
    """A random frozen stride-2 convolution (feature maps at half resolution) and an upsampling 1x1 head."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, task: str = "segmentation") -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(input_shape[0], 8, kernel_size=2, stride=2), nn.Tanh())
        self.head = nn.Conv2d(8, num_outputs, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.forward_features(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="nearest")


class PlainNet(nn.Module):
    """No ``forward_features``: nothing for a linear probe to read."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, task: str = "classification") -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


@pytest.fixture(scope="module", autouse=True)
def _models():
    names = {
        "baseline_test.probe_net": ProbeNet,
        "baseline_test.seg_net": SegNet,
        "baseline_test.plain": PlainNet,
    }
    for name, builder in names.items():
        register_model(name=name, builder=builder)
    yield
    for name in names:
        _unregister_model(name)


class PlantedDataModule(ArrayClassificationDataModule):
    """Two classes of 2 x 8 series: the first channel's level is +1 or -1 (planted), plus unit noise."""

    def __init__(self, count: int = 96, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, val_fraction=0.25, seed=seed)
        self.count = count

    def _load_arrays(self):
        rng = np.random.default_rng(self.seed)
        y = rng.integers(0, 2, self.count)
        x = rng.normal(size=(self.count, 2, 8))
        x[:, 0] += (2 * y - 1)[:, None]
        half = self.count // 2
        return x[:half], y[:half], x[half:], y[half:], ["minus", "plus"]


class _Tiles(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.images[index], "y": self.masks[index]}


class PlantedTiles(BaseDataModule):
    """8 x 8 one-band tiles whose 2 x 2 blocks are class 1 where the block is bright (planted), else 0."""

    num_classes = 2
    class_names = ["background", "bright"]
    input_shape = (1, 8, 8)

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self._splits = {split: self._draw(index) for index, split in enumerate(("train", "val", "test"))}

    def _draw(self, offset: int) -> _Tiles:
        generator = torch.Generator().manual_seed(self.seed * 10 + offset)
        blocks = torch.randint(0, 2, (24, 4, 4), generator=generator)
        masks = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)
        images = masks[:, None].float() * 2 - 1 + 0.3 * torch.randn(24, 1, 8, 8, generator=generator)
        return _Tiles(images, masks.long())

    def split_dataset(self, split: str) -> Dataset:
        return self._splits[split]


def _trainer(root: Path, epochs: int = 1) -> VerticalsTrainer:
    return VerticalsTrainer(
        default_root_dir=str(root),
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def _report(trainer: VerticalsTrainer) -> dict[str, Any]:
    return json.loads((Path(trainer.log_dir) / "report.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[VerticalsTrainer, ClassificationTask, PlantedDataModule]:
    """One fully fine-tuned run of the random projection, without baseline (the tests below add theirs)."""
    torch.manual_seed(0)
    task = ClassificationTask(model="baseline_test.probe_net", adapter={"method": "full"}, learning_rate=0.01)
    datamodule = PlantedDataModule()
    trainer = _trainer(tmp_path_factory.mktemp("trained"))
    trainer.run(task, datamodule=datamodule, baseline=False)
    return trainer, task, datamodule


# -- the registry --------------------------------------------------------------------------------------------
def test_register_refuses_duplicates_and_bad_entries() -> None:
    entry = register_baseline(
        name="test constant", description="always class 0", applies=lambda t, d: False, predict=lambda c: []
    )
    try:
        assert "test constant" in registered_baselines() and entry.name == "test constant"
        with pytest.raises(KeyError, match="already registered"):
            register_baseline(name="test constant", description="", applies=lambda t, d: False, predict=len)
    finally:
        _unregister_baseline("test constant")
    assert "test constant" not in registered_baselines()
    with pytest.raises(TypeError):
        register_baseline("positional", "", lambda t, d: True, len)  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty `name`"):
        register_baseline(name=" ", description="", applies=lambda t, d: True, predict=len)
    with pytest.raises(TypeError, match="`predict` of baseline 'x' must be callable"):
        register_baseline(name="x", description="", applies=lambda t, d: True, predict="not callable")
    with pytest.raises(KeyError, match="not a registered baseline"):
        _unregister_baseline("never registered")


def test_the_generic_linear_probe_runs_when_no_registered_baseline_applies(trained) -> None:
    _, task, datamodule = trained
    assert baselines_for(task, datamodule) == [LINEAR_PROBE]
    register_baseline(name="test mine", description="", applies=lambda t, d: t is task, predict=len)
    try:
        assert [baseline.name for baseline in baselines_for(task, datamodule)] == ["test mine"]
    finally:
        _unregister_baseline("test mine")


# -- the comparison and its verdict --------------------------------------------------------------------------
def _accuracy(arrays) -> float:
    return float(np.mean(arrays["correct"]))


def test_compare_is_the_paired_bootstrap_of_adapter_minus_baseline() -> None:
    rng = np.random.default_rng(0)
    adapter = {"correct": (rng.random(60) < 0.8).astype(float)}
    baseline = {"correct": adapter["correct"].copy()}
    baseline["correct"][:9] = 0.0  # the baseline misses a few the adapter gets: the two share most noise
    result = compare(_accuracy, adapter, baseline, n_bootstrap=300, seed=3)
    assert result["adapter"] == pytest.approx(adapter["correct"].mean())
    assert result["baseline"] == pytest.approx(baseline["correct"].mean())
    difference = result["difference"]
    assert difference["estimate"] == pytest.approx(result["adapter"] - result["baseline"])
    draws = [
        adapter["correct"][rows].mean() - baseline["correct"][rows].mean()
        for rows in bootstrap_indices(60, 300, seed=3)
    ]
    assert (difference["low"], difference["high"]) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert difference["confidence"] == 0.95 and result["n_bootstrap"] == 300
    # pairing: far narrower than resampling the two models independently
    other = bootstrap_indices(60, 300, seed=4)
    unpaired = [
        adapter["correct"][a].mean() - baseline["correct"][b].mean()
        for a, b in zip(bootstrap_indices(60, 300, seed=3), other)
    ]
    assert difference["high"] - difference["low"] < 0.5 * np.subtract(*np.percentile(unpaired, [97.5, 2.5]))


def _comparison(adapter: float, baseline: float, low: float, high: float) -> dict[str, Any]:
    return {
        "adapter": adapter,
        "baseline": baseline,
        "difference": {"estimate": adapter - baseline, "low": low, "high": high, "confidence": 0.95},
    }


def test_verdict_says_points_direction_and_whether_the_ci_excludes_zero() -> None:
    line = verdict(
        "MiniRocket",
        "accuracy",
        _comparison(0.9, 0.85, 0.01, 0.09),
        higher_is_better=True,
        in_points=True,
        samples=150,
    )
    assert line == (
        "The adapter is 5.0 points above MiniRocket on test accuracy (better; 0.9000 vs 0.8500; 95% CI of the "
        "difference [1.0, 9.0] points, paired bootstrap over 150 test samples)."
    )
    lower = verdict(
        "frozen model",
        "wer",
        _comparison(0.2, 0.3, -0.15, 0.02),
        higher_is_better=False,
        in_points=True,
        samples=8,
    )
    assert "10.0 points below frozen model on test WER (better;" in lower
    assert lower.endswith("The interval includes 0: this test set does not tell them apart.")
    raw = verdict(
        "seasonal naive",
        "mse",
        _comparison(1.5, 0.5, 0.8, 1.2),
        higher_is_better=False,
        in_points=False,
        samples=25,
    )
    assert (
        "1 above seasonal naive on test MSE (worse; 1.5 vs 0.5; 95% CI of the difference [0.8, 1.2], " in raw
    )
    level = verdict(
        "x", "dice", _comparison(0.5, 0.5, 0.0, 0.0), higher_is_better=True, in_points=True, samples=1
    )
    assert "level with x on test Dice (no difference;" in level and "1 test sample)" in level
    unknown = verdict(
        "x",
        "dice",
        _comparison(0.5, 0.5, math.nan, math.nan),
        higher_is_better=True,
        in_points=True,
        samples=1,
    )
    assert "no CI (too few samples to resample)" in unknown
    nothing = _comparison(math.nan, 0.5, math.nan, math.nan)
    assert "could not be compared" in verdict(
        "x", "dice", nothing, higher_is_better=True, in_points=True, samples=0
    )


# -- the report ----------------------------------------------------------------------------------------------
def test_add_baseline_to_report_merges_and_replaces_its_own_section(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"test": {"test_accuracy": 0.9}, "figures": ["a.png"]}))
    (tmp_path / "report.md").write_text("# Run\n\n## Baseline\n\n- old line\n\n## Figures\n\n![a](a.png)\n")
    first = {"name": "A", "description": "first", "verdict": "The adapter is ahead.", "baseline": math.nan}
    second = {
        "name": "B",
        "description": "second",
        "skipped": "no data",
        "verdict": "No B baseline: no data.",
    }
    payload = add_baseline_to_report(tmp_path, [first, second])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["test"] == {"test_accuracy": 0.9} and report["figures"] == ["a.png"]  # other keys kept
    assert [entry["name"] for entry in report["baseline"]] == ["A", "B"] and report["baseline"][0][
        "baseline"
    ] is None
    assert json.loads((tmp_path / "baseline.json").read_text()) == payload and len(payload["baselines"]) == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "old line" not in markdown and "## Figures\n\n![a](a.png)" in markdown
    assert markdown.endswith(baseline_markdown(payload["baselines"]))
    assert (
        "- **A** (first): The adapter is ahead." in markdown and "- **B** (second): No B baseline" in markdown
    )
    add_baseline_to_report(tmp_path, [first])  # one baseline: the entry itself; the section once
    assert json.loads((tmp_path / "report.json").read_text())["baseline"]["name"] == "A"
    assert (tmp_path / "report.md").read_text().count("## Baseline") == 1
    lone = tmp_path / "lone"
    add_baseline_to_report(lone, [first])  # no report files: only baseline.json
    assert sorted(path.name for path in lone.iterdir()) == ["baseline.json"]


# -- the generic linear probe in a run -----------------------------------------------------------------------
def test_run_adds_the_linear_probe_beside_a_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(model="baseline_test.probe_net", adapter={"method": "full"}, learning_rate=0.01)
    trainer = _trainer(tmp_path)
    trainer.run(task, datamodule=PlantedDataModule())
    report = _report(trainer)
    entry = report["baseline"]
    assert entry["name"] == "linear probe" and "skipped" not in entry, entry
    assert entry["metric"] == "accuracy" and entry["samples"] == 48
    assert entry["adapter"] == pytest.approx(
        report["test"]["test_accuracy"]
    )  # the same samples, the same metric
    assert entry["baseline"] >= 0.85  # the planted level is linear in the frozen random features
    assert entry["difference"]["low"] <= entry["difference"]["estimate"] <= entry["difference"]["high"]
    assert (
        entry["verdict"].startswith("The adapter is ")
        and "paired bootstrap over 48 test samples" in entry["verdict"]
    )
    markdown = (Path(trainer.log_dir) / "report.md").read_text()
    assert "## Baseline" in markdown and entry["verdict"] in markdown
    assert (
        json.loads((Path(trainer.log_dir) / "baseline.json").read_text())["baselines"][0]["name"]
        == "linear probe"
    )


def test_the_probe_rebuilds_the_random_backbone_the_run_started_from(trained) -> None:
    """Full fine-tuning changed the backbone in place: the probe reads the one rebuilt as it was built (the
    random state kept at the run's setup), which has the run's backbone fingerprint."""
    trainer, task, datamodule = trained
    from verticals.core.baseline import BaselineContext, BuildRandomState

    state = next(callback for callback in trainer.callbacks if isinstance(callback, BuildRandomState)).state
    context = BaselineContext(task, datamodule, trainer, ClassificationScoring(task), 48, rng_state=state)
    with context.frozen_network() as network:
        assert fingerprint(network.backbone) == task.backbone_reference["fingerprint"]
        assert not any(parameter.requires_grad for parameter in network.parameters())
    assert fingerprint(task.model.backbone) != task.backbone_reference["fingerprint"]  # trained in place
    without = BaselineContext(task, datamodule, trainer, ClassificationScoring(task), 48, rng_state=None)
    torch.manual_seed(12345)  # any other random state draws other weights
    with (
        pytest.raises(BaselineSkipped, match="gave another backbone than the run's"),
        without.frozen_network(),
    ):
        pass


def test_a_linear_probe_config_is_its_own_baseline(tmp_path: Path) -> None:
    task = ClassificationTask(
        model="baseline_test.probe_net", adapter={"method": "linear_probe", "trainable": ["head"]}
    )
    trainer = _trainer(tmp_path)
    trainer.run(task, datamodule=PlantedDataModule())
    entry = _report(trainer)["baseline"]
    assert entry["is_config"] is True and entry["difference"] is None
    assert entry["baseline"] == entry["adapter"] == pytest.approx(_report(trainer)["test"]["test_accuracy"])
    assert entry["verdict"].startswith("This config is the baseline (linear probe): test accuracy ")


def test_run_adds_a_per_pixel_probe_beside_a_segmenter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = SegmentationTask(
        model="baseline_test.seg_net", adapter={"method": "full"}, spatial_metrics=[], learning_rate=0.01
    )
    trainer = _trainer(tmp_path)
    trainer.run(task, datamodule=PlantedTiles())
    report = _report(trainer)
    entry = report["baseline"]
    assert entry["name"] == "linear probe" and entry["metric"] == "dice" and "skipped" not in entry, entry
    assert entry["adapter"] == pytest.approx(report["test"]["test_dice"], abs=1e-6)
    assert entry["baseline"] >= 0.9  # brightness of each 2 x 2 block is linear in the frozen conv's features
    scoring = scoring_for(task)
    assert isinstance(scoring, SegmentationScoring)
    dice = scoring.per_sample(np.array([[[1, 1], [0, 0]]]), np.array([[[1, 0], [0, 0]]]))["dice"]
    np.testing.assert_allclose(
        dice, [[2 / 3]]
    )  # metric labels: the foreground only (background is "the rest")


def test_a_model_without_forward_features_is_skipped_with_the_reason(tmp_path: Path) -> None:
    task = ClassificationTask(model="baseline_test.plain", adapter={"method": "full"})
    trainer = _trainer(tmp_path)
    trainer.run(task, datamodule=PlantedDataModule(count=32))
    entry = _report(trainer)["baseline"]
    assert entry["skipped"].startswith("PlainNet has no forward_features(x)")
    assert entry["verdict"].startswith("No linear probe baseline: PlainNet has no forward_features(x)")


def test_fit_probe_picks_c_on_validation_and_refuses_one_class() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] > 0).astype(int)
    probe = fit_probe((x[:40], y[:40]), (x[40:], y[40:]))
    assert (probe.predict(x[40:]) == y[40:]).mean() >= 0.9
    assert probe[-1].C in (0.01, 0.1, 1.0, 10.0)
    with pytest.raises(BaselineSkipped, match="one class only"):
        fit_probe((x[:5], np.zeros(5, int)))


# -- what can go wrong ---------------------------------------------------------------------------------------
def test_registered_baselines_are_compared_skipped_or_recognised_as_the_config(trained, capsys) -> None:
    trainer, task, datamodule = trained
    truth = datamodule.split_dataset("test").y.numpy()

    def skip(context):
        raise BaselineSkipped("needs what this data lacks.")

    def broken(context):
        raise RuntimeError("boom")

    cases = {
        "test perfect": dict(predict=lambda context: truth[: context.test_count]),
        "test skipped": dict(predict=skip),
        "test broken": dict(predict=broken),
        "test short": dict(predict=lambda context: truth[:3]),
        "test missing package": dict(predict=lambda context: __import__("no_such_package_here")),
        "test itself": dict(predict=broken, is_config=lambda context: True),
    }
    for name, hooks in cases.items():
        register_baseline(name=name, description=name, applies=lambda t, d: t is task, **hooks)
    try:
        entries = {entry["name"]: entry for entry in run_baselines(task, datamodule, trainer=trainer)}
    finally:
        for name in cases:
            _unregister_baseline(name)
    perfect = entries["test perfect"]
    assert perfect["baseline"] == 1.0 and perfect["adapter"] == pytest.approx(
        _report(trainer)["test"]["test_accuracy"]
    )
    assert perfect["difference"]["estimate"] == pytest.approx(perfect["adapter"] - 1.0)
    assert entries["test skipped"]["skipped"] == "needs what this data lacks"
    assert entries["test skipped"]["verdict"] == "No test skipped baseline: needs what this data lacks."
    assert entries["test broken"]["skipped"] == "it failed: RuntimeError: boom"
    assert "baseline 'test broken': it failed: RuntimeError: boom" in capsys.readouterr().err
    assert "gave 3 predictions for 48 test samples" in entries["test short"]["skipped"]
    assert entries["test missing package"]["skipped"].startswith("it needs a package that is not installed")
    assert entries["test itself"]["is_config"] is True and "skipped" not in entries["test itself"]


def test_only_the_tested_batches_are_compared(trained) -> None:
    trainer, task, datamodule = trained
    register_baseline(
        name="test zeros",
        description="",
        applies=lambda t, d: t is task,
        predict=lambda c: np.zeros(c.test_count, int),
    )
    limit = trainer.limit_test_batches
    try:
        trainer.limit_test_batches = 2  # as `--trainer.limit_test_batches 2` (one process)
        (entry,) = run_baselines(task, datamodule, trainer=trainer)
    finally:
        trainer.limit_test_batches = limit
        _unregister_baseline("test zeros")
    assert entry["samples"] == 32  # 2 batches of 16
    truth = datamodule.split_dataset("test").y.numpy()[:32]
    assert entry["baseline"] == pytest.approx((truth == 0).mean())


# -- the flag ------------------------------------------------------------------------------------------------
def _config(tmp_path: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "default_root_dir": str(tmp_path / "runs"),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "verticals.core.tasks.ClassificationTask",
            "init_args": {"model": "baseline_test.probe_net", "adapter": {"method": "full"}},
        },
        "data": {"class_path": f"{__name__}.PlantedDataModule", "init_args": {"count": 32}},
    }
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("flag", [[], ["--baseline", "false"], ["--baseline", "true"]])
def test_the_baseline_flag(tmp_path: Path, flag: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["verticals"])
    cli = run_cli(["run", "--config", str(_config(tmp_path)), *flag])
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "report.json").read_text())
    if flag[1:] == ["false"]:
        assert "baseline" not in report and not (run / "baseline.json").exists()
        assert "## Baseline" not in (run / "report.md").read_text()
    else:
        assert report["baseline"]["name"] == "linear probe" and (run / "baseline.json").is_file()


def test_run_help_documents_the_flag(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["verticals"])
    with pytest.raises(SystemExit):
        run_cli(["run", "--help"])
    out = capsys.readouterr().out
    assert "--baseline {true,false}" in out and "--baseline false`` skips it" in " ".join(out.split())


class _TupleBatches:
    """A datamodule whose test batches are ``(x, y)`` tuples: no scoring can read them."""

    def dataloader(self, split: str, shuffle: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(2, 2, 8), torch.zeros(2, dtype=torch.long))]


def test_the_step_after_testing_never_fails_the_run(trained, capsys) -> None:
    from verticals.core.baseline import run_baseline_step

    trainer, task, _ = trained
    (entry,) = run_baseline_step(trainer, task, _TupleBatches())
    assert entry["skipped"].startswith("scoring the test samples failed: TypeError")
    assert "verticals: scoring the test samples failed" in capsys.readouterr().err
    assert _report(trainer)["baseline"]["skipped"] == entry["skipped"]
    (other,) = run_baseline_step(trainer, nn.Linear(2, 2), _TupleBatches())  # type: ignore[arg-type]
    assert other["verdict"] == "No baseline: Linear is not a verticals task."
