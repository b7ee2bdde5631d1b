"""GroupReport: per-group metrics with bootstrap CIs from any task's per-sample outputs, files, hooks, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from verticals.core.group_report import GroupMetric, GroupReport, group_report, write_group_report


def _mean_error(arrays) -> float:
    return float(np.mean(arrays["error"]))


def _arrays(n: int = 60, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sex = np.where(np.arange(n) % 3 == 0, "F", "M")
    site = np.array(["a", "b", "c"])[np.arange(n) % 4 % 3]
    error = rng.random(n) + (sex == "F") * 0.5  # group F is worse
    return {"error": error, "ones": np.ones(n)}, {"sex": sex, "site": site}


def test_values_per_group_match_direct_computation_and_cis_bracket_them():
    arrays, groups = _arrays()
    metrics = {"error": GroupMetric(_mean_error, higher_is_better=False), "size": lambda a: len(a["ones"])}
    results = group_report(arrays, metrics, groups, n_bootstrap=200, seed=1)
    assert results.metrics == {"error": False, "size": True}
    assert results.overall["error"]["value"] == pytest.approx(arrays["error"].mean())
    for attribute, values in groups.items():
        for name, row in results.groupings[attribute]["groups"].items():
            members = values == name
            assert row["count"] == members.sum()
            assert row["error"]["value"] == pytest.approx(arrays["error"][members].mean())
            assert row["error"]["low"] <= row["error"]["value"] <= row["error"]["high"]
    sizes = results.groupings["sex"]["groups"]
    assert {name: row["count"] for name, row in sizes.items()} == {"F": 20, "M": 40}
    count_rows = [row["count"] for row in results.groupings["sex & site"]["groups"].values()]
    assert sum(count_rows) == 60
    summary = results.summary["sex"]["error"]
    assert summary["worst_group"] == "F" and summary["best_group"] == "M"
    assert summary["gap"]["value"] == pytest.approx(
        sizes["F"]["error"]["value"] - sizes["M"]["error"]["value"]
    )
    assert summary["best_minus_worst"]["low"] > 0  # a planted gap of 0.5: the paired CI excludes zero
    assert list(results.groupings) == ["sex", "site", "sex & site"]
    assert list(results.groupings["sex & site"]["groups"])[0] == "sex=F & site=a"  # attribute order, not A-Z


def test_resamples_keep_every_group_size():
    arrays, groups = _arrays()
    results = group_report(arrays, {"size": lambda a: len(a["ones"])}, groups, n_bootstrap=30)
    for grouping in results.groupings.values():
        for row in grouping["groups"].values():
            assert row["size"]["value"] == row["size"]["low"] == row["size"]["high"] == row["count"]


def test_named_groups_without_samples_are_kept_and_no_bootstrap_gives_no_cis(tmp_path):
    arrays, groups = _arrays(12)
    names = {"sex": ["F", "M", "X"], "site": ["a", "b", "c"]}
    results = group_report(arrays, {"error": _mean_error}, groups, group_names=names, n_bootstrap=0)
    empty = results.groupings["sex"]["groups"]["X"]
    assert empty["count"] == 0 and np.isnan(empty["error"]["value"])
    assert np.isnan(results.overall["error"]["low"]) and results.n_bootstrap == 0
    assert results.group_names == names
    payload = json.loads(json.dumps(results.to_dict()))  # NaN -> null: valid JSON
    assert payload["groupings"]["sex"]["groups"]["X"]["error"]["value"] is None
    written = write_group_report(results, tmp_path)
    assert [path.name for path in written] == ["groups.json", "groups.md", "groups_error.png"]
    assert "| X | 0 | n/a |" in (tmp_path / "groups.md").read_text()
    alone = group_report(arrays, {"error": _mean_error}, None, n_bootstrap=10)  # no groups: overall only
    assert alone.groupings == {} and alone.count == 12
    write_group_report(alone, tmp_path / "alone")
    assert (tmp_path / "alone" / "groups_error.png").stat().st_size > 0


def test_bad_inputs_are_named():
    arrays, groups = _arrays(10)
    with pytest.raises(ValueError, match="one row per sample"):
        group_report({"a": np.zeros(3), "b": np.zeros(4)}, {"m": _mean_error})
    with pytest.raises(ValueError, match="metrics"):
        group_report(arrays, {}, groups)
    with pytest.raises(ValueError, match="'sex' has 3 values"):
        group_report(arrays, {"m": _mean_error}, {"sex": ["F", "M", "F"]})
    with pytest.raises(ValueError, match="'count'"):
        group_report(arrays, {"count": _mean_error}, groups)
    with pytest.raises(TypeError, match="callable"):
        group_report(arrays, {"m": 3}, groups)
    with pytest.raises(ValueError, match="n_bootstrap"):
        GroupReport(n_bootstrap=-1)


class Scorer(L.LightningModule):
    """The GroupReport contract on the smallest module: per-sample outputs, metrics and an extra hook."""

    def __init__(self, with_metrics: bool = True, returns: str = "dict") -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.returns = returns
        self.extra_calls: list[tuple] = []
        if not with_metrics:
            self.group_report_metrics = None  # type: ignore[assignment]

    def test_step(self, batch, batch_idx):
        logits = self.layer(batch["x"])
        if self.returns == "none":
            return None
        return {
            "correct": (logits.argmax(-1) == batch["y"]).float(),
            "group": batch["group"],
            "note": "ignored",
        }

    def group_report_metrics(self):
        return {"accuracy": lambda arrays: float(np.mean(arrays["correct"]))}

    def extra_group_report(self, arrays, groups, directory, results):
        self.extra_calls.append((sorted(arrays), sorted(groups), Path(directory), results))
        return "extra files"


class GroupedPoints(L.LightningDataModule):
    group_attributes = ["site", "scanner"]
    group_names = {"site": ["north", "south", "east"], "scanner": ["old", "new"]}

    def test_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        items = [
            {
                "x": torch.randn(2, generator=generator),
                "y": torch.tensor(i % 2),
                "group": torch.tensor([i % 3, i % 2]),
            }
            for i in range(30)
        ]
        return DataLoader(items, batch_size=8)


def _test(tmp_path, module: L.LightningModule, callback: GroupReport, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[callback], **kwargs
    )
    trainer.test(module, GroupedPoints())
    return trainer


def test_callback_gathers_outputs_names_groups_from_the_datamodule_and_calls_the_extra_hook(tmp_path):
    module, callback = Scorer(), GroupReport(n_bootstrap=20)
    _test(tmp_path, module, callback)
    report = json.loads((tmp_path / "groups.json").read_text())
    assert report["count"] == 30 and set(report["groupings"]) == {"site", "scanner", "site & scanner"}
    assert list(report["groupings"]["site"]["groups"]) == ["north", "south", "east"]
    assert {row["count"] for row in report["groupings"]["site"]["groups"].values()} == {10}
    ((arrays, groups, directory, results),) = module.extra_calls
    assert arrays == ["correct", "group"] and groups == ["scanner", "site"] and directory == tmp_path
    assert results is callback.results and callback.extra == "extra files"
    assert (tmp_path / "groups_accuracy.png").is_file() and (tmp_path / "groups.md").is_file()
    _test(tmp_path / "quick", Scorer(), quick := GroupReport(n_bootstrap=5), fast_dev_run=True)
    assert quick.results is None and not (tmp_path / "quick" / "groups.json").exists()


def test_callback_errors_name_the_contract(tmp_path):
    with pytest.raises(ValueError, match="dict of per-sample tensors"):
        _test(tmp_path, Scorer(returns="none"), GroupReport(n_bootstrap=5))
    with pytest.raises(TypeError, match="group_report_metrics"):
        _test(tmp_path, Scorer(with_metrics=False), GroupReport(n_bootstrap=5))


DDP_SCRIPT = """
import json, sys
import lightning as L
sys.path.insert(0, {tests!r})
from test_group_report import GroupedPoints, Scorer
from verticals.core.group_report import GroupReport

module, callback = Scorer(), GroupReport(n_bootstrap=5)
trainer = L.Trainer(default_root_dir={root!r}, logger=False, enable_progress_bar=False, callbacks=[callback],
                    accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=False)
trainer.test(module, GroupedPoints())
"""


def test_outputs_of_every_process_are_gathered_under_ddp(tmp_path):
    """Two gloo processes, each testing the whole (unsplit) set: the report counts every sample twice."""
    script = tmp_path / "ddp_report.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "groups.json").read_text())
    assert report["count"] == 60
    assert {row["count"] for row in report["groupings"]["site"]["groups"].values()} == {20}
