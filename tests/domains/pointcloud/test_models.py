"""``pointcloud.point_transformer``: the Point-MAE-style encoder (checked against a plain re-statement of the
official forward), the classification and part-segmentation models, the loader of official Point-MAE and
Point-BERT checkpoints (tiny files written here in their real layouts), the builder, the backbone family, and
a fit through the CLI. Sockets are refused for the whole module: nothing downloads."""

from __future__ import annotations

import json
import socket
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.families import detect_families, family_roots
from verticals.core.adapters.targets import resolve_targets
from verticals.core.cli import run_cli
from verticals.core.data import BaseDataModule
from verticals.core.group_objective import pool_features
from verticals.core.registry import build_model
from verticals.domains.pointcloud.grouping import PointGrouper, index_points, knn_group
from verticals.domains.pointcloud.models import (
    HEAD_SIZES,
    POINT_TRANSFORMER_SIZES,
    MiniPointNet,
    PointClassifier,
    PointSegHead,
    PointSegmenter,
    PointTransformer,
    build_point_transformer,
    default_feature_blocks,
    is_point_transformer,
    load_point_checkpoint,
    point_checkpoint_architecture,
    point_mlp,
    point_transformer,
    read_point_checkpoint,
    write_tiny_point_bert_checkpoint,
    write_tiny_point_mae_checkpoint,
)

TINY = POINT_TRANSFORMER_SIZES["tiny"]


class NetworkUsed(AssertionError):
    """Raised by the socket guard; an AssertionError, so no download code swallows it."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsed("a test of the point-cloud models tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _clouds(batch: int = 4, points: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, points, 3, generator=generator)
    return xyz / xyz.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def _tiny_backbone(seed: int = 0, **overrides: object) -> PointTransformer:
    torch.manual_seed(seed)
    return build_point_transformer("tiny", **overrides)


# -- a plain re-statement of Point-MAE's forward (Conv1d encoder, explicit softmax attention) ------------


def reference_tokens(state: dict[str, torch.Tensor], xyz: torch.Tensor, heads: int, groups: int, size: int):
    """Point-MAE's ``PointTransformer`` up to the final norm, from a state dict in the official names."""

    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:  # eval-mode BatchNorm1d over [B, C, L]
        mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
        x = (x - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5)
        return x * state[f"{prefix}.weight"][:, None] + state[f"{prefix}.bias"][:, None]

    def conv(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.conv1d(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    def ln(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)

    grouper = PointGrouper(groups, size)
    neighbourhoods, centres = grouper(xyz)
    batch = xyz.shape[0]
    patches = neighbourhoods.reshape(batch * groups, size, 3).transpose(2, 1)
    feature = conv(
        F.relu(bn(conv(patches, "encoder.first_conv.0"), "encoder.first_conv.1")), "encoder.first_conv.3"
    )
    pooled = feature.max(dim=2, keepdim=True).values
    feature = torch.cat([pooled.expand(-1, -1, size), feature], dim=1)
    feature = conv(
        F.relu(bn(conv(feature, "encoder.second_conv.0"), "encoder.second_conv.1")), "encoder.second_conv.3"
    )
    tokens = feature.max(dim=2).values.reshape(batch, groups, -1)
    if "reduce_dim.weight" in state:
        tokens = F.linear(tokens, state["reduce_dim.weight"], state["reduce_dim.bias"])
    width = tokens.shape[-1]
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens], dim=1)
    hidden = F.gelu(F.linear(centres, state["pos_embed.0.weight"], state["pos_embed.0.bias"]))
    pos = F.linear(hidden, state["pos_embed.2.weight"], state["pos_embed.2.bias"])
    pos = torch.cat([state["cls_pos"].expand(batch, -1, -1), pos], dim=1)
    depth = len({key.split(".")[2] for key in state if key.startswith("blocks.blocks.")})
    for index in range(depth):
        block = f"blocks.blocks.{index}"
        x = x + pos
        qkv = F.linear(
            ln(x, f"{block}.norm1"), state[f"{block}.attn.qkv.weight"], state.get(f"{block}.attn.qkv.bias")
        )
        q, k, v = qkv.reshape(batch, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, -1, width)
        x = x + F.linear(out, state[f"{block}.attn.proj.weight"], state[f"{block}.attn.proj.bias"])
        hidden = F.gelu(
            F.linear(
                ln(x, f"{block}.norm2"), state[f"{block}.mlp.fc1.weight"], state[f"{block}.mlp.fc1.bias"]
            )
        )
        x = x + F.linear(hidden, state[f"{block}.mlp.fc2.weight"], state[f"{block}.mlp.fc2.bias"])
    return ln(x, "norm"), centres


def _official_state(model: PointTransformer) -> dict[str, torch.Tensor]:
    return {
        key.replace("blocks.", "blocks.blocks.", 1) if key.startswith("blocks.") else key: value
        for key, value in model.state_dict().items()
    }


def _randomise(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (norm weights, BatchNorm statistics), so a wrong wiring shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator) + 0.5 if "running_var" in name else None
                tensor.copy_(
                    noise if noise is not None else torch.randn(tensor.shape, generator=generator) * 0.2
                )


# -- the encoder -------------------------------------------------------------------------------------------


def test_point_transformer_equals_the_official_forward() -> None:
    backbone = _tiny_backbone().eval()
    _randomise(backbone)
    xyz = _clouds()
    tokens, centres = backbone.forward_tokens(xyz)
    assert tokens.shape == (4, 1 + TINY["num_groups"], TINY["embed_dim"]) and centres.shape == (4, 16, 3)
    expected, expected_centres = reference_tokens(_official_state(backbone), xyz, 2, 16, 8)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(centres, expected_centres) and backbone.last_centres is centres
    assert backbone.num_prefix_tokens == 1 and backbone.num_groups == 16 and backbone.group_size == 8
    assert torch.equal(backbone(xyz), tokens)
    # Point-BERT's variant: a tokenizer of another width bridged by reduce_dim, a bias on qkv
    bert = _tiny_backbone(encoder_dims=24, reduce_dim=True, qkv_bias=True).eval()
    _randomise(bert)
    expected, _ = reference_tokens(_official_state(bert), xyz, 2, 16, 8)
    torch.testing.assert_close(bert.forward_tokens(xyz)[0], expected, rtol=1e-4, atol=1e-4)


def test_forward_intermediates_and_training_mode() -> None:
    backbone = _tiny_backbone(depth=3).eval()
    xyz = _clouds(batch=2)
    levels, centres = backbone.forward_intermediates(xyz, [0, -1])
    assert len(levels) == 2 and levels[0].shape == (2, 17, 32)
    torch.testing.assert_close(levels[-1], backbone.forward_tokens(xyz)[0])
    with pytest.raises(ValueError, match="block 3 does not exist in a backbone of 3 blocks"):
        backbone.forward_intermediates(xyz, [3])
    with pytest.raises(ValueError, match="distinct and shallow to deep"):
        backbone.forward_intermediates(xyz, [1, 0])
    # stochastic depth only in training; the tokenizer's BatchNorm uses batch statistics there
    dropping = _tiny_backbone(drop_path_rate=0.5)
    assert (
        isinstance(dropping.blocks[0].drop_path, nn.Identity)
        and dropping.architecture["drop_path_rate"] == 0.5
    )
    dropping.eval()
    assert torch.equal(dropping(xyz), dropping(xyz))


def test_mini_pointnet_and_point_mlp_equal_the_conv_layout() -> None:
    torch.manual_seed(0)
    tokenizer = MiniPointNet(12, (8, 10, 14)).eval()
    _randomise(tokenizer)
    patches = torch.randn(2, 5, 7, 3)
    flat = patches.reshape(10, 7, 3).transpose(1, 2)
    first = tokenizer.first_conv(flat)
    joined = torch.cat([first.max(dim=2, keepdim=True).values.expand(-1, -1, 7), first], dim=1)
    expected = tokenizer.second_conv(joined).max(dim=2).values.reshape(2, 5, 12)
    torch.testing.assert_close(tokenizer(patches), expected, rtol=1e-5, atol=1e-5)
    # a layer that is no plain kernel-1 Conv1d runs as a convolution on the [1, C, M] view
    layers = nn.Sequential(nn.Conv1d(3, 4, 1), nn.Conv1d(4, 2, 3, padding=1), nn.BatchNorm1d(2).eval())
    points = torch.randn(6, 3)
    torch.testing.assert_close(point_mlp(layers, points), layers(points.T[None])[0].T)
    with pytest.raises(ValueError, match=r"patches \[B, G, k, 3\]"):
        tokenizer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="`widths` must be 3 positive ints"):
        MiniPointNet(8, (8, 8))


def test_input_checks_name_the_fix() -> None:
    backbone = _tiny_backbone()
    with pytest.raises(ValueError, match=r"6 channels per point .*pass x\[\.\.\., :3\]"):
        backbone(torch.randn(2, 128, 6))
    with pytest.raises(ValueError, match=r"channels-first \[B, 3, N\]: pass x.transpose\(1, 2\)"):
        backbone(torch.randn(2, 3, 128))
    with pytest.raises(ValueError, match="needs at least 16 points; got 10"):
        backbone(torch.randn(2, 10, 3))
    bad = _clouds(batch=3)
    bad[1, 5, 0] = float("nan")
    bad[2, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"batch index \[1, 2\] hold NaN or infinite"):
        backbone(bad)
    with pytest.raises(TypeError, match="must be floats"):
        backbone(torch.zeros(2, 128, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"clouds \[B, N, 3\] \(xyz per point\), got \(128, 3\)"):
        backbone(torch.randn(128, 3))
    with pytest.raises(ValueError, match="set reduce_dim=True"):
        PointTransformer(embed_dim=32, depth=1, num_heads=2, encoder_dims=24)
    with pytest.raises(ValueError, match="must divide into `num_heads` 3"):
        PointTransformer(embed_dim=32, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="`drop_path_rate` must be in"):
        PointTransformer(embed_dim=32, depth=1, num_heads=2, drop_path_rate=1.0)
    with pytest.raises(ValueError, match="`size` must be one of"):
        build_point_transformer("huge")


def test_set_grouping_keeps_the_weights() -> None:
    backbone = _tiny_backbone().eval()
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    backbone.set_grouping(num_groups=32)
    assert (
        backbone.num_groups == 32 and backbone.group_size == 8 and backbone.architecture["num_groups"] == 32
    )
    assert backbone(_clouds()).shape == (4, 33, 32)
    assert all(torch.equal(before[key], value) for key, value in backbone.state_dict().items())


# -- task models -------------------------------------------------------------------------------------------


def test_classifier_is_point_mae_cls_head() -> None:
    model = PointClassifier(_tiny_backbone(), num_classes=5, head_dim=16).eval()
    xyz = _clouds()
    features = model.forward_features(xyz)
    tokens, _ = model.backbone.forward_tokens(xyz)
    torch.testing.assert_close(features, torch.cat([tokens[:, 0], tokens[:, 1:].max(dim=1).values], dim=-1))
    assert features.shape == (4, 64) and model.num_features == 64
    assert torch.equal(model(xyz), model.forward_head(features)) and model(xyz).shape == (4, 5)
    assert [type(layer) for layer in model.head][:4] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert model.backbone_source == "PointTransformer"
    with pytest.raises(TypeError, match="must be a PointTransformer"):
        PointClassifier(nn.Linear(3, 3), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        PointClassifier(_tiny_backbone(), 0)


def test_frozen_batchnorm_statistics() -> None:
    model = PointClassifier(_tiny_backbone(), num_classes=3, head_dim=8).train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm1d))
    assert all(m.training for m in model.head.modules() if isinstance(m, nn.BatchNorm1d))
    before = model.backbone.encoder.first_conv[1].running_mean.clone()
    model(_clouds())
    assert torch.equal(before, model.backbone.encoder.first_conv[1].running_mean)
    free = PointClassifier(_tiny_backbone(), num_classes=3, head_dim=8, freeze_batchnorm=False).train()
    free(_clouds())
    assert not torch.equal(before, free.backbone.encoder.first_conv[1].running_mean)


def _reference_seg_head(head: PointSegHead, features: torch.Tensor) -> torch.Tensor:
    """The head as Point-MAE writes it: Conv1d layers over [B, C, N], the cloud-level parts repeated."""
    local = features[..., : head.local_dim].transpose(1, 2)
    x = head.propagation(local)
    rest = features[:, :, head.local_dim :].transpose(1, 2)
    cloud = rest[:, : head.global_dim]
    parts = [x, cloud]
    if head.label_conv is not None:
        parts.append(head.label_conv(rest[:, head.global_dim :, :1]).expand(-1, -1, x.shape[-1]))
    x = head.dropout(F.relu(head.bns1(head.convs1(torch.cat(parts, dim=1)))))
    return head.convs3(F.relu(head.bns2(head.convs2(x))))


@pytest.mark.parametrize("categories", [None, 3])
def test_segmenter_interpolates_block_features_to_every_point(categories: int | None) -> None:
    torch.manual_seed(0)
    model = PointSegmenter(
        _tiny_backbone(depth=3), 6, num_categories=categories, widths=(12, 10, 8, 6), category_dim=4
    ).eval()
    _randomise(model)
    xyz = _clouds(batch=3)
    category = torch.tensor([0, 2, 1]) if categories else None
    features = model.forward_features(xyz, category)
    levels, centres = model.backbone.forward_intermediates(xyz, model.feature_blocks)
    tokens = torch.cat([level[:, 1:] for level in levels], dim=-1)
    assert model.feature_blocks == (0, 1, 2) and features.shape == (3, 128, model.num_features)
    assert model.num_features == 3 + 9 * 32 + (categories or 0)
    assert torch.equal(features[..., :3], xyz)
    # at the centres (points of the cloud) the interpolated features are the tokens themselves
    centre_index = knn_group(xyz, centres, 1)[..., 0]
    at_centres = index_points(features[..., 3 : 3 + 96], centre_index)
    torch.testing.assert_close(at_centres, tokens, rtol=1e-4, atol=1e-4)
    cloud = features[:, 5, 3 + 96 : 3 + 288]
    torch.testing.assert_close(cloud, torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1))
    logits = model(xyz, category)
    assert logits.shape == (3, 6, 128)
    torch.testing.assert_close(logits, _reference_seg_head(model.seg_head, features), rtol=1e-4, atol=1e-4)
    assert model.batch_inputs == (("category",) if categories else ())
    assert pool_features(features).shape == (3, model.num_features)
    if categories:
        torch.testing.assert_close(model(xyz, F.one_hot(category, 3)), logits)


def test_segmenter_errors() -> None:
    xyz = _clouds(batch=2)
    with_categories = PointSegmenter(_tiny_backbone(), 4, num_categories=3, widths=(8, 8, 8, 8)).eval()
    plain = PointSegmenter(_tiny_backbone(), 4, widths=(8, 8, 8, 8)).eval()
    with pytest.raises(ValueError, match="num_categories=3 and needs each cloud's object category"):
        with_categories(xyz)
    with pytest.raises(ValueError, match=r"batch index \[1\] is \[3\], outside the 3 categories"):
        with_categories(xyz, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="must be one-hot"):
        with_categories(xyz, torch.tensor([[1, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match=r"\[B\] integer indices or a \[B, 3\] one-hot"):
        with_categories(xyz, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="built without `num_categories`"):
        plain(xyz, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"takes PointSegmenter.forward_features' \[B, N, 195\]"):
        plain.forward_head(torch.randn(2, 128, 5))
    with pytest.raises(ValueError, match="`feature_blocks` must be a non-empty list"):
        PointSegmenter(_tiny_backbone(), 4, feature_blocks=[])
    with pytest.raises(ValueError, match="must hold ints"):
        PointSegmenter(_tiny_backbone(), 4, feature_blocks=["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="`widths` must be 4 positive ints"):
        PointSegHead(32, 1, 4, widths=(8, 8))
    with pytest.raises(ValueError, match="`num_categories` must be an int >= 0"):
        PointSegHead(32, 1, 4, num_categories=-1)


def test_default_feature_blocks() -> None:
    assert default_feature_blocks(12) == [3, 7, 11]  # Point-MAE's segmentation reads these
    assert default_feature_blocks(6) == [1, 3, 5]
    assert default_feature_blocks(2) == [0, 1] and default_feature_blocks(1) == [0]
    with pytest.raises(ValueError, match="`depth` must be a positive int"):
        default_feature_blocks(0)


# -- official checkpoints ------------------------------------------------------------------------------------


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    content = torch.load(path, map_location="cpu", weights_only=True)
    state = content.get("base_model") or content.get("model_state_dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _accounted(report: dict, file_keys: set[str], own_keys: set[str], prefix: str = "") -> None:
    unused = {key for keys in report["unused"].values() for key in keys}
    assert not unused & {prefix + key for key in report["loaded"]}
    assert len(report["loaded"]) + len(unused) == len(file_keys), "every tensor loaded or listed as unused"
    assert set(report["loaded"]) | set(report["kept_initial"]) == own_keys


@pytest.mark.parametrize("ddp", [False, True])
def test_point_mae_pretrain_checkpoint(tmp_path: Path, ddp: bool) -> None:
    path = write_tiny_point_mae_checkpoint(tmp_path / "pretrain.pth", "pretrain", ddp=ddp)
    content = torch.load(path, weights_only=True)
    assert set(content) == {"base_model", "optimizer", "epoch", "metrics", "best_metrics"}
    assert any(
        key.startswith(("module." if ddp else "") + "MAE_encoder.blocks.blocks.1.attn.qkv")
        for key in content["base_model"]
    )
    file = _file_tensors(path)
    backbone = _tiny_backbone(seed=3)
    report = load_point_checkpoint(backbone, path)
    assert report["layout"] == "point_mae_pretrain"
    assert report["kept_initial"] == ["cls_pos", "cls_token"]  # Point-MAE pre-training has no CLS token
    # ... so they are drawn from a fixed generator, not the global seed: a rebuilt model has the same frozen
    # tokens, and an adapter saved on one reloads exactly onto the other
    other = _tiny_backbone(seed=4)
    load_point_checkpoint(other, path)
    for key in ("cls_token", "cls_pos"):
        assert torch.equal(getattr(backbone, key), getattr(other, key))
        assert 0.01 < getattr(backbone, key).std() < 0.04
    assert set(report["unused"]) == {"decoder", "pretraining"}
    assert "mask_token" in report["unused"]["pretraining"]
    assert {"increase_dim.0.weight", "MAE_decoder.norm.weight", "decoder_pos_embed.0.weight"} <= set(
        report["unused"]["decoder"]
    )
    _accounted(report, set(file), set(backbone.state_dict()))
    own = backbone.state_dict()
    assert torch.equal(own["blocks.1.attn.qkv.weight"], file["MAE_encoder.blocks.blocks.1.attn.qkv.weight"])
    assert torch.equal(
        own["encoder.second_conv.1.running_var"], file["MAE_encoder.encoder.second_conv.1.running_var"]
    )
    assert torch.equal(own["pos_embed.2.bias"], file["MAE_encoder.pos_embed.2.bias"])
    # and the loaded backbone computes what the official forward computes with the file's tensors
    official = {
        key.removeprefix("MAE_encoder."): value
        for key, value in file.items()
        if key.startswith("MAE_encoder.")
    }
    official.update(cls_token=backbone.cls_token.detach(), cls_pos=backbone.cls_pos.detach())
    xyz = _clouds(batch=2)
    expected, _ = reference_tokens(official, xyz, 2, 16, 8)
    torch.testing.assert_close(backbone.eval().forward_tokens(xyz)[0], expected, rtol=1e-4, atol=1e-4)


def test_point_mae_finetuned_and_partseg_checkpoints(tmp_path: Path) -> None:
    finetuned = write_tiny_point_mae_checkpoint(tmp_path / "scan_hardest.pth", "finetuned", ddp=True)
    backbone = _tiny_backbone(seed=3)
    report = load_point_checkpoint(backbone, finetuned)
    assert report["layout"] == "point_mae_finetuned" and report["kept_initial"] == []
    assert set(report["unused"]) == {"head"} and all(
        k.startswith("cls_head_finetune.") for k in report["unused"]["head"]
    )
    file = _file_tensors(finetuned)
    _accounted(report, set(file), set(backbone.state_dict()))
    assert torch.equal(backbone.cls_pos, file["cls_pos"])
    # keys under a 'base_model.' prefix (a wrapped model's state dict), here as a safetensors file
    save_file(
        {f"base_model.{key}": value for key, value in file.items()}, str(tmp_path / "wrapped.safetensors")
    )
    wrapped = _tiny_backbone(seed=4)
    assert load_point_checkpoint(wrapped, tmp_path / "wrapped.safetensors")["layout"] == "point_mae_finetuned"
    assert all(torch.equal(value, backbone.state_dict()[key]) for key, value in wrapped.state_dict().items())
    partseg = write_tiny_point_mae_checkpoint(tmp_path / "part_seg.pth", "partseg")
    assert "model_state_dict" in torch.load(partseg, weights_only=True)
    report = load_point_checkpoint(_tiny_backbone(), partseg)
    assert report["layout"] == "point_mae_partseg" and report["kept_initial"] == ["cls_pos", "cls_token"]
    assert {
        "label_conv.0.weight",
        "propagation_0.mlp_convs.1.weight",
        "convs3.bias",
        "bns2.running_var",
    } <= set(report["unused"]["head"])
    _accounted(report, set(_file_tensors(partseg)), set(_tiny_backbone().state_dict()))


def test_point_bert_checkpoints(tmp_path: Path) -> None:
    path = write_tiny_point_bert_checkpoint(tmp_path / "Point-BERT.pth")
    raw = torch.load(path, weights_only=True)["base_model"]
    assert all(key.startswith("module.") for key in raw)
    assert (
        "module.transformer_q.reduce_dim.weight" in raw
        and "module.transformer_k.blocks.blocks.0.norm1.weight" in raw
    )
    arch = point_checkpoint_architecture(path)
    assert arch == {
        "layout": "point_bert_pretrain",
        "embed_dim": 32,
        "depth": 2,
        "encoder_dims": 24,
        "tokenizer_widths": (16, 32, 64),
        "reduce_dim": True,
        "mlp_ratio": 4.0,
        "qkv_bias": False,
        "pos_hidden": 128,
    }
    arch.pop("layout")
    backbone = PointTransformer(**arch, num_heads=2, num_groups=16, group_size=8)
    report = load_point_checkpoint(backbone, path)
    assert report["layout"] == "point_bert_pretrain" and report["kept_initial"] == []
    assert set(report["unused"]) == {"dvae", "momentum_encoder", "pretraining"}
    assert {
        "queue",
        "queue_ptr",
        "transformer_q.mask_token",
        "transformer_q.lm_head.weight",
        "transformer_q.cls_head.2.bias",
    } <= set(report["unused"]["pretraining"])
    assert all(key.startswith("transformer_k.") for key in report["unused"]["momentum_encoder"])
    file = _file_tensors(path)
    _accounted(report, set(file), set(backbone.state_dict()), prefix="transformer_q.")
    assert torch.equal(backbone.reduce_dim.weight, file["transformer_q.reduce_dim.weight"])
    assert torch.equal(backbone.cls_token, file["transformer_q.cls_token"])
    official = {
        k.removeprefix("transformer_q."): v for k, v in file.items() if k.startswith("transformer_q.")
    }
    xyz = _clouds(batch=2)
    torch.testing.assert_close(
        backbone.eval()(xyz), reference_tokens(official, xyz, 2, 16, 8)[0], rtol=1e-4, atol=1e-4
    )
    finetuned = write_tiny_point_bert_checkpoint(tmp_path / "ModelNet_1k.pth", "finetuned", ddp=False)
    report = load_point_checkpoint(backbone, finetuned)
    assert report["layout"] == "point_mae_finetuned" and report["unused"] == {
        "head": [
            "cls_head_finetune.0.bias",
            "cls_head_finetune.0.weight",
            "cls_head_finetune.3.bias",
            "cls_head_finetune.3.weight",
        ]
    }


def test_checkpoint_errors(tmp_path: Path) -> None:
    path = write_tiny_point_mae_checkpoint(tmp_path / "pretrain.pth")
    with pytest.raises(
        ValueError, match=r"2-block, 32-wide transformer; the model is 1-block, 32-wide.*not in the model"
    ):
        load_point_checkpoint(_tiny_backbone(depth=1), path)
    with pytest.raises(
        ValueError,
        match=r"32-wide transformer; the model is 2-block, 16-wide.*file \(48,\) vs model \(16,\)|file \(96, 32\)",
    ):
        load_point_checkpoint(build_point_transformer("tiny", embed_dim=16), path)
    bert = write_tiny_point_bert_checkpoint(tmp_path / "bert.pth")
    with pytest.raises(ValueError, match="with reduce_dim; the model is 2-block, 32-wide"):
        load_point_checkpoint(_tiny_backbone(), bert)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_point_checkpoint(_tiny_backbone(), tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="must be a PointTransformer"):
        load_point_checkpoint(nn.Linear(2, 2), path)  # type: ignore[arg-type]
    # an adapted model's extra tensors: an error unless strict=False, then listed as 'other'
    content = torch.load(path, weights_only=True)
    content["base_model"]["MAE_encoder.blocks.blocks.0.prompt_embeddings"] = torch.zeros(10, 32)
    torch.save(content, tmp_path / "adapted.pth")
    with pytest.raises(ValueError, match=r"neither backbone weights.*prompt_embeddings.*strict=False"):
        load_point_checkpoint(_tiny_backbone(), tmp_path / "adapted.pth")
    report = load_point_checkpoint(_tiny_backbone(), tmp_path / "adapted.pth", strict=False)
    assert report["unused"]["other"] == ["MAE_encoder.blocks.blocks.0.prompt_embeddings"]
    # missing backbone tensors, unknown layouts, unreadable files, non-tensor weights
    del content["base_model"]["MAE_encoder.norm.bias"]
    del content["base_model"]["MAE_encoder.blocks.blocks.0.prompt_embeddings"]
    torch.save(content, tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match=r"lacks backbone tensors \['norm.bias'\]"):
        load_point_checkpoint(_tiny_backbone(), tmp_path / "incomplete.pth")
    torch.save({"base_model": {"decoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"none of the layouts .*first keys: \['decoder.weight'\]"):
        read_and_detect(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read .*garbage.pth"):
        read_point_checkpoint(tmp_path / "garbage.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match=r"holds no weights .*top-level keys are \['epoch'\]"):
        read_point_checkpoint(tmp_path / "empty.pth")
    torch.save({"base_model": {"a": torch.zeros(1), "b": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match=r"entries \['b'\] of 'base_model' are not tensors"):
        read_point_checkpoint(tmp_path / "mixed.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        read_point_checkpoint(tmp_path / "list.pth")
    with pytest.raises(ValueError, match="`kind` must be 'pretrain', 'finetuned' or 'partseg'"):
        write_tiny_point_mae_checkpoint(tmp_path / "x.pth", "decoder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`kind` must be 'pretrain' or 'finetuned'"):
        write_tiny_point_bert_checkpoint(tmp_path / "x.pth", "dvae")  # type: ignore[arg-type]


def read_and_detect(path: Path) -> None:
    load_point_checkpoint(_tiny_backbone(), path)


def test_own_layout_in_safetensors(tmp_path: Path) -> None:
    source = PointClassifier(_tiny_backbone(seed=5), 3, head_dim=8)
    save_file(
        {key: value.contiguous() for key, value in source.state_dict().items()},
        str(tmp_path / "cls.safetensors"),
    )
    backbone = _tiny_backbone(seed=6)
    report = load_point_checkpoint(backbone, tmp_path / "cls.safetensors")
    assert (
        report["layout"] == "verticals" and report["kept_initial"] == [] and set(report["unused"]) == {"head"}
    )
    assert all(
        torch.equal(value, source.backbone.state_dict()[key]) for key, value in backbone.state_dict().items()
    )


# -- the builder ---------------------------------------------------------------------------------------------


def test_builder_through_the_registry() -> None:
    model = build_model(
        "pointcloud.point_transformer",
        input_shape=(128, 3),
        num_outputs=4,
        model_args={"size": "tiny", "pretrained": False},
    )
    assert isinstance(model, PointClassifier) and model.source == "point_transformer_tiny(random)"
    assert model.head[0].out_features == HEAD_SIZES["tiny"]["head_dim"] and model(_clouds()).shape == (4, 4)
    segmenter = point_transformer(
        (128, 3),
        5,
        task="segmentation",
        size="tiny",
        pretrained=False,
        num_categories=2,
        feature_blocks=[-1],
        num_groups=8,
        group_size=4,
    )
    assert isinstance(segmenter, PointSegmenter) and segmenter.feature_blocks == (1,)
    assert segmenter.backbone.num_groups == 8 and segmenter.backbone.group_size == 4
    assert segmenter(_clouds(batch=2), category=torch.tensor([0, 1])).shape == (2, 5, 128)
    small = point_transformer((512, 3), 3, pretrained=False)
    assert (
        small.backbone.architecture["embed_dim"] == 192
        and len(small.backbone.blocks) == 6
        and small.backbone.num_groups == 32
    )


def test_builder_errors() -> None:
    def build(**options: object) -> nn.Module:
        arguments = {
            "input_shape": (128, 3),
            "num_outputs": 4,
            "size": "tiny",
            "pretrained": False,
            **options,
        }
        return point_transformer(**arguments)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=r"reads xyz only, but the data have 6 channels"):
        build(input_shape=(128, 6))
    with pytest.raises(ValueError, match=r"`input_shape` \(points, 3\), got \(3, 128, 128\)"):
        build(input_shape=(3, 128, 128))
    with pytest.raises(ValueError, match="does `task`"):
        build(task="detection")
    with pytest.raises(ValueError, match="`size` must be one of"):
        build(size="large")
    with pytest.raises(ValueError, match="are for the segmentation head"):
        build(feature_blocks=[0])
    with pytest.raises(ValueError, match="are for the segmentation head"):
        build(num_categories=16)
    with pytest.raises(ValueError, match="needs at least 16 points; got 12"):
        build(input_shape=(12, 3))
    with pytest.raises(ValueError, match="no offline pretrained weights of size 'tiny'"):
        build(pretrained=True)
    with pytest.raises(ValueError, match="`checkpoint` .* is given but `pretrained` is false"):
        build(checkpoint="x.pth")


def test_builder_loads_checkpoints_with_their_architecture(tmp_path: Path) -> None:
    path = write_tiny_point_bert_checkpoint(tmp_path / "Point-BERT.pth")
    model = point_transformer(
        (128, 3), 4, checkpoint=path, num_heads=4
    )  # 32-wide: heads of size tiny unless given
    assert model.backbone.architecture["reduce_dim"] and model.backbone.architecture["num_heads"] == 4
    assert model.source == f"{path.resolve()} (point_bert_pretrain)"
    assert model.backbone.num_groups == TINY["num_groups"] and model.head[0].out_features == 32
    expected = PointTransformer(
        **{k: v for k, v in point_checkpoint_architecture(path).items() if k != "layout"}, num_heads=4
    )
    load_point_checkpoint(expected, path)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(ValueError, match="holds a 32-wide transformer but `size` is 'small'"):
        point_transformer((128, 3), 4, checkpoint=path, size="small")
    wide = write_tiny_point_mae_checkpoint(tmp_path / "wide.pth", embed_dim=48)
    with pytest.raises(ValueError, match="48-wide transformer, none of the sizes"):
        point_transformer((128, 3), 4, checkpoint=wide)


def test_pretrained_imports_the_stand_in_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def stand_in(**options: object) -> PointTransformer:
        calls.append(options)
        backbone = build_point_transformer("small")
        backbone.pretrained_source = "stand-in (cached)"
        return backbone

    module = types.ModuleType("verticals.domains.pointcloud.pretrained")
    module.pretrained_point_transformer = stand_in  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "verticals.domains.pointcloud.pretrained", module)
    model = point_transformer((512, 3), 3, task="segmentation", drop_path_rate=0.1, num_groups=64)
    assert calls == [{"size": "small"}] and model.source == "stand-in (cached)"
    assert model.backbone.num_groups == 64 and isinstance(model.backbone.blocks[-1].drop_path, nn.Module)
    assert model.seg_head.convs1.out_channels == HEAD_SIZES["small"]["seg_widths"][2]
    with pytest.raises(ValueError, match="`num_heads` 6 differs from the pretrained stand-in's 3"):
        point_transformer((512, 3), 3, num_heads=6)


# -- the backbone family and adapters -------------------------------------------------------------------------


def test_family_presets_resolve_inside_the_backbone() -> None:
    model = point_transformer((128, 3), 3, size="tiny", pretrained=False)
    assert is_point_transformer(model.backbone) and not is_point_transformer(model)
    assert ("point_transformer", "backbone") in [(family.name, root) for family, root in family_roots(model)]
    assert "point_transformer" in [family.name for family in detect_families(model)]
    attention = resolve_targets(model, "attention")
    assert sorted(attention) == [f"backbone.blocks.{i}.attn.{p}" for i in (0, 1) for p in ("proj", "qkv")]
    assert sorted(resolve_targets(model, "mlp")) == [
        f"backbone.blocks.{i}.mlp.{p}" for i in (0, 1) for p in ("fc1", "fc2")
    ]
    assert sorted(resolve_targets(model, "blocks")) == ["backbone.blocks.0", "backbone.blocks.1"]
    linear = resolve_targets(model, "all-linear")
    assert not any("encoder" in name or "pos_embed" in name or "head" in name for name in linear)
    with pytest.raises(ValueError, match="fuses q, k and v into one `attn.qkv`"):
        resolve_targets(model, "qv")
    broken = _tiny_backbone()
    broken.blocks[1].mlp.fc2 = nn.Identity()
    assert not is_point_transformer(broken)
    flat = _tiny_backbone()
    flat.pos_embed[0] = nn.Linear(6, 128)
    assert not is_point_transformer(flat)


def test_lora_on_attention_trains_only_the_adapter_and_head() -> None:
    model = point_transformer((128, 3), 5, task="segmentation", size="tiny", pretrained=False)
    before = model.eval()(_clouds(batch=2)).detach()
    peft_model = adapt(
        model, AdapterSpec(method="lora", targets="attention", trainable=["seg_head"], options={"r": 2})
    )
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "seg_head" in name for name in trainable)
    peft_model.eval()
    torch.testing.assert_close(peft_model(_clouds(batch=2)), before)  # LoRA starts as the identity
    peft_model.train()
    peft_model(_clouds(batch=2)).sum().backward()
    assert all(
        p.grad is not None
        for name, p in peft_model.named_parameters()
        if p.requires_grad and "lora_B" in name
    )


# -- a fit through the CLI --------------------------------------------------------------------------------------


class _Clouds(Dataset):
    """Stretched spheres: class = the stretched axis; part label = the sign of that coordinate."""

    def __init__(self, count: int, seed: int, points: int, segmentation: bool) -> None:
        generator = torch.Generator().manual_seed(seed)
        xyz = torch.randn(count, points, 3, generator=generator)
        xyz = xyz / xyz.norm(dim=-1, keepdim=True)
        self.y = torch.arange(count) % 3
        xyz[torch.arange(count), :, self.y] *= 2.0
        self.x = xyz / 2.0
        self.parts = (self.x[torch.arange(count), :, self.y] > 0).long() + 1
        self.parts[:, :4] = 0
        self.segmentation = segmentation

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.segmentation:  # with the object category, as ShapeNetPart gives it
            return {"x": self.x[index], "y": self.parts[index], "category": self.y[index]}
        return {"x": self.x[index], "y": self.y[index]}


class TinyClouds(BaseDataModule):
    """Tiny generated clouds for the CLI test: classification ``{"x": [B, N, 3], "y": [B]}`` or segmentation
    ``{"x", "y": [B, N], "category": [B]}``."""

    def __init__(
        self, task: str = "classification", num_points: int = 128, batch_size: int = 4, seed: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.save_hyperparameters()
        self.task, self.num_points = task, num_points

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.num_points, 3)

    @property
    def num_classes(self) -> int:
        return 3

    @property
    def class_names(self) -> list[str]:
        return ["background", "lower", "upper"] if self.task == "segmentation" else ["x", "y", "z"]

    def split_dataset(self, split: str) -> Dataset:
        count = {"train": 8, "val": 4, "test": 4}[split]
        return _Clouds(
            count, {"train": 0, "val": 1, "test": 2}[split], self.num_points, self.task == "segmentation"
        )


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_fit_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_cli sets sys.argv for Lightning's launchers
    module = types.ModuleType("pointcloud_cli_test_data")
    module.TinyClouds = TinyClouds  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    head = "head" if task == "classification" else "seg_head"
    adapter = {"method": "lora", "targets": "attention", "trainable": [head], "options": {"r": 2}}
    task_class = "ClassificationTask" if task == "classification" else "SegmentationTask"
    model_args = {"size": "tiny", "pretrained": False}
    if task == "segmentation":
        model_args["num_categories"] = 3  # the batches' "category" reaches the model (its batch_inputs)
    cli = run_cli(
        [
            "fit",
            "--seed_everything", "0",
            "--model", f"verticals.core.tasks.{task_class}",
            "--model.init_args.model", "pointcloud.point_transformer",
            "--model.init_args.model_args", json.dumps(model_args),
            "--model.init_args.adapter", json.dumps(adapter),
            "--data", f"{module.__name__}.TinyClouds",
            "--data.init_args.task", task,
            "--data.init_args.batch_size", "4",
            "--trainer.max_epochs", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    network = cli.model._base_network()
    assert isinstance(network, PointClassifier if task == "classification" else PointSegmenter)
    assert getattr(network, "num_categories", 3) == 3
    assert network.source == "point_transformer_tiny(random)"
    summary = cli.model.parameter_summary()
    assert summary.backbone == sum(
        p.numel() for n, p in network.backbone.named_parameters() if "lora_" not in n
    )
    assert 0 < summary.trainable < summary.total
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val_loss"])
    if task == "classification":
        assert 0.0 <= float(metrics["val_accuracy"]) <= 1.0
    else:
        assert 0.0 <= float(metrics["val_miou"]) <= 1.0
