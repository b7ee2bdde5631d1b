"""Every run leaves figures, names its data and fills the adapter's model card: one tiny run per task type
(classification with and without a group report, fair classification, forecasting, segmentation of images,
volumes and point sets, sequence-to-sequence) on stand-in models and generated data, with no domain package.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.image import imread
from peft import PeftModel
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from verticals.core.callbacks import RunReport
from verticals.core.cli import VerticalsTrainer
from verticals.core.data import BaseDataModule
from verticals.core.model_card import CARD_NAME
from verticals.core.registry import register_model
from verticals.core.report_figures import read_learning_curve
from verticals.core.resume import RunLogger
from verticals.core.tasks import (
    ClassificationTask,
    FairClassificationTask,
    ForecastingTask,
    SegmentationTask,
    Seq2SeqTask,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- stand-in models (deterministic: the card's loading snippet rebuilds the same weights) -----------------
class TinyClassifier(nn.Module):
    def __init__(self, features: int, num_outputs: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TinyForecaster(nn.Module):
    """Each channel's context window to its next ``horizon`` values."""

    def __init__(self, length: int, horizon: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(length, 16), nn.ReLU())
        self.head = nn.Linear(16, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TinySegmenter(nn.Module):
    """Pointwise convs from input channels to class logits, for points, images or volumes."""

    def __init__(self, channels: int, num_outputs: int, spatial_dims: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.backbone = nn.Sequential(conv(channels, 8, kernel_size=1), nn.ReLU())
        self.head = conv(8, num_outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_tiny(*, input_shape: tuple[int, ...], num_outputs: int, task: str, **kwargs) -> nn.Module:
    if task == "classification":
        return TinyClassifier(math.prod(input_shape), num_outputs)
    if task == "forecasting":
        return TinyForecaster(input_shape[-1], num_outputs)
    return TinySegmenter(input_shape[0], num_outputs, len(input_shape) - 1)


MODEL = "test_report.tiny"
register_model(name=MODEL, builder=build_tiny)
LORA = {"method": "lora", "targets": ["backbone.0"], "trainable": ["head"], "options": {"r": 2}}


# -- generated data ---------------------------------------------------------------------------------------
class Items(Dataset):
    def __init__(self, **tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class Generated(BaseDataModule):
    """Train / val / test items from ``make(n, seed)``; groups ``site`` a/b by sample parity."""

    def __init__(
        self, make, sizes=(32, 8, 12), batch_size: int = 8, groups: bool = True, **attributes
    ) -> None:
        super().__init__(batch_size=batch_size, seed=3)
        self.splits = {}
        for split, n, seed in zip(("train", "val", "test"), sizes, (0, 1, 2)):
            items = make(n, seed)
            if groups:
                items["group"] = (torch.arange(n) % 2)[:, None]
            self.splits[split] = Items(**items)
        if groups:
            self.group_attributes = ["site"]
            self.group_names = {"site": ["a", "b"]}
        for name, value in attributes.items():
            setattr(self, name, value)

    def split_dataset(self, split: str) -> Dataset:
        return self.splits[split]


def classification_items(n: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return {"x": x, "y": y}


def classification_data(**kwargs) -> Generated:
    data = Generated(
        classification_items, input_shape=(6,), num_classes=3, class_names=["low", "mid", "high"], **kwargs
    )
    data.dataset_name = "planted-classes"
    return data


def forecasting_items(n: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 2, 1, generator=generator) * 6.28
    t = torch.arange(20, dtype=torch.float32)
    series = torch.sin(phase + 0.4 * t)
    return {"x": series[..., :14], "y": series[..., 14:]}


SEGMENTATION_SHAPES = {"image": (12, 12), "volume": (5, 8, 8), "points": (30,)}


def segmentation_items(kind: str):
    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n, *SEGMENTATION_SHAPES[kind]), generator=generator)
        x = 1.5 * nn.functional.one_hot(y, 3).movedim(-1, 1).float()
        return {"x": x + 0.5 * torch.randn(x.shape, generator=generator), "y": y}

    return make


# -- a tiny encoder-decoder and its data ------------------------------------------------------------------
WORDS = ["red", "green", "blue", "cat", "dog", "runs"]
PAD, BOS, EOS = 0, 1, 2


class WordTokenizer:
    vocabulary = ["<pad>", "<s>", "</s>", *WORDS]

    def encode(self, text: str) -> list[int]:
        return [self.vocabulary.index(word) for word in text.split()] + [EOS]

    def batch_decode(self, sequences: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [
            " ".join(
                self.vocabulary[i] for i in row.tolist() if not (skip_special_tokens and i in (PAD, BOS, EOS))
            )
            for row in sequences
        ]


class TinyEncoderDecoder(nn.Module):
    def __init__(self, features: int = 4, width: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        size = len(WordTokenizer.vocabulary)
        self.backbone = nn.ModuleDict(
            {
                "encoder": nn.Linear(features, width),
                "embed": nn.Embedding(size, width),
                "out": nn.Linear(width, size),
            }
        )

    def _logits(self, features: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        memory = self.backbone["encoder"](features.mean(dim=-1))[:, None]
        return self.backbone["out"](torch.tanh(self.backbone["embed"](previous) + memory))

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        targets = labels.clamp_min(0)
        previous = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        logits = self._logits(input_features, previous)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_features: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        tokens = torch.full((len(input_features), 1), BOS, dtype=torch.long)
        for _ in range(max_new_tokens):
            step = self._logits(input_features, tokens[:, -1:])[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, step], dim=1)
        return tokens


class SequenceData(BaseDataModule):
    """Random inputs with two-word references; groups ``condition`` quiet/loud by parity."""

    def __init__(self) -> None:
        super().__init__(batch_size=4, seed=0)
        self.tokenizer = WordTokenizer()
        self.group_attributes = ["condition"]
        self.group_names = {"condition": ["quiet", "loud"]}
        rng, generator = random.Random(0), torch.Generator().manual_seed(0)
        self.items = []
        for index in range(8):
            text = " ".join(rng.choice(WORDS) for _ in range(2))
            self.items.append(
                {
                    "input_features": torch.randn(4, 5, generator=generator),
                    "labels": torch.tensor(self.tokenizer.encode(text)),
                    "text": text,
                    "group": torch.tensor([index % 2]),
                }
            )

    def split_dataset(self, split: str) -> list[dict]:
        return self.items

    def collate_fn(self, split: str):
        def collate(items: list[dict]) -> dict:
            return {
                "input_features": torch.stack([item["input_features"] for item in items]),
                "labels": pad_sequence(
                    [item["labels"] for item in items], batch_first=True, padding_value=-100
                ),
                "text": [item["text"] for item in items],
                "group": torch.stack([item["group"] for item in items]),
            }

        return collate


# -- running and checking ----------------------------------------------------------------------------------
def run(
    tmp_path: Path, task, data, *, epochs: int = 2, ckpt_path: str | None = None, version: int | None = None
):
    trainer = VerticalsTrainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=RunLogger(save_dir=tmp_path, name="", version=version) if version is not None else None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )
    trainer.run(task, datamodule=data, ckpt_path=ckpt_path)
    directory = Path(trainer.log_dir)
    return trainer, directory, json.loads((directory / "report.json").read_text())


def assert_figures(
    directory: Path, report: dict, expected: set[str], skipped: set[str] = frozenset()
) -> None:
    """Every listed figure is a PNG that decodes; the expected ones are listed; nothing failed."""
    assert expected <= set(report["figures"]), report["figures"]
    for name in report["figures"]:
        path = directory / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert imread(path).shape[0] > 50, name  # decodes, and is a real figure
    assert set(report["figures_skipped"]) == set(skipped), report["figures_skipped"]
    assert not any(reason.startswith("failed") for reason in report["figures_skipped"].values())
    markdown = (directory / "report.md").read_text()
    assert "## Figures" in markdown
    assert all(f"]({name})" in markdown for name in report["figures"])


def assert_names_data(report: dict, dataset: str, splits: dict[str, int]) -> None:
    data = report["data"]
    assert data["dataset"] == dataset
    assert data["splits"] == splits
    assert data["datamodule"].endswith(("Generated", "SequenceData"))
    assert data["seed"] == 7  # seed_everything(7) in the fixture


@pytest.fixture(autouse=True)
def _seeded():
    import lightning as L

    L.seed_everything(7)


# -- classification ---------------------------------------------------------------------------------------
def test_classification_run_draws_its_figures_names_its_data_and_fills_the_card(tmp_path):
    task = ClassificationTask(model=MODEL, adapter=LORA, learning_rate=1e-2)
    trainer, directory, report = run(tmp_path, task, classification_data())
    assert_figures(
        directory, report, {"learning_curve.png", "confusion_matrix.png", "per_class.png", "per_group.png"}
    )
    assert_names_data(report, "planted-classes", {"train": 32, "val": 8, "test": 12})
    assert report["data"]["datamodule_seed"] == 3 and report["data"]["tested"] == 12
    markdown = (directory / "report.md").read_text()
    assert "- data: planted-classes (`" in markdown and "train 32, val 8, test 12" in markdown
    assert "- seed: 7 (datamodule seed 3)" in markdown

    card = (directory / "adapter" / CARD_NAME).read_text()
    front = yaml_front_matter(card)
    assert front["library_name"] == "peft" and {"verticals", "lora", "planted-classes"} <= set(front["tags"])
    assert "base_model" not in front  # the backbone is no Hub model
    for field in ("## Base model", "## Data", "## Method", "## Test metrics", "## How to load"):
        assert field in card
    assert report["backbone"]["fingerprint"] in card and "train 32, val 8, test 12" in card
    assert f"| accuracy | {report['test']['test_accuracy']:.4f} |" in card
    assert "More Information Needed" not in card  # not peft's template

    # The card's snippet loads the adapter with plain peft onto a freshly built network.
    namespace: dict = {}
    exec(snippet(card), namespace)  # noqa: S102 - the card's own code
    loaded = namespace["model"]
    assert isinstance(loaded, PeftModel)
    x = torch.randn(5, 6)
    task.eval()
    torch.testing.assert_close(loaded(x), task(x))


def yaml_front_matter(card: str) -> dict:
    import yaml

    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_a_group_report_draws_the_groups_and_a_linear_probe_card_loads_its_tensors(tmp_path):
    probe = {"method": "linear_probe", "targets": None, "trainable": ["head"]}
    task = ClassificationTask(model=MODEL, adapter=probe, report_bootstrap=20)
    trainer, directory, report = run(tmp_path, task, classification_data())
    # The GroupReport's bars stand for per_group.png, and are listed among the figures.
    assert_figures(
        directory,
        report,
        {
            "learning_curve.png",
            "confusion_matrix.png",
            "per_class.png",
            "groups_accuracy.png",
            "groups_auroc.png",
        },
        skipped={"per_group.png"},
    )
    assert "GroupReport" in report["figures_skipped"]["per_group.png"]
    card = (directory / "adapter" / CARD_NAME).read_text()
    assert "library_name" not in yaml_front_matter(card)  # not a peft adapter
    namespace: dict = {}
    exec(snippet(card), namespace)  # noqa: S102
    network = namespace["network"]
    x = torch.randn(4, 6)
    task.eval()
    torch.testing.assert_close(network(x), task(x))


def test_fair_classification_run(tmp_path):
    task = FairClassificationTask(model=MODEL, adapter=LORA, group_dro=True, report_bootstrap=10)
    trainer, directory, report = run(tmp_path, task, classification_data())
    assert_figures(
        directory,
        report,
        {
            "learning_curve.png",
            "confusion_matrix.png",
            "per_class.png",
            "groups_accuracy.png",
            "reliability.png",
        },
        skipped={"per_group.png"},
    )


def test_a_resumed_run_draws_every_epoch_once(tmp_path):
    data = classification_data(groups=False)
    task = ClassificationTask(model=MODEL, adapter=LORA)
    _, directory, _ = run(tmp_path, task, data, epochs=1)
    resumed = ClassificationTask(model=MODEL, adapter=LORA)
    last = directory / "checkpoints" / "last.ckpt"
    _, again, report = run(tmp_path, resumed, data, epochs=3, ckpt_path=str(last), version=0)
    assert again == directory
    curve = read_learning_curve(directory / "metrics.csv")
    assert list(curve.epochs.index) == [0, 1, 2]
    assert curve.steps.index.is_unique and len(curve.steps) == 3 * 4  # 32 samples, batches of 8
    assert_figures(directory, report, {"learning_curve.png", "per_class.png"}, skipped={"per_group.png"})


# -- forecasting ------------------------------------------------------------------------------------------
def test_forecasting_run_plots_forecasts(tmp_path):
    task = ForecastingTask(model=MODEL, adapter=LORA, learning_rate=1e-2)
    data = Generated(forecasting_items, groups=False, input_shape=(2, 14), horizon=6)
    _, directory, report = run(tmp_path, task, data)
    assert_figures(directory, report, {"learning_curve.png", "forecasts.png"})
    assert report["data"]["dataset"] == "Generated"  # no name given: the class name


# -- segmentation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["image", "volume", "points"])
def test_segmentation_run_draws_dice_per_class_and_overlays(tmp_path, kind):
    lora = {"method": "lora", "targets": ["backbone.0"], "trainable": ["head"], "options": {"r": 2}}
    task = SegmentationTask(model=MODEL, adapter=lora, learning_rate=1e-2, spatial_metrics=[])
    shape = SEGMENTATION_SHAPES[kind]
    data = Generated(segmentation_items(kind), input_shape=(3, *shape), num_classes=3)
    _, directory, report = run(tmp_path, task, data)
    expected = {"learning_curve.png", "per_class_dice.png", "per_group.png"}
    if kind == "points":
        assert_figures(directory, report, expected, skipped={"overlays.png"})
        assert report["figures_skipped"]["overlays.png"].startswith("point sets")
    else:
        assert_figures(directory, report, expected | {"overlays.png"})


# -- sequence to sequence ---------------------------------------------------------------------------------
def test_seq2seq_run_lists_the_text_metric_per_group(tmp_path):
    task = Seq2SeqTask(
        model=TinyEncoderDecoder(),
        adapter={"method": "lora", "targets": ["backbone.encoder"], "options": {"r": 2}},
        max_new_tokens=3,
        n_bootstrap=20,
        learning_rate=1e-2,
    )
    _, directory, report = run(tmp_path, task, SequenceData())
    assert_figures(directory, report, {"learning_curve.png", "groups_token_error_rate.png"})
    assert_names_data(report, "SequenceData", {"train": 8, "val": 8, "test": 8})
    card = (directory / "adapter" / CARD_NAME).read_text()
    assert "given ready-made" in card  # a ready module: no recipe to quote


def test_the_report_adds_little_time(tmp_path, monkeypatch):
    """The figures, card and report of a small run cost well under a second of CPU (measured: about 0.4 to
    0.7 s on a busy 2-core machine); CPU time, since the wall clock there depends on the other processes."""
    spent = []
    original = RunReport.on_test_end

    def timed(self, trainer, pl_module):
        start = time.process_time()
        original(self, trainer, pl_module)
        spent.append(time.process_time() - start)

    monkeypatch.setattr(RunReport, "on_test_end", timed)
    task = ClassificationTask(model=MODEL, adapter=LORA)
    run(tmp_path, task, classification_data(), epochs=1)
    assert len(spent) == 1 and spent[0] < 2.0  # a loose bound over the measured figure
