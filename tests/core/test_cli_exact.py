"""Lightning's flags do what they do in Lightning: ``--optimizer`` / ``--lr_scheduler``, a user's checkpoint
callback, a positional config for every subcommand, ``--version``, ``configs`` in ``--help``, close-name
suggestions, a changed adapter against a ``--ckpt_path`` refused, and ``run`` ending with the paths it wrote."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from verticals.core.callbacks import ExportAdapter, RunReport, Timing
from verticals.core.cli import (
    CONFIGS_HELP,
    _rewrite_arguments,
    main,
    packaged_configs,
    resolve_config,
    run_cli,
    written_paths,
)
from verticals.core.tasks import ClassificationTask
from verticals.core.tasks.base import NOT_SET, adapter_differences, mark_user_checkpoint

pytestmark = pytest.mark.domains  # the timeseries domain's packaged config and tiny encoder (see conftest.py)

CONFIG = "timeseries/gunpoint_lora"  # LoRA r=8 on attention, AdamW with a cosine schedule
MODEL = "timeseries.patch_transformer"
TINY = {"encoder": "tiny-bert", "num_layers": 2}
LORA = {
    "method": "lora",
    "targets": "attention",
    "trainable": ["patch_embedding", "head"],
    "options": {"r": 8},
}


def _tiny(root: Path, *extra: str) -> list[str]:
    """Arguments after ``SUBCOMMAND CONFIG``: the tiny encoder, quiet, one batch per stage."""
    return [
        "--model.init_args.model_args",
        json.dumps(TINY),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


@pytest.fixture(scope="module")
def user_checkpoint_run(tmp_path_factory):
    """``verticals run CONFIG`` (positional) with the user's own ModelCheckpoint in ``--trainer.callbacks``."""
    root, mine = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("mine")
    argv, out = list(sys.argv), io.StringIO()
    args = [
        "run",
        CONFIG,
        *_tiny(root, "--trainer.max_epochs", "2"),
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.dirpath",
        str(mine),
        "--trainer.callbacks.filename",
        "mine-{epoch}",
        "--trainer.callbacks.monitor",
        "val_accuracy",
        "--trainer.callbacks.mode",
        "max",
        "--trainer.callbacks.save_top_k",
        "-1",
    ]
    try:
        with contextlib.redirect_stdout(out):
            cli = run_cli(args)
    finally:
        sys.argv = argv
    return SimpleNamespace(cli=cli, root=root, mine=mine, printed=out.getvalue())


# -- the user's checkpoint callback, and the paths `run` wrote ------------------------------------------
def test_a_users_checkpoint_callback_is_kept_and_the_task_adds_none(user_checkpoint_run):
    trainer, mine = user_checkpoint_run.cli.trainer, user_checkpoint_run.mine
    (checkpoint,) = trainer.checkpoint_callbacks  # the user's alone: not replaced, no second one added
    assert (checkpoint.dirpath, checkpoint.monitor, checkpoint.mode) == (str(mine), "val_accuracy", "max")
    assert sorted(path.name for path in mine.iterdir()) == ["mine-epoch=0.ckpt", "mine-epoch=1.ckpt"]
    run_dir = user_checkpoint_run.root / "version_0"
    assert not (run_dir / "checkpoints").exists()  # no best.ckpt / last.ckpt of the task's own
    report = json.loads((run_dir / "report.json").read_text())
    assert (
        report["checkpoint"] == checkpoint.best_model_path and Path(checkpoint.best_model_path).parent == mine
    )
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # no --optimizer: the task's own AdamW (learning_rate 0.001 in the config) with its per-step cosine schedule
    (optimizer,), (schedule,) = trainer.optimizers, trainer.lr_scheduler_configs
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 0.001
    assert type(schedule.scheduler) is torch.optim.lr_scheduler.LambdaLR and schedule.interval == "step"


def test_run_ends_with_the_paths_it_wrote(user_checkpoint_run):
    printed, run_dir = user_checkpoint_run.printed, user_checkpoint_run.root / "version_0"
    best = user_checkpoint_run.cli.trainer.checkpoint_callback.best_model_path
    tail = printed[printed.index("Run directory:") :]
    assert tail.splitlines()[0] == f"Run directory: {run_dir}"
    for label, path in [
        ("report", run_dir / "report.md"),
        ("adapter", run_dir / "adapter"),
        ("best checkpoint", best),
        ("config", run_dir / "config.yaml"),
        ("metrics", run_dir / "metrics.csv"),
    ]:
        assert re.search(rf"^  {label}: +{re.escape(str(path))}$", tail, re.MULTILINE), (label, tail)
    figures = json.loads((run_dir / "report.json").read_text())["figures"]
    assert "learning_curve.png" in figures
    assert re.search(rf"^  figures: +{re.escape(', '.join(figures))}$", tail, re.MULTILINE), tail


def test_the_figures_line_lists_what_the_report_lists_and_is_there(tmp_path):
    trainer = SimpleNamespace(checkpoint_callback=None, checkpoint_callbacks=[])
    assert "figures:" not in written_paths(trainer, tmp_path)  # no report
    (tmp_path / "report.json").write_text("[]")
    assert "figures:" not in written_paths(trainer, tmp_path)  # not a report
    (tmp_path / "learning_curve.png").write_bytes(b"png")
    (tmp_path / "report.json").write_text(json.dumps({"figures": ["learning_curve.png", "gone.png"]}))
    assert written_paths(trainer, tmp_path).splitlines()[-1] == "  figures:         learning_curve.png"


@pytest.mark.parametrize("given", ["nothing", "users", "users-all-defaults", "checkpointing-off"])
def test_the_task_adds_its_checkpoint_only_when_none_is_given(tmp_path, given):
    if (
        given == "users-all-defaults"
    ):  # every argument at its default, marked as the CLI marks --trainer.callbacks
        callback = ModelCheckpoint()
        mark_user_checkpoint(callback)
    trainer_kwargs = {
        "nothing": {},  # Lightning adds its default ModelCheckpoint(): the task's best checkpoint replaces it
        "users": {"callbacks": [ModelCheckpoint(monitor="val_accuracy", mode="max")]},
        "users-all-defaults": {"callbacks": [callback]} if given == "users-all-defaults" else {},
        "checkpointing-off": {"enable_checkpointing": False},  # no checkpoints, as in Lightning
    }[given]
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, **trainer_kwargs)
    task = ClassificationTask(model=MODEL, model_args=TINY, adapter=LORA)
    task.trainer = trainer
    callbacks = task.configure_callbacks()
    ours = [callback for callback in callbacks if isinstance(callback, ModelCheckpoint)]
    assert bool(ours) == (given == "nothing")
    if ours:
        assert (ours[0].monitor, ours[0].filename) == (task.monitor, "best")  # the task's own
    kinds = {type(callback) for callback in callbacks}
    assert {Timing, ExportAdapter, RunReport} <= kinds  # the rest of the run's callbacks stay


# -- --optimizer / --lr_scheduler -------------------------------------------------------------------------
def test_optimizer_and_scheduler_from_the_command_line_train_the_adapter_only(tmp_path):
    cli = run_cli(
        [
            "fit",
            CONFIG,
            *_tiny(tmp_path, "--trainer.fast_dev_run", "true"),
            "--optimizer",
            "SGD",
            "--optimizer.lr",
            "0.1",
            "--lr_scheduler",
            "StepLR",
            "--lr_scheduler.step_size",
            "1",
            "--lr_scheduler.gamma",
            "0.5",
        ]
    )
    trainer, task = cli.trainer, cli.model
    assert trainer.state.finished
    # no checkpoint callback given: the task's best (then last-epoch) checkpoint replaced Lightning's default
    assert (
        trainer.checkpoint_callback.filename == "best" and trainer.checkpoint_callback.monitor == task.monitor
    )
    (optimizer,), (schedule,) = trainer.optimizers, trainer.lr_scheduler_configs
    assert type(optimizer) is torch.optim.SGD and type(schedule.scheduler) is torch.optim.lr_scheduler.StepLR
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # 0.1, halved after the one epoch
    optimised = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert {id(p) for p in optimised} == {id(p) for p in trainable} and len(optimised) == len(trainable)
    names = {id(p): name for name, p in task.named_parameters()}
    assert {names[id(p)] for p in optimised} == set(task.trainable_names())
    assert all(re.search(r"\.lora_[AB]\.|\.modules_to_save\.", names[id(p)]) for p in optimised)
    assert len(list(task.parameters())) > len(optimised)  # the frozen backbone is not in it
    # the SGD step moved LoRA's B (initialised at zero)
    assert any(p.abs().sum() > 0 for name, p in task.named_parameters() if "lora_B" in name)


def test_a_scheduler_alone_schedules_the_tasks_adamw_and_no_flag_keeps_the_tasks_default():
    task = ClassificationTask(
        model=MODEL, model_args=TINY, adapter=LORA, input_shape=[1, 150], num_classes=2, learning_rate=0.003
    )
    task._trainer = SimpleNamespace(estimated_stepping_batches=20)  # what the cosine schedule reads
    default = task.configure_optimizers()
    assert type(default["optimizer"]) is torch.optim.AdamW and default["optimizer"].defaults["lr"] == 0.003
    assert type(default["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.LambdaLR

    task.use_optimizer(
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 3}}
    )
    (optimizer,), (scheduler,) = task.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 0.003
    assert optimizer.defaults["weight_decay"] == 0.01 and type(scheduler) is torch.optim.lr_scheduler.StepLR
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in parameters} == {id(p) for p in task.optimizer_parameters()}

    task.use_optimizer(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.2}})
    optimizer = task.configure_optimizers()  # as in LightningCLI: an optimizer alone, at a constant rate
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.2


# -- a changed adapter against --ckpt_path -------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, row",
    [
        ("options.r", "4", "options.r: the checkpoint has 8, the config gives 4"),
        ("targets", "qv", "targets: the checkpoint has 'attention', the config gives 'qv'"),
        ("method", "loha", "method: the checkpoint has 'lora', the config gives 'loha'"),
        (
            "options",
            "{r: 8, lora_alpha: 16, lora_dropout: 0.1, use_rslora: true}",
            "options.use_rslora: the checkpoint has not set \\(the method's default\\), the config gives True",
        ),
    ],
)
def test_a_changed_adapter_against_the_checkpoint_is_an_error(
    user_checkpoint_run, tmp_path_factory, tmp_path, flag, value, row
):
    # the checkpoint in a run's layout (<run>/checkpoints/, <run>/config.yaml), where the message finds the config
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "checkpoints").mkdir()
    best = str(run_dir / "checkpoints" / "best.ckpt")
    shutil.copy(user_checkpoint_run.cli.trainer.checkpoint_callback.best_model_path, best)
    shutil.copy(user_checkpoint_run.root / "version_0" / "config.yaml", run_dir / "config.yaml")
    message = rf"(?s)checkpoint {re.escape(best)} was trained with another adapter.*--model\.init_args\.adapter\.{row}"
    with pytest.raises(SystemExit, match=message) as raised:
        run_cli(
            [
                "test",
                CONFIG,
                *_tiny(tmp_path),
                "--ckpt_path",
                best,
                f"--model.init_args.adapter.{flag}",
                value,
            ]
        )
    text = str(raised.value)
    if flag == "options.r":  # the fix: the checkpoint's value, or the run's own config
        assert "--model.init_args.adapter.options.r 8" in text
        assert f"or use the run's own config: --config {run_dir.resolve() / 'config.yaml'}" in text
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_test_takes_a_positional_config_and_an_unchanged_adapter_loads(user_checkpoint_run, tmp_path):
    best = user_checkpoint_run.cli.trainer.checkpoint_callback.best_model_path
    cli = run_cli(["test", CONFIG, *_tiny(tmp_path), "--ckpt_path", best])
    assert cli.trainer.state.finished and "test_accuracy" in cli.trainer.callback_metrics
    assert cli.model.hparams["adapter"]["options"]["r"] == 8


def test_testing_another_runs_checkpoint_drops_lightnings_dirpath_notice(tmp_path):
    """The run's own checkpoint callbacks load the tested checkpoint's state; Lightning then warns that the
    dirpath changed, which says nothing to act on when evaluating (nothing is saved)."""
    fitted = run_cli(["fit", CONFIG, *_tiny(tmp_path / "fit", "--trainer.max_epochs", "1")])
    best = fitted.trainer.checkpoint_callback.best_model_path
    for subcommand in ("validate", "test", "predict"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = run_cli([subcommand, CONFIG, *_tiny(tmp_path / subcommand), "--ckpt_path", best])
        assert cli.trainer.state.finished
        assert not [warning for warning in caught if "dirpath has changed" in str(warning.message)], (
            subcommand
        )


def test_a_task_with_another_rank_refuses_the_checkpoint_from_python(user_checkpoint_run, tmp_path):
    from verticals.domains.timeseries.data import UCRDataModule

    best = user_checkpoint_run.cli.trainer.checkpoint_callback.best_model_path
    task = ClassificationTask(model=MODEL, model_args=TINY, adapter={**LORA, "options": {"r": 4}})
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, limit_test_batches=1
    )
    with pytest.raises(
        ValueError, match="(?s)another adapter.*adapter.options.r: the checkpoint has 8, this task has 4"
    ):
        trainer.test(task, UCRDataModule("GunPoint", batch_size=8), ckpt_path=best, weights_only=True)


def test_adapter_differences_ignore_options_the_run_fills_but_not_ones_given():
    given = {"method": "adalora", "targets": "attention", "trainable": [], "options": {"init_r": 4}}
    saved = {**given, "options": {"init_r": 4, "total_step": 40}}  # AdaLoRA's total_step, filled by the fit
    assert adapter_differences(given, saved) == []
    assert adapter_differences({**given, "options": {"init_r": 4, "total_step": 9}}, saved) == [
        ("options.total_step", 9, 40)
    ]
    assert adapter_differences({**given, "options": {"init_r": 4, "tinit": 2}}, saved) == [
        ("options.tinit", 2, NOT_SET)
    ]
    assert adapter_differences(None, saved) == [] and adapter_differences(given, None) == []


# -- arguments, --version, --help, names -----------------------------------------------------------------
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict", "run"])
def test_every_subcommand_takes_a_positional_config(subcommand):
    path = str(packaged_configs()[CONFIG])
    assert _rewrite_arguments([subcommand, CONFIG, "--trainer.max_epochs", "1"]) == [
        subcommand,
        "--config",
        path,
        "--trainer.max_epochs",
        "1",
    ]
    assert _rewrite_arguments([subcommand, "--config", CONFIG]) == [subcommand, "--config", path]


def test_version(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0
    assert re.fullmatch(r"verticals \S+ \(lightning \S+, torch \S+, peft \S+\)\n", capsys.readouterr().out)


def test_help_lists_configs(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict,run,configs,export}" in out and "--version" in out
    assert re.search(r"^\s+configs\s+" + re.escape(CONFIGS_HELP.split(" (")[0]), out, re.MULTILINE)


@pytest.mark.parametrize(
    "typo, suggested",
    [
        ("timeseries/gunpont_lora", "timeseries/gunpoint_lora"),  # a letter missing
        ("gunpoint_lora", "timeseries/gunpoint_lora"),  # the domain missing
        ("medical/gunpoint_lora", "timeseries/gunpoint_lora"),  # the wrong domain
    ],
)
def test_a_config_typo_suggests_close_names_not_all_of_them(typo, suggested):
    with pytest.raises(SystemExit) as raised:
        resolve_config(typo)
    text = str(raised.value)
    assert f"{typo!r} is neither a file nor a packaged config. Did you mean {suggested!r}?" in text
    named = set(re.findall(r"'(\w+/\w+)'", text)) - {typo}
    assert suggested in named and len(named) <= 3 < len(packaged_configs())  # at most 3 names, not all
    assert "`verticals configs`" in text


def test_a_name_close_to_nothing_points_to_the_list():
    with pytest.raises(SystemExit, match=r"No packaged config has a close name\.\nRun `verticals configs`"):
        resolve_config("xyzzy")
