"""LoRA ensembles on one frozen backbone and MC-dropout on adapters only."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from verticals.core.metrics import (
    adapter_dropout_modules,
    adapter_ensemble_probabilities,
    mc_dropout_probabilities,
    predictive_uncertainty,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.backbone_dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.backbone_dropout(torch.relu(self.fc1(x))))


def _peft(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(target_modules=["fc1", "fc2"], r=4, lora_dropout=dropout, init_lora_weights=False)
    model = get_peft_model(Net(), config, adapter_name="first")
    model.add_adapter(
        "second",
        LoraConfig(target_modules=["fc1", "fc2"], r=4, lora_dropout=dropout, init_lora_weights=False),
    )
    return model


def test_ensemble_predicts_with_each_adapter_and_restores_the_active_one():
    model = _peft()
    x = torch.randn(10, 6)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    members = adapter_ensemble_probabilities(model, [{"x": x[:4]}, {"x": x[4:]}], ["first", "second"])
    assert members.shape == (2, 10, 3) and model.active_adapter == "first"
    assert [name for name, p in model.named_parameters() if p.requires_grad] == trainable
    model.eval()
    for index, name in enumerate(["first", "second"]):
        model.set_adapter(name)
        with torch.no_grad():
            torch.testing.assert_close(members[index], model(x).softmax(-1))
    model.set_adapter("first")
    assert not torch.allclose(members[0], members[1])
    assert model.active_adapter == "first"
    with pytest.raises(ValueError, match="not in this model"):
        adapter_ensemble_probabilities(model, x, ["third"])


def test_mc_dropout_uses_only_adapter_dropout_and_is_seeded():
    model = _peft(dropout=0.3)
    dropouts = adapter_dropout_modules(model)
    assert dropouts and all(module is not model.base_model.model.backbone_dropout for module in dropouts)
    x = torch.randn(8, 6)
    samples = mc_dropout_probabilities(model, x, n_samples=6, seed=1)
    assert samples.shape == (6, 8, 3) and not torch.allclose(samples[0], samples[1])
    torch.testing.assert_close(samples, mc_dropout_probabilities(model, x, n_samples=6, seed=1))
    assert model.training and model.base_model.model.backbone_dropout.training is not False
    # With the adapters removed from the computation, the passes agree: the backbone dropout stayed off.
    with model.disable_adapter():
        frozen = mc_dropout_probabilities(model, x, n_samples=3)
    torch.testing.assert_close(frozen[0], frozen[2])
    with pytest.raises(ValueError, match="lora_dropout"):
        mc_dropout_probabilities(_peft(dropout=0.0), x)


def test_predictive_uncertainty_decomposes_entropy():
    agree = torch.full((4, 5, 2), 0.5)
    stats = predictive_uncertainty(agree)
    torch.testing.assert_close(stats["predictive_entropy"], torch.full((5,), math.log(2)))
    torch.testing.assert_close(stats["mutual_information"], torch.zeros(5))
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident members that disagree
    stats = predictive_uncertainty(disagree)
    assert float(stats["mutual_information"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(stats["expected_entropy"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[K, N, C\]"):
        predictive_uncertainty(torch.zeros(3, 2))


def test_saved_adapters_load_as_one_ensemble_on_one_backbone(tmp_path):
    from verticals.core import load_adapter_ensemble, save_adapter

    def base() -> nn.Module:
        torch.manual_seed(0)
        return Net()

    x = torch.randn(10, 6)
    directories, expected = [], []
    for seed in (1, 2, 3):  # three "training runs" that differ in their adapter (and trained head)
        backbone = base()
        torch.manual_seed(seed)
        config = LoraConfig(target_modules=["fc1"], modules_to_save=["fc2"], r=4, init_lora_weights=False)
        member = get_peft_model(backbone, config)
        with torch.no_grad():
            member.base_model.model.fc2.modules_to_save["default"].weight.normal_()
        member.eval()
        with torch.no_grad():
            expected.append(member(x).softmax(-1))
        directories.append(save_adapter(member, tmp_path / f"seed_{seed}"))

    ensemble = load_adapter_ensemble(base(), directories)
    assert sorted(ensemble.peft_config) == ["member_0", "member_1", "member_2"]
    assert not any(parameter.requires_grad for parameter in ensemble.parameters())
    probabilities = adapter_ensemble_probabilities(ensemble, x, ["member_0", "member_1", "member_2"])
    assert torch.allclose(probabilities, torch.stack(expected), atol=1e-6)
    assert not torch.allclose(probabilities[0], probabilities[1])
    base_parameters = [n for n, _ in ensemble.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    assert len(base_parameters) == len(list(Net().parameters()))  # one backbone, not three

    with pytest.raises(ValueError, match="one distinct name per adapter directory"):
        load_adapter_ensemble(base(), directories, names=["a", "a", "b"])
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter_ensemble(base(), [tmp_path])
