"""``remote_sensing.vit``: ViT backbones (the tile ViT, timm by name from a local file or folder, torchgeo
weights from a local copy) with an FPN or linear head, on tiny random ViTs and checkpoints written here.
Sockets are refused for the whole module: nothing downloads."""

from __future__ import annotations

import json
import socket
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from verticals.core.adapters.api import adapt
from verticals.core.adapters.summary import parameter_summary
from verticals.core.adapters.targets import resolve_targets
from verticals.core.cli import run_cli
from verticals.core.group_objective import pool_features
from verticals.core.registry import build_model
from verticals.domains.remote_sensing.models import (
    TILE_VIT_SIZES,
    FPNHead,
    LinearHead,
    ViTClassifier,
    ViTSegmenter,
    build_timm_vit,
    check_band_count,
    check_tile_size,
    default_feature_blocks,
    read_state_dict,
    tile_vit,
    torchgeo_vit,
    vit_segmenter,
)

DINO = "vit_small_patch14_reg4_dinov2"  # 4 register tokens + CLS, position table for patches only
DINO_TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TORCHGEO_WEIGHTS = "ViTSmall16_Weights.SENTINEL2_ALL_DINO"  # vit_small_patch16_224, 13 bands


class NetworkUsed(AssertionError):
    """Raised by the socket guard; an AssertionError, so no download code swallows it."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsed("a test of the remote-sensing models tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tiny(**options: object) -> ViTSegmenter:
    torch.manual_seed(0)
    return ViTSegmenter(tile_vit("tiny", img_size=32), num_classes=5, **options)


def _tiles(count: int = 2, bands: int = 4, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.rand(count, bands, height, width, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny DINOv2-with-registers checkpoint (RGB, 28 px: a 2x2 grid of 14-px patches), as safetensors."""
    torch.manual_seed(0)
    model = timm.create_model(DINO, pretrained=False, img_size=28, **DINO_TINY)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    path = tmp_path_factory.mktemp("dino") / "dino_tiny.safetensors"
    save_file(state, str(path))
    return path, state


# -- the tile ViT ------------------------------------------------------------------------------------


def test_tile_vit_sizes_and_any_tile_size() -> None:
    benchmark = tile_vit()
    assert isinstance(benchmark, VisionTransformer) and benchmark.num_classes == 0
    assert (benchmark.embed_dim, len(benchmark.blocks), benchmark.blocks[0].attn.num_heads) == (128, 6, 4)
    assert benchmark.patch_embed.patch_size == (8, 8) and benchmark.patch_embed.proj.in_channels == 4
    assert benchmark.num_prefix_tokens == 1 and benchmark.patch_embed.grid_size == (8, 8)
    tiny = tile_vit("tiny", img_size=32, in_chans=3)
    assert (tiny.embed_dim, len(tiny.blocks)) == (TILE_VIT_SIZES["tiny"]["embed_dim"], 2)
    # dynamic_img_size: built for 32 px, reads 64-px and non-square tiles
    for height, width in ((32, 32), (64, 64), (32, 48)):
        features = tiny.forward_features(_tiles(1, 3, height, width))
        assert features.shape == (1, 1 + height * width // 64, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "huge"}, r"`size` must be one of \['benchmark', 'tiny'\], got 'huge'"),
        ({"img_size": 60}, r"60x60 px don't split into whole 8x8 patches: crop or pad them to 64x64"),
        ({"in_chans": 0}, r"`in_chans` must be a positive int"),
    ],
)
def test_tile_vit_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tile_vit(**kwargs)


def test_default_feature_blocks_spread_over_depth() -> None:
    assert default_feature_blocks(12) == [2, 5, 8, 11]
    assert default_feature_blocks(6) == [0, 2, 3, 5]
    assert default_feature_blocks(2) == [0, 1]
    with pytest.raises(ValueError, match="at least one block"):
        default_feature_blocks(0)


# -- the segmenter and the classifier ------------------------------------------------------------------


@pytest.mark.parametrize("head", ["fpn", "linear"])
def test_segmenter_gives_logits_at_tile_size(head: str) -> None:
    model = _tiny(head=head).eval()
    assert isinstance(model.decode_head, FPNHead if head == "fpn" else LinearHead)
    assert (model.in_chans, model.patch_size, model.num_prefix_tokens) == (4, 8, 1)
    assert model.feature_blocks == (0, 1) and model.num_features == 2 * 32
    assert model.pretrained_prefix == r"(?:^|\.)backbone\." and model.backbone_source == "VisionTransformer"
    for height, width in ((32, 32), (32, 48)):
        x = _tiles(2, 4, height, width)
        features = model.forward_features(x)
        assert features.shape == (2, 64, height // 8, width // 8)
        logits = model(x)
        assert logits.shape == (2, 5, height, width) and torch.isfinite(logits).all()
        torch.testing.assert_close(model.forward_head(features), logits)
        assert pool_features(features).shape == (2, model.num_features)  # what a group penalty reads


def test_segmenter_reads_the_blocks_it_names() -> None:
    model = _tiny(feature_blocks=[-1])
    assert model.feature_blocks == (1,) and model.num_features == 32
    x = _tiles()
    expected = model.backbone.forward_features(x)[:, 1:]  # the last block after the final norm, without CLS
    expected = expected.transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(model.forward_features(x), expected)
    first = _tiny(feature_blocks=[0])  # stops after block 0: block 1 gets no gradient
    first(_tiles()).sum().backward()
    assert first.backbone.blocks[1].attn.qkv.weight.grad is None
    assert first.backbone.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feature_blocks": [2]}, r"entry 2 is not a block of this 2-block ViT: use indices 0..1"),
        ({"feature_blocks": [0, -2]}, r"names a block twice"),
        ({"feature_blocks": []}, r"non-empty list"),
        ({"head": "unet"}, r"`head` must be one of \['fpn', 'linear'\], got 'unet'"),
        ({"head_dim": 0}, r"`head_dim` must be a positive int"),
    ],
)
def test_segmenter_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny(**options)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (_tiles(2, 3), r"The tiles have 3 bands but the backbone \(VisionTransformer\) takes 4: select"),
        (_tiles(2, 4, 30, 36), r"30x36 px don't split into whole 8x8 patches: crop or pad them to 32x32 px"),
        (torch.zeros(2, 4, 32, 32, dtype=torch.uint8), r"float tiles .* got dtype torch.uint8"),
        (torch.zeros(4, 32, 32), r"takes tiles \[N, bands, H, W\], got \(4, 32, 32\)"),
    ],
)
def test_tiles_that_do_not_fit_are_refused_at_forward(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny()(x)


def test_a_fixed_size_backbone_names_its_size() -> None:
    fixed = VisionTransformer(
        img_size=32, patch_size=8, in_chans=4, embed_dim=16, depth=1, num_heads=2, num_classes=0
    )
    model = ViTSegmenter(fixed, num_classes=3, source="fixed")
    assert model(_tiles()).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"built for 32x32 px tiles without `dynamic_img_size`, got 48x48"):
        model(_tiles(1, 4, 48, 48))


def test_a_backbone_that_is_not_a_vit_is_refused() -> None:
    with pytest.raises(TypeError, match=r"must be a timm VisionTransformer .* got Conv2d"):
        ViTSegmenter(torch.nn.Conv2d(4, 8, 3), num_classes=2)  # type: ignore[arg-type]


def test_checks_name_the_fix() -> None:
    check_band_count(4, 4, "x")
    check_tile_size(64, 128, 8)
    with pytest.raises(ValueError, match=r"13 bands but the backbone \(torchgeo\) takes 4"):
        check_band_count(13, 4, "torchgeo")
    with pytest.raises(ValueError, match=r"to 14x28 px \(the nearest multiples of 14\)"):
        check_tile_size(10, 30, 14)


def test_classifier_pools_the_cls_token() -> None:
    torch.manual_seed(0)
    model = ViTClassifier(tile_vit("tiny", img_size=32), num_classes=10, source="tiny")
    x = _tiles()
    features = model.forward_features(x)
    assert features.shape == (2, 32) and model.num_features == 32
    torch.testing.assert_close(features, model.backbone.forward_features(x)[:, 0])  # CLS after the final norm
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="3 bands"):
        model(_tiles(2, 3))
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        ViTClassifier(tile_vit("tiny", img_size=32), num_classes=0)


# -- with the core's adapters ----------------------------------------------------------------------------


def test_lora_and_decoder_only_train_what_they_should() -> None:
    model = _tiny()
    backbone_count = sum(p.numel() for p in model.backbone.parameters())
    head_count = sum(p.numel() for p in model.decode_head.parameters())
    # the core's timm_vit family resolves its presets under `backbone`
    assert resolve_targets(model, "blocks") == ["backbone.blocks.0", "backbone.blocks.1"]

    probe = adapt(_tiny(), "linear_probe", trainable=["decode_head"])
    summary = parameter_summary(probe, backbone_prefix=ViTSegmenter.pretrained_prefix)
    assert summary.trainable == head_count and summary.backbone == backbone_count

    lora = adapt(_tiny(), "lora", targets="attention", trainable=["decode_head"], r=2, lora_alpha=4)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "decode_head" in name for name in trainable)
    assert lora(_tiles()).shape == (2, 5, 32, 32)
    summary = parameter_summary(lora, backbone_prefix=ViTSegmenter.pretrained_prefix)
    assert summary.backbone == backbone_count  # LoRA matrices and the head's copy don't count as backbone
    lora_count = sum(p.numel() for name, p in lora.named_parameters() if "lora_" in name)
    assert lora_count == 2 * (2 * (32 + 96) + 2 * (32 + 32))  # 2 blocks: qkv (32->96), proj (32->32), r=2


def test_classifier_linear_probe_trains_its_head_only() -> None:
    model = ViTClassifier(tile_vit("tiny", img_size=32), num_classes=10)
    probe = adapt(
        model, "linear_probe", trainable=["head"]
    )  # also names the backbone's (empty) Identity head
    trained = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    assert trained == 32 * 10 + 10


# -- timm ViTs by name, from a local file ----------------------------------------------------------------


def test_timm_checkpoint_reloads_as_written(dino_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = dino_file
    vit = build_timm_vit(DINO, path, in_chans=3, img_size=28, **DINO_TINY)
    assert vit.num_prefix_tokens == 5 and vit.num_reg_tokens == 4 and vit.dynamic_img_size
    assert read_state_dict(path).keys() == state.keys()
    for name, tensor in vit.state_dict().items():
        torch.testing.assert_close(tensor, state[name], msg=name)
    original = timm.create_model(DINO, pretrained=False, img_size=28, **DINO_TINY)
    original.load_state_dict(state)
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(vit.forward_features(x), original.forward_features(x))


def test_timm_checkpoint_is_resampled_and_adapted_by_timm(
    dino_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = dino_file
    vit = build_timm_vit(DINO, path, in_chans=4, img_size=56, **DINO_TINY)
    # position table (patches only: DINOv2 adds it before the prefix tokens) from 2x2 to 4x4
    expected = resample_abs_pos_embed(
        state["pos_embed"], new_size=(4, 4), old_size=(2, 2), num_prefix_tokens=0
    )
    torch.testing.assert_close(vit.pos_embed.detach(), expected)
    torch.testing.assert_close(vit.reg_token.detach(), state["reg_token"])
    torch.testing.assert_close(vit.cls_token.detach(), state["cls_token"])
    # RGB -> 4 bands: timm repeats the channels and rescales by 3/4
    rgb = state["patch_embed.proj.weight"]
    weight = vit.patch_embed.proj.weight.detach()
    torch.testing.assert_close(weight, torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4)
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight.detach(), state["blocks.1.mlp.fc2.weight"])
    model = ViTSegmenter(vit, num_classes=3, source=str(path))
    assert model.num_prefix_tokens == 5 and model.patch_size == 14
    assert model(torch.rand(1, 4, 42, 56)).shape == (1, 3, 42, 56)  # register tokens left out of the grid


def test_timm_checkpoint_that_does_not_fit_names_the_file(
    dino_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, _ = dino_file
    with pytest.raises(
        ValueError, match=rf"(?s)Checkpoint {path} does not fit timm model '{DINO}'.*Missing key"
    ):
        build_timm_vit(DINO, path, img_size=28, embed_dim=32, depth=3, num_heads=2)
    with pytest.raises(ValueError, match=r"(?s)does not fit timm model .*size mismatch"):
        build_timm_vit(DINO, path, img_size=28, embed_dim=48, depth=2, num_heads=2)
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=rf"Could not read {garbage} as a state dict of tensors"):
        build_timm_vit(DINO, garbage, **DINO_TINY)
    with pytest.raises(
        FileNotFoundError, match=r"missing.safetensors does not exist; `checkpoint` must be a local"
    ):
        build_timm_vit(DINO, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"`pretrained` is false: drop the checkpoint"):
        build_timm_vit(DINO, path, pretrained=False)


def test_timm_names_are_checked() -> None:
    with pytest.raises(
        ValueError, match=rf"Unknown timm model 'vit_smal_patch14_reg4_dinov2'; close names: .*'{DINO}'"
    ):
        build_timm_vit("vit_smal_patch14_reg4_dinov2", pretrained=False)
    with pytest.raises(TypeError, match=r"'resnet10t' must be a timm VisionTransformer"):
        build_timm_vit("resnet10t", pretrained=False)
    random = build_timm_vit(DINO, pretrained=False, in_chans=4, img_size=28, **DINO_TINY)
    assert random.patch_embed.proj.in_channels == 4 and random.num_classes == 0


def _timm_folder(folder: Path, weights: Path) -> Path:
    """A folder as timm exports a model: config.json and model.safetensors."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights.read_bytes())
    config = {
        "architecture": DINO,
        "num_classes": 0,
        "model_args": {**DINO_TINY, "img_size": 28},
        "pretrained_cfg": {"input_size": [3, 28, 28], "num_classes": 0, "first_conv": "patch_embed.proj"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_local_timm_folder_loads_offline(
    dino_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, state = dino_file
    folder = _timm_folder(tmp_path / "dino_tiny", path)
    vit = build_timm_vit(f"local-dir:{folder}", in_chans=4, img_size=56)  # timm reads the folder's own file
    torch.testing.assert_close(
        vit.patch_embed.proj.weight.detach()[:, :3], state["patch_embed.proj.weight"] * 3 / 4
    )
    assert vit.pos_embed.shape == (1, 16, 32) and vit.num_prefix_tokens == 5


def test_an_hf_hub_id_with_a_local_file_loads_the_file(
    dino_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timm.models import _factory

    path, state = dino_file
    folder = _timm_folder(tmp_path / "hub_config", path)
    (folder / "model.safetensors").unlink()  # only the hub's config: the tensors must come from `checkpoint`

    def config_from_hub(model_id: str, cache_dir: object = None) -> tuple:
        assert model_id == "someone/dino-tiny"
        config, architecture, model_args = _factory.load_model_config_from_path(folder)
        return {**config, "source": "hf-hub", "hf_hub_id": model_id, "file": None}, architecture, model_args

    monkeypatch.setattr(_factory, "load_model_config_from_hf", config_from_hub)  # the hub's config.json
    vit = build_timm_vit("hf-hub:someone/dino-tiny", path, img_size=28)
    for name, tensor in vit.state_dict().items():
        torch.testing.assert_close(tensor, state[name], msg=name)


def test_timm_weights_without_a_local_file_say_how_to_go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        RuntimeError, match=r"Could not fetch timm's pretrained weights .*`checkpoint: <local file>`"
    ):
        build_timm_vit(DINO, img_size=28, **DINO_TINY)


# -- torchgeo weights, from a local copy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchgeo_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Random tensors in the layout of torchgeo's SSL4EO-S12 DINO ViT-S/16 file (13 bands, 224 px, no
    final norm)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, in_chans=13, num_classes=0)
    state = {name: t.contiguous() for name, t in model.state_dict().items() if not name.startswith("norm.")}
    path = tmp_path_factory.mktemp("torchgeo") / "vits16_ssl4eo_s12_all_dino.safetensors"
    save_file(state, str(path))
    return path, state


def test_torchgeo_weights_build_their_vit(torchgeo_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = torchgeo_file
    model = vit_segmenter((13, 32, 32), 6, torchgeo_weights=TORCHGEO_WEIGHTS, checkpoint=path, head="linear")
    vit = model.backbone
    assert model.in_chans == 13 and model.patch_size == 16 and len(vit.blocks) == 12
    assert model.source.startswith(f"torchgeo:{TORCHGEO_WEIGHTS}")
    expected = resample_abs_pos_embed(
        state["pos_embed"], new_size=(2, 2), old_size=(14, 14), num_prefix_tokens=1
    )
    torch.testing.assert_close(vit.pos_embed.detach(), expected)
    torch.testing.assert_close(vit.blocks[11].attn.qkv.weight.detach(), state["blocks.11.attn.qkv.weight"])
    assert model(torch.rand(1, 13, 32, 32)).shape == (1, 6, 32, 32)
    at_224 = torchgeo_vit(TORCHGEO_WEIGHTS, path)  # default size: the weights' own (timm's 224)
    torch.testing.assert_close(at_224.pos_embed.detach(), state["pos_embed"])


def test_torchgeo_weights_errors(dino_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(ValueError, match=r"needs `checkpoint`, a local copy of .*https://.*Download it once"):
        torchgeo_vit(TORCHGEO_WEIGHTS)
    with pytest.raises(ValueError, match=r"4 bands but the backbone \(torchgeo ViTSmall16.*\) takes 13"):
        vit_segmenter((4, 32, 32), 6, torchgeo_weights=TORCHGEO_WEIGHTS, checkpoint="unused.safetensors")
    with pytest.raises(
        ValueError, match=r"Unknown torchgeo weights 'ViTSmall16_Weights.SENTINEL2_DINO'.*ALL_DINO"
    ):
        torchgeo_vit("ViTSmall16_Weights.SENTINEL2_DINO")
    with pytest.raises(ValueError, match=r"are for 'resnet18', not a timm ViT"):
        torchgeo_vit("ResNet18_Weights.SENTINEL2_ALL_MOCO")
    with pytest.raises(ValueError, match=r"does not fit ViTSmall16_Weights.SENTINEL2_ALL_DINO"):
        torchgeo_vit(TORCHGEO_WEIGHTS, dino_file[0])


# -- the registered builder ------------------------------------------------------------------------------


def test_registered_builder_builds_both_tasks() -> None:
    args = {"backbone": "tile_vit_tiny", "pretrained": False}
    segmenter = build_model(
        "remote_sensing.vit", input_shape=(4, 32, 32), num_outputs=5, task="segmentation", model_args=args
    )
    assert isinstance(segmenter, ViTSegmenter) and segmenter.source == "tile_vit_tiny(random)"
    assert segmenter(_tiles()).shape == (2, 5, 32, 32)
    classifier = build_model(
        "remote_sensing.vit", input_shape=(4, 32, 32), num_outputs=10, task="classification", model_args=args
    )
    assert isinstance(classifier, ViTClassifier) and classifier(_tiles()).shape == (2, 10)
    benchmark = vit_segmenter((4, 64, 64), 5, pretrained=False)  # backbone: tile_vit
    assert len(benchmark.backbone.blocks) == 6 and benchmark.feature_blocks == (0, 2, 3, 5)


def test_registered_builder_with_a_timm_name(dino_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = dino_file
    model = vit_segmenter((4, 28, 28), 3, backbone=DINO, checkpoint=path, timm_kwargs=DINO_TINY)
    assert (
        model.in_chans == 4 and model.num_prefix_tokens == 5 and model.source == f"{DINO} ({path.resolve()})"
    )
    assert model(torch.rand(1, 4, 28, 28)).shape == (1, 3, 28, 28)


def test_registered_builder_reads_a_tile_vit_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {name: t.contiguous() for name, t in tile_vit("tiny", img_size=32).state_dict().items()}
    path = tmp_path / "tile_vit_tiny.safetensors"
    save_file(state, str(path))
    model = vit_segmenter((4, 64, 64), 5, backbone="tile_vit_tiny", checkpoint=path)
    assert model.source == str(path.resolve())
    expected = resample_abs_pos_embed(
        state["pos_embed"], new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=1
    )
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)
    with pytest.raises(ValueError, match=rf"Checkpoint {path} does not fit `tile_vit`"):
        vit_segmenter((4, 64, 64), 5, backbone="tile_vit", checkpoint=path)


def test_pretrained_tile_vit_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def pretrained_tile_vit(img_size: int = 64, in_chans: int = 4) -> VisionTransformer:
        calls.append((img_size, in_chans))
        vit = tile_vit("tiny", img_size=img_size, in_chans=in_chans)
        vit.pretrained_source = "fake pretrained"
        return vit

    fake = types.ModuleType("verticals.domains.remote_sensing.pretrained")
    fake.pretrained_tile_vit = pretrained_tile_vit
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    model = vit_segmenter((4, 32, 32), 5)  # backbone tile_vit, pretrained: true
    assert calls == [(32, 4)] and model.source == "fake pretrained"
    vit_segmenter((4, 32, 48), 5)  # non-square tiles: the square table is resampled at run time
    assert calls[-1] == (64, 4)


@pytest.mark.parametrize(
    ("shape", "args", "error", "message"),
    [
        ((4, 32), {}, ValueError, r"`input_shape` \(bands, height, width\), got \(4, 32\)"),
        ((4, 30, 30), {"pretrained": False}, ValueError, r"30x30 px don't split .* to 32x32 px"),
        ((4, 32, 32), {"task": "detection"}, ValueError, r"does `task` \['segmentation', 'classification'\]"),
        ((4, 32, 32), {"task": "classification", "feature_blocks": [0]}, ValueError, "Drop it"),
        (
            (4, 32, 32),
            {"backbone": "tile_vit_tiny"},
            ValueError,
            r"has no pretrained weights .*pretrained: false",
        ),
        ((4, 32, 32), {"backbone": DINO, "torchgeo_weights": TORCHGEO_WEIGHTS}, ValueError, "Keep one"),
        (
            (4, 32, 32),
            {"pretrained": False, "timm_kwargs": {"depth": 1}},
            ValueError,
            "fix their architecture",
        ),
        (
            (4, 28, 28),
            {"backbone": DINO, "timm_kwargs": {"img_size": 28}},
            ValueError,
            r"\['img_size'\] are set by",
        ),
        (
            (4, 32, 32),
            {"pretrained": False, "checkpoint": "x.safetensors"},
            ValueError,
            "`pretrained` is false",
        ),
    ],
)
def test_registered_builder_rejects_bad_arguments(
    shape: tuple, args: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        vit_segmenter(shape, 5, **args)


# -- through the CLI ---------------------------------------------------------------------------------------


def test_fit_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_cli sets sys.argv for Lightning's launchers
    adapter = {"method": "lora", "targets": "attention", "trainable": ["decode_head"], "options": {"r": 2}}
    data = {
        "train_artefacts": ["stripes", "noise"],
        "num_train": 8,
        "num_val": 4,
        "num_test": 2,
        "tile_size": 32,
    }
    cli = run_cli(
        [
            "fit",
            "--seed_everything", "0",
            "--model", "verticals.core.tasks.SegmentationTask",
            "--model.init_args.model", "remote_sensing.vit",
            "--model.init_args.model_args", json.dumps({"backbone": "tile_vit_tiny", "pretrained": False}),
            "--model.init_args.adapter", json.dumps(adapter),
            "--data", "verticals.domains.remote_sensing.data.LandCoverDataModule",
            *[item for key, value in data.items() for item in (f"--data.init_args.{key}", json.dumps(value))],
            "--data.init_args.batch_size", "4",
            "--trainer.max_epochs", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    segmenter = cli.model._base_network()
    assert isinstance(segmenter, ViTSegmenter) and segmenter.source == "tile_vit_tiny(random)"
    summary = cli.model.parameter_summary()
    assert summary.backbone == sum(
        p.numel() for n, p in segmenter.backbone.named_parameters() if "lora_" not in n
    )
    assert 0 < summary.trainable < summary.total
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val_loss"]) and 0.0 <= float(metrics["val_miou"]) <= 1.0
