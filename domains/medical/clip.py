"""BiomedCLIP (or any open_clip model) as an image classifier: zero-shot from prompts, CLIP-LoRA, probes.

BiomedCLIP is an open_clip ``CustomTextCLIP``: a timm ``vit_base_patch16_224`` image tower and a
PubMedBERT text tower.  It loads from the hub id (online) or a local directory in the hub layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin`` + tokenizer
files, and the text model's ``config.json`` for offline use).  :func:`write_tiny_clip` writes a random
model of the same structure (timm ``test_vit`` + a 2-layer BERT) in that layout, for tests and offline
demos — it has no medical knowledge, so its zero-shot accuracy is chance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from verticals.core.adapters.families import is_hf_bert_encoder, is_timm_vit
from verticals.core.seeding import seeded
from verticals.domains.medical.prompts import DEFAULT_TEMPLATES, build_prompts

BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
TINY_CLIP = "tiny"
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
TINY_IMAGE_SIZE = 160  # timm's test_vit has a fixed 160x160 input

#: The ``clip_qkv`` preset of the ``biomedclip`` backbone family (registered in ``models.py``), relative to
#: the CLIP model: q/k/v of every block of both towers (timm fuses q, k and v into one ``qkv`` Linear, so the
#: image side adapts the fused projection). This is CLIP-LoRA's choice of targets.
CLIP_QKV_PRESET = (
    r"visual\.trunk\.blocks\.\d+\.attn\.qkv"
    r"|text\.transformer\.encoder\.layer\.\d+\.attention\.self\.(?:query|key|value)"
)
#: LoRA targets of CLIP-LoRA, as a config names them (``targets: clip_qkv``).
CLIP_QKV_TARGETS = "clip_qkv"

_TINY_WORDS = (
    "this is a photo of dermoscopy image close up clinical benign malignant skin lesion melanoma nevus "
    "carcinoma keratosis normal abnormal chest x ray finding no the an and with"
)


def is_biomedclip(module: nn.Module) -> bool:
    """An open_clip ``CustomTextCLIP`` shaped like BiomedCLIP: a timm ViT ``visual.trunk`` beside an HF
    BERT-like ``text.transformer`` (checked whole, block by block, by the core's detectors)."""
    try:
        trunk = module.get_submodule("visual.trunk")
        encoder = module.get_submodule("text.transformer.encoder")
    except AttributeError:
        return False
    return is_timm_vit(trunk) and is_hf_bert_encoder(encoder)


def _tiny_vocab() -> list[str]:
    """A small WordPiece vocabulary: specials, characters, continuation characters and prompt words."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *letters,
        *[f"##{c}" for c in letters],
        "-",
        ".",
        ",",
    ]
    for word in _TINY_WORDS.split():
        if word not in vocab:
            vocab.append(word)
    return vocab


def write_tiny_clip(directory: str | Path, *, with_weights: bool = True, seed: int = 0) -> Path:
    """Write a tiny random CLIP in BiomedCLIP's open_clip layout into ``directory`` and return it.

    Files: ``open_clip_config.json`` (timm ``test_vit`` image tower, BERT text tower, embed 32, context 32),
    the text tower's ``config.json``, a WordPiece ``vocab.txt`` + ``tokenizer_config.json`` and, with
    ``with_weights``, ``open_clip_model.safetensors`` of a model initialised from ``seed``.
    """
    from transformers import BertConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": TINY_IMAGE_SIZE,
            },
            "text_cfg": {
                "hf_model_name": "tiny-bert (config.json in this directory)",
                "hf_tokenizer_name": "tiny-bert (vocab.txt in this directory)",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 32,
            },
        },
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    bert = BertConfig(
        vocab_size=len(_tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    bert.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(_tiny_vocab()) + "\n")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 32}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config) + "\n")
    if with_weights:
        from safetensors.torch import save_file

        model, _, _ = load_open_clip(directory, seed=seed)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs a warning when a local directory has no weights: expected for the random tiny model."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_open_clip(checkpoint: str | Path, *, seed: int = 0) -> tuple[nn.Module, object, dict]:
    """Load an open_clip model, its tokenizer and its preprocessing config.

    ``checkpoint``: ``"tiny"`` (random tiny model, seeded), a hub id (``hf-hub:org/name``, needs network),
    or a local directory in the hub layout.  A local directory whose text tower is a Hugging Face model
    reads that model's ``config.json`` from the directory when present, so it loads offline (without it,
    offline, the error names the file to add).  Weights: ``open_clip_model.safetensors`` or the hub's
    ``open_clip_pytorch_model.bin`` (read by open_clip).
    """
    import open_clip

    if str(checkpoint) == TINY_CLIP:
        with tempfile.TemporaryDirectory() as tmp:
            write_tiny_clip(tmp, with_weights=False)
            return load_open_clip(tmp, seed=seed)
    name = str(checkpoint)
    if name.startswith("hf-hub:"):
        model_name = name
    else:
        directory = Path(name.removeprefix("local-dir:"))
        config_file = directory / "open_clip_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {name!r} is neither 'tiny', a hub id ('hf-hub:org/name') nor a directory "
                f"with open_clip_config.json (looked for {str(config_file)!r})."
            )
        model_name = f"local-dir:{directory}"
    with _quiet_open_clip(), seeded(seed):
        overrides = _local_text_config(model_name)
        try:
            model = open_clip.create_model(model_name, pretrained_text=False, **overrides)
            tokenizer = open_clip.get_tokenizer(model_name)
        except OSError as error:  # a hub-layout directory whose text tower config must come from the hub
            if not model_name.startswith("local-dir:") or overrides:
                raise
            text = json.loads(config_file.read_text())["model_cfg"].get("text_cfg", {}).get("hf_model_name")
            raise OSError(
                f"The CLIP directory {str(directory)!r} names the Hugging Face text model {text!r}, whose "
                f"config.json could not be read ({error.__class__.__name__}: {str(error).splitlines()[0]}). "
                f"Offline, put that model's config.json into the directory (e.g. `huggingface-cli download {text} "
                f"config.json --local-dir {directory}`); it is then read from there."
            ) from error
    preprocess = dict(getattr(getattr(model.visual, "preprocess_cfg", None), "__dict__", {}) or {})
    preprocess = {"mean": CLIP_MEAN, "std": CLIP_STD, **_preprocess_from(model_name), **preprocess}
    return model.eval(), tokenizer, preprocess


def _local_text_config(model_name: str) -> dict:
    """For a local directory holding the text model's ``config.json``, point the text tower at it."""
    if not model_name.startswith("local-dir:"):
        return {}
    directory = Path(model_name.removeprefix("local-dir:"))
    if not (directory / "config.json").is_file():
        return {}
    text_cfg = json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    return {
        "text_cfg": {
            **text_cfg,
            "hf_model_name": str(directory),
            "hf_tokenizer_name": str(directory),
            "hf_model_pretrained": False,
        }
    }


def _preprocess_from(model_name: str) -> dict:
    if not model_name.startswith("local-dir:"):
        return {}
    config = json.loads((Path(model_name.removeprefix("local-dir:")) / "open_clip_config.json").read_text())
    return {
        key: tuple(value) for key, value in config.get("preprocess_cfg", {}).items() if key in ("mean", "std")
    }


class CLIPClassifier(nn.Module):
    """Image classification with a CLIP model: logits = scale · cos(image, class prompt).

    ``head="prompts"``: class weights are the (template-averaged) text embeddings of the class prompts,
    re-encoded on every forward while the text tower has trainable parameters (CLIP-LoRA, full FT) and
    cached otherwise — with no training this *is* zero-shot classification.  ``head="linear"``: a
    linear probe (``self.probe``) on the image embedding, initialised from the zero-shot weights, so it
    starts at zero-shot accuracy.  Follows timm: ``forward_features`` gives the normalised image
    embedding ``[N, D]`` (the pooled features fairness penalties act on), ``forward_head`` the logits.

    Registered as ``medical.clip``; in a config the arguments after ``task`` go under the task's
    ``model_args``.

    Args:
        input_shape: ``(channels, height, width)`` of an image; set by the task from the datamodule.
        num_outputs: classes; set by the task. ``class_names`` must list as many.
        task: ``classification`` (the only one); set by the task.
        checkpoint: ``tiny`` (a random tiny CLIP, offline, for tests), a hub id
            (``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``, online) or a local
            directory in the hub layout.
        class_names: one name per class in the datamodule's label order, put into the prompts (known
            dermatology names become descriptions: ``mel`` -> "melanoma"); required.
        templates: prompt templates with a ``{label}`` placeholder; a class's embedding is the mean over
            them. Default: three in BiomedCLIP's style.
        head: ``prompts`` (the class prompts' text embeddings are the weights: zero-shot, CLIP-LoRA) or
            ``linear`` (a linear probe on the image embedding, started from the zero-shot weights).
        seed: seed of the random weights of the ``tiny`` checkpoint (no effect on real weights).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: Literal["classification"] = "classification",
        checkpoint: str = TINY_CLIP,
        class_names: Sequence[str] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        head: Literal["prompts", "linear"] = "prompts",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if task != "classification":
            raise ValueError(f"CLIPClassifier only does `task='classification'`, got {task!r}.")
        if head not in ("prompts", "linear"):
            raise ValueError(f"`head` must be 'prompts' or 'linear', got {head!r}.")
        if class_names is None or len(class_names) != num_outputs:
            raise ValueError(
                f"CLIPClassifier needs one name per class to build prompts: got class_names={class_names!r} "
                f"for {num_outputs} classes. Set `model_args.class_names` in the config (datamodule order)."
            )
        if len(input_shape) != 3:
            raise ValueError(f"`input_shape` must be (channels, height, width), got {tuple(input_shape)}.")
        self.backbone, tokenizer, self.preprocess = load_open_clip(checkpoint, seed=seed)
        self.backbone_source = str(checkpoint)
        self.class_names, self.templates, self.head_kind = list(class_names), list(templates), head
        prompts = build_prompts(self.class_names, self.templates)
        self.register_buffer("prompt_tokens", tokenizer(prompts), persistent=False)
        self._cached_text: torch.Tensor | None = None
        self.probe: nn.Linear | None = None
        if head == "linear":
            with torch.no_grad():
                weights = self.class_text_features() * self.logit_scale()
            self.probe = nn.Linear(weights.shape[1], num_outputs)
            with torch.no_grad():
                self.probe.weight.copy_(weights)
                self.probe.bias.zero_()

    @property
    def unused_parameters(self) -> tuple[str, ...]:
        """With a linear probe the text tower is never read after initialisation."""
        return (r"backbone\.text\.",) if self.head_kind == "linear" else ()

    def logit_scale(self) -> torch.Tensor:
        return self.backbone.logit_scale.exp().clamp(max=100.0)

    def class_text_features(self) -> torch.Tensor:
        """``[num_classes, D]`` unit vectors: the mean of each class's normalised prompt embeddings."""
        text_trains = any(parameter.requires_grad for parameter in self.backbone.text.parameters())
        if not text_trains and self._cached_text is not None:
            return self._cached_text
        with torch.set_grad_enabled(text_trains and torch.is_grad_enabled()):
            encoded = self.backbone.encode_text(self.prompt_tokens, normalize=True)
            per_class = encoded.view(len(self.class_names), len(self.templates), -1).mean(dim=1)
            features = nn.functional.normalize(per_class, dim=-1)
        if not text_trains:
            self._cached_text = features = features.detach()
        return features

    def train(self, mode: bool = True) -> CLIPClassifier:
        self._cached_text = None  # weights may change between modes (training, merging an adapter)
        return super().train(mode)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(x, normalize=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            return self.probe(features)
        return self.logit_scale() * features @ self.class_text_features().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
