"""Every packaged point-cloud config runs through the CLI (fit, test, report) at a tiny scale: a random tiny point
transformer (the packaged stand-in configs' ``pretrained: true`` is overridden: no pretraining in tests) on a
few 128-point generated shapes, and the real-data configs on tiny ScanObjectNN / ModelNet40 files in their
released formats with a tiny checkpoint in Point-MAE's ``pretrain.pth`` layout. The reports name accuracy (or
mIoU) per domain and per seen / novel family, each method trains what it should, Point-PEFT's memory bank is
filled from the training split at fit start and exported with the adapter, and the exported Point-PEFT and DAPT
adapters reload with stock peft."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.lifecycle import adapter_hooks, adapter_tuner
from verticals.core.cli import packaged_configs, run_cli
from verticals.core.registry import build_model
from verticals.domains.pointcloud.shapes import SHAPE_FAMILIES, part_names

pytest.importorskip("timm")

POINTS = 128
# What each packaged generated-shape classification config trains besides the head: "adapter" (a small
# adapter), "head" (linear probe), "all" (full fine-tuning).
SHAPE_CONFIGS = {
    "pointcloud/shapes_bottleneck": "adapter",
    "pointcloud/shapes_dapt": "adapter",
    "pointcloud/shapes_full": "all",
    "pointcloud/shapes_linear_probe": "head",
    "pointcloud/shapes_lora": "adapter",
    "pointcloud/shapes_point_peft": "adapter",
}
SEGMENTATION_CONFIGS = ("pointcloud/shapes_partseg_point_peft",)
RELOADED = {"pointcloud/shapes_point_peft", "pointcloud/shapes_dapt"}
# The configs for real data a user brings (released layouts, an official checkpoint), run on tiny files.
REAL_DATA_CONFIGS = (
    "pointcloud/scanobjectnn_point_mae_point_peft",
    "pointcloud/modelnet40_point_mae_point_peft",
)
_HEAD = re.compile(r"(?:^|\.)(?:seg_)?head\.")


def test_every_packaged_config_is_covered() -> None:
    packaged = {name for name in packaged_configs() if name.startswith("pointcloud/")}
    assert packaged == set(SHAPE_CONFIGS) | set(SEGMENTATION_CONFIGS) | set(REAL_DATA_CONFIGS)


def test_packaged_configs_say_what_they_do_and_write_under_runs_pointcloud() -> None:
    for name, path in packaged_configs().items():
        if not name.startswith("pointcloud/"):
            continue
        text = path.read_text()
        assert text.startswith("# ") and len(text.split("\n# ")) >= 3, f"{name}: no header comment"
        config = yaml.safe_load(text)
        assert config["trainer"]["default_root_dir"] == f"runs/pointcloud/{name.split('/')[1]}"
        if name in REAL_DATA_CONFIGS:  # validation from the training split: a fraction, never the test files
            assert 0 < config["data"]["init_args"]["val_fraction"] < 1


@pytest.mark.parametrize("name", sorted(n for n in packaged_configs() if n.startswith("pointcloud/")))
def test_packaged_adapter_fits_the_packaged_architecture(name: str) -> None:
    """The config's model and adapter at their own scale (random weights: no stand-in pretraining, no
    checkpoint file; a checkpoint's architecture is Point-MAE's, size base) on clouds of the config's point
    count: the options suit the block count and grouping the tiny runs below replace (prompted blocks, local
    groups of tokens, 128 groups of 2048 points), and the bank fills and answers."""
    config = _config(name)
    init, points = config["model"]["init_args"], config["data"]["init_args"]["num_points"]
    args = dict(init["model_args"]) | {"pretrained": False}
    if args.pop("checkpoint", None) is not None:
        args["size"] = "base"
    segmentation = config["model"]["class_path"].endswith("SegmentationTask")
    task = "segmentation" if segmentation else "classification"
    torch.manual_seed(0)
    model = build_model(init["model"], model_args=args, input_shape=[points, 3], num_outputs=5, task=task)
    model = adapt(model, AdapterSpec(**init["adapter"]))
    x = torch.rand(8, points, 3) * 2 - 1
    tuner = adapter_tuner(model)
    prepare = adapter_hooks(None if tuner is None else type(tuner)).prepare_from_data
    inputs = {"category": torch.tensor([0, 7])} if segmentation else {}
    with torch.no_grad():
        if prepare is not None:
            prepare(tuner, [x])
        out = model.eval()(x[:2], **inputs)
    assert out.shape == ((2, 5, points) if segmentation else (2, 5)) and torch.isfinite(out).all()
    if init["adapter"]["method"] == "point_peft":
        assert _network_of(model).backbone.blocks[0].pointpeft_memory_bank["default"].features.shape[0] == 8


def _config(name: str) -> dict[str, Any]:
    return yaml.safe_load(packaged_configs()[name].read_text())


def _tiny_model_args(name: str) -> dict[str, Any]:
    """The config's model arguments on the random tiny transformer (the stand-in is not pretrained here)."""
    args = dict(_config(name)["model"]["init_args"]["model_args"])
    assert args.pop("pretrained") is True and args.pop("size") == "small"  # the stand-in, overridden below
    return args | {"size": "tiny", "pretrained": False}


def _quick(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.init_args.report_bootstrap", "10",
    ]  # fmt: skip


def _tiny_shapes() -> list[str]:
    """Eight of each: every family once in training, validation and each test domain."""
    return [
        "--data.init_args.num_points", str(POINTS),
        "--data.init_args.num_train", "8",
        "--data.init_args.num_val", "8",
        "--data.init_args.num_test", "8",
        "--data.init_args.batch_size", "8",
    ]  # fmt: skip


def _network_of(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier or segmenter under any peft wrapper."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _network(cli: Any) -> torch.nn.Module:
    return _network_of(cli.model.model)


def _head_parameters(cli: Any) -> int:
    return sum(
        p.numel()
        for n, p in cli.model.model.named_parameters()
        if _HEAD.search(n) and "original_module" not in n and p.requires_grad
    )


def _assert_baseline(run: Path, metric: str, name: str = "descriptor forest") -> None:
    """The practitioner's baseline beside the run, scored like it on the same test clouds: the descriptor forest
    for classes, the per-point linear probe on the frozen features for parts."""
    report = json.loads((run / "report.json").read_text())
    baseline = report["baseline"]
    assert baseline["name"] == name and "skipped" not in baseline, baseline
    assert baseline["metric"] == metric and 0.0 <= baseline["baseline"] <= 1.0
    assert baseline["adapter"] == pytest.approx(report["test"][f"test_{metric}"], abs=1e-6)


def _assert_grouped_report(run: Path, metric: str) -> None:
    for file in ("report.json", "report.md", "groups.json", "groups.md", "config.yaml"):
        assert (run / file).is_file(), file
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["test"][f"test_{metric}"] <= 1.0
    groupings = json.loads((run / "groups.json").read_text())["groupings"]
    for attribute, names in (("domain", {"clean", "scan"}), ("novelty", {"seen", "novel"})):
        groups = groupings[attribute]["groups"]
        assert set(groups) == names, attribute
        for row in groups.values():
            assert 0.0 <= row[metric]["value"] <= 1.0


@pytest.mark.parametrize("name", sorted(SHAPE_CONFIGS))
def test_shape_config_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config unchanged but for the backbone (tiny, random) and the scale."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli = run_cli(
        [
            "run", name, *_quick(tmp_path), *_tiny_shapes(),
            "--model.init_args.model_args", json.dumps(_tiny_model_args(name)),
        ]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    _assert_grouped_report(run, "accuracy")
    _assert_baseline(run, "accuracy")
    assert cli.model.hparams["num_classes"] == 8 and list(cli.model.hparams["input_shape"]) == [POINTS, 3]

    parameters = json.loads((run / "report.json").read_text())["parameters"]
    head = _head_parameters(cli)
    expected = SHAPE_CONFIGS[name]
    if expected == "all":
        assert parameters["trainable"] == parameters["total"]
        assert _network(cli).freeze_batchnorm is False  # the tokenizer's statistics adapt too
    elif expected == "head":
        assert parameters["trainable"] == head > 0
    else:
        assert head < parameters["trainable"] < 0.5 * parameters["total"]
        assert _network(cli).freeze_batchnorm is True
    if name == "pointcloud/shapes_point_peft":
        _assert_bank_filled(cli, run / "adapter")
    if name in RELOADED:
        _assert_reloads(cli, run / "adapter")


def _bank(cli: Any) -> torch.Tensor:
    tuner = cli.model.model.base_model
    assert type(tuner).__name__ == "PointPEFTModel"
    return _network(cli).backbone.blocks[0].pointpeft_memory_bank["default"].features


def _assert_bank_filled(cli: Any, adapter: Path) -> None:
    """The bank holds the frozen backbone's L2-normalised global features (max over the group tokens after the
    final norm) of the training split, in order, and the exported adapter carries it."""
    bank = _bank(cli)
    train = torch.from_numpy(cli.datamodule.split_arrays("train")["xyz"])
    assert bank.shape == (len(train), _network(cli).embed_dim)
    frozen = copy.deepcopy(cli.model.model).unload().eval()  # the backbone without adapters
    with torch.no_grad():
        tokens, _ = frozen.backbone.forward_tokens(train)
    expected = F.normalize(tokens[:, 1:].max(dim=1).values, dim=-1)
    torch.testing.assert_close(bank, expected, rtol=1e-4, atol=1e-5)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    [key] = [key for key in saved if key.endswith("pointpeft_memory_bank.features")]
    torch.testing.assert_close(saved[key], bank)


def _assert_reloads(cli: Any, adapter: Path, **inputs: torch.Tensor) -> None:
    """Stock peft puts the exported adapter back on the backbone without it (the random tiny backbone of this
    run, unwrapped from a copy): equal outputs."""
    trained = cli.model.model.eval()
    fresh = copy.deepcopy(trained).unload()  # the base model as built: adapters gone, the head untrained
    reloaded = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    x = torch.rand(2, POINTS, 3) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, **inputs), trained(x, **inputs), rtol=1e-5, atol=1e-5)


def test_part_segmentation_config_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config unchanged but for the backbone (tiny, random) and the scale (three of the eight families, so
    three categories: fewer per-part report figures): part labels per point with the scan background ignored
    (255), the category one-hot reaching the head, mIoU per domain and novelty, the export reloading."""
    name = "pointcloud/shapes_partseg_point_peft"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    model_args = _tiny_model_args(name)
    assert model_args["num_categories"] == len(SHAPE_FAMILIES)  # the config's data draw every family
    families = ["table", "stool", "mug"]  # stool is novel
    cli = run_cli(
        [
            "run", name, *_quick(tmp_path), *_tiny_shapes(),
            "--model.init_args.model_args", json.dumps(model_args | {"num_categories": len(families)}),
            "--data.init_args.families", json.dumps(families),
            "--data.init_args.num_train", "9",
            "--data.init_args.num_val", "3",
            "--data.init_args.num_test", "3",
        ]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    _assert_grouped_report(run, "miou")
    _assert_baseline(run, "miou", "linear probe")
    assert cli.model.hparams["class_names"] == part_names(families)  # table.top, table.leg, stool.seat, ...
    assert cli.model.hparams["ignore_index"] == 255 and cli.model.hparams["num_classes"] == 6
    assert cli.model.metric_labels == list(range(6))  # every part is scored, the background (255) nowhere
    network = _network(cli)
    assert network.num_categories == 3 and network.batch_inputs == ("category",)
    parameters = json.loads((run / "report.json").read_text())["parameters"]
    assert 0 < _head_parameters(cli) < parameters["trainable"] < 0.5 * parameters["total"]
    _assert_bank_filled(cli, run / "adapter")
    _assert_reloads(cli, run / "adapter", category=torch.tensor([0, 2]))


def _real_data_model_args(name: str, checkpoint: Path) -> dict[str, Any]:
    """The config's model arguments with the tiny checkpoint (it sets the architecture: 32 wide, 2 blocks) and
    the tiny size's grouping (16 groups of 8) for 128 points."""
    args = dict(_config(name)["model"]["init_args"]["model_args"])
    assert args["checkpoint"] == "checkpoints/point_mae_pretrain.pth"
    return args | {"checkpoint": str(checkpoint), "num_groups": 16, "group_size": 8}


def _assert_checkpoint_loaded(cli: Any, checkpoint: Path) -> None:
    """The frozen backbone (unwrapped from a copy) still holds the checkpoint's encoder tensors."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["base_model"]
    backbone = copy.deepcopy(cli.model.model).unload().backbone
    torch.testing.assert_close(
        backbone.blocks[1].attn.qkv.weight, state["MAE_encoder.blocks.blocks.1.attn.qkv.weight"]
    )
    torch.testing.assert_close(
        backbone.encoder.first_conv[0].weight, state["MAE_encoder.encoder.first_conv.0.weight"]
    )


def test_scanobjectnn_config_runs_on_a_tiny_scanobjectnn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ScanObjectNN config unchanged but for the checkpoint (a tiny file in Point-MAE's pretrain.pth layout
    instead of the official one: the backbone is overridden), its grouping, the points and the validation
    share: PB_T50_RS files read in their released layout, 15 classes, validation from the training file."""
    pytest.importorskip("h5py")
    from verticals.domains.pointcloud.formats import write_tiny_scanobjectnn
    from verticals.domains.pointcloud.models import write_tiny_point_mae_checkpoint

    name = "pointcloud/scanobjectnn_point_mae_point_peft"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    root = write_tiny_scanobjectnn(tmp_path / "h5_files", "PB_T50_RS", num_train=12, num_test=6, points=256)
    checkpoint = write_tiny_point_mae_checkpoint(tmp_path / "point_mae_pretrain.pth")
    cli = run_cli(
        [
            "run", name, *_quick(tmp_path),
            "--model.init_args.model_args", json.dumps(_real_data_model_args(name, checkpoint)),
            "--data.init_args.root", str(root),
            "--data.init_args.num_points", str(POINTS),
            "--data.init_args.val_fraction", "0.25",
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert cli.model.hparams["num_classes"] == 15 and list(cli.model.hparams["input_shape"]) == [POINTS, 3]
    assert type(cli.model.model.base_model).__name__ == "PointPEFTModel"
    sources = {split: cli.datamodule.split_arrays(split)["sources"] for split in ("train", "val", "test")}
    assert all("training_objectdataset_augmentedrot_scale75" in s for s in sources["train"] + sources["val"])
    assert all("test_objectdataset_augmentedrot_scale75" in s for s in sources["test"])
    assert len(sources["val"]) == 3 and not set(sources["val"]) & set(sources["train"])
    _assert_checkpoint_loaded(cli, checkpoint)
    run = Path(cli.trainer.log_dir)
    _assert_bank_filled(cli, run / "adapter")
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["test"]["test_accuracy"] <= 1.0
    _assert_baseline(run, "accuracy")


def test_modelnet40_config_runs_on_a_tiny_modelnet40_h5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ModelNet40 config unchanged but for the checkpoint (a tiny file in Point-MAE's pretrain.pth layout
    instead of the official one: the backbone is overridden), its grouping, the points and the validation
    share: the 2048-point HDF5 release layout, 40 classes, validation from the training files."""
    pytest.importorskip("h5py")
    from verticals.domains.pointcloud.formats import write_tiny_modelnet40_h5
    from verticals.domains.pointcloud.models import write_tiny_point_mae_checkpoint

    name = "pointcloud/modelnet40_point_mae_point_peft"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    write_tiny_modelnet40_h5(tmp_path / "modelnet40", num_train=16, num_test=6, points=256)
    checkpoint = write_tiny_point_mae_checkpoint(tmp_path / "point_mae_pretrain.pth")
    cli = run_cli(
        [
            "run", name, *_quick(tmp_path),
            "--model.init_args.model_args", json.dumps(_real_data_model_args(name, checkpoint)),
            "--data.init_args.root", str(tmp_path / "modelnet40"),
            "--data.init_args.num_points", str(POINTS),
            "--data.init_args.val_fraction", "0.25",
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert cli.model.hparams["num_classes"] == 40 and list(cli.model.hparams["input_shape"]) == [POINTS, 3]
    sources = {split: cli.datamodule.split_arrays(split)["sources"] for split in ("train", "val", "test")}
    assert all("ply_data_train" in s for s in sources["train"] + sources["val"])
    assert all("ply_data_test" in s for s in sources["test"])
    assert len(sources["val"]) == 4 and not set(sources["val"]) & set(sources["train"])
    _assert_checkpoint_loaded(cli, checkpoint)
    run = Path(cli.trainer.log_dir)
    _assert_bank_filled(cli, run / "adapter")
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["test"]["test_accuracy"] <= 1.0
    _assert_baseline(run, "accuracy")


@pytest.mark.parametrize("dataset", ["scanobjectnn", "modelnet40"])
def test_real_format_files_train_through_verticals_fit(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verticals fit --config <packaged>`` (the command a user types, not ``run``) trains on a tiny file in
    the dataset's released HDF5 layout, with the official checkpoint's encoder loaded, and writes a Lightning
    checkpoint holding the adapter's tensors."""
    pytest.importorskip("h5py")
    from verticals.domains.pointcloud.formats import write_tiny_modelnet40_h5, write_tiny_scanobjectnn
    from verticals.domains.pointcloud.models import write_tiny_point_mae_checkpoint

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    if dataset == "scanobjectnn":
        name = "pointcloud/scanobjectnn_point_mae_point_peft"
        root = write_tiny_scanobjectnn(
            tmp_path / "h5_files", "PB_T50_RS", num_train=12, num_test=6, points=256
        )
    else:
        name = "pointcloud/modelnet40_point_mae_point_peft"
        root = tmp_path / "modelnet40"
        write_tiny_modelnet40_h5(root, num_train=16, num_test=6, points=256)
    checkpoint = write_tiny_point_mae_checkpoint(tmp_path / "point_mae_pretrain.pth")
    cli = run_cli(
        [
            "fit", "--config", name, *_quick(tmp_path)[:-2],
            "--model.init_args.model_args", json.dumps(_real_data_model_args(name, checkpoint)),
            "--data.init_args.root", str(root),
            "--data.init_args.num_points", str(POINTS),
            "--data.init_args.val_fraction", "0.25",
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step >= 2 and cli.trainer.state.finished
    saved = Path(cli.trainer.checkpoint_callback.best_model_path)
    state = torch.load(saved, map_location="cpu", weights_only=True)["state_dict"]
    trained = {key for key in state if "pointpeft_" in key}
    assert trained, f"no Point-PEFT tensor in {saved.name}"
    _assert_checkpoint_loaded(cli, checkpoint)
