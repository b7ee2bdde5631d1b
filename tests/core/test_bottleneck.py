"""Bottleneck block adapters on a tiny BERT and a tiny ViT-like model, run through stock peft APIs.

Each behaviour is one test parametrised over ``TEST_CASES`` rows ``(name, model_factory, config_kwargs)``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import BertConfig, BertModel

from verticals.core.adapters.bottleneck import BottleneckConfig, BottleneckLayer, infer_hidden_size

DIM = 16

# Raised by transformers when peft inspects the BERT model; not about the adapters.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


# --- tiny seeded models ------------------------------------------------------------------------------------


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


class Attention(nn.Module):
    """Multi-head self-attention that returns ``(output, weights)``, like many vision and HF modules."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), weights


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, two pre-norm blocks with ``attn`` and ``mlp`` submodules, and a 3-class head."""

    def __init__(self, dim: int = DIM, patch_dim: int = 12, num_classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def tiny_vit(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT().eval()


def make_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    if isinstance(model, BertModel):
        return {"input_ids": torch.randint(0, 64, (2, 7), generator=generator)}
    return {"x": torch.randn(2, 5, 12, generator=generator)}


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    output = model(**inputs)
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output


# --- the table ---------------------------------------------------------------------------------------------

BERT_BLOCKS = ["encoder.layer.0", "encoder.layer.1"]  # BertLayer returns a tensor (transformers 5) or a tuple
TEST_CASES: list[tuple[str, Callable[[], nn.Module], dict[str, Any]]] = [
    ("bert-blocks-sequential", tiny_bert, {"target_modules": BERT_BLOCKS}),
    ("bert-blocks-parallel", tiny_bert, {"target_modules": BERT_BLOCKS, "placement": "parallel"}),
    ("bert-attn-output-silu", tiny_bert, {"target_modules": ["attention.output"], "activation": "silu"}),
    (
        "bert-ffn-output-learnable-regex",
        tiny_bert,
        {"target_modules": r".*layer\.\d+\.output", "scaling": "learnable", "activation": "relu"},
    ),
    ("vit-blocks-sequential", tiny_vit, {"target_modules": ["blocks.0", "blocks.1"], "scaling": 0.5}),
    ("vit-mlp-parallel", tiny_vit, {"target_modules": ["mlp"], "placement": "parallel"}),
    ("vit-attn-tuple-sequential", tiny_vit, {"target_modules": ["attn"], "dropout": 0.1}),
    (
        "vit-attn-tuple-parallel-learnable",
        tiny_vit,
        {"target_modules": ["attn"], "placement": "parallel", "scaling": "learnable"},
    ),
    (
        "vit-mlp-excluded-with-head",
        tiny_vit,
        {"target_modules": ["mlp"], "exclude_modules": ["blocks.0.mlp"], "modules_to_save": ["head"]},
    ),
]
LEARNABLE_CASES = [case for case in TEST_CASES if case[2].get("scaling") == "learnable"]


def _ids(cases: list) -> list[str]:
    return [case[0] for case in cases]


def make_peft_model(factory: Callable[[], nn.Module], config_kwargs: dict[str, Any]) -> PeftModel:
    return get_peft_model(factory(), BottleneckConfig(**{"bottleneck_dim": 4, **config_kwargs}))


def randomize_adapters(model: nn.Module, seed: int = 0, adapter_name: str | None = None) -> None:
    """Give the (zero-initialised) adapters non-trivial weights so they change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "bottleneck_" in name and (adapter_name is None or f".{adapter_name}" in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def adapter_layers(model: nn.Module) -> list[BottleneckLayer]:
    return [module for module in model.modules() if isinstance(module, BottleneckLayer)]


# --- behaviour, one test per property ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_zero_init_equals_base(name: str, factory: Callable, config_kwargs: dict) -> None:
    base = factory()
    inputs = make_inputs(base)
    expected = run(base, inputs)
    model = make_peft_model(factory, config_kwargs)
    assert adapter_layers(model), "no module was wrapped"
    torch.testing.assert_close(run(model, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_only_adapters_and_modules_to_save_train(name: str, factory: Callable, config_kwargs: dict) -> None:
    model = make_peft_model(factory, config_kwargs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n, _ in model.named_parameters() if ".bottleneck_" in n}
    saved = {n for n, _ in model.named_parameters() if ".modules_to_save.default." in n}
    assert adapter and adapter <= trainable
    assert trainable == adapter | saved
    assert bool(saved) == bool(config_kwargs.get("modules_to_save"))
    expected_scales = len(adapter_layers(model)) if config_kwargs.get("scaling") == "learnable" else 0
    assert sum(".bottleneck_scale." in n for n in trainable) == expected_scales


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_save_and_reload_with_stock_peft(name: str, factory: Callable, config_kwargs: dict, tmp_path) -> None:
    model = make_peft_model(factory, config_kwargs)
    randomize_adapters(model)
    inputs = make_inputs(model)
    expected = run(model, inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert '"peft_type": "BOTTLENECK"' in (tmp_path / "adapter_config.json").read_text()

    reloaded = PeftModel.from_pretrained(factory(), tmp_path)
    assert isinstance(reloaded.peft_config["default"], BottleneckConfig)
    assert len(adapter_layers(reloaded)) == len(adapter_layers(model))
    torch.testing.assert_close(run(reloaded, inputs), expected)


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_disable_adapter_gives_base_outputs(name: str, factory: Callable, config_kwargs: dict) -> None:
    base = factory()
    inputs = make_inputs(base)
    expected = run(base, inputs)
    model = make_peft_model(factory, config_kwargs)
    randomize_adapters(model)
    assert not torch.allclose(run(model, inputs), expected), "the randomized adapters should change outputs"
    with model.disable_adapter():
        torch.testing.assert_close(run(model, inputs), expected)
    assert not torch.allclose(run(model, inputs), expected)


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_backward_reaches_adapters_only(name: str, factory: Callable, config_kwargs: dict) -> None:
    model = make_peft_model(factory, config_kwargs)
    model.train()
    inputs = make_inputs(model)
    out = run(model, inputs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for param_name, param in model.named_parameters():
        if ".bottleneck_up." in param_name:
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
        if not param.requires_grad:
            assert param.grad is None, param_name


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), LEARNABLE_CASES, ids=_ids(LEARNABLE_CASES))
def test_learnable_scaling_trains(name: str, factory: Callable, config_kwargs: dict) -> None:
    model = make_peft_model(factory, config_kwargs)
    scales = [p for n, p in model.named_parameters() if ".bottleneck_scale." in n]
    assert scales and all(p.requires_grad and p.item() == pytest.approx(0.1) for p in scales)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    inputs = make_inputs(model)
    target = torch.randn(run(model, inputs).shape, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # the first step moves the zero up-projection, after which the scale gets a gradient
        optimizer.zero_grad()
        (run(model, inputs) * target).sum().backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in scales)
    assert all(p.item() != pytest.approx(0.1) for p in scales)


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_two_adapters_set_adapter_and_delete(name: str, factory: Callable, config_kwargs: dict) -> None:
    model = make_peft_model(factory, config_kwargs)
    model.add_adapter("other", BottleneckConfig(**{"bottleneck_dim": 2, **config_kwargs}))
    randomize_adapters(model, seed=0, adapter_name="default")
    randomize_adapters(model, seed=1, adapter_name="other")
    inputs = make_inputs(model)
    first = run(model, inputs)

    model.set_adapter("other")
    second = run(model, inputs)
    assert not torch.allclose(first, second)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".bottleneck_" in n]
    assert trainable and all(".other" in n for n in trainable)

    model.set_adapter("default")
    torch.testing.assert_close(run(model, inputs), first)

    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert all(set(layer.bottleneck_down) == {"default"} for layer in adapter_layers(model))
    torch.testing.assert_close(run(model, inputs), first)


@pytest.mark.parametrize(("name", "factory", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_merge_raises_and_unload_returns_base(name: str, factory: Callable, config_kwargs: dict) -> None:
    base = factory()
    inputs = make_inputs(base)
    expected = run(base, inputs)
    model = make_peft_model(factory, config_kwargs)
    randomize_adapters(model)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter()
    unloaded = model.unload()
    assert type(unloaded) is type(base)
    assert not adapter_layers(unloaded)
    torch.testing.assert_close(run(unloaded, inputs), expected)


# --- output structures, width inference and errors ---------------------------------------------------------

Pair = collections.namedtuple("Pair", ["hidden", "extra"])


class Returns(nn.Module):
    """A linear layer whose output is packed as ``kind`` with an extra item after the hidden states."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> Any:
        h, extra = self.lin(x), torch.ones(1)
        return {
            "tensor": lambda: h,
            "tuple": lambda: (h, extra),
            "list": lambda: [h, extra],
            "namedtuple": lambda: Pair(h, extra),
            "dict": lambda: {"hidden": h, "extra": extra},
        }[self.kind]()


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output["hidden"] if isinstance(output, dict) else output[0]


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "namedtuple", "dict"])
@pytest.mark.parametrize("placement", ["sequential", "parallel"])
def test_output_structure_is_kept(kind: str, placement: str) -> None:
    torch.manual_seed(0)
    base = Returns(kind)
    x = torch.randn(3, DIM)
    expected = base(x)
    layer = BottleneckLayer(base, "default", BottleneckConfig(target_modules=["m"], placement=placement))
    randomize_adapters(layer)
    output = layer(x)
    assert type(output) is type(expected)
    if kind != "tensor":
        assert len(output) == len(expected)
        torch.testing.assert_close(output["extra"] if kind == "dict" else output[1], torch.ones(1))
    h = _first(expected)
    source = h if placement == "sequential" else x
    delta = layer.bottleneck_up["default"](torch.nn.functional.gelu(layer.bottleneck_down["default"](source)))
    torch.testing.assert_close(_first(output), h + delta)


class WithHiddenSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 12
        self.scale = nn.Parameter(torch.ones(12))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Linear(8, 5), 5),
        (Mlp(DIM), DIM),
        (Block(DIM), DIM),
        (nn.MultiheadAttention(10, 2), 10),
        (nn.Sequential(nn.LayerNorm(7), nn.GELU()), 7),
        (WithHiddenSize(), 12),
        (nn.GELU(), None),
    ],
)
def test_infer_hidden_size(module: nn.Module, expected: int | None) -> None:
    assert infer_hidden_size(module) == expected


def test_hidden_size_that_cannot_be_inferred_asks_for_it() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    with pytest.raises(ValueError, match=r"module '1' \(GELU\).*Set `hidden_size`"):
        get_peft_model(model, BottleneckConfig(target_modules=["1"]))
    model = get_peft_model(
        nn.Sequential(nn.Linear(4, 4), nn.GELU()), BottleneckConfig(target_modules=["1"], hidden_size=4)
    )
    assert run(model, {"input": torch.randn(2, 4)}).shape == (2, 4)


def test_wrong_hidden_size_fails_clearly_at_forward() -> None:
    model = get_peft_model(tiny_vit(), BottleneckConfig(target_modules=["blocks.0"], hidden_size=8))
    with pytest.raises(ValueError, match="built for 8 features but got a tensor of shape"):
        run(model, make_inputs(model))


def test_parallel_needs_matching_widths() -> None:
    with pytest.raises(ValueError, match="maps 16 to 4 features.*placement='sequential'"):
        get_peft_model(
            nn.Sequential(nn.Linear(16, 4)), BottleneckConfig(target_modules=["0"], placement="parallel")
        )
    narrowing = nn.Sequential(nn.Sequential(nn.Linear(16, 8), nn.GELU()))
    config = BottleneckConfig(target_modules=r"0", placement="parallel")  # a regex: "0" only, not "0.0"
    model = get_peft_model(narrowing, config)
    with pytest.raises(ValueError, match=r"maps \(2, 16\) to \(2, 8\)"):
        run(model, {"input": torch.randn(2, 16)})


def test_nested_targets_adapt_the_outermost_module() -> None:
    config = BottleneckConfig(target_modules=r"blocks\.0(\.mlp)?")
    with pytest.warns(RuntimeWarning, match="'blocks.0.mlp' matches `target_modules` but lies inside"):
        model = get_peft_model(tiny_vit(), config)
    assert model.targeted_module_names == ["blocks.0"]
    assert isinstance(model.get_base_model().blocks[0], BottleneckLayer)
    assert not isinstance(model.get_base_model().blocks[0].base_layer.mlp, BottleneckLayer)


def test_missing_target_modules_is_an_error() -> None:
    with pytest.raises(ValueError, match="`target_modules` is required"):
        get_peft_model(tiny_vit(), BottleneckConfig())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bottleneck_dim", 0),
        ("bottleneck_dim", 2.5),
        ("bottleneck_dim", True),
        ("scaling", "learned"),
        ("scaling", float("nan")),
        ("scaling", None),
        ("placement", "serial"),
        ("activation", "tanh"),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("hidden_size", 0),
        ("hidden_size", "16"),
    ],
)
def test_bad_config_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"`{field}` must be .*, got {value!r}"):
        BottleneckConfig(target_modules=["mlp"], **{field: value})


def test_config_coerces_numbers_and_lists() -> None:
    config = BottleneckConfig(target_modules=["a", "b"], exclude_modules=["c"], scaling=2)
    assert config.scaling == 2.0 and isinstance(config.scaling, float)
    assert config.target_modules == {"a", "b"} and config.exclude_modules == {"c"}


def test_module_called_with_keywords_only() -> None:
    class Caller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Mlp(DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x=x)

    torch.manual_seed(0)
    model = get_peft_model(Caller(), BottleneckConfig(target_modules=["inner"], placement="parallel"))
    randomize_adapters(model)
    assert run(model, {"x": torch.randn(2, DIM)}).shape == (2, DIM)


def test_parallel_modules_mix_placements_in_one_config(tmp_path) -> None:
    """Medical SAM Adapter's layout: sequential after attention, parallel beside the MLP, D/4 wide."""
    config = BottleneckConfig(
        target_modules=r"blocks\.\d+\.(attn|mlp)",
        parallel_modules=r"blocks\.\d+\.mlp",
        bottleneck_ratio=0.25,
        scaling=0.5,
    )
    model = get_peft_model(tiny_vit(), config)
    base = model.get_base_model()
    for block in base.blocks:
        assert block.attn.placement["default"] == "sequential"
        assert block.mlp.placement["default"] == "parallel"
        assert block.mlp.bottleneck_down["default"].out_features == block.mlp.hidden_size["default"] // 4
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_vit(), tmp_path)
    assert reloaded.get_base_model().blocks[0].mlp.placement["default"] == "parallel"


def test_parallel_modules_as_a_list_match_name_endings() -> None:
    config = BottleneckConfig(target_modules=["blocks.0.mlp", "blocks.1.mlp"], parallel_modules=["1.mlp"])
    model = get_peft_model(tiny_vit(), config)
    blocks = model.get_base_model().blocks
    assert blocks[0].mlp.placement["default"] == "sequential"
    assert blocks[1].mlp.placement["default"] == "parallel"


@pytest.mark.parametrize("ratio", [0, 1.5, "0.25", True])
def test_bad_bottleneck_ratio_names_the_field(ratio: Any) -> None:
    with pytest.raises(ValueError, match=r"`bottleneck_ratio` must be a fraction in \(0, 1\]"):
        BottleneckConfig(target_modules=["mlp"], bottleneck_ratio=ratio)
