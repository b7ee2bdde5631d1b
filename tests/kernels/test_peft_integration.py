"""`enable_fused_lora` on peft models: same outputs as peft (single adapter, DoRA, mixed batch), both backends."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from verticals.kernels import disable_fused_lora, enable_fused_lora, fused_lora_enabled

from .conftest import DEVICE, assert_close


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(20, 33)
        self.proj = nn.Linear(33, 20, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.qkv(x)))


def _peft_model(use_dora: bool = False, adapters: dict[str, int] | None = None, dropout: float = 0.0):
    torch.manual_seed(0)
    adapters = adapters or {"default": 4}
    model = None
    for name, rank in adapters.items():
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["qkv", "proj"], use_dora=use_dora,
                            lora_dropout=dropout)  # fmt: skip
        if model is None:
            model = get_peft_model(Block(), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    for module in model.modules():  # non-zero B so every adapter changes the output
        if hasattr(module, "lora_B"):
            for linear in module.lora_B.values():
                nn.init.normal_(linear.weight, std=0.3)
    return model.to(DEVICE)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_fused_layers_match_peft_forward_and_backward(use_triton, use_dora) -> None:
    model = _peft_model(use_dora)
    fused = copy.deepcopy(model)
    assert enable_fused_lora(fused) == 2
    x = torch.randn(3, 5, 20, device=DEVICE)
    expected, got = model(x), fused(x)
    assert_close(got, expected, torch.float32, "output")
    expected.square().sum().backward()
    got.square().sum().backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    fused_params = dict(fused.named_parameters())
    for name, param in trained:
        assert_close(fused_params[name].grad, param.grad, torch.float32, name)


def test_mixed_batch_matches_peft_adapter_names(use_triton) -> None:
    model = _peft_model(adapters={"site_a": 2, "site_b": 8, "site_c": 5}).eval()
    fused = copy.deepcopy(model)
    enable_fused_lora(fused)
    names = ["site_b", "__base__", "site_a", "site_c", "site_b", "__base__"]
    x = torch.randn(len(names), 4, 20, device=DEVICE)
    with torch.no_grad():
        expected = model(x, adapter_names=names)
        got = fused(x, adapter_names=names)
    assert_close(got, expected, torch.float32, "mixed batch")
    with pytest.raises(ValueError, match="Length of `adapter_names` should be the same"):
        fused(x, adapter_names=names[:2])


def test_mixed_batch_trains_several_adapters_at_once(use_triton) -> None:
    # peft refuses `adapter_names` in training mode (dropout); in eval mode gradients still flow.
    model = _peft_model(adapters={"site1": 3, "site2": 6}).eval()
    for name, param in model.named_parameters():  # peft trains only the first adapter unless told otherwise
        param.requires_grad_("lora_" in name)
    fused = copy.deepcopy(model)
    enable_fused_lora(fused)
    names = ["site1", "site2", "__base__", "site2"]
    x = torch.randn(4, 3, 20, device=DEVICE)
    model(x, adapter_names=names).sum().backward()
    fused(x, adapter_names=names).sum().backward()
    grads = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert (
        set(grads) == set(expected)
        and any(".site1." in n for n in grads)
        and any(".site2." in n for n in grads)
    )
    for name, grad in expected.items():
        assert_close(grads[name], grad, torch.float32, name)


def test_reference_backend_is_peft_bitwise_with_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERTICALS_KERNELS", "reference")
    model = _peft_model(dropout=0.3).train()
    fused = copy.deepcopy(model)
    enable_fused_lora(fused)
    x = torch.randn(2, 4, 20, device=DEVICE)
    torch.manual_seed(7)
    expected = model(x)
    torch.manual_seed(7)
    assert torch.equal(fused(x), expected)
    assert disable_fused_lora(fused) == 2
    assert not any(fused_lora_enabled(m) for m in fused.modules())
    torch.manual_seed(7)
    assert torch.equal(fused(x), expected)


def test_merged_or_disabled_adapters_fall_back_to_peft(use_triton) -> None:
    model = _peft_model()
    fused = copy.deepcopy(model)
    enable_fused_lora(fused)
    x = torch.randn(2, 20, device=DEVICE)
    with fused.disable_adapter(), model.disable_adapter():
        assert torch.equal(fused(x), model(x))
    fused.merge_adapter()
    assert_close(fused(x), model(x), torch.float32, "merged")
