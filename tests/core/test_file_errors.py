"""Adapter, checkpoint and option files that are wrong fail loudly: one error class naming the file, the tensor,
the expected and found shape, and what to do; nothing half-loads; no pickle runs; a full disk keeps the last
good checkpoint."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from lightning import LightningModule
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from verticals.core import AdapterSpec, adapt, load_adapter, load_adapter_ensemble, save_adapter
from verticals.core.adapters.options import AdapterOptionError
from verticals.core.checkpoint_io import AtomicCheckpointIO
from verticals.core.cli import VerticalsTrainer
from verticals.core.file_errors import MissingFileError, VerticalsFileError

# Library messages that must never be what a user reads for a bad file.
LIBRARY_WORDS = (
    "Repo id must be",
    "SafetensorError",
    "JSONDecodeError",
    "PytorchStreamReader",
    "invalid load key",
)


def _shown(error: BaseException) -> str:
    """Everything a user sees when ``error`` ends the program: the traceback with its chained exceptions."""
    return "".join(traceback.format_exception(error))


def _assert_ours(error: BaseException, path: Path | str) -> None:
    assert isinstance(error, VerticalsFileError), type(error)
    assert str(path) in str(error), str(error)
    assert not any(word in str(error) for word in LIBRARY_WORDS), str(error)


def _randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _lora(make_backbone, folder: Path, r: int = 4, **backbone: object) -> Path:
    model = _randomised(adapt(make_backbone("timm_vit", **backbone), "lora", targets="attention", r=r))
    return save_adapter(model, folder)


def _untouched(model: nn.Module) -> bool:
    return not isinstance(model, PeftModel) and not any(
        isinstance(m, BaseTunerLayer) for m in model.modules()
    )


# -- adapters that don't fit ---------------------------------------------------------------------------------
def test_an_adapter_from_a_deeper_backbone_is_refused_naming_the_tensors(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "two_blocks")  # 2 blocks x (qkv, proj) x (A, B) = 8 tensors
    shallow = make_backbone("timm_vit", depth=1)
    with pytest.raises(VerticalsFileError) as caught:
        load_adapter(shallow, folder)
    message = str(caught.value)
    _assert_ours(caught.value, folder / "adapter_model.safetensors")
    assert "4 of its 8 tensors have no place in this model" in message and "blocks.1.attn" in message
    assert "backbone it was trained on" in message
    assert _untouched(shallow)  # all or nothing: the backbone got no adapter layers


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "wide", width=16)
    narrow = make_backbone("timm_vit", width=8)
    with pytest.raises(
        VerticalsFileError,
        match=r"tensor base_model\.model\.blocks\.0\.attn\.proj\.lora_A\.weight has "
        r"shape \(4, 16\) in the file, but this model expects \(4, 8\)",
    ):
        load_adapter(narrow, folder)
    assert _untouched(narrow)


def test_a_config_whose_rank_disagrees_with_the_weights_is_refused(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "r4", r=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(
        VerticalsFileError, match=r"has shape \(4, 16\) in the file, but this model expects \(8, 16\)"
    ):
        load_adapter(make_backbone("timm_vit"), folder)


def test_loading_onto_a_model_that_holds_an_adapter_is_refused(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "r4", r=4)
    adapted = adapt(make_backbone("timm_vit"), "lora", targets="attention", r=8)
    before = {name: tensor.clone() for name, tensor in adapted.state_dict().items()}
    with pytest.raises(
        VerticalsFileError, match=r"already holds adapter\(s\) 'default' \(lora, r=8\).*freshly built"
    ):
        load_adapter(adapted, folder)
    assert list(adapted.peft_config) == ["default"] and adapted.peft_config["default"].r == 8
    after = adapted.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_fitting_adapter_still_loads_and_an_ensemble_is_checked_first(tmp_path, make_backbone):
    folders = [_lora(make_backbone, tmp_path / f"seed{seed}") for seed in range(2)]
    x = torch.randn(2, 3, 8, 8)
    single = load_adapter(make_backbone("timm_vit"), folders[0]).eval()
    assert single(x).shape == (2, 3)
    ensemble = load_adapter_ensemble(make_backbone("timm_vit"), folders)
    torch.testing.assert_close(ensemble(x), single(x))
    deeper = _lora(make_backbone, tmp_path / "deeper", depth=3)
    backbone = make_backbone("timm_vit")
    with pytest.raises(VerticalsFileError, match="deeper.*have no place in this model"):
        load_adapter_ensemble(backbone, [folders[0], deeper])
    assert _untouched(backbone)  # the first member was not loaded either


def test_a_trainable_file_loads_all_or_nothing(tmp_path, make_backbone):
    model = adapt(make_backbone("timm_vit"), "linear_probe", trainable=["head", "blocks.1.mlp.fc2"])
    save_adapter(_randomised(model), tmp_path)
    tensors = {
        "blocks.1.mlp.fc2.weight": torch.ones(16, 32),
        "head.bias": torch.ones(3),
        "head.weight": torch.ones(4, 16),  # a head for 4 classes onto a model of 3
    }
    save_file(tensors, str(tmp_path / "trainable.safetensors"))
    fresh = make_backbone("timm_vit")
    before = {name: tensor.clone() for name, tensor in fresh.state_dict().items()}
    with pytest.raises(
        VerticalsFileError,
        match=r"head\.weight has shape \(4, 16\) in the file, but this model expects \(3, 16\)",
    ):
        load_adapter(fresh, tmp_path)
    assert all(torch.equal(before[name], tensor) for name, tensor in fresh.state_dict().items())


def test_a_failed_save_leaves_the_previous_adapter_loadable(tmp_path, make_backbone, monkeypatch):
    folder = _lora(make_backbone, tmp_path / "adapter", r=4)
    x = torch.randn(2, 3, 8, 8)
    before = load_adapter(make_backbone("timm_vit"), folder).eval()(x)
    import peft.peft_model

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_disk)  # what PeftModel.save_pretrained calls
    with pytest.raises(OSError):
        _lora(make_backbone, folder, r=8)
    monkeypatch.undo()
    torch.testing.assert_close(load_adapter(make_backbone("timm_vit"), folder).eval()(x), before)
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


# -- files that are damaged, incomplete or foreign ------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated weights": lambda f: _truncate(f / "adapter_model.safetensors"),
    "truncated config": lambda f: _truncate(f / "adapter_config.json"),
    "config without weights": lambda f: (f / "adapter_model.safetensors").unlink(),
    "empty weights": lambda f: (f / "adapter_model.safetensors").write_bytes(b""),
    "empty config": lambda f: (f / "adapter_config.json").write_text(""),
    "config is a list": lambda f: (f / "adapter_config.json").write_text("[1, 2]"),
    "unknown method": lambda f: (f / "adapter_config.json").write_text('{"peft_type": "NO_SUCH_METHOD"}'),
    "rank is text": lambda f: (f / "adapter_config.json").write_text(
        json.dumps({**json.loads((f / "adapter_config.json").read_text()), "r": "abc"})
    ),
    "weights are text": lambda f: (f / "adapter_model.safetensors").write_text("not tensors at all" * 4),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_adapter_is_one_error_naming_the_file(tmp_path, make_backbone, damage):
    folder = _lora(make_backbone, tmp_path / "adapter")
    DAMAGE[damage](folder)
    backbone = make_backbone("timm_vit")
    with pytest.raises(VerticalsFileError) as caught:
        load_adapter(backbone, folder)
    _assert_ours(caught.value, folder)
    assert caught.value.path is not None and str(folder) in str(caught.value.path)
    assert _untouched(backbone)
    if damage == "config without weights":
        assert isinstance(caught.value, MissingFileError) and isinstance(caught.value, FileNotFoundError)
        assert "no weights" in str(caught.value)
    if damage == "rank is text":
        assert "`r` is 'abc' (str), but it must be an integer" in str(caught.value)


def test_no_adapter_at_all_is_still_a_file_not_found(tmp_path, make_backbone):
    with pytest.raises(FileNotFoundError, match="No adapter in"):
        load_adapter(make_backbone("timm_vit"), tmp_path / "missing")


# -- pickles -------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a marker folder (a stand-in for any code a hostile file runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _assert_refused_pickle(error: BaseException, path: Path, marker: Path) -> None:
    _assert_ours(error, path)
    shown = _shown(error)
    assert "weights_only=False" not in shown and "weights_only` set to `False`" not in shown, shown
    assert not marker.exists()


def test_a_pickle_where_safetensors_belong_never_runs(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "adapter")
    marker = tmp_path / "ran"
    torch.save({"weight": _Payload(marker)}, folder / "adapter_model.safetensors")
    with pytest.raises(VerticalsFileError, match="is a PyTorch pickle, but .* must be safetensors") as caught:
        load_adapter(make_backbone("timm_vit"), folder)
    _assert_refused_pickle(caught.value, folder / "adapter_model.safetensors", marker)


def test_a_pickled_adapter_needs_allow_pickle_and_then_loads_tensors_only(tmp_path, make_backbone):
    folder = _lora(make_backbone, tmp_path / "adapter")
    reference = load_adapter(make_backbone("timm_vit"), folder).eval()
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save(weights, folder / "adapter_model.bin")
    with pytest.raises(VerticalsFileError, match="allow_pickle=True.*weights_only=True"):
        load_adapter(make_backbone("timm_vit"), folder)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        load_adapter(make_backbone("timm_vit"), folder, allow_pickle=True).eval()(x), reference(x)
    )
    marker = tmp_path / "ran"
    torch.save({"weight": _Payload(marker)}, folder / "adapter_model.bin")
    with pytest.raises(
        VerticalsFileError, match=r"refers to Python object `os\.makedirs`.*not loaded"
    ) as caught:
        load_adapter(make_backbone("timm_vit"), folder, allow_pickle=True)
    _assert_refused_pickle(caught.value, folder / "adapter_model.bin", marker)


# -- adapter options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "options", "words"),
    [
        ("lora", {"r": "abc"}, "`r` is 'abc' (str), but it must be an integer"),
        ("lora", {"r": -1}, "`r` is -1 (int), but it is a size or a count, which can't be negative"),
        ("lora", {"r": 0}, "`r` should be a positive integer"),  # peft's own check, reached while building
        ("lora", {"r": 2.5}, "`r` is 2.5 (float), but it must be an integer"),
        ("lora", {"lora_dropout": 1.5}, "`lora_dropout` is 1.5 (float), but it is a dropout probability"),
        ("lora", {"lora_alpha": math.nan}, "`lora_alpha` is nan (float), but it must be a finite number"),
        (
            "lora",
            {"init_lora_weights": "sideways"},
            "`init_lora_weights` is 'sideways' (str), but it must be true or false or one of 'gaussian'",
        ),
        ("loha", {"r": "8"}, "`r` is '8' (str), but it must be an integer"),
        ("bottleneck", {"bottleneck_dim": -4}, "`bottleneck_dim` is -4 (int), but it is a size or a count"),
    ],
)
def test_adapter_options_are_checked_before_peft_sees_them(make_backbone, method, options, words):
    targets = "blocks" if method == "bottleneck" else "attention"
    with pytest.raises(AdapterOptionError) as caught:
        adapt(make_backbone("timm_vit"), AdapterSpec(method=method, targets=targets, options=options))
    assert words in str(caught.value), str(caught.value)
    assert repr(method) in str(caught.value)
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert "site-packages" not in frames[-1].filename or options == {
        "r": 0
    }  # raised by verticals, not deep in peft


def test_valid_options_of_every_kind_still_build(make_backbone):
    for method, options in [
        ("lora", {"r": 2, "lora_alpha": 4, "lora_dropout": 0.1, "init_lora_weights": "gaussian"}),
        ("lora", {"r": 2, "use_dora": True, "layers_to_transform": [0]}),
        ("oft", {"r": 0, "oft_block_size": 4}),  # a zero size that means "derive it from the other"
        ("loha", {"r": 2, "alpha": 4}),
    ]:
        adapt(make_backbone("timm_vit"), method, targets="attention", **options)


# -- checkpoints -------------------------------------------------------------------------------------------------
class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)


def _trainer(root: Path, **kwargs) -> VerticalsTrainer:
    options = dict(
        default_root_dir=str(root),
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return VerticalsTrainer(**{**options, **kwargs})


def test_the_atomic_checkpoint_io_is_on_the_save_and_the_load_path(tmp_path, monkeypatch):
    calls: list[str] = []
    save, load = AtomicCheckpointIO.save_checkpoint, AtomicCheckpointIO.load_checkpoint
    monkeypatch.setattr(
        AtomicCheckpointIO, "save_checkpoint", lambda s, *a, **k: calls.append("save") or save(s, *a, **k)
    )
    monkeypatch.setattr(
        AtomicCheckpointIO, "load_checkpoint", lambda s, *a, **k: calls.append("load") or load(s, *a, **k)
    )
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="val_loss", filename="best", save_last=True
    )
    trainer = _trainer(tmp_path, callbacks=[checkpoint])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(_Tiny())
    assert calls.count("save") == 2 and (tmp_path / "checkpoints" / "last.ckpt").is_file()  # best + last
    _trainer(tmp_path).validate(_Tiny(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    _trainer(tmp_path, max_epochs=2).fit(_Tiny(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert calls.count("load") == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    mine = TorchCheckpointIO()
    assert _trainer(tmp_path, plugins=[mine]).strategy.checkpoint_io is mine  # a user's own plugin is kept


def _full_disk_across_filesystems(monkeypatch) -> None:
    """The failure of issue 18: checkpoint bytes that reach the checkpoint's own file stop half-way with ENOSPC,
    and a rename between filesystems (``$TMPDIR`` → the run folder) turns into a copy that fails the same way."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def rename(source, destination):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def copyfile(source, destination, *, follow_symlinks=True):
        data = Path(source).read_bytes()
        Path(destination).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


@pytest.mark.parametrize("plugin", ["verticals", "lightning"])
def test_a_full_disk_never_destroys_the_previous_checkpoint(tmp_path, monkeypatch, plugin):
    model = _Tiny()
    trainer = _trainer(tmp_path, plugins=[TorchCheckpointIO()] if plugin == "lightning" else None)
    trainer.fit(model)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    good = AtomicCheckpointIO().load_checkpoint(path)["state_dict"]
    with torch.no_grad():
        model.layer.weight.add_(1.0)
    with monkeypatch.context() as patch:
        _full_disk_across_filesystems(patch)
        with pytest.raises(OSError) as caught:
            trainer.save_checkpoint(path)
    assert caught.value.errno == errno.ENOSPC
    if plugin == "lightning":  # the simulation is real: Lightning's own writer loses the old checkpoint
        with pytest.raises(VerticalsFileError, match="truncated"):
            AtomicCheckpointIO().load_checkpoint(path)
        return
    assert "untouched" in str(caught.value)
    restored = AtomicCheckpointIO().load_checkpoint(path)["state_dict"]
    assert restored.keys() == good.keys() and all(torch.equal(restored[k], good[k]) for k in good)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def _checkpoint_file(tmp_path: Path) -> Path:
    trainer = _trainer(tmp_path)
    trainer.fit(_Tiny())
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    return tmp_path / "good.ckpt"


def test_a_damaged_checkpoint_is_one_error_naming_the_file(tmp_path):
    good = _checkpoint_file(tmp_path)
    marker = tmp_path / "ran"
    state = torch.load(good, weights_only=True)
    cases = {
        "truncated.ckpt": lambda p: p.write_bytes(good.read_bytes()[:-100]),
        "empty.ckpt": lambda p: p.write_bytes(b""),
        "text.ckpt": lambda p: p.write_text("model weights, honest"),
        "hostile.ckpt": lambda p: torch.save({"state_dict": {}, "x": _Payload(marker)}, p),
        "list.ckpt": lambda p: torch.save([1, 2, 3], p),
        "bare_state_dict.ckpt": lambda p: torch.save(state["state_dict"], p),
        "nan.ckpt": lambda p: torch.save(
            {
                **state,
                "state_dict": {k: torch.full_like(v, math.nan) for k, v in state["state_dict"].items()},
            },
            p,
        ),
    }
    words = {
        "truncated.ckpt": "truncated",
        "empty.ckpt": "is empty",
        "text.ckpt": "not a PyTorch checkpoint",
        "hostile.ckpt": "refers to Python object",
        "list.ckpt": "holds a list, not a Lightning checkpoint",
        "bare_state_dict.ckpt": "no `state_dict`",
        "nan.ckpt": "NaN or infinite",
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(VerticalsFileError) as caught:  # the path `--ckpt_path` takes
            _trainer(tmp_path).validate(_Tiny(), ckpt_path=str(path))
        _assert_ours(caught.value, path)
        assert words[name] in str(caught.value), (name, str(caught.value))
        assert "weights_only=False" not in _shown(caught.value)
    assert not marker.exists()
