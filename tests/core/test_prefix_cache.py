"""Frozen-prefix caching: the same training curve with and without it, the cut it finds on different shapes of
forward (a chain, a skip across the cut, prompts beside the image), and loud refusals where it can't be exact."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from verticals.core.data import ArrayClassificationDataModule
from verticals.core.prefix_cache import FrozenBranch, FrozenPrefixCache, PrefixCacheError, PrefixCacheOptions
from verticals.core.report import write_report
from verticals.core.tasks import ClassificationTask

WIDTH = 16


class Planted(ArrayClassificationDataModule):
    """Three classes of 8-feature vectors, the class planted in the mean."""

    def _load_arrays(self):
        rng = np.random.default_rng(0)
        y_train, y_test = np.arange(36) % 3, np.arange(12) % 3
        x_train = rng.normal(size=(36, 8)).astype(np.float32) + y_train[:, None]
        x_test = rng.normal(size=(12, 8)).astype(np.float32) + y_test[:, None]
        return x_train, y_train, x_test, y_test, ["a", "b", "c"]


class Chain(nn.Module):
    """stem → four blocks → head, with glue (a frozen offset) between the stem and the blocks."""

    def __init__(self, skip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Linear(8, WIDTH), nn.GELU())
        self.offset = nn.Parameter(torch.randn(WIDTH) * 0.1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(4)])
        self.head = nn.Linear(WIDTH, 3)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        hidden = self.blocks(stem + self.offset)
        return self.head(hidden + stem if self.skip else hidden)


LORA_LAST_BLOCKS = {
    "method": "lora",
    "targets": ["blocks.2.0", "blocks.3.0"],
    "trainable": ["head"],
    "options": {"r": 2, "lora_dropout": 0.2},
}


def _fit(tmp_path, cache, network=None, adapter=None, epochs: int = 3):
    L.seed_everything(0)
    task = ClassificationTask(
        model=network or Chain(),
        adapter=adapter or LORA_LAST_BLOCKS,
        num_classes=3,
        cache_frozen_prefix=cache,
    )
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=tmp_path / str(bool(cache)),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Losses()],
    )
    trainer.fit(task, Planted(batch_size=8, val_fraction=0.25))
    return task, losses


def test_training_curves_are_equal_with_and_without_the_cache(tmp_path):
    plain, plain_losses = _fit(tmp_path, cache=False)
    cached, cached_losses = _fit(tmp_path, cache=True)
    assert len(cached_losses) == len(plain_losses) == 12
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-6, atol=1e-7)
    summary = cached.prefix_cache_summary
    # LoRA on blocks 2 and 3: block 1's output is replayed, the stem and block 0 are skipped.
    assert summary["used"] and summary["cached_modules"] == ["blocks.1"]
    assert summary["skipped_modules"] == ["stem", "blocks.0"]
    assert summary["keyed_on"] == "first input" and summary["samples"] == 36  # 27 train + 9 validation
    # 3 epochs of train + validation (+ Lightning's sanity check): after the first, every sample is replayed.
    assert summary["hit_rate"] > 0.6 and summary["uncached_samples"] == 0
    assert not plain.prefix_cache_summary["used"]
    assert cached.prefix_cache is None  # detached at the end of the fit: testing runs every module
    for name, parameter in cached.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, dict(plain.named_parameters())[name], rtol=1e-5, atol=1e-6)
    assert "cache_frozen_prefix" not in cached.hparams  # how to run, not what was trained
    report = write_report(
        tmp_path / "report", task=cached, test_metrics={}, best_validation=None, checkpoint="", timing=None
    )
    assert report["prefix_cache"]["cached_modules"] == ["blocks.1"]
    assert (
        "- frozen-prefix cache: replayed `blocks.1` (keyed on the first input, float32), 36 samples"
        in (tmp_path / "report" / "report.md").read_text()
    )
    plain_report = write_report(
        tmp_path / "plain", task=plain, test_metrics={}, best_validation=None, checkpoint="", timing=None
    )
    assert plain_report["prefix_cache"] == {"used": False}
    assert "- frozen-prefix cache: not used" in (tmp_path / "plain" / "report.md").read_text()


def test_a_skip_connection_across_the_cut_is_replayed_too(tmp_path):
    """The head reads the stem's output after the blocks: the stem is cached beside block 1, not skipped."""
    plain, plain_losses = _fit(tmp_path, cache=False, network=Chain(skip=True), epochs=2)
    cached, cached_losses = _fit(tmp_path, cache=True, network=Chain(skip=True), epochs=2)
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-6, atol=1e-7)
    assert cached.prefix_cache_summary["cached_modules"] == ["stem", "blocks.1"]


class Prompted(nn.Module):
    """An image encoder on ``x``, a prompt encoder on ``prompt``, a trained decoder on both (SAM's shape)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = nn.Sequential(nn.Linear(8, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH))
        self.prompt_encoder = nn.Linear(2, WIDTH)
        self.decoder = nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.image_encoder(x) * self.prompt_encoder(prompt))


def test_prompts_run_each_step_and_the_image_embedding_is_keyed_on_the_image():
    network = Prompted()
    network.image_encoder.requires_grad_(False)
    network.prompt_encoder.requires_grad_(False)
    cache = FrozenPrefixCache(network, PrefixCacheOptions(enabled=True))
    x = torch.randn(6, 8)
    first, second = torch.randn(6, 2), torch.randn(6, 2)  # the same images with other (jittered) prompts
    with torch.no_grad():
        expected = network.eval()(x, second)  # the cache sets up in training mode only
        network.train()(x, first)  # sets up, records
        replayed = network(x, second)
    summary = cache.summary()
    assert summary["cached_modules"] == ["image_encoder"] and summary["keyed_on"] == "first input"
    assert summary["skipped_modules"] == [] and summary["hit_rate"] == pytest.approx(0.5)
    torch.testing.assert_close(replayed, expected)
    cache.remove()
    assert "forward" not in vars(network.image_encoder)  # the module's own forward again


def test_the_image_encoders_output_is_not_recomputed_once_cached():
    network = Prompted()
    network.image_encoder.requires_grad_(False)
    network.prompt_encoder.requires_grad_(False)
    FrozenPrefixCache(network, PrefixCacheOptions(enabled=True))
    calls = []
    network.image_encoder[0].register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 8)
    with torch.no_grad():
        network.train()(x, torch.randn(4, 2))
        counted = len(calls)  # the set-up's forwards and the recording one
        network(x, torch.randn(4, 2))
        network(x[:2], torch.randn(2, 2))  # a subset of seen samples: replayed too
    assert len(calls) == counted


def test_a_network_trained_from_its_first_module_is_refused():
    network = Chain()
    cache = FrozenPrefixCache(network, PrefixCacheOptions(enabled=True))
    with pytest.raises(PrefixCacheError, match="no frozen prefix"):
        network.train()(torch.randn(4, 8))
    cache.remove()


def test_dropout_in_training_mode_in_the_prefix_is_refused():
    network = Chain()
    network.stem.append(nn.Dropout(0.5))
    network.stem.requires_grad_(False)
    network.offset.requires_grad_(False)
    FrozenPrefixCache(network, PrefixCacheOptions(enabled=True))
    with pytest.raises(PrefixCacheError, match=r"not deterministic.*stem\.2"):
        network.train()(torch.randn(4, 8))


def test_a_full_cache_says_so_once_and_computes_the_rest(tmp_path, caplog):
    network = Chain()
    for module in (network.stem, network.blocks[0], network.blocks[1]):
        module.requires_grad_(False)
    network.offset.requires_grad_(False)
    row_bytes = WIDTH * 4
    options = PrefixCacheOptions(
        enabled=True, max_gb=5.5 * row_bytes / 1024**3, directory=str(tmp_path / "c")
    )
    cache = FrozenPrefixCache(network, options, expected_samples=8)
    x = torch.randn(8, 8)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        expected = network.train()(x)
        again = network(x)
    assert cache.samples == 5 and cache.summary()["uncached_samples"] == 3
    assert cache.summary()["bytes"] == 5 * row_bytes
    torch.testing.assert_close(again, expected)
    warnings = [r.getMessage() for r in caplog.records if "Frozen-prefix cache" in r.getMessage()]
    assert len(warnings) == 1 and "ceiling" in warnings[0] and "the first 5 are cached" in warnings[0]
    assert list((tmp_path / "c").glob("*.bin"))  # memory-mapped blocks on disk


def test_float16_storage_halves_the_bytes_and_stays_close():
    network = Chain()
    for module in (network.stem, network.blocks[0], network.blocks[1]):
        module.requires_grad_(False)
    network.offset.requires_grad_(False)
    cache = FrozenPrefixCache(network, PrefixCacheOptions(enabled=True, dtype="float16"))
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = network.train()(x)
        replayed = network(x)
    assert cache.summary()["bytes"] == 4 * WIDTH * 2
    torch.testing.assert_close(replayed, expected, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"dtype": "bfloat8"}, "must be one of"),
        ({"max_gb": 0}, "positive number of GB"),
        ({"size": 3}, "has no option"),
        ("yes", "true/false or a dict"),
    ],
)
def test_bad_options_name_the_value_and_what_is_expected(value, message):
    with pytest.raises(ValueError, match=message):
        PrefixCacheOptions.coerce(value)


def test_options_from_the_task_argument():
    assert PrefixCacheOptions.coerce(True).enabled and not PrefixCacheOptions.coerce(None).enabled
    assert PrefixCacheOptions.coerce({"dtype": "float16"}) == PrefixCacheOptions(
        enabled=True, dtype="float16"
    )
    assert not PrefixCacheOptions.coerce({"enabled": False}).enabled


class SideBranch(Chain):
    """A Chain whose stem has a pre-hook that runs the stem and the first block once more on the raw input (a
    frozen side pass, like Point-PEFT's point-prior query) and adds its result before the head."""

    def __init__(self, declared: bool = True, reads_head: bool = False) -> None:
        super().__init__()
        self.reads_head = reads_head
        self.side: torch.Tensor | None = None
        self.running_side = False
        self.side_pass = FrozenBranch(self._side_pass, "the stem and block 0 again") if declared else None
        self.stem.register_forward_pre_hook(self._before_stem)

    def _side_pass(self, x: torch.Tensor) -> torch.Tensor:
        self.running_side = True
        try:
            side = self.blocks[0](self.stem(x))
        finally:
            self.running_side = False
        return side + self.head.bias.sum() if self.reads_head else side

    def _before_stem(self, module: nn.Module, args: tuple) -> None:
        if not self.running_side:
            self.side = self.side_pass(args[0]) if self.side_pass is not None else self._side_pass(args[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.stem(x) + self.offset)
        return self.head(hidden + self.side)


def test_a_declared_frozen_side_pass_is_replayed_with_the_prefix(tmp_path):
    plain, plain_losses = _fit(tmp_path, cache=False, network=SideBranch())
    cached, cached_losses = _fit(tmp_path, cache=True, network=SideBranch())
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-6, atol=1e-7)
    summary = cached.prefix_cache_summary
    assert summary["cached_modules"] == ["side_pass", "blocks.1"] and "stem" in summary["skipped_modules"]

    network = SideBranch()
    network.requires_grad_(False)
    network.head.requires_grad_(True)
    FrozenPrefixCache(network, PrefixCacheOptions(enabled=True))
    runs: list[str] = []
    network.stem[0].register_forward_hook(
        lambda *_: runs.append("stem")
    )  # hooks of a replayed module still run
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = network.train()(x)
        runs.clear()
        replayed = network(x)
    assert runs == []  # neither the main pass's stem nor the side pass's ran again
    torch.testing.assert_close(replayed, expected)


def test_an_undeclared_side_pass_or_one_that_reads_trained_weights_is_refused():
    undeclared = SideBranch(declared=False)
    undeclared.requires_grad_(False)
    undeclared.head.requires_grad_(True)
    FrozenPrefixCache(undeclared, PrefixCacheOptions(enabled=True))
    with pytest.raises(PrefixCacheError, match="`stem` runs 2 times"):
        undeclared.train()(torch.randn(4, 8))
    reads_head = SideBranch(reads_head=True)
    reads_head.requires_grad_(False)
    reads_head.head.requires_grad_(True)
    FrozenPrefixCache(reads_head, PrefixCacheOptions(enabled=True))
    with pytest.raises(PrefixCacheError, match=r"\['side_pass'\] changes when the trained parameters do"):
        reads_head.train()(torch.randn(4, 8))


def test_the_set_up_leaves_trained_batchnorm_statistics_as_one_forward_would():
    def network() -> nn.Module:
        chain = Chain()
        chain.blocks.append(nn.BatchNorm1d(WIDTH))
        chain.requires_grad_(False)
        chain.blocks[-1].requires_grad_(True)
        return chain.train()

    plain, cached = network(), network()
    FrozenPrefixCache(cached, PrefixCacheOptions(enabled=True))
    x = torch.randn(6, 8)
    with torch.no_grad():
        plain(x)
        cached(x)
    torch.testing.assert_close(cached.blocks[-1].running_mean, plain.blocks[-1].running_mean)
    torch.testing.assert_close(cached.blocks[-1].running_var, plain.blocks[-1].running_var)
    assert int(cached.blocks[-1].num_batches_tracked) == 1
