"""The ``verticals`` command: packaged configs, run, run over seeds, resume, errors, and a 2-process CPU DDP fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from verticals.core.cli import (
    SeedSweep,
    find_last_checkpoint,
    main,
    packaged_configs,
    resolve_config,
    run_cli,
)

TINY_MODEL = "{encoder: tiny-bert, num_layers: 2}"
TINY_FORECAST_MODEL = "{encoder: tiny-bert, num_layers: 2, patch_length: 8, stride: 4}"


pytestmark = pytest.mark.domains  # the CLI runs the timeseries domain's packaged configs (see conftest.py)


def _tiny(config: str, root: Path, *extra: str) -> list[str]:
    forecasting = "airline" in config
    args = [
        "--config",
        config,
        "--model.init_args.model_args",
        TINY_FORECAST_MODEL if forecasting else TINY_MODEL,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    return [*args, *extra]


def _short_lora(root: Path, epochs: int, batches: int, *extra: str) -> list[str]:
    """The default job's config on the tiny encoder, cut to a few epochs and batches."""
    limits = ["--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", str(batches)]
    return _tiny("timeseries/gunpoint_lora", root, *limits, *extra)


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


# The tiny model arguments here are the time-series encoder's; each other domain runs its own configs in
# tests/domains/<domain>/test_configs.py.
@pytest.mark.parametrize(
    "name", sorted(name for name in packaged_configs() if name.startswith("timeseries/"))
)
def test_every_packaged_config_runs(tmp_path, name):
    cli = run_cli(["fit", *_tiny(name, tmp_path, "--trainer.fast_dev_run", "true")])
    assert cli.trainer.state.finished


def test_packaged_configs_are_listed_with_descriptions(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    assert "timeseries/gunpoint_lora" in out and "LoRA" in out
    for path in packaged_configs().values():
        assert path.read_text().startswith("# "), f"{path} needs a one-line description comment"
        assert yaml.safe_load(path.read_text())["trainer"]["default_root_dir"].startswith("runs/")


def test_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(
        SystemExit,
        match="(?s)'timeseries/gunpont_lora' is neither a file nor a packaged config.*gunpoint_lora",
    ):
        resolve_config("timeseries/gunpont_lora")


def test_run_writes_adapter_metrics_and_report(tmp_path):
    run_cli(
        [
            "run",
            *_short_lora(tmp_path, 1, 2),
        ]
    )
    run_dir = tmp_path / "version_0"
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "metrics.csv").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert 0.0 <= report["test"]["test_accuracy"] <= 1.0
    assert report["parameters"]["trainable"] > 0 and report["timing"]["samples_per_second"] > 0
    assert report["backbone"]["source"] == "tiny-bert"
    assert "| accuracy |" in (run_dir / "report.md").read_text()


def _tiny_probe(root: Path, *extra: str) -> list[str]:
    """The linear probe on the tiny encoder: one short epoch, validation and test cut to a few batches."""
    limits = [
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]
    return _tiny(
        "timeseries/gunpoint_linear_probe", root, *limits, "--trainer.limit_test_batches", "3", *extra
    )


def test_run_over_seeds_writes_one_report_with_every_seed(tmp_path):
    sweep = run_cli(["run", *_tiny_probe(tmp_path), "--seeds", "3", "1"])
    assert isinstance(sweep, SeedSweep) and sweep.directory.parent == tmp_path
    assert sweep.directory.name.startswith("seeds_")
    report = json.loads((sweep.directory / "seeds.json").read_text())
    assert report == json.loads(json.dumps(sweep.report)) and report["complete"] and report["seeds"] == [3, 1]
    runs = {run["seed"]: run for run in report["runs"]}
    assert list(runs) == [3, 1] and not runs[3]["stopped_early"]  # max_epochs 1 reached
    for seed, version in ((3, "version_0"), (1, "version_1")):  # each seed its own version, in order
        assert runs[seed]["run_dir"] == f"../{version}"
        assert runs[seed]["test"] == json.loads((tmp_path / version / "report.json").read_text())["test"]
        assert yaml.safe_load((tmp_path / version / "config.yaml").read_text())["seed_everything"] == seed
    assert runs[3]["test"]["test_loss"] != runs[1]["test"]["test_loss"]  # the seed reached the training
    for metric in ("test_auroc", "test_loss"):
        values = np.array([runs[3]["test"][metric], runs[1]["test"][metric]])
        summary = report["summary"][metric]
        assert summary["values"] == values.tolist() and summary["n"] == 2
        assert summary["mean"] == pytest.approx(values.mean()) and summary["std"] == pytest.approx(
            values.std(ddof=1)
        )
        low, high = stats.t.interval(0.95, df=1, loc=values.mean(), scale=stats.sem(values))
        assert (summary["low"], summary["high"]) == pytest.approx((low, high))
    markdown = (sweep.directory / "seeds.md").read_text()
    assert "| loss |" in markdown and "95% CI" in markdown and "[../version_1](../version_1)" in markdown
    # one seed of the sweep is the same run as `verticals run --seed_everything 1`
    single = run_cli(["run", *_tiny_probe(tmp_path / "single"), "--seed_everything", "1"])
    assert {k: float(v) for k, v in single.trainer.callback_metrics.items() if k.startswith("test_")} == runs[
        1
    ]["test"]


def test_one_seed_report_and_a_run_stopped_early(tmp_path):
    """One seed: no spread (n/a), and a run that early stopping ends before its budget is marked as such."""
    stop_at_once = tmp_path / "stop.yaml"
    stop_at_once.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val_loss, stopping_threshold: 1.0e+9, check_on_train_epoch_end: false}\n"
    )
    args = _tiny_probe(tmp_path / "runs", "--config", str(stop_at_once), "--trainer.max_epochs", "5")
    sweep = run_cli(["run", *args, "--seeds", "7"])
    (run,) = sweep.report["runs"]
    assert run["stopped_early"] and run["epochs"] == 1 and run["steps"] == 2
    accuracy = sweep.report["summary"]["test_accuracy"]
    assert accuracy["n"] == 1 and math.isnan(accuracy["std"]) and math.isnan(accuracy["low"])
    assert "n/a" in (sweep.directory / "seeds.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["fit", "--seeds", "0", "1"],
            "--seeds trains and tests once per seed.*`verticals run`.*`fit` does one run",
        ),
        (["test", "--seeds=0,1"], "`verticals run`.*`test` does one run"),
        (["run", "--seeds", "0", "0"], "distinct, got \\[0\\] more than once"),
        (["run", "--seeds", "zero"], "--seeds takes integers, got 'zero'"),
        (["run", "--seeds"], "--seeds needs at least one seed"),
        (
            ["run", "--seeds", "0", "--seed_everything", "3"],
            "--seed_everything cannot be combined with --seeds",
        ),
        (["run", "--seeds", "0", "1", "--ckpt_path", "last"], "--ckpt_path cannot be combined with --seeds"),
    ],
)
def test_seeds_errors_name_the_fix(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        run_cli([args[0], *_tiny_probe(tmp_path), *args[1:]])
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_resume_from_last(tmp_path):
    run_cli(
        [
            "fit",
            *_short_lora(tmp_path, 1, 1),
        ]
    )
    checkpoint, version = find_last_checkpoint(tmp_path)
    assert version == 0 and checkpoint.endswith("last.ckpt")
    cli = run_cli(
        [
            "fit",
            *_short_lora(tmp_path, 2, 1, "--ckpt_path", "last"),
        ]
    )
    assert cli.trainer.current_epoch == 2
    assert not (tmp_path / "version_1").exists()  # the resumed run keeps writing to version_0


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="found no version_\\*/checkpoints/last.ckpt"):
        find_last_checkpoint(tmp_path)


def test_bad_dataset_path_is_a_clear_error(tmp_path):
    # jsonargparse wraps the datamodule's FileNotFoundError; its message reaches the user unchanged.
    with pytest.raises((FileNotFoundError, ValueError), match="does not exist; expected .*GunPoint_TRAIN.ts"):
        run_cli(
            [
                "fit",
                *_tiny("timeseries/gunpoint_lora", tmp_path, "--data.init_args.root", str(tmp_path / "nope")),
            ]
        )


def test_unknown_target_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="matched no module.*Candidate module names"):
        run_cli(
            [
                "fit",
                *_tiny(
                    "timeseries/gunpoint_lora",
                    tmp_path,
                    "--model.init_args.adapter.targets",
                    "qkv_proj",
                    "--trainer.fast_dev_run",
                    "true",
                ),
            ]
        )


def test_help_shows_task_options():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "verticals.core.cli",
            "fit",
            "--model.help",
            "verticals.core.tasks.ClassificationTask",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--model.adapter" in result.stdout and "--model.num_classes" in result.stdout
    assert "--model.learning_rate" in result.stdout  # base-task options reach the help through **kwargs


def test_ddp_on_two_cpu_processes(tmp_path):
    """Lightning's DDP strategy (gloo) with 2 CPU processes, launched as a user would."""
    command = [
        sys.executable,
        "-m",
        "verticals.core.cli",
        "fit",
        *_short_lora(
            tmp_path,
            1,
            2,
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
        ),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert (tmp_path / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "version_0" / "adapter" / "adapter_model.safetensors").is_file()
