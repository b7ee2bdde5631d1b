"""Merged inference and export: which methods merge, ``predict`` merged by default (same outputs as unmerged),
``--merge_adapter false``, and ``verticals export RUN_DIR`` (the merged model equals the adapter model; an
unmergeable method and a wrong path are refused with the fix)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from verticals.core.adapters.api import adapt
from verticals.core.adapters.merging import has_adapter, is_merged, merge_refusal, merged_for_inference
from verticals.core.cli import main, run_cli
from verticals.core.tasks import ClassificationTask

pytestmark = pytest.mark.domains  # the timeseries domain's tiny encoder and GunPoint (see conftest.py)
_timeseries = pytest.importorskip(
    "verticals.domains.timeseries.data", reason="the timeseries domain is blocked"
)
UCRDataModule = _timeseries.UCRDataModule

TINY_MODEL = "{encoder: tiny-bert, num_layers: 2}"
#: Random B as well as A (peft's init leaves B zero), so a merge that dropped the update would show.
LORA_OPTIONS = "{r: 2, lora_alpha: 4, lora_dropout: 0.0, init_lora_weights: false}"


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.v, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.q(x)) + self.v(x))


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _fit(root: Path, config: str, *extra: str) -> Path:
    """A one-step run of a packaged GunPoint config on the tiny encoder; returns its run directory."""
    run_cli(
        [
            "fit",
            config,
            "--model.init_args.model_args",
            TINY_MODEL,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            *extra,
        ]
    )
    return root / "version_0"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    return _fit(root, "timeseries/gunpoint_lora", "--model.init_args.adapter.options", LORA_OPTIONS)


# -- which methods merge -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, options, mergeable",
    [
        ("lora", {"r": 2, "init_lora_weights": False}, True),
        ("lora", {"r": 2, "use_dora": True, "init_lora_weights": False}, True),
        ("adalora", {"init_r": 2, "total_step": 10}, True),
        ("s2lora", {"r": 2}, True),
        ("bottleneck", {"bottleneck_dim": 4}, False),
    ],
)
def test_which_methods_merge_and_merged_outputs_equal_unmerged(method, options, mergeable):
    torch.manual_seed(0)
    model = adapt(_MLP(), method, targets=["q", "v"] if method != "bottleneck" else ["q"], **options).eval()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and "lora_B" in name:
            nn.init.normal_(parameter, std=0.5)  # a real update (AdaLoRA starts at zero too)
    refusal = merge_refusal(model)
    assert (refusal is None) is mergeable
    if not mergeable:
        assert f"'{method}'" in refusal and "cannot be merged" in refusal
    x = torch.randn(5, 8)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(x)
        with merged_for_inference(model) as merged:
            assert merged is mergeable and is_merged(model) is mergeable
            during = model(x)
    torch.testing.assert_close(during, unmerged, rtol=1e-5, atol=1e-5)
    assert not is_merged(model)
    for name, tensor in model.state_dict().items():  # unmerged: the weights are back (up to rounding)
        torch.testing.assert_close(tensor, weights[name], rtol=1e-5, atol=1e-6)


def test_a_regime_has_no_adapter_to_merge():
    model = adapt(_MLP(), "full")
    assert not has_adapter(model) and merge_refusal(model) is None


# -- predict ---------------------------------------------------------------------------------------------------
class _MergedDuringPredict(L.Callback):
    def __init__(self) -> None:
        self.states: list[bool] = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.states.append(is_merged(pl_module.model))


def _predict(task: ClassificationTask, merge: bool) -> tuple[torch.Tensor, list[bool]]:
    task.merge_for_predict = merge
    seen = _MergedDuringPredict()
    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
        limit_predict_batches=2,
    )
    outputs = trainer.predict(task, UCRDataModule("GunPoint", batch_size=8))
    return torch.cat(outputs), seen.states


def test_predict_merges_by_default_with_the_outputs_of_unmerged(lora_run):
    task = ClassificationTask.load_from_checkpoint(lora_run / "checkpoints" / "last.ckpt", weights_only=True)
    before = {name: tensor.clone() for name, tensor in task.model.state_dict().items()}
    merged, merged_states = _predict(task, merge=True)
    unmerged, unmerged_states = _predict(task, merge=False)
    assert merged_states == [True, True] and unmerged_states == [False, False]
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)
    assert not is_merged(task.model)  # unmerged after predict: training would see its adapter layers again
    for name, tensor in task.model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=1e-5, atol=1e-6)


def test_an_unmergeable_method_predicts_unmerged_and_says_why(caplog):
    task = ClassificationTask(
        model="timeseries.patch_transformer",
        model_args={"encoder": "tiny-bert", "num_layers": 2},
        adapter={
            "method": "bottleneck",
            "targets": "blocks",
            "trainable": ["head"],
            "options": {"bottleneck_dim": 4},
        },
        input_shape=[1, 150],
        num_classes=2,
    )
    with caplog.at_level(logging.INFO, logger="verticals.core.adapters.merging"):
        _, states = _predict(task, merge=True)
    assert states == [False, False]
    lines = [
        record.getMessage() for record in caplog.records if record.name == "verticals.core.adapters.merging"
    ]
    assert (
        len(lines) == 1 and "runs the 'bottleneck' adapter unmerged" in lines[0] and "nonlinear" in lines[0]
    )


def test_predict_flag_reaches_the_task(lora_run):
    common = [
        "predict",
        str(lora_run / "config.yaml"),
        "--ckpt_path",
        str(lora_run / "checkpoints" / "last.ckpt"),
        "--trainer.limit_predict_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert run_cli(common).model.merge_for_predict is True
    assert run_cli([*common, "--merge_adapter", "false"]).model.merge_for_predict is False


def test_predict_help_documents_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--merge_adapter {true,false}" in out and "false`` predicts unmerged" in out


# -- export ----------------------------------------------------------------------------------------------------
def test_export_writes_the_merged_model_whose_outputs_equal_the_adapter_model(lora_run, tmp_path, capsys):
    output = tmp_path / "exported"
    main(["export", str(lora_run), "--output", str(output), "--checkpoint", "last"])
    assert "wrote the merged model" in capsys.readouterr().out
    assert (output / "model.safetensors").is_file() and (output / "README.md").is_file()
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((output / "export.json").read_text())
    assert summary["merged"] is True and summary["method"] == "lora"
    assert summary["max_abs_difference"] < 1e-4

    checkpoint = lora_run / "checkpoints" / "last.ckpt"
    adapted = ClassificationTask.load_from_checkpoint(checkpoint, weights_only=True).eval()
    plain = ClassificationTask.load_from_checkpoint(checkpoint, weights_only=True).model.unload().eval()
    state = load_file(output / "model.safetensors")
    assert not any(isinstance(module, BaseTunerLayer) for module in plain.modules())
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    x = torch.randn(4, 1, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted(x), rtol=1e-5, atol=1e-5)
        # the update is not negligible: the backbone without it answers differently
        bare = ClassificationTask.load_from_checkpoint(checkpoint, weights_only=True).model
        with bare.disable_adapter():
            assert not torch.allclose(bare.eval()(x), adapted(x), atol=1e-4)


def test_export_refuses_a_method_that_cannot_merge(tmp_path):
    run = _fit(
        tmp_path / "runs",
        "timeseries/gunpoint_bottleneck",
        "--model.init_args.adapter.options",
        "{bottleneck_dim: 4}",
    )
    with pytest.raises(
        SystemExit, match=r"(?s)adapter method 'bottleneck'.*can't be merged.*nothing was written"
    ):
        main(["export", str(run), "--checkpoint", "last"])
    assert not (run / "export").exists()


def test_export_names_a_wrong_path_and_the_fix(lora_run, tmp_path):
    with pytest.raises(SystemExit, match=r"nowhere is not a directory\. Pass a run directory"):
        main(["export", str(tmp_path / "nowhere")])
    with pytest.raises(
        SystemExit, match=r"is not a run directory: it has no config\.yaml\. It holds runs: pass one"
    ):
        main(["export", str(lora_run.parent)])
    with pytest.raises(SystemExit, match=r"(?s)no-such\.ckpt does not exist.*Pass --checkpoint best, last"):
        main(["export", str(lora_run), "--checkpoint", str(tmp_path / "no-such.ckpt")])
