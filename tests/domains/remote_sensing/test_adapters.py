"""Earth-Adapter (MoFA) and ConvPass on tiny timm ViTs and a tiny conv net, through stock peft APIs.

Behaviours both methods share are tests parametrised over ``TEST_CASES`` rows ``(name, model factory,
config class, config kwargs)``; the FFT bands, the layer math, prefix tokens, grids, the router and the
config errors have their own tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from verticals.core.adapters.api import adapt
from verticals.core.peft_methods import registered_methods
from verticals.domains.remote_sensing.adapters import (
    EXPERTS,
    ConvPassConfig,
    ConvPassLayer,
    MoFAConfig,
    MoFALayer,
    convpass_parameter_count,
    is_frequency_module,
    mofa_parameter_count,
    record_router,
    router_weights,
)
from verticals.domains.remote_sensing.frequency import (
    infer_channels,
    low_pass_mask,
    model_layout,
    split_frequencies,
    token_grid,
)

DIM = 32

# --- tiny seeded models ------------------------------------------------------------------------------------


def tiny_vit(seed: int = 0, **options: Any) -> VisionTransformer:
    """A 2-block timm ViT on 32x32 4-band tiles: patch 8 -> a 4x4 token grid, one CLS token."""
    torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, in_chans=4, embed_dim=DIM, depth=2, num_heads=2, num_classes=0)
    return VisionTransformer(**{**kwargs, **options}).eval()


def tiny_vit_registers(seed: int = 0) -> VisionTransformer:
    """The same ViT with 2 register tokens: 3 prefix tokens before the 4x4 grid."""
    return tiny_vit(seed, reg_tokens=2)


class ConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class TinyConvNet(nn.Module):
    """A stride-2 stem, two residual conv blocks ([B, 8, H/2, W/2] maps) and a 1x1 segmentation head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.stages = nn.Sequential(ConvBlock(8), ConvBlock(8))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def tiny_conv(seed: int = 0) -> TinyConvNet:
    torch.manual_seed(seed)
    return TinyConvNet().eval()


class TokenBlock(nn.Module):
    """A block on bare tokens, in a model without `num_prefix_tokens` or `patch_embed`."""

    def __init__(self, returns: str = "tensor") -> None:
        super().__init__()
        self.returns = returns
        self.fc = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.fc(x)
        return (h, torch.ones(1)) if self.returns == "tuple" else h


def images(model: nn.Module, batch: int = 2, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(1))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All tokens of a ViT (its pooled output would hide the last block's patch tokens), a conv net's logits."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base.forward_features(x) if isinstance(base, VisionTransformer) else base(x)


# --- the table ---------------------------------------------------------------------------------------------

BLOCKS = ["blocks.0", "blocks.1"]
STAGES = ["stages.0", "stages.1"]
TEST_CASES: list[tuple[str, Callable[[], nn.Module], type, dict[str, Any]]] = [
    (
        "mofa-vit-first-block-frequency",
        tiny_vit,
        MoFAConfig,
        {"target_modules": BLOCKS, "frequency_modules": ["blocks.0"]},
    ),
    (
        "mofa-vit-regex-gelu-dropout",
        tiny_vit,
        MoFAConfig,
        {"target_modules": r"blocks\.\d+", "activation": "gelu", "dropout": 0.1},
    ),
    ("mofa-vit-no-split", tiny_vit, MoFAConfig, {"target_modules": BLOCKS, "split": "none"}),
    (
        "mofa-vit-registers",
        tiny_vit_registers,
        MoFAConfig,
        {"target_modules": ["blocks.1"], "cutoff_ratio": 0.5},
    ),
    (
        "mofa-conv-map-with-head",
        tiny_conv,
        MoFAConfig,
        {"target_modules": STAGES, "frequency_modules": r"stages\.1", "modules_to_save": ["head"]},
    ),
    ("convpass-vit", tiny_vit, ConvPassConfig, {"target_modules": BLOCKS}),
    ("convpass-conv-map", tiny_conv, ConvPassConfig, {"target_modules": STAGES, "activation": "relu"}),
]
PREFIXES = ("mofa_", "convpass_")


def _ids(cases: list) -> list[str]:
    return [case[0] for case in cases]


def make_peft_model(factory: Callable[[], nn.Module], config_cls: type, config_kwargs: dict) -> PeftModel:
    return get_peft_model(factory(), config_cls(**{"bottleneck_dim": 4, **config_kwargs}))


def randomize_adapters(model: nn.Module, seed: int = 0, adapter_name: str | None = None) -> None:
    """Give the (zero-initialised) adapters non-trivial weights so they change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(p in name for p in PREFIXES) and (adapter_name is None or f".{adapter_name}" in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def adapter_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (MoFALayer, ConvPassLayer))]


# --- behaviour both methods share --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_fresh_adapter_is_the_identity(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    base = factory()
    x = images(base)
    expected = run(base, x)
    model = make_peft_model(factory, config_cls, config_kwargs)
    assert adapter_layers(model), "no module was wrapped"
    torch.testing.assert_close(run(model, x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_only_adapters_and_modules_to_save_train(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n, _ in model.named_parameters() if any(f".{p}" in n for p in PREFIXES)}
    saved = {n for n, _ in model.named_parameters() if ".modules_to_save.default." in n}
    assert adapter and adapter <= trainable
    assert trainable == adapter | saved
    assert bool(saved) == bool(config_kwargs.get("modules_to_save"))
    scales = [p for n, p in model.named_parameters() if n.endswith("_scale.default")]
    assert len(scales) == len(adapter_layers(model))
    assert all(p.item() == pytest.approx(0.1) for p in scales)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_parameter_count_formula(name: str, factory: Callable, config_cls: type, config_kwargs: dict) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    for layer in adapter_layers(model):
        counted = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base_layer."))
        hidden = layer.hidden_size["default"]
        if isinstance(layer, MoFALayer):
            assert counted == mofa_parameter_count(hidden, 4, frequency=layer.frequency["default"])
        else:
            assert counted == convpass_parameter_count(hidden, 4)


def test_parameter_counts_by_hand() -> None:
    # three experts D*d + d + d*D + D, a router D*3 + 3, one scale; ConvPass: two projections, a 3x3 dw conv
    assert mofa_parameter_count(128, 16, frequency=True) == 3 * (2 * 128 * 16 + 16 + 128) + 3 * 128 + 3 + 1
    assert mofa_parameter_count(128, 16, frequency=False) == 2 * 128 * 16 + 16 + 128 + 1
    assert convpass_parameter_count(128, 16) == 2 * 128 * 16 + 16 + 128 + 16 * 9 + 16 + 1


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_save_and_reload_with_stock_peft(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict, tmp_path
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    randomize_adapters(model)
    x = images(model)
    expected = run(model, x)
    assert not torch.allclose(expected, run(factory(), x)), "the randomized adapters should change outputs"
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    peft_type = config_cls.__name__.removesuffix("Config").upper()
    assert f'"peft_type": "{peft_type}"' in (tmp_path / "adapter_config.json").read_text()

    reloaded = PeftModel.from_pretrained(factory(), tmp_path)
    config = reloaded.peft_config["default"]
    assert isinstance(config, config_cls)
    for key in ("frequency_modules", "split", "cutoff_ratio", "activation"):
        if key in config_kwargs:
            assert getattr(config, key) == config_kwargs[key]
    assert len(adapter_layers(reloaded)) == len(adapter_layers(model))
    torch.testing.assert_close(run(reloaded, x), expected)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_disable_adapter_gives_base_outputs(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    base = factory()
    x = images(base)
    expected = run(base, x)
    model = make_peft_model(factory, config_cls, config_kwargs)
    randomize_adapters(model)
    with model.disable_adapter():
        torch.testing.assert_close(run(model, x), expected)
    assert not torch.allclose(run(model, x), expected)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_backward_reaches_every_adapter_parameter(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    randomize_adapters(model)
    model.train()
    out = run(model, images(model))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
        else:
            assert param.grad is None, param_name


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_merge_is_refused_and_unload_returns_base(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    base = factory()
    x = images(base)
    expected = run(base, x)
    model = make_peft_model(factory, config_cls, config_kwargs)
    randomize_adapters(model)
    with pytest.raises(ValueError, match="cannot be merged.*nonlinear.*`unload\\(\\)`"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter()
    unloaded = model.unload()
    assert type(unloaded) is type(base)
    assert not adapter_layers(unloaded)
    torch.testing.assert_close(run(unloaded, x), expected)


def test_learnable_scale_trains() -> None:
    model = make_peft_model(
        tiny_vit, MoFAConfig, {"target_modules": BLOCKS, "frequency_modules": ["blocks.1"]}
    )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = images(model)
    target = torch.randn(run(model, x).shape, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # the first step moves the zero up-projections, after which the scales get a gradient
        optimizer.zero_grad()
        (run(model, x) * target).sum().backward()
        optimizer.step()
    scales = [p for n, p in model.named_parameters() if n.endswith("mofa_scale.default")]
    assert len(scales) == 2 and all(p.item() != pytest.approx(0.1) for p in scales)


def test_two_adapters_set_adapter_and_delete() -> None:
    model = make_peft_model(
        tiny_vit, MoFAConfig, {"target_modules": BLOCKS, "frequency_modules": ["blocks.0"]}
    )
    model.add_adapter("other", MoFAConfig(target_modules=BLOCKS, bottleneck_dim=2, split="none"))
    randomize_adapters(model, seed=0, adapter_name="default")
    randomize_adapters(model, seed=1, adapter_name="other")
    x = images(model)
    first = run(model, x)
    layer = model.get_base_model().blocks[1]
    assert layer.frequency == {"default": False, "other": True}

    model.set_adapter("other")
    assert not torch.allclose(first, run(model, x))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".other" in n for n in trainable)
    with record_router():
        run(model, x)
    assert set(router_weights(model)) == {"blocks.0", "blocks.1"}

    model.set_adapter("default")
    torch.testing.assert_close(run(model, x), first)
    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert all(set(layer.mofa_spatial_down) == {"default"} for layer in adapter_layers(model))
    assert not layer._router_records
    torch.testing.assert_close(run(model, x), first)


def test_registered_with_peft_and_reachable_through_core_adapt() -> None:
    assert {"mofa", "convpass"} <= set(registered_methods())
    model = adapt(tiny_vit(), "mofa", targets="blocks", bottleneck_dim=4, frequency_modules=["blocks.0"])
    assert isinstance(model, PeftModel)
    layers = adapter_layers(model)
    assert [layer.module_name for layer in layers] == ["blocks.0", "blocks.1"]
    assert [layer.frequency["default"] for layer in layers] == [True, False]
    model = adapt(tiny_conv(), "convpass", targets=STAGES, trainable=["head"], bottleneck_dim=2)
    assert len(adapter_layers(model)) == 2
    assert run(model, images(model)).shape == (2, 3, 16, 16)


# --- FFT bands ---------------------------------------------------------------------------------------------


def test_low_pass_mask_is_a_centred_square() -> None:
    mask = low_pass_mask(8, 8, 0.25)  # half-width floor(8 * 0.25 / 2) = 1 around the zero frequency at (4, 4)
    assert mask.dtype == torch.bool and mask.sum() == 9 and mask[3:6, 3:6].all()
    assert low_pass_mask(4, 4, 0.25).nonzero().tolist() == [[2, 2]]  # half-width 0: the mean only
    assert low_pass_mask(32, 32, 0.25).sum() == 9 * 9  # the paper's 32x32 grid: |k| <= 4
    assert low_pass_mask(4, 6, 0.5).sum() == 3 * 3  # per axis: floor(4 * 0.5 / 2) = floor(6 * 0.5 / 2) = 1
    assert low_pass_mask(200, 1, 0.29).sum() == 2 * 29 + 1  # 200 * 0.29 / 2 is 28.999... in floating point
    with pytest.raises(ValueError, match=r"`cutoff_ratio` must lie in \(0, 1\), got 1.0"):
        low_pass_mask(8, 8, 1.0)
    with pytest.raises(ValueError, match="at least 1x1, got 0x8"):
        low_pass_mask(0, 8, 0.25)


def _grid(pattern: torch.Tensor) -> torch.Tensor:
    """A [1, H, W, 1] channels-last grid from an [H, W] pattern."""
    return pattern[None, :, :, None]


def _patterns(size: int = 16) -> dict[str, torch.Tensor]:
    i = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    j = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    return {
        "constant": torch.full((size, size), 0.7),
        "smooth": torch.cos(2 * math.pi * i / size) + 0.5 * torch.sin(2 * math.pi * (i + 2 * j) / size),
        "checkerboard": (-1.0) ** (i + j),
        "fine_stripes": torch.cos(2 * math.pi * 4 * j / size),  # period 4: |k| = 4 > half-width 2
    }


@pytest.mark.parametrize(
    ("pattern", "band"),
    [("constant", "low"), ("smooth", "low"), ("checkerboard", "high"), ("fine_stripes", "high")],
)
def test_pure_patterns_land_in_their_band(pattern: str, band: str) -> None:
    x = _grid(_patterns()[pattern])
    low, high = split_frequencies(x, cutoff_ratio=0.25)  # 16x16 grid: half-width 2
    inside, outside = (low, high) if band == "low" else (high, low)
    torch.testing.assert_close(inside, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(outside, torch.zeros_like(x), atol=1e-5, rtol=0)


def test_a_mixture_separates_into_its_parts() -> None:
    patterns = _patterns()
    smooth, fine = patterns["smooth"], patterns["checkerboard"] + patterns["fine_stripes"]
    x = (smooth + fine)[None, :, :, None].expand(2, 16, 16, 3)  # each channel of each image the same map
    low, high = split_frequencies(x, cutoff_ratio=0.25)
    torch.testing.assert_close(low, smooth[None, :, :, None].expand(2, 16, 16, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(high, fine[None, :, :, None].expand(2, 16, 16, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (3, 4, 6, 2), (1, 7, 5, 3)])
def test_high_band_is_the_inverse_of_the_complement(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, high = split_frequencies(x, cutoff_ratio=0.3)
    dims = (-3, -2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, dim=dims, norm="ortho"), dim=dims)
    complement = ~low_pass_mask(shape[1], shape[2], 0.3)[:, :, None]
    inverse = torch.fft.ifft2(torch.fft.ifftshift(spectrum * complement, dim=dims), dim=dims, norm="ortho")
    torch.testing.assert_close(high, inverse.real)
    torch.testing.assert_close(inverse.imag, torch.zeros_like(x), atol=1e-12, rtol=0)  # a symmetric band
    # orthonormal transform, disjoint bands: the energy splits exactly (Parseval)
    torch.testing.assert_close((low**2).sum() + (high**2).sum(), (x**2).sum())


def test_split_keeps_the_dtype_and_needs_a_grid() -> None:
    x = torch.randn(2, 4, 4, 3).to(torch.bfloat16)
    low, high = split_frequencies(x, 0.5)
    assert low.dtype == high.dtype == torch.bfloat16
    torch.testing.assert_close((low.float() + high.float()), x.float(), atol=5e-2, rtol=0)
    with pytest.raises(
        ValueError, match=r"channels-last grid \[..., H, W, C\], got a tensor of shape \(4, 4\)"
    ):
        split_frequencies(torch.zeros(4, 4), 0.25)


# --- the layer math ----------------------------------------------------------------------------------------


def _expert(layer: MoFALayer, expert: str, x: torch.Tensor) -> torch.Tensor:
    down, up = (
        getattr(layer, f"mofa_{expert}_down")["default"],
        getattr(layer, f"mofa_{expert}_up")["default"],
    )
    return up(torch.relu(down(x)))


@pytest.mark.parametrize("split", ["fft", "none"])
def test_frequency_layer_matches_the_formula(split: str) -> None:
    torch.manual_seed(0)
    block = Block(DIM, num_heads=2).eval()
    config = MoFAConfig(target_modules=["b"], bottleneck_dim=4, split=split, cutoff_ratio=0.5)
    layer = MoFALayer(block, "default", config, module_name="b", model_prefix_tokens=1, grid_size=(4, 4))
    randomize_adapters(layer)
    tokens = torch.randn(2, 17, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = block(tokens)
        grid = h[:, 1:].reshape(2, 4, 4, DIM)
        low, high = split_frequencies(grid, 0.5) if split == "fft" else (grid, grid)
        weights = torch.softmax(layer.mofa_router["default"](grid), dim=-1)
        mixed = sum(
            weights[..., i : i + 1] * _expert(layer, e, v)
            for i, (e, v) in enumerate(zip(EXPERTS, (grid, low, high)))
        )
        expected = grid + layer.mofa_scale["default"] * mixed
        out = layer(tokens)
    torch.testing.assert_close(out[:, :1], h[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:], expected.reshape(2, 16, DIM))


def test_the_split_is_what_differs_from_the_no_split_control() -> None:
    torch.manual_seed(0)
    layers = {}
    for split in ("fft", "none"):
        config = MoFAConfig(target_modules=["b"], bottleneck_dim=4, split=split)
        layers[split] = MoFALayer(Block(DIM, num_heads=2).eval(), "default", config, model_prefix_tokens=1)
    randomize_adapters(layers["fft"])
    layers["none"].load_state_dict(layers["fft"].state_dict())  # the same block, experts, router and scale
    tokens = torch.randn(2, 17, DIM, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(layers["fft"](tokens), layers["none"](tokens))


def test_plain_layer_is_one_bottleneck_on_every_patch_token() -> None:
    torch.manual_seed(0)
    block = TokenBlock()
    config = MoFAConfig(target_modules=["b"], bottleneck_dim=4, frequency_modules=[], num_prefix_tokens=2)
    layer = MoFALayer(block, "default", config, module_name="b")
    randomize_adapters(layer)
    assert not layer.frequency["default"] and "default" not in layer.mofa_router
    tokens = torch.randn(2, 7, DIM)  # 5 patch tokens: no grid needed by a plain layer
    with torch.no_grad():
        h = block(tokens)
        expected = h[:, 2:] + layer.mofa_scale["default"] * _expert(layer, "spatial", h[:, 2:])
        out = layer(tokens)
    torch.testing.assert_close(out[:, :2], h[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2:], expected)
    layer.num_prefix_tokens["default"] = 7
    with pytest.raises(ValueError, match="returned 7 tokens, but `num_prefix_tokens` is 7: no patch tokens"):
        layer(tokens)


def test_convpass_matches_the_formula() -> None:
    torch.manual_seed(0)
    block = Block(DIM, num_heads=2).eval()
    layer = ConvPassLayer(
        block, "default", ConvPassConfig(target_modules=["b"], bottleneck_dim=4), model_prefix_tokens=1
    )
    randomize_adapters(layer)
    assert layer.convpass_conv["default"].groups == 4 and layer.convpass_conv["default"].kernel_size == (3, 3)
    tokens = torch.randn(2, 17, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = block(tokens)
        z = layer.convpass_down["default"](h[:, 1:]).reshape(2, 4, 4, 4).permute(0, 3, 1, 2)
        z = torch.nn.functional.gelu(layer.convpass_conv["default"](z)).permute(0, 2, 3, 1).reshape(2, 16, 4)
        expected = h[:, 1:] + layer.convpass_scale["default"] * layer.convpass_up["default"](z)
        out = layer(tokens)
    torch.testing.assert_close(out[:, :1], h[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:], expected)


def test_tuple_outputs_keep_their_structure() -> None:
    layer = MoFALayer(TokenBlock("tuple"), "default", MoFAConfig(target_modules=["b"], num_prefix_tokens=1))
    randomize_adapters(layer)
    out = layer(torch.randn(2, 17, DIM))
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 17, DIM)
    torch.testing.assert_close(out[1], torch.ones(1))


# --- prefix tokens and grids -------------------------------------------------------------------------------


def _capture(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Record the output of the wrapped block ``name`` before ("base") and after ("adapted") its adapter."""
    seen: dict[str, torch.Tensor] = {}
    layer = model.get_base_model().get_submodule(name)
    layer.base_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("base", o))
    layer.register_forward_hook(lambda m, i, o: seen.__setitem__("adapted", o))
    return seen


@pytest.mark.parametrize("config_cls", [MoFAConfig, ConvPassConfig])
def test_prefix_tokens_found_on_the_model_pass_through(config_cls: type) -> None:
    model = make_peft_model(tiny_vit_registers, config_cls, {"target_modules": BLOCKS})
    randomize_adapters(model)
    layer = model.get_base_model().blocks[0]
    assert layer.num_prefix_tokens["default"] == 3 and layer.grid_size == (4, 4)  # CLS + 2 registers
    seen = _capture(model, "blocks.0")
    run(model, images(model))
    assert seen["adapted"].shape == (2, 19, DIM)
    torch.testing.assert_close(seen["adapted"][:, :3], seen["base"][:, :3], rtol=0, atol=0)
    assert (seen["adapted"][:, 3:] - seen["base"][:, 3:]).abs().amax(dim=-1).gt(0).all()


def test_num_prefix_tokens_in_the_config_wins_and_a_wrong_one_is_an_error() -> None:
    model = make_peft_model(
        tiny_vit_registers, MoFAConfig, {"target_modules": BLOCKS, "num_prefix_tokens": 0}
    )
    assert model.get_base_model().blocks[0].num_prefix_tokens["default"] == 0
    randomize_adapters(model)
    with pytest.raises(
        ValueError,
        match=r"N=19 tokens; without its p=0 prefix tokens that leaves 19 patch tokens.*"
        r"grid_size` \(4, 4\).*Set `num_prefix_tokens`",
    ):
        run(model, images(model))
    model = make_peft_model(tiny_vit, MoFAConfig, {"target_modules": BLOCKS, "num_prefix_tokens": 17})
    with pytest.raises(
        ValueError, match="returned 17 tokens, but `num_prefix_tokens` is 17: no patch tokens"
    ):
        run(model, images(model))


@pytest.mark.parametrize("config_cls", [MoFAConfig, ConvPassConfig])
def test_non_square_timm_grid_uses_patch_embed_grid_size(config_cls: type) -> None:
    def factory() -> VisionTransformer:
        return tiny_vit(img_size=(32, 48))

    model = make_peft_model(factory, config_cls, {"target_modules": BLOCKS})
    assert model.get_base_model().blocks[1].grid_size == (4, 6)
    randomize_adapters(model)
    x = images(model, size=(32, 48))
    out = run(model, x)
    assert out.shape == (2, 25, DIM) and not torch.allclose(out, run(factory(), x))
    # a feature map is its own grid, square or not
    conv = make_peft_model(tiny_conv, config_cls, {"target_modules": STAGES})
    randomize_adapters(conv)
    assert run(conv, images(conv, size=(32, 48))).shape == (2, 3, 16, 24)


@pytest.mark.parametrize("config_cls", [MoFAConfig, ConvPassConfig])
def test_non_square_grid_without_grid_size_is_an_error(config_cls: type) -> None:
    model = get_peft_model(nn.Sequential(TokenBlock()), config_cls(target_modules=["0"], bottleneck_dim=4))
    assert model.get_base_model()[0].grid_size is None
    with pytest.raises(
        ValueError,
        match=r"N=7 tokens; without its p=0 prefix tokens that leaves 7 patch tokens, "
        r"which is not a square grid, and the model has no `patch_embed.grid_size`",
    ):
        model(torch.randn(2, 7, DIM))
    assert model(torch.randn(2, 9, DIM)).shape == (2, 9, DIM)  # 3x3 is fine
    if config_cls is MoFAConfig:  # a plain layer needs no grid
        plain = get_peft_model(
            nn.Sequential(TokenBlock()), MoFAConfig(target_modules=["0"], frequency_modules=[])
        )
        assert plain(torch.randn(2, 7, DIM)).shape == (2, 7, DIM)


def test_token_grid_rules() -> None:
    assert token_grid(17, 1, (4, 4), "b") == (4, 4)
    assert token_grid(25, 1, (4, 6), "b") == (4, 6)
    assert token_grid(37, 1, (4, 6), "b") == (6, 6)  # a square input on a model built for another size
    with pytest.raises(ValueError, match=r"N=28 tokens.*p=1.*27 patch.*\(4, 6\)"):
        token_grid(28, 1, (4, 6), "b")


def test_is_frequency_module_matching_rules() -> None:
    def chosen(frequency_modules: list[str] | str | None, name: str) -> bool:
        return is_frequency_module(
            MoFAConfig(target_modules=BLOCKS, frequency_modules=frequency_modules), name
        )

    assert chosen(None, "backbone.blocks.5")
    assert chosen(["blocks.1"], "backbone.blocks.1") and not chosen(["blocks.1"], "backbone.blocks.11")
    assert chosen(r".*blocks\.[0-2]", "backbone.blocks.2") and not chosen(
        r"blocks\.[0-2]", "backbone.blocks.2"
    )
    assert not chosen([], "blocks.0")


def test_model_layout_reads_the_nearest_ancestor() -> None:
    wrapper = nn.Module()
    wrapper.backbone = tiny_vit_registers()
    assert model_layout(wrapper, "backbone.blocks.1") == (3, (4, 4))
    assert model_layout(wrapper, "backbone.blocks.1.mlp.fc2") == (3, (4, 4))
    assert model_layout(tiny_conv(), "stages.0") == (None, None)
    assert model_layout(tiny_conv(), "") == (None, None)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (Block(DIM, num_heads=2), DIM),
        (ConvBlock(8), 8),
        (nn.Sequential(nn.BatchNorm2d(5), nn.ReLU()), 5),
        (nn.Sequential(nn.GroupNorm(2, 6)), 6),
        (nn.LayerNorm(7), 7),
        (nn.ReLU(), None),
    ],
)
def test_infer_channels(module: nn.Module, expected: int | None) -> None:
    assert infer_channels(module) == expected


# --- errors at forward or at wrapping -----------------------------------------------------------------------


def test_width_that_cannot_be_inferred_asks_for_hidden_size() -> None:
    with pytest.raises(ValueError, match=r"module '1' \(ReLU\).*Set `hidden_size` in the MoFAConfig"):
        get_peft_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), MoFAConfig(target_modules=["1"]))


def test_wrong_width_or_rank_fails_clearly_at_forward() -> None:
    model = make_peft_model(tiny_vit, MoFAConfig, {"target_modules": ["blocks.0"], "hidden_size": 8})
    with pytest.raises(
        ValueError,
        match=r"built for 8 features, but the module returned \[B, N, D\] tokens of shape "
        r"\(2, 17, 32\) \(32 features\)\. Set `hidden_size`",
    ):
        run(model, images(model))
    flat = get_peft_model(nn.Sequential(nn.Linear(DIM, DIM)), ConvPassConfig(target_modules=["0"]))
    with pytest.raises(
        ValueError, match=r"shape \(2, 32\); ConvPass adapters need \[B, N, D\] tokens or a \[B, C, H, W\]"
    ):
        flat(torch.randn(2, DIM))


def test_unsupported_output_type_is_an_error() -> None:
    class ReturnsDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(DIM, DIM)

        def forward(self, x: torch.Tensor) -> dict:
            return {"h": self.fc(x)}

    model = get_peft_model(nn.Sequential(ReturnsDict()), MoFAConfig(target_modules=["0"]))
    with pytest.raises(TypeError, match="returned dict; Earth-Adapter \\(MoFA\\) adapters need a tensor"):
        model(torch.randn(2, 17, DIM))


def test_target_modules_are_required() -> None:
    with pytest.raises(ValueError, match="`target_modules` is required for Earth-Adapter"):
        get_peft_model(tiny_vit(), MoFAConfig())


@pytest.mark.parametrize("frequency_modules", [["blocks.1"], r"stages\.\d", ["blocks.0", "blocks.9"]])
def test_frequency_modules_naming_no_target_is_an_error(frequency_modules: list[str] | str) -> None:
    model = tiny_vit()
    config = MoFAConfig(target_modules=["blocks.0"], frequency_modules=frequency_modules)
    with pytest.raises(
        ValueError,
        match=r"`frequency_modules` entry '.*' names none of the adapted modules "
        r"\['blocks.0'\].*`frequency_modules=None`",
    ):
        get_peft_model(model, config)
    assert not adapter_layers(model), "the model must be left as it was"


def test_nested_targets_adapt_the_outermost_block() -> None:
    with pytest.warns(RuntimeWarning, match="'blocks.0.mlp' matches `target_modules` but lies inside"):
        model = get_peft_model(tiny_vit(), MoFAConfig(target_modules=r"blocks\.0(\.mlp)?"))
    assert [layer.module_name for layer in adapter_layers(model)] == ["blocks.0"]


BAD_CONFIGS = [
    (MoFAConfig, {"bottleneck_dim": 0}, r"`bottleneck_dim` must be a positive integer .*got 0"),
    (MoFAConfig, {"bottleneck_dim": 2.5}, r"`bottleneck_dim` must be a positive integer .*got 2.5"),
    (MoFAConfig, {"cutoff_ratio": 0.0}, r"`cutoff_ratio` must lie in \(0, 1\) .*got 0.0"),
    (MoFAConfig, {"cutoff_ratio": 1.0}, r"`cutoff_ratio` must lie in \(0, 1\) .*got 1.0"),
    (MoFAConfig, {"cutoff_ratio": "0.2"}, r"`cutoff_ratio` must lie in \(0, 1\) .*got '0.2'"),
    (MoFAConfig, {"split": "wavelet"}, r"`split` must be one of \['fft', 'none'\] .*got 'wavelet'"),
    (MoFAConfig, {"activation": "silu"}, r"`activation` must be one of \['relu', 'gelu'\], got 'silu'"),
    (MoFAConfig, {"dropout": 1.0}, r"`dropout` must be a probability in \[0, 1\), got 1.0"),
    (MoFAConfig, {"hidden_size": 0}, r"`hidden_size` must be None \(inferred\) or a positive integer, got 0"),
    (
        MoFAConfig,
        {"num_prefix_tokens": -1},
        r"`num_prefix_tokens` must be None .* or an integer >= 0, got -1",
    ),
    (MoFAConfig, {"scale_init": float("nan")}, r"`scale_init` must be a finite number, got nan"),
    (
        MoFAConfig,
        {"frequency_modules": "blocks.(["},
        r"`frequency_modules` 'blocks.\(\[' is not a valid regex",
    ),
    (
        MoFAConfig,
        {"frequency_modules": ["blocks.0", 1]},
        r"`frequency_modules` must hold module names .*got \[1\]",
    ),
    (MoFAConfig, {"frequency_modules": 3}, r"`frequency_modules` must be None .*got 3"),
    (ConvPassConfig, {"bottleneck_dim": -4}, r"`bottleneck_dim` must be a positive integer .*got -4"),
    (ConvPassConfig, {"activation": "tanh"}, r"`activation` must be one of \['relu', 'gelu'\], got 'tanh'"),
    (ConvPassConfig, {"dropout": -0.1}, r"`dropout` must be a probability in \[0, 1\), got -0.1"),
    (ConvPassConfig, {"scale_init": float("inf")}, r"`scale_init` must be a finite number, got inf"),
    (
        ConvPassConfig,
        {"num_prefix_tokens": 1.5},
        r"`num_prefix_tokens` must be None .* or an integer >= 0, got 1.5",
    ),
]


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "match"),
    BAD_CONFIGS,
    ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD_CONFIGS],
)
def test_bad_config_values_are_clear_errors(config_cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config_cls(target_modules=BLOCKS, **kwargs)


# --- the router --------------------------------------------------------------------------------------------


def test_router_weights_are_recorded_only_when_asked() -> None:
    model = make_peft_model(
        tiny_vit, MoFAConfig, {"target_modules": BLOCKS, "frequency_modules": ["blocks.1"]}
    )
    randomize_adapters(model)
    x = images(model)
    run(model, x)
    with pytest.raises(
        ValueError,
        match="No router weights are recorded in PeftModel: run its forward inside "
        "`with record_router\\(\\):`",
    ):
        router_weights(model)

    with record_router():
        run(model, x)
        run(model, x[:1])  # the last forward is the one kept
    weights = router_weights(model)
    assert list(weights) == ["blocks.1"]  # a plain layer has no router
    assert weights["blocks.1"].shape == (16, 3) and not weights["blocks.1"].requires_grad
    torch.testing.assert_close(weights["blocks.1"].sum(dim=-1), torch.ones(16))
    assert weights["blocks.1"].min() >= 0

    run(model, x)  # outside the block, nothing changes
    assert router_weights(model)["blocks.1"] is weights["blocks.1"]
    with pytest.raises(
        ValueError, match=r"No router weights recorded for adapter 'other'; recorded: \['default'\]"
    ):
        router_weights(model, adapter_name="other")
    with record_router(model):  # given the model, its earlier records are dropped
        pass
    with pytest.raises(ValueError, match="No router weights are recorded"):
        router_weights(model)


def test_router_weights_come_from_the_latest_block_this_model_ran_in() -> None:
    first = make_peft_model(tiny_vit, MoFAConfig, {"target_modules": BLOCKS})
    second = make_peft_model(tiny_vit, MoFAConfig, {"target_modules": BLOCKS})
    x = images(first)
    with record_router():
        run(first, x)
    with record_router():
        run(second, x[:1])
    assert {k: tuple(v.shape) for k, v in router_weights(first).items()} == {
        "blocks.0": (32, 3),
        "blocks.1": (32, 3),
    }
    assert {k: tuple(v.shape) for k, v in router_weights(second).items()} == {
        "blocks.0": (16, 3),
        "blocks.1": (16, 3),
    }
    # a conv map: one row per pixel of the [B, C, H, W] map
    conv = make_peft_model(
        tiny_conv, MoFAConfig, {"target_modules": STAGES, "frequency_modules": ["stages.0"]}
    )
    with record_router(), record_router():  # nesting is one recording
        run(conv, x)
    assert {k: tuple(v.shape) for k, v in router_weights(conv).items()} == {"stages.0": (2 * 16 * 16, 3)}
