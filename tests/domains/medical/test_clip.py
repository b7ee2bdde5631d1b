"""CLIP classifier: the tiny random BiomedCLIP-structured model, its real open_clip layout, zero-shot and CLIP-LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from verticals.core.adapters.api import adapt
from verticals.core.adapters.targets import resolve_targets
from verticals.domains.medical.clip import CLIP_QKV_TARGETS, CLIPClassifier, load_open_clip, write_tiny_clip
from verticals.domains.medical.prompts import DEFAULT_TEMPLATES, build_prompts, describe

pytest.importorskip("open_clip")
CLASSES = ["benign", "malignant"]
SHAPE = (3, 160, 160)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_biomedclip"), seed=3)


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def test_checkpoint_dir_has_the_hub_layout(checkpoint_dir: Path) -> None:
    config = json.loads((checkpoint_dir / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["timm_model_name"] == "test_vit"
    assert config["model_cfg"]["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler"
    for name in ("open_clip_model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"):
        assert (checkpoint_dir / name).is_file(), name


def test_local_directory_loads_the_saved_weights(checkpoint_dir: Path) -> None:
    from safetensors.torch import load_file

    model, tokenizer, preprocess = load_open_clip(checkpoint_dir, seed=99)  # seed must not matter: weights load
    saved = load_file(str(checkpoint_dir / "open_clip_model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert type(model).__name__ == "CustomTextCLIP"
    assert tokenizer(["a photo of melanoma"]).shape == (1, 32)
    assert len(preprocess["mean"]) == 3


def test_zero_shot_from_local_dir_is_deterministic_and_uses_prompts(checkpoint_dir: Path) -> None:
    model = CLIPClassifier(SHAPE, 2, checkpoint=str(checkpoint_dir), class_names=CLASSES).eval()
    again = CLIPClassifier(SHAPE, 2, checkpoint=str(checkpoint_dir), class_names=CLASSES).eval()
    x = _images()
    with torch.no_grad():
        logits = model(x)
        image = model.backbone.encode_image(x, normalize=True)
        text = model.backbone.encode_text(model.prompt_tokens, normalize=True)
        per_class = torch.nn.functional.normalize(text.view(2, len(DEFAULT_TEMPLATES), -1).mean(1), dim=-1)
        expected = model.backbone.logit_scale.exp() * image @ per_class.t()
        assert torch.allclose(logits, again(x))
    assert torch.allclose(logits, expected, atol=1e-5)


def test_linear_head_starts_at_zero_shot() -> None:
    prompts = CLIPClassifier(SHAPE, 2, class_names=CLASSES, head="prompts").eval()
    linear = CLIPClassifier(SHAPE, 2, class_names=CLASSES, head="linear").eval()
    with torch.no_grad():
        assert torch.allclose(prompts(_images()), linear(_images()), atol=1e-5)
    assert linear.unused_parameters == (r"backbone\.text\.",)


def test_qkv_targets_cover_both_towers() -> None:
    model = CLIPClassifier(SHAPE, 2, class_names=CLASSES)
    names = resolve_targets(model, CLIP_QKV_TARGETS)
    image = [n for n in names if ".visual." in n]
    text = [n for n in names if ".text." in n]
    assert len(image) == len(model.backbone.visual.trunk.blocks)
    assert len(text) == 3 * len(model.backbone.text.transformer.encoder.layer)


def test_clip_lora_trains_both_towers_and_reencodes_prompts(checkpoint_dir: Path) -> None:
    model = CLIPClassifier(SHAPE, 2, checkpoint=str(checkpoint_dir), class_names=CLASSES)
    adapted = adapt(model, "lora", targets=CLIP_QKV_TARGETS, r=2, lora_alpha=1, lora_dropout=0.25)
    adapted.train()
    before = model.class_text_features().detach().clone()
    loss = torch.nn.functional.cross_entropy(adapted(_images(4)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grads = {n: p.grad for n, p in adapted.named_parameters() if p.requires_grad}
    assert any(".text." in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any(".visual." in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if parameter.requires_grad and ".text." in name and "lora_B" in name:
                parameter.add_(0.5)
    assert not torch.allclose(model.class_text_features(), before)


def test_frozen_text_tower_is_cached() -> None:
    model = CLIPClassifier(SHAPE, 2, class_names=CLASSES).eval()
    model.backbone.requires_grad_(False)  # as adapt() leaves it under a LoRA on the image tower only
    assert model.class_text_features() is model.class_text_features()


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one name per class"):
        CLIPClassifier(SHAPE, 3, class_names=CLASSES)
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        CLIPClassifier(SHAPE, 2, checkpoint=str(tmp_path), class_names=CLASSES)
    with pytest.raises(ValueError, match="'prompts' or 'linear'"):
        CLIPClassifier(SHAPE, 2, class_names=CLASSES, head="mlp")


def test_prompts() -> None:
    prompts = build_prompts(["mel", "custom_class"], ["this is a photo of {label}"])
    assert prompts == ["this is a photo of melanoma", "this is a photo of custom class"]
    assert describe("Malignant") == "a malignant skin lesion"
    with pytest.raises(ValueError, match="placeholder"):
        build_prompts(["a"], ["no placeholder"])
    with pytest.raises(ValueError, match="empty"):
        build_prompts([], DEFAULT_TEMPLATES)


def test_hub_weights_file_loads_too(checkpoint_dir: Path, tmp_path: Path) -> None:
    """The hub ships open_clip_pytorch_model.bin: the same weights load from it (open_clip reads it)."""
    import shutil

    from safetensors.torch import load_file

    directory = tmp_path / "bin_layout"
    shutil.copytree(checkpoint_dir, directory)
    saved = load_file(str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_model.safetensors").unlink()
    torch.save(saved, directory / "open_clip_pytorch_model.bin")
    model, _, _ = load_open_clip(directory, seed=99)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_hub_layout_without_text_config_offline_names_the_fix(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    directory = tmp_path / "hub_layout"
    shutil.copytree(checkpoint_dir, directory)
    (directory / "config.json").unlink()  # as on the hub: the BERT config lives in another repository
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    (directory / "open_clip_config.json").write_text(json.dumps(config))

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network in tests, for sure
    with pytest.raises(OSError, match="BiomedBERT-base-uncased-abstract.*config.json --local-dir"):
        load_open_clip(directory)
