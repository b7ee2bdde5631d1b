"""Tests for the domain-agnostic array datasets, label encoding, split and datamodule base."""

from __future__ import annotations

import logging
import sys

import lightning as L
import numpy as np
import pytest
import torch

from verticals.core.data import (
    ArrayClassificationDataModule,
    ArrayDataset,
    BaseDataModule,
    EpochShuffleSampler,
    GroupedDataModule,
    check_groups,
    encode_group_matrix,
    encode_labels,
    make_loader,
    stratified_split,
)


class ToyDataModule(ArrayClassificationDataModule):
    """Three classes of 2-channel series; counts how often the arrays are loaded."""

    def __init__(
        self,
        n_train: int = 30,
        n_test: int = 12,
        batch_size: int = 4,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers)
        self.n_train, self.n_test = n_train, n_test
        self.loads = 0

    def _load_arrays(self):
        self.loads += 1
        rng = np.random.default_rng(0)
        labels = np.array(["cat", "ant", "bee"])
        y_train = labels[np.arange(self.n_train) % 3]
        y_test = labels[np.arange(self.n_test) % 3]
        # x[i, 0, 0] records the item's index so tests can trace items through the split.
        x_train = rng.normal(size=(self.n_train, 2, 7)).astype(np.float32)
        x_train[:, 0, 0] = np.arange(self.n_train)
        x_test = rng.normal(size=(self.n_test, 2, 7)).astype(np.float32)
        return x_train, y_train, x_test, y_test, None


# -- ArrayDataset ----------------------------------------------------------------------------
def test_array_dataset_items_and_dtypes():
    x = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    ints = ArrayDataset(x, np.array([0, 1, 2, 1]))
    item = ints[1]
    assert set(item) == {"x", "y"}
    assert item["x"].dtype == torch.float32 and item["x"].shape == (2, 3)
    assert torch.equal(item["x"], torch.tensor(x[1], dtype=torch.float32))
    assert item["y"].dtype == torch.long and int(item["y"]) == 1
    assert len(ints) == 4

    floats = ArrayDataset(x, np.zeros((4, 2, 5)))
    assert floats[0]["y"].dtype == torch.float32 and floats[0]["y"].shape == (2, 5)
    assert set(ArrayDataset(x)[0]) == {"x"}


def test_array_dataset_rejects_bad_labels():
    x = np.zeros((3, 1, 2))
    with pytest.raises(ValueError, match="3 items but `y` has 2"):
        ArrayDataset(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="encode_labels"):
        ArrayDataset(x, np.array(["a", "b", "c"]))


# -- encode_labels ---------------------------------------------------------------------------
def test_encode_labels_sorts_numbers_numerically_and_strings_lexically():
    (train, test), names = encode_labels(["10", "2", "1", "2"], ["1", "10"])
    assert names == ["1", "2", "10"]
    assert train.tolist() == [2, 1, 0, 1] and test.tolist() == [0, 2]
    assert train.dtype == np.int64

    (train,), names = encode_labels(np.array(["walk", "run", "Jump"]))
    assert names == ["Jump", "run", "walk"] and train.tolist() == [2, 1, 0]
    assert all(type(n) is str for n in names)


def test_encode_labels_rejects_labels_unseen_in_training():
    with pytest.raises(ValueError, match=r"\['c'\].*not in the training data"):
        encode_labels(["a", "b"], ["a", "c"])


# -- stratified_split ------------------------------------------------------------------------
def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = np.array([0] * 40 + [1] * 10)
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert len(held) == 10 and len(keep) == 40
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(50))
    assert np.bincount(labels[held]).tolist() == [8, 2]
    again_keep, again_held = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=4)[1])


def test_stratified_split_zero_fraction_and_bad_fraction():
    keep, held = stratified_split(np.array([0, 1, 0]), 0.0)
    assert keep.tolist() == [0, 1, 2] and held.size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stratified_split(np.array([0, 1]), 1.0)


def test_stratified_split_falls_back_with_a_warning_for_singleton_classes(caplog):
    labels = np.array(["a"] * 6 + ["b"] * 3 + ["rare"])
    with caplog.at_level(logging.WARNING, logger="verticals.core.data"):
        keep, held = stratified_split(labels, 0.3, seed=0)
    assert "not stratified" in caplog.text and "'rare'" in caplog.text
    assert len(held) == 3 and len(keep) == 7


# -- ArrayClassificationDataModule -----------------------------------------------------------
def test_properties_are_available_before_setup_and_load_once():
    dm = ToyDataModule()
    assert dm.num_classes == 3
    assert dm.class_names == ["ant", "bee", "cat"]
    assert dm.input_shape == (2, 7)
    assert dm.num_channels == 2 and dm.series_length == 7
    assert dm.train_dataset is None  # nothing was set up
    dm.setup("fit")
    dm.setup("test")
    assert dm.loads == 1


def test_split_is_stratified_disjoint_and_seeded():
    dm = ToyDataModule(n_train=30, val_fraction=0.2, seed=1)
    train_idx, val_idx = dm.split_indices
    assert len(val_idx) == 6 and set(train_idx).isdisjoint(val_idx)
    y = dm.arrays.y_train
    assert np.bincount(y[val_idx]).tolist() == [2, 2, 2]
    assert np.array_equal(val_idx, ToyDataModule(seed=1).split_indices[1])
    dm.setup()
    val_items = sorted(int(b["x"][i, 0, 0]) for b in dm.val_dataloader() for i in range(len(b["x"])))
    assert val_items == sorted(val_idx.tolist())


def test_dataloader_batches_and_seeded_shuffling():
    dm = ToyDataModule(batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 2, 7) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (4,) and batch["y"].dtype == torch.long

    def order(module):
        return [int(v) for b in module.train_dataloader() for v in b["x"][:, 0, 0]]

    first = order(dm)
    assert first == order(ToyDataModule(batch_size=4))
    assert first != sorted(first)  # shuffled
    assert first != order(ToyDataModule(batch_size=4, seed=5))

    test_batches = list(dm.test_dataloader())
    assert sum(len(b["y"]) for b in test_batches) == 12
    predicted = torch.cat([b["x"] for b in dm.predict_dataloader()])
    assert torch.equal(predicted, torch.from_numpy(dm.arrays.x_test))


def test_zero_val_fraction_validates_on_training_set_with_a_warning(caplog):
    dm = ToyDataModule(val_fraction=0.0)
    dm.setup()
    with caplog.at_level(logging.WARNING, logger="verticals.core.data"):
        loader = dm.val_dataloader()
    assert "validation runs on the training set" in caplog.text
    assert loader.dataset is dm.train_dataset and len(loader.dataset) == 30


def test_hyperparameters_include_subclass_arguments():
    dm = ToyDataModule(n_train=9, batch_size=3)
    assert dm.hparams["n_train"] == 9 and dm.hparams["batch_size"] == 3 and dm.hparams["val_fraction"] == 0.2


class _GivenNames(ArrayClassificationDataModule):
    def __init__(self, y_train: list[int], x_test_shape: tuple[int, ...] = (2, 1, 4)) -> None:
        super().__init__()
        self.y_train, self.x_test_shape = y_train, x_test_shape

    def _load_arrays(self):
        x_train = np.zeros((len(self.y_train), 1, 4))
        return x_train, np.array(self.y_train), np.zeros(self.x_test_shape), np.array([0, 1]), ["no", "yes"]


def test_integer_labels_with_class_names_are_checked():
    assert _GivenNames([0, 1, 1, 0, 1]).class_names == ["no", "yes"]
    with pytest.raises(ValueError, match=r"ints in 0\.\.1"):
        _GivenNames([0, 2, 1, 0, 1]).num_classes  # noqa: B018
    with pytest.raises(ValueError, match="share one input shape"):
        _GivenNames([0, 1, 1, 0, 1], x_test_shape=(2, 1, 5)).input_shape  # noqa: B018


def test_series_length_needs_channel_by_length_inputs():
    class Images(_GivenNames):
        def _load_arrays(self):
            return (
                np.zeros((4, 3, 8, 8)),
                np.array([0, 1, 0, 1]),
                np.zeros((2, 3, 8, 8)),
                np.array([0, 1]),
                None,
            )

    dm = Images([0])
    assert dm.input_shape == (3, 8, 8) and dm.num_channels == 3
    with pytest.raises(AttributeError, match="input_shape"):
        dm.series_length  # noqa: B018


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="val_fraction"):
        ToyDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        ToyDataModule(batch_size=0)


class _LinkedModel(L.LightningModule):
    def __init__(self, num_classes: int = 0, input_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(int(np.prod(input_shape)), num_classes)


def test_properties_link_into_model_arguments_through_lightning_cli(monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(sys, "argv", ["verticals"])

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")

    cli = CLI(
        _LinkedModel,
        ToyDataModule,
        run=False,
        args=[
            "--data.n_train=12",
            "--seed_everything=0",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
        ],
    )
    assert cli.model.hparams.num_classes == 3
    assert tuple(cli.model.hparams.input_shape) == (2, 7)
    assert cli.model.layer.in_features == 14


def test_training_loader_drops_a_last_batch_of_one_sample_only():
    def sizes(count: int, shuffle: bool) -> list[int]:
        dataset = torch.utils.data.TensorDataset(torch.arange(count))
        return [len(batch[0]) for batch in make_loader(dataset, 4, shuffle=shuffle)]

    assert sizes(9, shuffle=True) == [4, 4]  # BatchNorm cannot train on the lone ninth sample
    assert sizes(9, shuffle=False) == [4, 4, 1]  # evaluation keeps every sample
    assert sizes(10, shuffle=True) == [4, 4, 2]
    assert sizes(1, shuffle=True) == [1]


# -- the one datamodule base and the group protocol -------------------------------------------------
class _Splits(BaseDataModule):
    """Splits of ``arange(size)``; optional groups and collate function, to exercise the base."""

    def __init__(self, sizes: dict[str, int], batch_size: int = 4, seed: int = 0, collate=None) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.sizes, self.collate = sizes, collate

    def split_dataset(self, split: str) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(torch.arange(self.sizes[split]))

    def collate_fn(self, split: str):
        return self.collate


def _values(loader) -> list[int]:
    return [int(v) for batch in loader for v in batch[0]]


def test_base_datamodule_builds_every_loader_through_one_factory():
    dm = _Splits({"train": 9, "val": 5, "test": 6}, seed=3)
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochShuffleSampler) and train.sampler.seed == 3
    order = _values(train)
    assert len(order) == 8 and len(set(order)) == 8  # shuffled; the lone ninth sample is dropped
    assert order == _values(make_loader(dm.split_dataset("train"), 4, shuffle=True, seed=3))
    train.sampler.set_epoch(1)
    assert _values(train) != order  # a new order every epoch, fixed by (seed, epoch)
    assert _values(dm.val_dataloader()) == list(range(5))
    assert _values(dm.test_dataloader()) == _values(dm.predict_dataloader()) == list(range(6))
    assert _values(dm.dataloader("train", shuffle=False)) == list(range(9))
    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'val', 'test'\), got 'holdout'"):
        dm.dataloader("holdout")

    class KeepsSingles(_Splits):
        drop_single_last = False

    singles = KeepsSingles({"train": 9}, collate=lambda items: {"n": len(items)})
    assert [batch["n"] for batch in singles.train_dataloader()] == [4, 4, 1]
    with pytest.raises(ValueError, match="batch_size"):
        _Splits({}, batch_size=0)
    with pytest.raises(NotImplementedError, match="split_dataset"):
        BaseDataModule().train_dataloader()


def test_group_protocol_defaults_setters_and_checks():
    dm = _Splits({"train": 2})
    assert isinstance(dm, GroupedDataModule) and dm.group_attributes == [] and dm.group_names == {}
    check_groups(dm)  # no groups is a valid answer
    dm.group_attributes = ("site", "sex")
    dm.group_names = {"site": ("a", "b"), "sex": ["F", "M"]}
    check_groups(dm)
    assert dm.group_attributes == ["site", "sex"] and dm.group_names["site"] == ["a", "b"]
    dm.group_names = {"site": ["a", "b"]}
    with pytest.raises(
        ValueError, match=r"`group_names` has attributes \['site'\] but `group_attributes` is"
    ):
        check_groups(dm)
    dm.group_names = {"site": ["a", "b"], "sex": []}
    with pytest.raises(ValueError, match=r"attribute\(s\) \['sex'\] have no categories"):
        check_groups(dm)
    with pytest.raises(TypeError, match="group_attributes"):
        check_groups(object())


def test_encode_group_matrix_codes_columns_in_attribute_order():
    names = {"site": ["2", "10"], "sex": ["F", "M"]}
    codes = encode_group_matrix({"sex": ["M", "F", "M"], "site": [10, "2", "10"]}, names)
    assert codes.dtype == np.int64 and codes.tolist() == [[1, 1], [0, 0], [1, 1]]
    assert encode_group_matrix({}, names).shape == (0, 0)
    with pytest.raises(ValueError, match=r"Attribute 'sex': .*\['X'\] .*\['F', 'M'\]"):
        encode_group_matrix({"sex": ["F", "X"]}, names)
    with pytest.raises(ValueError, match="'age' has no entry in `group_names`"):
        encode_group_matrix({"age": ["1"]}, names)
    with pytest.raises(ValueError, match="one value per sample"):
        encode_group_matrix({"sex": ["F"], "site": ["2", "10"]}, names)


def test_length_grouped_sampler_sorts_each_group_of_a_seeded_permutation():
    from verticals.core.data import LengthGroupedSampler

    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=3, group_batches=2)
    plain = EpochShuffleSampler(len(lengths), seed=3)
    order, permutation = list(sampler), list(plain)
    assert sorted(order) == list(range(10))
    for start in (0, 4, 8):  # groups of 2 batches x 2 samples: the same samples, longest first
        group = order[start : start + 4]
        assert set(group) == set(permutation[start : start + 4])
        assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)
    sampler.set_epoch(1)
    assert list(sampler) != order  # another epoch, another grouping
    sampler.set_epoch(0)
    assert list(sampler) == order  # and the same again for a resumed epoch
    with pytest.raises(ValueError, match="`lengths` has 3 entries for a dataset of 10"):
        make_loader(list(range(10)), 2, shuffle=True, lengths=[1, 2, 3])
