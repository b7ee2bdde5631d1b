"""A normal run is quiet: no Lightning tip, no callback-override line, no warning the project could prevent;
the progress bar, the set-up lines and the paths written stay."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from verticals.core.cli import VerticalsTrainer
from verticals.core.quiet import (
    LIGHTNING_LOGGERS,
    LIGHTNING_TIP,
    RANK_ZERO_LOGGERS,
    DropLightningTips,
    quiet_lightning,
)

# What a line of noise looks like: Lightning's tips and override notice, any warning (Python's format
# `file.py:LINE: Category: text`, or Lightning's own `file.py:LINE: text`), a logged "warning".
NOISE = re.compile(r"Tip:|override|warn|\.py:\d+: ", re.IGNORECASE)


@pytest.fixture
def restored_logging():
    """Undo quiet_lightning's logger filters and levels after the test."""
    saved = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).filters))
        for name in (*RANK_ZERO_LOGGERS, *LIGHTNING_LOGGERS)
    }
    yield
    for name, (level, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.filters[:] = filters


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_tips_are_dropped_and_other_info_lines_kept(restored_logging):
    with warnings.catch_warnings():
        quiet_lightning()
        quiet_lightning()  # idempotent: one filter per logger
    for name in RANK_ZERO_LOGGERS:
        assert sum(isinstance(f, DropLightningTips) for f in logging.getLogger(name).filters) == 1
    logger, collect = logging.getLogger(RANK_ZERO_LOGGERS[0]), _Collect()
    logger.addHandler(collect)
    try:
        rank_zero_info(f"{LIGHTNING_TIP} For seamless cloud uploads, try installing something.")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["GPU available: False, used: False"]


def test_only_the_listed_warnings_are_silenced(restored_logging):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn(
            "Found 117 module(s) in eval mode at the start of training. This may lead to ...",
            PossibleUserWarning,
            stacklevel=1,
        )
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Found 3 module(s) somewhere else", PossibleUserWarning, stacklevel=1)
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1
        )  # other kind
        for layer in ("torch.nn.modules.normalization.LayerNorm", "my.layers.FancyLinear"):
            warnings.warn(
                f"Unsupported layer type '<class '{layer}'>' encountered, proceed at your own risk.",
                UserWarning,
                stacklevel=1,
            )
    assert [str(warning.message) for warning in caught] == [
        "Found 3 module(s) somewhere else",
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "Unsupported layer type '<class 'my.layers.FancyLinear'>' encountered, proceed at your own risk.",
    ]


def test_a_level_is_set_after_lightning_set_its_own(restored_logging):
    with warnings.catch_warnings():
        quiet_lightning(logging.ERROR)
    assert all(logging.getLogger(name).level == logging.ERROR for name in LIGHTNING_LOGGERS)


def test_best_is_passed_to_lightning_as_the_file_of_the_first_checkpoint_callback(tmp_path):
    trainer = VerticalsTrainer(
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        callbacks=[ModelCheckpoint(tmp_path, monitor="a"), ModelCheckpoint(tmp_path, monitor="b")],
    )

    def named(kwargs):
        trainer._name_best_checkpoint(kwargs)  # in place: jsonargparse reads the options from super()'s call
        return kwargs

    assert named({"ckpt_path": "best"}) == {"ckpt_path": "best"}  # no best yet: Lightning's own error
    trainer.checkpoint_callback.best_model_path = str(tmp_path / "best.ckpt")
    assert named({"ckpt_path": "best", "verbose": False}) == {
        "ckpt_path": str(tmp_path / "best.ckpt"),
        "verbose": False,
    }
    assert named({"ckpt_path": "last"}) == {"ckpt_path": "last"}
    assert named({}) == {}


@pytest.mark.domains  # the default job's packaged config, on a tiny encoder
def test_the_default_job_prints_no_noise(tmp_path):
    """`verticals run` as a user types it (progress bar and model summary on), one epoch on a tiny encoder:
    every output line that looks like noise is a failure. Unavoidable lines: none."""
    command = [
        sys.executable, "-c", "from verticals.core.cli import main; main()",
        "run", "timeseries/gunpoint_lora",
        "--model.init_args.model_args", "{encoder: tiny-bert, num_layers: 2}",
        "--trainer.max_steps", "3",  # one epoch of GunPoint's 40 training series, validated at its end
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    # Python's default warning filters, as a user's shell has them (no PYTHONWARNINGS from the test run).
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    environment |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=tmp_path)
    output = (done.stdout + done.stderr).replace("\r", "\n")
    assert done.returncode == 0, output[-3000:]
    noise = [line for line in output.splitlines() if NOISE.search(line)]
    assert not noise, "noise in a normal run:\n" + "\n".join(dict.fromkeys(noise))
    run = tmp_path / "runs" / "version_0"
    assert f"Run directory: {run}" in output and re.search(
        rf"report: +{re.escape(str(run / 'report.md'))}", output
    )
    assert "Testing" in output and "test_accuracy" in output  # the progress bar and the test table stay
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert re.search(r"Restoring states from the checkpoint path at .*best\.ckpt", output)


def test_silenced_log_messages_are_dropped_by_their_start_and_others_kept() -> None:
    from verticals.core.quiet import DropLogMessages, silence_log_messages

    name = "verticals.tests.quiet_messages"
    logger, collect = logging.getLogger(name), _Collect()
    logger.addHandler(collect)
    try:
        silence_log_messages(name, ("Known harmless notice",))
        silence_log_messages(name, ("Known harmless notice",))  # idempotent
        assert sum(isinstance(f, DropLogMessages) for f in logger.filters) == 1
        logger.warning("Known harmless notice about %s", "decoding")
        logger.warning("Another warning")
        assert collect.messages == ["Another warning"]
    finally:
        logger.removeHandler(collect)
        logger.filters.clear()
