"""Fuzzed adapter files, adapter configs, checkpoints and data files: each case loads (the mutation left a valid
file) or ends in a :class:`~verticals.core.file_errors.VerticalsFileError` naming the file, never in an error
raised from inside torch, peft, safetensors, json, numpy, Pillow or pandas.

Every outcome is counted per input kind; the last test prints the table (``pytest -s`` or the terminal
summary shows it) and checks that no case ended in a raw library error. Examples are derandomised, so CI
runs the same cases every time.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning import LightningModule
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import verticals.core
from verticals.core import adapt, load_adapter, save_adapter
from verticals.core.checkpoint_io import AtomicCheckpointIO
from verticals.core.cli import VerticalsTrainer
from verticals.core.data import ArrayClassificationDataModule, ManifestDataModule, read_image, read_mask
from verticals.core.file_errors import VerticalsFileError
from verticals.core.tasks import ClassificationTask

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: kind -> outcome -> count, over the whole module; printed by the last test.
OUTCOMES: dict[str, Counter] = defaultdict(Counter)
RAW: list[str] = []
#: kind -> the gist of each error message (paths and numbers removed) -> count: which checks caught what.
MESSAGES: dict[str, Counter] = defaultdict(Counter)
OTHERS: dict[str, Counter] = defaultdict(Counter)  # the same, for plain ValueErrors raised by verticals


def _gist(message: str) -> str:
    message = re.sub(r"/\S+", "<path>", message)
    message = re.sub(r"\(\d[\d, ]*\)|\d+", "N", message)
    return message[:110]


def _outcome(kind: str, attempt, path: Path | None = None) -> str:
    """Run ``attempt()``; count "loaded", "verticals error" or "raw library error" under ``kind``."""
    try:
        attempt()
    except VerticalsFileError as error:
        if path is not None:
            assert str(path) in str(error) or (error.path is not None and str(path) in str(error.path)), str(
                error
            )
        OUTCOMES[kind]["verticals error"] += 1
        MESSAGES[kind][_gist(str(error))] += 1
        return "verticals error"
    except ValueError as error:
        if not _raised_by_verticals(error):
            OUTCOMES[kind]["raw library error"] += 1
            RAW.append(f"{kind}: {type(error).__module__}.{type(error).__name__}: {str(error)[:300]}")
            raise AssertionError(f"{kind}: a raw {type(error).__name__} escaped: {error}") from error
        # A message of verticals' own, but not its one file-error class: counted apart, so it shows, and a failure.
        OUTCOMES[kind]["other verticals ValueError"] += 1
        OTHERS[kind][_gist(str(error))] += 1
        raise AssertionError(f"{kind}: a plain ValueError, not a VerticalsFileError: {error}") from error
    except Exception as error:  # noqa: BLE001 - the point is to count what escapes
        OUTCOMES[kind]["raw library error"] += 1
        RAW.append(f"{kind}: {type(error).__module__}.{type(error).__name__}: {str(error)[:300]}")
        raise AssertionError(f"{kind}: a raw {type(error).__name__} escaped: {error}") from error
    OUTCOMES[kind]["loaded"] += 1
    return "loaded"


VERTICALS_CODE = Path(verticals.core.__file__).resolve().parents[1]  # the folder holding core/ and domains/


def _raised_by_verticals(error: BaseException) -> bool:
    """Whether ``error`` was raised by a ``raise`` in verticals' own code (its last frame is there)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or "site-packages" in frames[-1].filename:
        return False
    return Path(frames[-1].filename).resolve().is_relative_to(VERTICALS_CODE)


# -- byte-level damage, shared by every file kind ------------------------------------------------------------
@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "random", "empty", "append"]))
    if how == "truncate":
        return original[: draw(st.integers(0, max(0, len(original) - 1)))]
    if how == "flip":
        data = bytearray(original)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[position] ^= draw(st.integers(1, 255))
        return bytes(data)
    if how == "overwrite":
        start = draw(st.integers(0, max(0, len(original) - 1)))
        patch = draw(st.binary(min_size=1, max_size=64))
        return original[:start] + patch + original[start + len(patch) :]
    if how == "random":
        return draw(st.binary(min_size=1, max_size=512))
    if how == "empty":
        return b""
    return original + draw(st.binary(min_size=1, max_size=64))


# -- adapter weights (adapter_model.safetensors) -------------------------------------------------------------
def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return _TinyBlocks()


class _TinyBlocks(nn.Module):
    """Two attention-like blocks (``q``, ``v``) and a head: the smallest model with an adapter's structure."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.q, block.v = nn.Linear(width, width), nn.Linear(width, width)
            self.blocks.append(block)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block.v(torch.tanh(block.q(x)))
        return self.head(x)


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory) -> Path:
    model = adapt(_backbone(), "lora", targets=["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"], r=2)
    return save_adapter(model, tmp_path_factory.mktemp("adapter"))


def _fresh_copy(folder: Path, workspace: Path) -> Path:
    target = workspace / f"case{len(list(workspace.iterdir()))}"
    shutil.copytree(folder, target)
    return target


def _load_and_check(folder: Path) -> None:
    backbone = _backbone()
    try:
        load_adapter(backbone, folder)
    except VerticalsFileError:
        assert not any("lora_" in name for name, _ in backbone.named_modules()), (
            "a failed load changed the model"
        )
        raise


DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool]


@st.composite
def mutated_tensors(draw, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    names = sorted(tensors)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(["dtype", "shape", "nan", "inf", "drop", "extra", "rename", "scalar", "empty"])
        )
        name = draw(st.sampled_from(names))
        if name not in tensors:
            continue
        tensor = tensors[name]
        if how == "dtype":
            tensors[name] = tensor.to(draw(st.sampled_from(DTYPES)))
        elif how == "shape":
            shape = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3))
            tensors[name] = torch.zeros(shape)
        elif how in ("nan", "inf"):
            flat = (tensor if tensor.is_floating_point() else tensor.float()).clone().reshape(-1)
            flat[draw(st.integers(0, flat.numel() - 1))] = math.nan if how == "nan" else -math.inf
            tensors[name] = flat.reshape(tensor.shape)
        elif how == "drop":
            del tensors[name]
        elif how == "extra":
            tensors[name.replace("blocks.1", "blocks.7")] = tensor.clone()
        elif how == "rename":
            tensors[name + "_x"] = tensors.pop(name)
        elif how == "scalar":
            tensors[name] = torch.tensor(1.0)
        else:
            tensors[name] = torch.empty(0)
    return tensors


@FUZZ
@given(data=st.data())
def test_fuzzed_adapter_weight_bytes(adapter_folder, tmp_path, data):
    folder = _fresh_copy(adapter_folder, tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(data.draw(damaged_bytes(weights.read_bytes())))
    _outcome("adapter weights: damaged bytes", lambda: _load_and_check(folder), folder)


@FUZZ
@given(data=st.data())
def test_fuzzed_adapter_weight_tensors(adapter_folder, tmp_path, data):
    folder = _fresh_copy(adapter_folder, tmp_path)
    weights = folder / "adapter_model.safetensors"
    original = {
        name: tensor.clone() for name, tensor in load_file(str(weights)).items()
    }  # not the mapped file
    tensors = data.draw(mutated_tensors(original))
    if data.draw(st.integers(0, 9)) == 0:  # a pickle where safetensors belong
        torch.save(tensors, weights)
    else:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(weights))
    _outcome("adapter weights: tensors", lambda: _load_and_check(folder), folder)


# -- adapter configs (adapter_config.json) ---------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["LORA", "IA3", "gaussian", "all", "q", "blocks.0.q", "SEQ_CLS", "CAUSAL_LM"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_fuzzed_adapter_configs(adapter_folder, tmp_path, data):
    folder = _fresh_copy(adapter_folder, tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    how = data.draw(st.sampled_from(["set", "set", "set", "drop", "bytes", "whole"]))
    if how == "set":
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from([*sorted(config), "unknown_option"]))
            config[key] = data.draw(JSON_VALUES)
        path.write_text(json.dumps(config))
    elif how == "drop":
        del config[data.draw(st.sampled_from(sorted(config)))]
        path.write_text(json.dumps(config))
    elif how == "bytes":
        path.write_bytes(data.draw(damaged_bytes(path.read_bytes())))
    else:
        path.write_text(json.dumps(data.draw(JSON_VALUES)))
    _outcome("adapter config", lambda: _load_and_check(folder), folder)


# -- checkpoints (.ckpt) -----------------------------------------------------------------------------------------
class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.norm = nn.BatchNorm1d(2)


@pytest.fixture(scope="module")
def checkpoint_state() -> dict:
    module = _Tiny()
    return {
        "epoch": 1,
        "global_step": 4,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": module.state_dict(),
        "optimizer_states": [torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9).state_dict()],
        "loops": {},
        "callbacks": {},
        "hyper_parameters": {"learning_rate": 0.1, "name": "tiny"},
    }


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoint_bytes(checkpoint_state, tmp_path, data):
    path = tmp_path / "case.ckpt"
    buffer = io.BytesIO()
    torch.save(checkpoint_state, buffer)
    path.write_bytes(data.draw(damaged_bytes(buffer.getvalue())))
    _outcome("checkpoint: damaged bytes", lambda: AtomicCheckpointIO().load_checkpoint(path), path)


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoint_contents(checkpoint_state, tmp_path, data):
    path = tmp_path / "case.ckpt"
    how = data.draw(st.sampled_from(["tensors", "tensors", "structure", "pickle"]))
    if how == "tensors":
        torch.save(
            {**checkpoint_state, "state_dict": data.draw(mutated_tensors(checkpoint_state["state_dict"]))},
            path,
        )
    elif how == "structure":
        key = data.draw(st.sampled_from(sorted(checkpoint_state)))
        value = data.draw(
            st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3))
        )
        torch.save({**checkpoint_state, key: value} if data.draw(st.booleans()) else value, path)
    else:
        torch.save({**checkpoint_state, "hyper_parameters": {"evil": _Hostile()}}, path)
    _outcome("checkpoint: contents", lambda: AtomicCheckpointIO().load_checkpoint(path), path)


class _Arrays(ArrayClassificationDataModule):
    def _load_arrays(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(24, 8)).astype(np.float32)
        return x[:16], np.arange(16) % 2, x[16:], np.arange(8) % 2, ["a", "b"]


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


ADAPTER = {"method": "lora", "targets": ["0"], "trainable": ["2"], "options": {"r": 2}}
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


@pytest.fixture(scope="module")
def task_checkpoint(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("task")
    trainer = VerticalsTrainer(default_root_dir=str(root), max_epochs=1, **QUIET)
    trainer.fit(ClassificationTask(model=_network(), adapter=ADAPTER, num_classes=2), _Arrays(batch_size=8))
    trainer.save_checkpoint(root / "task.ckpt")
    return torch.load(root / "task.ckpt", weights_only=True)


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_fuzzed_checkpoints_into_a_task(task_checkpoint, tmp_path, data):
    """What ``--ckpt_path`` does: the file through the trainer into a verticals task (shapes, dtypes, names)."""
    checkpoint = {**task_checkpoint, "verticals": dict(task_checkpoint["verticals"])}
    how = data.draw(st.sampled_from(["tensors", "tensors", "tensors", "backbone", "adapter"]))
    if how == "tensors":
        checkpoint["state_dict"] = data.draw(mutated_tensors(task_checkpoint["state_dict"]))
    elif how == "backbone":
        checkpoint["verticals"]["backbone"] = {
            "source": "another",
            "fingerprint": data.draw(st.text(max_size=8)),
        }
    else:
        options = {"r": data.draw(st.integers(1, 6)), "lora_alpha": data.draw(st.integers(1, 16))}
        hyper = dict(checkpoint["hyper_parameters"])
        hyper["adapter"] = {**ADAPTER, "options": options}
        checkpoint["hyper_parameters"] = hyper
    path = tmp_path / "case.ckpt"
    torch.save(checkpoint, path)
    trainer = VerticalsTrainer(default_root_dir=str(tmp_path), **QUIET)
    task = ClassificationTask(model=_network(), adapter=ADAPTER, num_classes=2)
    _outcome(
        "checkpoint into a task",
        lambda: trainer.validate(task, _Arrays(batch_size=8), ckpt_path=str(path), verbose=False),
        path,
    )


# -- data files: images, arrays, manifests ---------------------------------------------------------------------------
PIL_FORMATS = [(".png", "PNG"), (".bmp", "BMP"), (".tif", "TIFF"), (".jpg", "JPEG")]
MODES = ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"]


@FUZZ
@given(data=st.data())
def test_fuzzed_image_files(tmp_path, data):
    suffix, format_name = data.draw(st.sampled_from(PIL_FORMATS))
    mode = data.draw(st.sampled_from(MODES))
    size = (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        "RGB" if mode in ("I;16", "1") else mode
    )
    if mode in ("I;16", "1"):
        image = (
            image.convert("L").convert(mode)
            if mode == "1"
            else Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
        )
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=format_name)
    except (OSError, ValueError, KeyError):  # a format that can't store this mode: not a file anyone has
        return
    raw = buffer.getvalue()
    if data.draw(st.booleans()):
        raw = data.draw(damaged_bytes(raw))
    path = tmp_path / f"image{suffix}"
    path.write_bytes(raw)
    channels = data.draw(st.sampled_from([None, 1, 3, 4]))
    reader = data.draw(st.sampled_from(["image", "mask"]))
    attempt = (lambda: read_image(path, channels)) if reader == "image" else (lambda: read_mask(path))
    _outcome(f"image file ({reader})", attempt, path)


NPY_DTYPES = [
    "uint8",
    "int8",
    "int16",
    ">i2",
    "uint16",
    "uint32",
    "int64",
    "float16",
    "float32",
    ">f4",
    "float64",
]
NPY_DTYPES += ["bool", "complex64", "<U3", "datetime64[s]"]


@FUZZ
@given(data=st.data())
def test_fuzzed_array_files(tmp_path, data):
    dtype = np.dtype(data.draw(st.sampled_from(NPY_DTYPES)))
    if data.draw(st.booleans()):  # an image-like [C, H, W] or [H, W], any channel count
        shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=3)))
    else:
        shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=5)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    array = rng.normal(size=shape) * 10
    if dtype.kind in "fc" and array.size and data.draw(st.booleans()):
        array.reshape(-1)[data.draw(st.integers(0, array.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf])
        )
    if dtype.kind == "U":
        array = array.astype(str)
    elif dtype.kind == "M":
        array = np.nan_to_num(array).astype("int64").astype(dtype)
    else:
        array = (np.abs(array) if dtype.kind == "u" else array).astype(dtype)
    path = tmp_path / "array.npy"
    buffer = io.BytesIO()
    np.save(buffer, array)
    raw = buffer.getvalue()
    how = data.draw(st.sampled_from(["as saved", "as saved", "bytes", "pickled"]))
    if how == "bytes":
        raw = data.draw(damaged_bytes(raw))
    elif how == "pickled":
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        raw = buffer.getvalue()
    path.write_bytes(raw)
    channels = data.draw(st.sampled_from([None, 1, 3]))
    reader = data.draw(st.sampled_from(["image", "mask"]))
    attempt = (lambda: read_image(path, channels)) if reader == "image" else (lambda: read_mask(path))
    _outcome(f"array file .npy ({reader})", attempt, path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for index in range(6):
        channels = 1 if index == 5 else 3
        array = np.full((6, 6, channels) if channels == 3 else (6, 6), index * 40, dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{index}.png")
    np.save(folder / "bands.npy", np.zeros((5, 6, 6), dtype=np.float32))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


CELLS = st.one_of(
    st.sampled_from(
        ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "bands.npy", "broken.png", "missing.png"]
    ),
    st.sampled_from(
        ["a", "b", "c", "", " ", "train", "val", "test", "x.bmp", "../0.png", "0.png\x00", "images"]
    ),
    st.text(max_size=10),
)
COLUMNS = ["path", "label", "split", "site"]


def _good_rows() -> list[dict[str, str]]:
    return [
        {
            "path": f"{i}.png",
            "label": "ab"[i % 2],
            "split": "train" if i < 4 else "test",
            "site": "xy"[i // 3],
        }
        for i in range(6)
    ]


def _read_every_split(dm: ManifestDataModule) -> None:
    dm.setup()
    for split in ("train", "val", "test"):
        dataset = dm.datasets[split]
        for index in range(len(dataset)):
            dataset[index]


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests(image_folder, data):
    how = data.draw(st.sampled_from(["cells", "cells", "cells", "columns", "bytes"]))
    path = image_folder / "manifest.csv"
    rows = _good_rows()
    if how == "cells":
        for _ in range(data.draw(st.integers(0, 3))):
            row = data.draw(st.integers(0, len(rows) - 1))
            rows[row][data.draw(st.sampled_from(COLUMNS))] = data.draw(CELLS)
        rows = rows[: data.draw(st.integers(0, len(rows)))] if data.draw(st.integers(0, 4)) == 0 else rows
        pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    elif how == "columns":
        kept = data.draw(st.lists(st.sampled_from([*COLUMNS, "extra"]), min_size=1, max_size=5, unique=True))
        pd.DataFrame(rows).reindex(columns=kept).fillna("").to_csv(path, index=False)
    else:
        buffer = io.StringIO()
        pd.DataFrame(rows).to_csv(buffer, index=False)
        path.write_bytes(data.draw(damaged_bytes(buffer.getvalue().encode())))
    options = dict(
        image_size=data.draw(st.sampled_from([None, 4])),
        channels=data.draw(st.sampled_from([None, 3])),
        group_columns=["site"] if data.draw(st.booleans()) else None,
        flips=False,
        batch_size=2,
    )
    _outcome(
        f"manifest CSV ({how})", lambda: _read_every_split(ManifestDataModule(str(path), **options)), None
    )


# -- the counts ------------------------------------------------------------------------------------------------------
def _row(kind: str, counts: Counter) -> str:
    return (
        f"{kind:34s} {sum(counts.values()):6d} {counts['loaded']:7d} {counts['verticals error']:16d} "
        f"{counts['other verticals ValueError']:17d} {counts['raw library error']:18d}"
    )


def test_fuzz_counts_have_no_raw_library_errors(capsys):
    if not OUTCOMES:
        pytest.skip("no fuzz test ran in this process (run the whole file)")
    lines = [
        f"{'input kind':34s} {'cases':>6s} {'loaded':>7s} {'verticals error':>16s} {'other ValueError':>17s} "
        f"{'raw library error':>18s}"
    ]
    totals = Counter()
    for kind in sorted(OUTCOMES):
        totals.update(OUTCOMES[kind])
        lines.append(_row(kind, OUTCOMES[kind]))
    lines.append(_row("all", totals))
    text = "\n".join(["", "fuzzed inputs per kind (skips: 0 - every unusable input is an error):", *lines])
    others = {kind: dict(messages) for kind, messages in OTHERS.items()}
    if others:  # which checks still raise a plain ValueError instead of a VerticalsFileError
        text += "\nother verticals ValueErrors: " + json.dumps(others, indent=1)
    with capsys.disabled():  # shown in every run, not only with -s
        print(text)
    report = os.environ.get("VERTICALS_FUZZ_REPORT")
    if report:
        Path(report).write_text(
            json.dumps({kind: dict(counts) for kind, counts in OUTCOMES.items()}, indent=2)
        )
    assert not RAW, RAW
    assert all(counts["verticals error"] for counts in OUTCOMES.values() if sum(counts.values()) >= 10)
