"""SegmentationTask on a one-conv stand-in: MONAI losses and metrics, ignore index, sliding window, training.

Masks are tiny and generated (a seeded, per-element planted task: the input's channels encode the label
plus noise), so a 1x1 conv can learn them in a few steps.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from monai.networks.utils import one_hot
from torch import nn
from torch.utils.data import DataLoader, Dataset

from verticals.core.registry import register_model
from verticals.core.tasks import SegmentationTask
from verticals.core.tasks.segmentation import class_mean

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SHAPES = {"points": (40,), "image": (10, 10), "volume": (5, 6, 6)}
# MONAI's distance functions, called directly here, pass an argument MONAI itself deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
LORA = {"method": "lora", "targets": ["conv"], "options": {"r": 4, "lora_alpha": 8}}


class OneConvSegmenter(nn.Module):
    """The stand-in: one pointwise conv from input channels to class logits, for points (Conv1d on
    ``[N, F, P]``), images (Conv2d) or volumes (Conv3d). With ``window``, it refuses inputs of any other
    spatial size, like a model with a fixed input size (a ViT's position table)."""

    def __init__(
        self, in_channels: int, num_outputs: int, spatial_dims: int = 2, window: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.conv = CONV[spatial_dims](in_channels, num_outputs, kernel_size=1)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is not None and tuple(x.shape[2:]) != tuple(self.window):
            raise ValueError(f"This model takes windows of {self.window}, got {tuple(x.shape[2:])}.")
        return self.conv(x)


def build_one_conv(*, input_shape: tuple[int, ...], num_outputs: int, task: str) -> OneConvSegmenter:
    """The stand-in as a registered model: channels and spatial axes from the datamodule's input shape."""
    assert task == "segmentation"
    return stand_in(input_shape[0], num_outputs, len(input_shape) - 1)


REGISTERED = "test_segmentation.one_conv"
register_model(name=REGISTERED, builder=build_one_conv)


def stand_in(in_channels: int, num_outputs: int, spatial_dims: int = 2, **kwargs) -> OneConvSegmenter:
    torch.manual_seed(0)
    return OneConvSegmenter(in_channels, num_outputs, spatial_dims, **kwargs)


def oracle(num_classes: int, spatial_dims: int = 2) -> OneConvSegmenter:
    """A stand-in that returns 10 · its input: fed one-hot predictions, its argmax is that prediction."""
    model = OneConvSegmenter(num_classes, num_classes, spatial_dims)
    with torch.no_grad():
        model.conv.weight.copy_(10 * torch.eye(num_classes).reshape(model.conv.weight.shape))
        model.conv.bias.zero_()
    return model


class Items(Dataset):
    def __init__(self, **tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class MaskData(L.LightningDataModule):
    """Train / val / test splits of ``x`` (``[N, C, *S]``), masks ``y`` and groups, with the attributes a
    task reads from a datamodule (``input_shape``, ``num_classes``, ``class_names``)."""

    def __init__(
        self, splits: dict[str, dict[str, torch.Tensor]], num_classes: int, batch_size: int = 8
    ) -> None:
        super().__init__()
        self.splits, self.num_classes, self.batch_size = splits, num_classes, batch_size
        self.input_shape = list(splits["train"]["x"].shape[1:])
        self.class_names = ["background", *(f"c{index}" for index in range(1, num_classes))]
        self.group_attributes = ["site"]
        self.group_names = {"site": ["a", "b"]}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(Items(**self.splits[split]), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


def planted(kind: str, num_classes: int, n: int, seed: int, ignore_index: int | None = None) -> dict:
    """Labels drawn per element; the input's channel k is 1.5·[label = k] + noise, so a pointwise conv
    can read the label. With ``ignore_index``, the last quarter of every sample is ignored (padding)."""
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES[kind]
    y = torch.randint(0, num_classes, (n, *shape), generator=generator)
    x = 1.5 * one_hot(y[:, None], num_classes, dim=1) + 0.5 * torch.randn(
        n, num_classes, *shape, generator=generator
    )
    if ignore_index is not None:
        y.reshape(n, -1)[:, -y[0].numel() // 4 :] = ignore_index
    return {"x": x, "y": y, "group": (torch.arange(n) % 2)[:, None]}


def planted_data(kind: str, num_classes: int, ignore_index: int | None = None) -> MaskData:
    return MaskData(
        {
            split: planted(kind, num_classes, n, seed, ignore_index)
            for split, n, seed in (("train", 32, 0), ("val", 8, 1), ("test", 8, 2))
        },
        num_classes,
    )


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return L.Trainer(**{**defaults, **kwargs})


class Collect(L.Callback):
    """Keeps what ``test_step`` returns."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, torch.Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.outputs.append(outputs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: torch.cat([out[key] for out in self.outputs]).numpy() for key in self.outputs[0]}


def task_for(model: nn.Module | str, **kwargs) -> SegmentationTask:
    kwargs.setdefault("adapter", LORA)
    return SegmentationTask(model=model, scheduler="constant", **kwargs)


# -- losses ---------------------------------------------------------------------------------------
LOSS_CASES = [
    # (task options, MONAI loss, kind, num_classes)
    ({"loss": "dice"}, DiceLoss(softmax=True, to_onehot_y=True), "image", 3),
    (
        {"loss": "dice", "include_background": False},
        DiceLoss(softmax=True, to_onehot_y=True, include_background=False),
        "volume",
        3,
    ),
    (
        {"loss": "dice_ce", "lambda_ce": 0.2, "lambda_dice": 0.8},
        DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.2, lambda_dice=0.8),
        "image",
        4,
    ),
    ({"loss": "dice_ce"}, DiceCELoss(softmax=True, to_onehot_y=True), "points", 3),
    ({"loss": "dice_ce", "activation": "sigmoid"}, DiceCELoss(sigmoid=True), "image", 2),
    ({"loss": "focal"}, FocalLoss(use_softmax=True, to_onehot_y=True), "image", 3),
    ({"loss": "focal", "activation": "sigmoid"}, FocalLoss(), "volume", 2),
    (
        {"loss": "dice_focal", "activation": "sigmoid", "focal_gamma": 1.0},
        DiceFocalLoss(sigmoid=True, gamma=1.0),
        "image",
        2,
    ),
    ({"loss": "ce"}, DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.0), "points", 3),
]


@pytest.mark.parametrize(("options", "reference", "kind", "num_classes"), LOSS_CASES)
def test_losses_equal_monai_called_directly(options, reference, kind, num_classes):
    task = task_for(stand_in(num_classes, 1), num_classes=num_classes, **options)
    channels = 1 if options.get("activation") == "sigmoid" else num_classes
    y = torch.randint(0, num_classes, (3, *SHAPES[kind]))
    logits = torch.randn(3, channels, *SHAPES[kind])
    target = y[:, None].float() if channels == 1 else y[:, None]
    torch.testing.assert_close(task.criterion(logits, y).mean(), reference(logits, target))


def test_multiclass_dice_focal_is_monai_dice_plus_softmax_focal():
    task = task_for(stand_in(3, 3), num_classes=3, loss="dice_focal", lambda_dice=0.5, lambda_focal=2.0)
    y, logits = torch.randint(0, 3, (2, 6, 6)), torch.randn(2, 3, 6, 6)
    expected = 0.5 * DiceLoss(softmax=True, to_onehot_y=True)(logits, y[:, None]) + 2.0 * FocalLoss(
        use_softmax=True, to_onehot_y=True
    )(logits, y[:, None])
    torch.testing.assert_close(task.criterion(logits, y).mean(), expected)


def test_bad_options_are_refused_with_the_fix():
    model = stand_in(3, 3)
    with pytest.raises(ValueError, match="no focal term"):
        task_for(model, num_classes=3, loss="dice_ce", lambda_focal=0.5)
    with pytest.raises(ValueError, match="binary masks"):
        task_for(model, num_classes=3, activation="sigmoid")
    with pytest.raises(ValueError, match="one name per"):
        task_for(model, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="Unknown `loss`"):
        task_for(model, num_classes=3, loss="lovasz")


# -- ignore index ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["points", "image"])
def test_ignored_elements_count_in_no_loss_and_no_metric(kind):
    """Ignoring the last quarter of every sample equals cutting it off (points), and whatever the model
    predicts there changes nothing; without ``ignore_index`` the same change does move the figures."""
    data = planted(kind, 3, 4, seed=0, ignore_index=255)
    x, y = data["x"], data["y"]
    task = task_for(stand_in(3, 3, len(SHAPES[kind])), num_classes=3, ignore_index=255)
    task.test_metrics = task.configure_metrics()
    with torch.no_grad():
        logits = task(x)
    target, valid = task._encode_target(y, logits)
    loss = task.criterion(logits, target, valid)
    if kind == "points":
        kept = int(valid[0].sum())
        reference = DiceCELoss(softmax=True, to_onehot_y=True, reduction="mean")
        torch.testing.assert_close(loss.mean(), reference(logits[..., :kept], y[:, None, :kept]))
    disturbed = logits.clone()
    disturbed.movedim(1, -1)[~valid] = torch.tensor([-9.0, 9.0, 0.0])  # predict class 1 where ignored
    torch.testing.assert_close(task.criterion(disturbed, target, valid), loss)
    before = task._update_metrics("test", task.labels_from_logits(logits), y, valid, None)
    after = task._update_metrics("test", task.labels_from_logits(disturbed), y, valid, None)
    for name in ("dice", "iou"):
        torch.testing.assert_close(after[name], before[name], equal_nan=True)
    # The same disturbance without the ignore mask is seen: the test above could fail.
    unmasked = torch.where(valid, y, torch.zeros_like(y))
    assert not torch.allclose(task.criterion(disturbed, unmasked), task.criterion(logits, unmasked))


def test_an_ignored_class_index_is_never_scored_or_predicted():
    """``ignore_index: 0`` with 4 classes (a no-data label 0): class 0 has no metric and is never predicted."""
    # include_background=False: with label 0 ignored there is no background channel, so no channel is dropped
    task = task_for(
        stand_in(4, 4),
        num_classes=4,
        ignore_index=0,
        metrics_include_background=True,
        include_background=False,
    )
    assert task.scored_labels == [1, 2, 3] and task.metric_labels == [1, 2, 3]
    logits = torch.zeros(1, 4, 2, 2)
    logits[:, 0] = 5.0  # the ignored class is the largest logit everywhere
    logits[:, 2, 0, 0] = 1.0
    labels = task.labels_from_logits(logits)
    assert labels.min() >= 1 and labels[0, 0, 0] == 2
    y = torch.tensor([[[0, 3], [2, 1]]])
    target, valid = task._encode_target(y, logits)
    assert valid.tolist() == [[[False, True], [True, True]]] and target[0, 0, 1] == 2  # label 3 -> channel 2
    loss = task.criterion(task._scored_channels(logits), target, valid)
    # MONAI on the labelled elements only (as a point set), with the class-0 channel gone: the same loss.
    kept_logits = logits[:, 1:].flatten(2)[..., valid.flatten()]
    kept_labels = y.flatten(1)[:, valid.flatten()] - 1
    reference = DiceCELoss(softmax=True, to_onehot_y=True)(kept_logits, kept_labels[:, None])
    torch.testing.assert_close(loss.mean(), reference)


def test_labels_outside_the_declared_classes_are_an_error():
    task = task_for(stand_in(3, 3), num_classes=3, ignore_index=255)
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"label values \[7\] outside the 3 declared classes"):
        task._encode_target(torch.tensor([[[0, 7], [255, 1]]]), logits)
    with pytest.raises(ValueError, match=r"Masks must be \[N, P\]"):
        task._encode_target(torch.zeros(1, 1, 1, 2, 2, dtype=torch.long), logits)
    with pytest.raises(ValueError, match="does not match the mask"):
        task._encode_target(torch.zeros(1, 3, 3, dtype=torch.long), logits)


# -- metrics --------------------------------------------------------------------------------------
def _squares() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8x8 samples: the first with a known overlap per class, the second predicted perfectly."""
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[:, 1:5, 1:5] = 1  # 16 px
    truth[:, 5:8, 5:8] = 2  # 9 px
    predicted = truth.clone()
    predicted[0] = 0
    predicted[0, 1:5, 2:6] = 1  # 16 px, 12 shared
    predicted[0, 5:8, 5:7] = 2  # 6 px, 6 shared
    return truth, predicted


def test_image_metrics_by_hand_and_against_monai(tmp_path):
    truth, predicted = _squares()
    x = one_hot(predicted[:, None], 3, dim=1)
    data = MaskData(
        {split: {"x": x, "y": truth, "group": torch.tensor([[0], [1]])} for split in ("train", "test")}, 3
    )
    task = task_for(oracle(3), surface_dice_tolerance=[1.0, 2.0])
    collect = Collect()
    run = trainer(tmp_path, callbacks=[collect])
    metrics = run.test(task, data, verbose=False)[0]
    dice = {"c1": [24 / 32, 1.0], "c2": [12 / 15, 1.0]}
    iou = {"c1": [12 / 20, 1.0], "c2": [6 / 9, 1.0]}
    for name in ("c1", "c2"):
        assert metrics[f"test_dice/{name}"] == pytest.approx(np.mean(dice[name]))
        assert metrics[f"test_iou/{name}"] == pytest.approx(np.mean(iou[name]))
    assert metrics["test_dice"] == pytest.approx(np.mean([np.mean(v) for v in dice.values()]))
    assert metrics["test_miou"] == pytest.approx(np.mean([np.mean(v) for v in iou.values()]))
    assert "test_dice/background" not in metrics  # metrics_include_background is off by default
    pred_onehot, truth_onehot = one_hot(predicted[:, None], 3), one_hot(truth[:, None], 3)
    hd95 = compute_hausdorff_distance(pred_onehot, truth_onehot, include_background=False, percentile=95)
    surface = compute_surface_dice(pred_onehot, truth_onehot, [1.0, 2.0], include_background=False)
    arrays = collect.arrays()
    np.testing.assert_allclose(arrays["hd95"], hd95.numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays["surface_dice"], surface.numpy(), rtol=1e-6)
    assert metrics["test_hd95/c1"] == pytest.approx(float(hd95[:, 0].mean()))
    assert metrics["test_surface_dice"] == pytest.approx(float(surface.mean(dim=0).mean()))
    np.testing.assert_allclose(arrays["dice"], np.array([dice["c1"], dice["c2"]]).T, rtol=1e-6)
    assert arrays["group"].tolist() == [[0], [1]]
    # The report's functions of per-sample arrays give the logged figures on all samples, and per group.
    functions = task.group_report_metrics()
    assert {"dice", "miou", "hd95", "surface_dice", "dice/c1", "iou/c2", "hd95/c2"} <= set(functions)
    assert functions["dice"](arrays) == pytest.approx(metrics["test_dice"])
    assert functions["miou"](arrays) == pytest.approx(metrics["test_miou"])
    first = {key: value[:1] for key, value in arrays.items()}
    assert functions["dice/c2"](first) == pytest.approx(0.8)


def test_distances_use_the_element_spacing_of_the_batch():
    truth, predicted = _squares()
    task = task_for(oracle(3), num_classes=3, spatial_metrics_stages=["val"], spacing=[1.0, 1.0])
    task._encode_target(truth, torch.zeros(2, 3, 8, 8))
    spacing = torch.tensor([[1.0, 3.0], [1.0, 3.0]])  # the boundaries differ along the columns
    values = task._update_metrics("val", predicted, truth, None, spacing)
    pred_onehot, truth_onehot = one_hot(predicted[:, None], 3), one_hot(truth[:, None], 3)
    reference = compute_hausdorff_distance(
        pred_onehot, truth_onehot, include_background=False, percentile=95, spacing=spacing.tolist()
    )
    torch.testing.assert_close(values["hd95"], reference.float())
    unit = task._update_metrics("val", predicted, truth, None, None)["hd95"]
    assert not torch.allclose(unit, values["hd95"])  # the spacing mattered


def test_binary_sigmoid_metrics_score_the_foreground(tmp_path):
    truth, predicted = _squares()
    truth, predicted = (truth > 0).long(), (predicted > 0).long()
    model = OneConvSegmenter(1, 1)
    with torch.no_grad():
        model.conv.weight.fill_(20.0), model.conv.bias.fill_(-10.0)  # logit +10 on predicted, -10 elsewhere
    split = {"x": predicted[:, None].float(), "y": truth}
    data = MaskData({"test": split, "train": split}, 2)
    task = task_for(model, activation="sigmoid", spatial_metrics=[])
    metrics = trainer(tmp_path).test(task, data, verbose=False)[0]
    shared = int(((truth == 1) & (predicted == 1))[0].sum())
    first = 2 * shared / int(truth[0].sum() + predicted[0].sum())
    assert metrics["test_dice/c1"] == pytest.approx((first + 1.0) / 2)
    assert "test_hd95" not in metrics and set(task.group_report_metrics()) == {
        "dice",
        "miou",
        "dice/c1",
        "iou/c1",
    }


def test_volume_metrics_by_hand(tmp_path):
    truth = torch.zeros(1, 4, 6, 6, dtype=torch.long)
    truth[0, 1:3, 1:4, 1:4] = 1  # 18 voxels
    predicted = torch.zeros_like(truth)
    predicted[0, 1:3, 1:4, 2:5] = 1  # 18 voxels, 12 shared
    split = {"x": one_hot(predicted[:, None], 2, dim=1), "y": truth}
    data = MaskData({"test": split, "train": split}, 2)
    metrics = trainer(tmp_path).test(task_for(oracle(2, 3)), data, verbose=False)[0]
    assert metrics["test_dice"] == pytest.approx(24 / 36)
    assert metrics["test_miou"] == pytest.approx(12 / 24)
    hd95 = compute_hausdorff_distance(
        one_hot(predicted[:, None], 2), one_hot(truth[:, None], 2), percentile=95
    )
    assert metrics["test_hd95"] == pytest.approx(float(hd95))


def test_point_sets_skip_surface_metrics_and_keep_dice(tmp_path):
    truth = torch.tensor([[0, 1, 1, 2, 2, 2, 0, 0]])
    predicted = torch.tensor([[0, 1, 2, 2, 2, 0, 0, 1]])
    split = {"x": one_hot(predicted[:, None], 3, dim=1), "y": truth}
    data = MaskData({"test": split, "train": split}, 3)
    task = task_for(oracle(3, 1), spatial_metrics_stages=["val", "test"])
    collect = Collect()
    metrics = trainer(tmp_path, callbacks=[collect]).test(task, data, verbose=False)[0]
    assert metrics["test_dice/c1"] == pytest.approx(2 * 1 / (2 + 2))
    assert metrics["test_dice/c2"] == pytest.approx(2 * 2 / (3 + 3))
    assert not any("hd95" in key or "surface" in key for key in metrics)
    assert set(collect.arrays()) == {"dice", "iou"}
    assert not any("hd95" in name for name in task.group_report_metrics())


def test_a_class_absent_from_a_sample_gives_no_value_there():
    """MONAI's ``ignore_empty``: no Dice for a class missing from a sample's truth; the means skip it."""
    arrays = {"dice": np.array([[0.5, np.nan], [1.0, 0.25]])}
    assert class_mean(arrays, key="dice") == pytest.approx(np.mean([0.75, 0.25]))


# -- sliding window -------------------------------------------------------------------------------
def test_sliding_window_runs_a_fixed_size_model_on_larger_inputs(tmp_path):
    window = (8, 8)
    model = stand_in(3, 3, window=window)
    data = planted_data("image", 3)
    data.splits["train"] = {
        key: value[..., :8, :8] for key, value in data.splits["train"].items() if key != "group"
    }
    large = planted("image", 3, 4, seed=5)
    large["x"] = torch.nn.functional.interpolate(large["x"], size=(19, 21))
    large["y"] = torch.randint(0, 3, (4, 19, 21))
    task = task_for(model, num_classes=3, roi_size=list(window), sw_batch_size=3, overlap=0.5)
    task.configure_model()
    base_conv = task.model.get_base_model().conv
    with torch.no_grad():
        full = base_conv(large["x"])  # a pointwise conv: the windowed result must equal the full one
        torch.testing.assert_close(task.infer(large["x"]), full)
        reference = sliding_window_inference(large["x"], window, 3, task, overlap=0.5)
        torch.testing.assert_close(task.infer(large["x"]), reference)
        with pytest.raises(ValueError, match="takes windows of"):
            task.infer(large["x"], sliding_window=False)
    data.splits["val"] = data.splits["test"] = large
    run = trainer(tmp_path, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    run.fit(task, data)  # training batches are window-sized; validation runs on 19x21 through the window
    assert "val_dice" in run.callback_metrics
    predictions = torch.cat(run.predict(task, data))
    assert predictions.shape == (4, 19, 21)
    torch.testing.assert_close(predictions, task.labels_from_logits(base_conv(large["x"])))


def test_sliding_window_refuses_point_sets():
    task = task_for(stand_in(3, 3, 1), num_classes=3, roi_size=[8])
    task._encode_target(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="point sets"):
        task.infer(torch.zeros(1, 3, 8))


# -- training -------------------------------------------------------------------------------------
TRAINING_CASES = [
    ("image", 2, {"activation": "sigmoid", "loss": "dice_ce", "lambda_ce": 0.2, "lambda_dice": 0.8}),
    ("volume", 3, {"loss": "dice_focal"}),
    ("points", 4, {"loss": "dice_ce", "ignore_index": -1}),
]


@pytest.mark.parametrize(("kind", "num_classes", "options"), TRAINING_CASES)
def test_lora_training_improves_dice_on_a_planted_task(tmp_path, kind, num_classes, options):
    data = planted_data(kind, num_classes, ignore_index=options.get("ignore_index"))
    task = task_for(REGISTERED, learning_rate=0.1, **options)  # built once the datamodule gives its shapes
    run = trainer(tmp_path, max_steps=24, val_check_interval=4, check_val_every_n_epoch=None)
    before = run.validate(task, data, verbose=False)[0]["val_dice"]
    run.fit(task, data)
    after = run.validate(task, data, verbose=False)[0]["val_dice"]
    assert task.hparams["num_classes"] == num_classes and task.hparams["input_shape"] == data.input_shape
    assert task.hparams["class_names"] == data.class_names
    assert after > before + 0.1 and after > 0.85, (before, after)
    assert set(task.trainable_names()) == {
        name for name, _ in task.named_parameters() if "lora_A" in name or "lora_B" in name
    }
    assert {f"val_dice/{name}" for name in data.class_names[1:]} <= set(run.callback_metrics)


def test_checkpoint_round_trip_restores_the_trained_adapter(tmp_path):
    data = planted_data("image", 3)
    task = task_for(REGISTERED, learning_rate=0.1)
    run = trainer(tmp_path, max_steps=8)  # two whole epochs: last.ckpt is written at an epoch end
    run.fit(task, data)
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["state_dict"]) == set(task.trainable_names())
    restored = SegmentationTask.load_from_checkpoint(path, weights_only=True)  # rebuilt from the hparams
    assert restored.hparams["num_classes"] == 3 and restored.hparams["loss"] == "dice_ce"
    x = data.splits["test"]["x"]
    task.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), task(x))
        assert not torch.allclose(stand_in(3, 3)(x), task(x))  # training changed the outputs
    with pytest.raises(ValueError, match="trained on backbone"):
        SegmentationTask.load_from_checkpoint(path, model=OneConvSegmenter(3, 3), weights_only=True)


def test_test_step_hands_per_sample_arrays_and_groups_to_the_report(tmp_path):
    data = planted_data("image", 3)
    task = task_for(stand_in(3, 3))
    collect = Collect()
    metrics = trainer(tmp_path, callbacks=[collect]).test(task, data, verbose=False)[0]
    arrays = collect.arrays()
    assert arrays["dice"].shape == (8, 2) and arrays["group"].shape == (8, 1)
    functions = task.group_report_metrics()
    assert functions["dice"](arrays) == pytest.approx(metrics["test_dice"], rel=1e-5)
    assert functions["hd95/c2"](arrays) == pytest.approx(metrics["test_hd95/c2"], rel=1e-5)
    in_group = {key: value[arrays["group"][:, 0] == 1] for key, value in arrays.items()}
    assert math.isfinite(functions["miou"](in_group))


# -- groups ---------------------------------------------------------------------------------------
def test_group_dro_weights_the_harder_group_up(tmp_path):
    data = planted_data("image", 3)
    for split in data.splits.values():  # group 1 ("b") gets much noisier inputs: a higher loss
        hard = split["group"][:, 0] == 1
        split["x"][hard] += 2.0 * torch.randn(
            split["x"][hard].shape, generator=torch.Generator().manual_seed(3)
        )
    objective = {"group_dro": True, "dro_step_size": 1.0}
    task = task_for(stand_in(3, 3), learning_rate=0.05, group_objective=objective)
    run = trainer(tmp_path, max_steps=8)
    run.fit(task, data)
    weights = task.group_loss.dro_weights
    assert task.group_objective.group_attributes == ["site"] and weights.shape == (2,)
    assert weights[1] > weights[0] + 0.1, weights
    assert "val_worst_group_loss" in run.callback_metrics


def test_group_objectives_that_need_a_label_per_sample_are_refused():
    with pytest.raises(ValueError, match="label per element"):
        task_for(
            stand_in(3, 3), num_classes=3, group_objective={"group_dro": True, "groups": "sensitive_label"}
        )


def test_group_report_writes_dice_per_group_with_cis(tmp_path):
    import json

    data = planted_data("image", 3)
    task = task_for(stand_in(3, 3), report_bootstrap=10, spatial_metrics=["hd95"])
    trainer(tmp_path).test(task, data, verbose=False)
    report = json.loads((tmp_path / "groups.json").read_text())
    assert report["metrics"]["dice"] is True and report["metrics"]["hd95"] is False
    assert set(report["metrics"]) == {
        "dice",
        "miou",
        "hd95",
        "dice/c1",
        "dice/c2",
        "iou/c1",
        "iou/c2",
        "hd95/c1",
        "hd95/c2",
    }
    assert (tmp_path / "groups_dice.png").is_file()
    sites = report["groupings"]["site"]["groups"]
    assert set(sites) == {"a", "b"} and sites["a"]["count"] == 4
    assert sites["a"]["dice"]["low"] <= sites["a"]["dice"]["value"] <= sites["a"]["dice"]["high"]


class PromptedSegmenter(OneConvSegmenter):
    """The stand-in with a per-image prompt: it adds ``shift [N]`` to the class-1 logit, so the prompt
    changes the prediction (as a SAM box does); the task must pass it from the batch."""

    batch_inputs = ("shift", "unused")

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(x)
        if shift is None:
            raise ValueError("the batch lacks `shift`")
        return logits + torch.stack([torch.zeros_like(shift), shift], 1)[:, :, None, None].to(logits.dtype)


def test_batch_inputs_the_model_names_reach_it(tmp_path):
    truth, _ = _squares()
    truth = (truth > 0).long()
    zeros = torch.zeros(2, 2, 8, 8)  # the conv alone predicts class 0 everywhere
    model = PromptedSegmenter(2, 2)
    with torch.no_grad():
        model.conv.weight.zero_(), model.conv.bias.zero_()
    split = {"x": zeros, "y": truth, "shift": torch.tensor([5.0, -5.0])}
    data = MaskData({"test": split, "train": split}, 2)
    task = task_for(model, spatial_metrics=[])
    collect = Collect()
    trainer(tmp_path, callbacks=[collect]).test(task, data, verbose=False)
    dice = collect.arrays()["dice"][:, 0]
    # Sample 0 is shifted to class 1 everywhere (Dice 2·25/(64+25)); sample 1 predicts no class 1 (Dice 0).
    np.testing.assert_allclose(dice, [2 * 25 / 89, 0.0], rtol=1e-6)
    predictions = trainer(tmp_path).predict(task, data)
    assert predictions[0][0].eq(1).all() and predictions[0][1].eq(0).all()
    windowed = task_for(PromptedSegmenter(2, 2), num_classes=2, roi_size=[4, 4])
    with pytest.raises(ValueError, match=r"also takes \['shift'\].*sliding window"):
        windowed.configure_model()
        windowed.infer(zeros, inputs={"shift": torch.zeros(2)})


def test_volume_dice_rebuilds_each_volume_from_its_slices(tmp_path):
    truth, predicted = _squares()  # two slices; class 1: 24/32 and 1.0; class 2: 12/15 and 1.0
    x = one_hot(predicted[:, None], 3, dim=1)
    # Volume 0: slice 0; volume 1: slices 1, 0, 1.
    split = {"x": x.repeat(2, 1, 1, 1), "y": truth.repeat(2, 1, 1), "volume_index": torch.tensor([0, 1, 1, 1])}
    data = MaskData({"test": split, "train": split}, 3)
    data.batch_size = 3  # volume 1's slices arrive in two batches
    task = task_for(oracle(3), spatial_metrics=[])
    metrics = trainer(tmp_path).test(task, data, verbose=False)[0]
    # Volume 1 sums slices 1, 0, 1: class 1 overlap 16+12+16 = 44 over (16+16+16) + (16+16+16) voxels.
    # Class 2: overlap 9+6+9 = 24, predicted 9+6+9 = 24, true 9+9+9 = 27.
    volume_one = [2 * 44 / 96, 2 * 24 / (24 + 27)]
    expected = np.array([[24 / 32, 12 / 15], volume_one])
    np.testing.assert_allclose(task.volume_dice.numpy(), expected, rtol=1e-6)
    assert metrics["test_volume_dice/c2"] == pytest.approx(expected[:, 1].mean())
    assert metrics["test_volume_dice"] == pytest.approx(expected.mean(0).mean())


def test_a_missed_class_scores_the_diagonal_not_a_perfect_distance(tmp_path):
    truth, _ = _squares()
    predicted = (truth == 1).long()  # class 2 is never predicted
    x = one_hot(predicted[:, None], 3, dim=1)
    data = MaskData({split: {"x": x, "y": truth} for split in ("train", "test")}, 3)
    collect = Collect()
    task = task_for(oracle(3), spacing=[1.0, 2.0])
    metrics = trainer(tmp_path, callbacks=[collect]).test(task, data, verbose=False)[0]
    diagonal = math.hypot(8 * 1.0, 8 * 2.0)
    np.testing.assert_allclose(collect.arrays()["hd95"][:, 1], [diagonal, diagonal], rtol=1e-6)
    assert metrics["test_hd95/c2"] == pytest.approx(diagonal)
    assert metrics["test_hd95/c1"] == pytest.approx(0.0)  # class 1 is perfect
