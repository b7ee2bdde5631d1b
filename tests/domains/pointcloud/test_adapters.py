"""Point-PEFT and DAPT on a tiny point transformer with the layout of verticals' ``PointTransformer`` (grouper,
tokenizer, CLS token, blocks with norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, ``last_centres``,
``num_prefix_tokens = 1``), through stock peft APIs.

Behaviours both methods share are tests parametrised over ``TEST_CASES`` rows ``(name, model factory, config
class, config kwargs)``; the point prior, the memory bank, the geometry adapter, the internal prompts, the
ablation switches, the parameter counts and the config errors have their own tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from verticals.core.adapters.api import adapt
from verticals.core.adapters.lifecycle import adapter_hooks
from verticals.core.peft_methods import registered_methods
from verticals.core.prefix_cache import FrozenPrefixCache, PrefixCacheOptions
from verticals.domains.pointcloud.adapters import (
    DEFAULT_SCALE_SHIFT_MODULES,
    DAPTConfig,
    DAPTLayer,
    DAPTModel,
    PointPEFTConfig,
    PointPEFTLayer,
    PointPEFTModel,
    dapt_parameter_count,
    point_peft_parameter_count,
    retrieve_point_prior,
)
from verticals.domains.pointcloud.grouping import (
    PointGrouper,
    farthest_point_sample,
    index_points,
    inverse_distance_interpolate,
    knn_group,
)
from verticals.domains.pointcloud.models import point_transformer

DIM, GROUPS, GROUP_SIZE, POINTS = 32, 16, 8, 128

# --- a tiny point transformer (the layout of contract A) ---------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, count, width = x.shape
        qkv = self.qkv(x).reshape(batch, count, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(mixed.transpose(1, 2).reshape(batch, count, width))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyPointTransformer(nn.Module):
    """Point-MAE's encoder in miniature: FPS + kNN groups, a per-point MLP (with BatchNorm) max-pooled to
    tokens, a CLS token, position embeddings added before every block, a final norm."""

    num_prefix_tokens = 1

    def __init__(self, depth: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.grouper = PointGrouper(GROUPS, GROUP_SIZE)
        self.encoder = nn.Sequential(nn.Linear(3, DIM), nn.BatchNorm1d(DIM), nn.ReLU(), nn.Linear(DIM, DIM))
        self.pos_embed = nn.Sequential(nn.Linear(3, DIM), nn.GELU(), nn.Linear(DIM, DIM))
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.cls_pos = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.blocks = nn.ModuleList(Block(DIM, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(DIM)
        self.last_centres: torch.Tensor | None = None

    def forward_tokens(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighbourhoods, centres = self.grouper(xyz)
        self.last_centres = centres
        batch = xyz.shape[0]
        points = self.encoder(neighbourhoods.reshape(-1, 3)).reshape(batch, GROUPS, GROUP_SIZE, DIM)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), points.max(dim=2).values], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres)], dim=1)
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x), centres

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(xyz)[0]


class TinyClassifier(nn.Module):
    """Point-MAE's classification layout: a head on concat(CLS, max over the group tokens)."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.backbone = TinyPointTransformer(depth)
        self.head = nn.Linear(2 * DIM, 5)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.backbone.forward_tokens(xyz)
        return self.head(torch.cat([tokens[:, 0], tokens[:, 1:].max(dim=1).values], dim=-1))


def tiny_backbone(seed: int = 0, depth: int = 2) -> TinyPointTransformer:
    torch.manual_seed(seed)
    return TinyPointTransformer(depth).eval()


def tiny_classifier(seed: int = 0, depth: int = 2) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier(depth).eval()


def tiny_deep(seed: int = 0) -> TinyPointTransformer:
    return tiny_backbone(seed, depth=4)


def clouds(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, POINTS, 3, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# --- the table ---------------------------------------------------------------------------------------------

BLOCKS = ["blocks.0", "blocks.1"]
SMALL = {
    "bottleneck_dim": 4,
    "prior_bottleneck_dim": 2,
    "top_k": 2,
    "num_prompts": 4,
    "geometry_neighbors": 4,
}
TEST_CASES: list[tuple[str, Callable[[], nn.Module], type, dict[str, Any]]] = [
    ("point-peft-all-parts", tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL}),
    (
        "point-peft-classifier-head-regex",
        tiny_classifier,
        PointPEFTConfig,
        {"target_modules": r".*blocks\.\d+", "modules_to_save": ["head"], "prompt_blocks": 1, **SMALL},
    ),
    (
        "point-peft-no-prior-cls-interp3",
        tiny_backbone,
        PointPEFTConfig,
        {"target_modules": BLOCKS, "use_prior": False, "interpolation_neighbors": 3, **SMALL},
    ),
    ("dapt", tiny_backbone, DAPTConfig, {"target_modules": BLOCKS, "bottleneck_dim": 4}),
    (
        "dapt-classifier-dropout-head",
        tiny_classifier,
        DAPTConfig,
        {
            "target_modules": r".*blocks\.\d+",
            "bottleneck_dim": 4,
            "dropout": 0.2,
            "modules_to_save": ["head"],
        },
    ),
    (
        "dapt-static-scale-no-ssf",
        tiny_deep,
        DAPTConfig,
        {
            "target_modules": r"blocks\.[0-3]",
            "bottleneck_dim": 4,
            "dynamic_scale": False,
            "scale_shift": False,
        },
    ),
]
PREFIXES = ("pointpeft_", "dapt_")


def _ids(cases: list) -> list[str]:
    return [case[0] for case in cases]


def make_peft_model(factory: Callable[[], nn.Module], config_cls: type, config_kwargs: dict) -> PeftModel:
    return get_peft_model(factory(), config_cls(**config_kwargs))


def fill_bank(model: PeftModel, seed: int = 5, batches: int = 2) -> None:
    """The memory bank from a few seeded training batches (a no-op for adapters without the prior)."""
    tuner = model.base_model
    if isinstance(tuner, PointPEFTModel):
        tuner.prepare_from_data(clouds(4, seed + i) for i in range(batches))


def randomize_adapters(model: nn.Module, seed: int = 0, adapter_name: str | None = None) -> None:
    """Give the adapters (zero up-projections, unit scales) non-trivial weights so they change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(p in name for p in PREFIXES) and (adapter_name is None or f".{adapter_name}" in name):
                param.copy_(param + torch.randn(param.shape, generator=generator) * 0.3)


def adapter_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (PointPEFTLayer, DAPTLayer))]


def base_backbone(model: nn.Module) -> TinyPointTransformer:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base.backbone if isinstance(base, TinyClassifier) else base


def identity_kwargs(config_cls: type) -> dict[str, Any]:
    """The parts that keep a fresh adapter the identity: no prompts, no geometry branch."""
    if config_cls is PointPEFTConfig:
        return {"use_prompts": False, "use_prior": False, "use_geometry": False}
    return {"internal_prompts": False}


# --- behaviour both methods share --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_fresh_adapter_is_the_identity_without_prompts_and_geometry(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    x = clouds()
    expected = run(factory(), x)
    model = make_peft_model(factory, config_cls, {**config_kwargs, **identity_kwargs(config_cls)})
    assert adapter_layers(model), "no block was wrapped"
    torch.testing.assert_close(run(model, x), expected, rtol=0, atol=0)


# DAPT without internal prompts has nothing that changes a fresh model (tested as the identity above).
PROMPTED_CASES = [
    case for case in TEST_CASES if not (case[2] is DAPTConfig and not case[3].get("internal_prompts", True))
]


@pytest.mark.parametrize(
    ("name", "factory", "config_cls", "config_kwargs"), PROMPTED_CASES, ids=_ids(PROMPTED_CASES)
)
def test_prompts_and_geometry_change_a_fresh_model(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    # Prompt tokens join every token's attention, and the geometry branch adds 0.3 * a non-zero feature: by
    # design neither starts as the identity (DAPT's prompts need a second adapted block to be read).
    x = clouds()
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    assert not torch.allclose(run(model, x), run(factory(), x))


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
    assert not any(b.requires_grad for _, b in model.named_buffers())


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_save_and_reload_with_stock_peft(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict, tmp_path
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    randomize_adapters(model)
    x = clouds()
    expected = run(model, x)
    assert not torch.allclose(expected, run(factory(), x)), "the randomized adapters should change outputs"
    model.save_pretrained(tmp_path)
    peft_type = "POINT_PEFT" if config_cls is PointPEFTConfig else "DAPT"
    assert f'"peft_type": "{peft_type}"' in (tmp_path / "adapter_config.json").read_text()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    banks = [key for key in saved if "memory_bank" in key]
    with_prior = config_cls is PointPEFTConfig and config_kwargs.get("use_prior", True)
    assert len(banks) == (1 if with_prior else 0)
    if with_prior:
        assert saved[banks[0]].shape == (8, DIM)  # 2 batches of 4 training clouds

    reloaded = PeftModel.from_pretrained(factory(), tmp_path)
    assert isinstance(reloaded.peft_config["default"], config_cls)
    assert len(adapter_layers(reloaded)) == len(adapter_layers(model))
    assert {k for k, _ in reloaded.named_parameters()} == {k for k, _ in model.named_parameters()}
    torch.testing.assert_close(run(reloaded, x), expected)
    for (key, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(reloaded.state_dict().items())):
        torch.testing.assert_close(a, b, msg=key)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_disable_adapter_gives_base_outputs(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    x = clouds()
    expected = run(factory(), x)
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    randomize_adapters(model)
    with model.disable_adapter():
        torch.testing.assert_close(run(model, x), expected)
    assert not torch.allclose(run(model, x), expected)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_backward_reaches_every_adapter_parameter(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    randomize_adapters(model)
    model.train()
    out = run(model, clouds())
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
    x = clouds()
    expected = run(base, x)
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    randomize_adapters(model)
    with pytest.raises(ValueError, match="cannot be merged.*nonlinear.*`unload\\(\\)`"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter()
    unloaded = model.unload()
    assert type(unloaded) is type(base)
    assert not adapter_layers(unloaded)
    assert not base_backbone(unloaded).grouper._forward_pre_hooks, "the prior's hook must go with the adapter"
    torch.testing.assert_close(run(unloaded, x), expected)


@pytest.mark.parametrize(("name", "factory", "config_cls", "config_kwargs"), TEST_CASES, ids=_ids(TEST_CASES))
def test_blocks_keep_the_backbone_sequence_length(
    name: str, factory: Callable, config_cls: type, config_kwargs: dict
) -> None:
    model = make_peft_model(factory, config_cls, config_kwargs)
    fill_bank(model)
    seen: list[tuple[str, int, int]] = []
    for layer in adapter_layers(model):
        layer.register_forward_hook(
            lambda m, i, o: seen.append((m.module_name, i[0].shape[1], o.shape[1]))  # type: ignore[misc]
        )
    run(model, clouds())
    assert seen and all(before == after == 1 + GROUPS for _, before, after in seen)


def test_deepcopy_keeps_outputs_and_its_own_state() -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    fill_bank(model)
    randomize_adapters(model)
    x = clouds()
    twin = copy.deepcopy(model)
    torch.testing.assert_close(run(twin, x), run(model, x))
    layer = adapter_layers(twin)[1]
    assert layer.state is twin.base_model.point_state is not model.base_model.point_state
    assert layer.state.owners["default"] is adapter_layers(twin)[0]
    assert layer.backbone_ref.module is twin.get_base_model()
    twin.unload()  # removes the prior's hook from the copy's grouper only
    assert not base_backbone(twin).grouper._forward_pre_hooks
    assert len(base_backbone(model).grouper._forward_pre_hooks) == 1


# --- on verticals' own point transformer ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["point_peft", "dapt"])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_on_the_pointcloud_models_through_core_adapt(method: str, task: str, tmp_path) -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return point_transformer((POINTS, 3), 4, task=task, size="tiny", pretrained=False).eval()

    head = "head" if task == "classification" else "seg_head"
    options = dict(SMALL) if method == "point_peft" else {"bottleneck_dim": 4}
    model = adapt(build(), method, targets="blocks", trainable=[head], **options)
    assert [layer.module_name for layer in adapter_layers(model)] == [
        "backbone.blocks.0",
        "backbone.blocks.1",
    ]
    fill_bank(model)
    randomize_adapters(model)
    model.train()
    out = model(clouds())
    assert out.shape == ((3, 4) if task == "classification" else (3, 4, POINTS))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    x = clouds(seed=6)
    expected = model(x)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(), tmp_path)
    torch.testing.assert_close(reloaded(x), expected)


@pytest.mark.parametrize("method", ["point_peft", "dapt"])
def test_frozen_prefix_caching_replays_the_tokenizer_and_the_prior_query(method: str) -> None:
    """With the cache, three SGD steps on the same clouds give the same losses; Point-PEFT's second, frozen pass
    of the backbone (the prior's query, a FrozenBranch) is replayed along with the tokenizer, not re-run."""

    def trained(cache: bool) -> tuple[list[float], nn.Module, FrozenPrefixCache | None]:
        torch.manual_seed(0)
        network = point_transformer((POINTS, 3), 4, size="tiny", pretrained=False)
        options = dict(SMALL) if method == "point_peft" else {"bottleneck_dim": 4}
        model = adapt(network, method, targets="blocks", trainable=["head"], **options)
        fill_bank(model)
        randomize_adapters(model)
        model.train()
        prefix_cache = FrozenPrefixCache(model, PrefixCacheOptions(enabled=True)) if cache else None
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        losses = []
        for _ in range(3):
            loss = model(clouds(4, seed=7)).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
        return losses, model, prefix_cache

    plain_losses, _, _ = trained(cache=False)
    cached_losses, model, prefix_cache = trained(cache=True)
    torch.testing.assert_close(cached_losses, plain_losses, rtol=1e-6, atol=1e-7)
    replayed = prefix_cache.summary()["cached_modules"]
    assert "backbone.pos_embed" in replayed
    assert ("base_model.pointpeft_prior_query" in replayed) == (method == "point_peft")
    tokenized: list[int] = []
    model.base_model.model.backbone.encoder.first_conv[0].register_forward_hook(
        lambda *_: tokenized.append(1)
    )
    with torch.no_grad():
        model(clouds(4, seed=7))
    assert tokenized == []  # neither the main pass nor the frozen pass ran the tokenizer


# --- Point-PEFT: the point prior and the memory bank -------------------------------------------------------


def test_retrieve_point_prior_by_hand() -> None:
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    query = torch.tensor([[2.0, 0.2]])
    tokens = retrieve_point_prior(query, bank, top_k=2)
    assert tokens.shape == (1, 4, 2)
    torch.testing.assert_close(tokens[0, 0], query[0])  # the query itself, not normalised (official code)
    cosine = F.normalize(query, dim=-1) @ bank.T
    top = cosine[0].topk(2)
    assert top.indices.tolist() == [0, 2]
    torch.testing.assert_close(tokens[0, 2:], bank[[0, 2]])
    weights = torch.softmax(top.values, dim=0)
    torch.testing.assert_close(tokens[0, 1], weights[0] * bank[0] + weights[1] * bank[2])
    with pytest.raises(ValueError, match=r"`top_k` must lie in \[1, 4\].*got 5"):
        retrieve_point_prior(query, bank, top_k=5)
    with pytest.raises(ValueError, match="same D"):
        retrieve_point_prior(query, torch.ones(3, 5), top_k=1)


def test_prepare_from_data_stores_the_frozen_models_normalised_features() -> None:
    model = make_peft_model(tiny_classifier, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    randomize_adapters(model)  # the bank must come from the frozen model, whatever the adapters hold
    model.train()  # and leave the backbone's BatchNorm statistics alone
    backbone = base_backbone(model)
    statistics = backbone.encoder[1].running_mean.clone()
    batches = [clouds(4, 7), clouds(2, 8)]
    model.base_model.prepare_from_data(iter(batches))
    torch.testing.assert_close(backbone.encoder[1].running_mean, statistics, rtol=0, atol=0)
    assert model.training and backbone.training  # modes restored

    frozen = tiny_classifier().backbone
    expected = torch.cat([frozen(b)[:, 1:].max(dim=1).values for b in batches])
    bank = adapter_layers(model)[0].pointpeft_memory_bank["default"].features
    torch.testing.assert_close(bank, F.normalize(expected, dim=-1))
    assert not bank.requires_grad
    assert all("default" not in layer.pointpeft_memory_bank for layer in adapter_layers(model)[1:])


def test_prepare_from_data_cls_feature_and_hook_discovery() -> None:
    model = make_peft_model(
        tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, "prior_feature": "cls", **SMALL}
    )
    # the core's lifecycle finds the tuner method as the method's `prepare_from_data` hook
    assert adapter_hooks(PointPEFTModel).prepare_from_data is PointPEFTModel.prepare_from_data
    assert adapter_hooks(DAPTModel).prepare_from_data is None
    model.base_model.prepare_from_data([clouds(3, 9)])
    bank = adapter_layers(model)[0].pointpeft_memory_bank["default"].features
    torch.testing.assert_close(bank, F.normalize(tiny_backbone()(clouds(3, 9))[:, 0], dim=-1))


def test_forward_uses_the_retrieved_prior() -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    randomize_adapters(model)
    x = clouds()
    with pytest.warns(RuntimeWarning, match="memory bank is empty"):
        without = run(model, x)
    fill_bank(model)
    state = model.base_model.point_state
    with_prior = run(model, x)
    assert not torch.allclose(without, with_prior)
    prior = state.prior["default"]
    assert prior.shape == (3, SMALL["top_k"] + 2, DIM)
    bank = adapter_layers(model)[0].pointpeft_memory_bank["default"].features
    query = tiny_backbone()(x)[:, 1:].max(dim=1).values
    torch.testing.assert_close(prior, retrieve_point_prior(query, bank, SMALL["top_k"]))


def test_prior_needs_the_backbone_to_see_the_cloud() -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    fill_bank(model)
    backbone = base_backbone(model)
    run(model, clouds(3))
    tokens = torch.randn(3, 1 + GROUPS, DIM)
    run(model, clouds(3, seed=4))  # other centres: the prior of the first clouds must not be reused
    backbone.last_centres = PointGrouper(GROUPS, GROUP_SIZE)(clouds(3))[1]  # not through the hooked grouper
    with pytest.raises(RuntimeError, match="no point prior for this forward"):
        backbone.blocks[0](tokens)


def test_prepare_from_data_errors() -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    tuner = model.base_model
    with pytest.raises(ValueError, match="got no training inputs"):
        tuner.prepare_from_data([])
    with pytest.raises(ValueError, match=r"batch 1 is \(128, 3\)"):
        tuner.prepare_from_data([clouds(2), clouds(1)[0]])
    with pytest.raises(
        ValueError, match="top_k=2 training samples per input, but the training data has only 1"
    ):
        tuner.prepare_from_data([clouds(1)])
    no_prior = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, "use_prior": False})
    no_prior.base_model.prepare_from_data([])  # nothing to fill: a no-op
    assert not base_backbone(no_prior).grouper._forward_pre_hooks


def test_only_the_active_adapter_gets_a_bank() -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    model.add_adapter("other", PointPEFTConfig(target_modules=BLOCKS, **SMALL))
    fill_bank(model)
    first = adapter_layers(model)[0].pointpeft_memory_bank
    assert first["default"].features.shape[0] == 8 and first["other"].features.shape[0] == 0
    model.set_adapter("other")
    model.base_model.prepare_from_data([clouds(3, 11)])
    assert first["default"].features.shape[0] == 8 and first["other"].features.shape[0] == 3
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".other" in n for n in trainable)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert all("other" not in layer.settings for layer in adapter_layers(model))
    assert "other" not in first
    assert set(model.base_model.point_state.owners) == {"default"}


def test_reload_without_training_keeps_an_empty_bank(tmp_path) -> None:
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_backbone(), tmp_path)
    assert adapter_layers(reloaded)[0].pointpeft_memory_bank["default"].features.shape == (0, DIM)
    assert not any(p.requires_grad for p in reloaded.parameters())  # loaded for inference


# --- Point-PEFT: the parts of a block ----------------------------------------------------------------------


def test_prompts_only_in_the_first_prompt_blocks() -> None:
    model = make_peft_model(
        tiny_deep, PointPEFTConfig, {"target_modules": r"blocks\.\d", "prompt_blocks": 2, **SMALL}
    )
    fill_bank(model)
    layers = adapter_layers(model)
    assert [("default" in layer.pointpeft_prompts) for layer in layers] == [True, True, False, False]
    assert [("default" in layer.pointpeft_prior_down) for layer in layers] == [True, True, False, False]
    assert [("default" in layer.pointpeft_geometry_qkv) for layer in layers] == [True, False, False, False]
    lengths = []
    for layer in layers:
        layer.base_layer.register_forward_pre_hook(lambda m, i: lengths.append(i[0].shape[1]))
    run(model, clouds())
    frozen_pass, adapted = (
        lengths[:4],
        lengths[4:],
    )  # the prior's query runs the blocks without adapters first
    assert frozen_pass == [1 + GROUPS] * 4
    assert adapted == [1 + SMALL["num_prompts"] + GROUPS] * 2 + [1 + GROUPS] * 2


def test_geometry_branch_by_hand() -> None:
    """One block with only the geometry branch on: its output is the block's plus 0.3 * the interpolated,
    pooled local-group features, computed here from the grouping functions."""
    config = {
        "target_modules": ["blocks.1"],
        "use_prompts": False,
        "use_prior": False,
        "use_mlp_adapter": False,
        "geometry_groups": 5,
        "geometry_neighbors": 4,
        "interpolation_neighbors": 3,
        "adapter_dropout": 0.0,
    }
    model = make_peft_model(tiny_backbone, PointPEFTConfig, config)
    randomize_adapters(model)
    layer = adapter_layers(model)[0]
    with torch.no_grad():  # no bottleneck after the block, so the geometry branch is all that acts
        layer.pointpeft_up["default"].weight.zero_()
        layer.pointpeft_up["default"].bias.zero_()
    x = clouds(2)
    block_inputs: list[torch.Tensor] = []
    layer.base_layer.register_forward_pre_hook(lambda m, i: block_inputs.append(i[0]))
    out = run(model, x)

    base = tiny_backbone()
    centres = base.grouper(x)[1]
    tokens = base.blocks[1](block_inputs[0])[:, 1:]
    local_index = farthest_point_sample(centres, 5)
    local_centres = index_points(centres, local_index)
    grouped = index_points(tokens, knn_group(centres, local_centres, 4))
    norm, qkv, proj = (
        layer.pointpeft_geometry_norm["default"],
        layer.pointpeft_geometry_qkv["default"],
        layer.pointpeft_geometry_proj["default"],
    )
    q, k, v = qkv(norm(grouped)).split(18, dim=-1)  # 6 heads of 3

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:-1], 6, 3).transpose(-2, -3)

    attention = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 18**0.5, dim=-1)
    mixed = (attention @ heads(v)).transpose(-2, -3).reshape(*grouped.shape[:-1], 18)
    grouped = grouped + proj(mixed)
    pooled = layer.pointpeft_geometry_bn["default"](grouped.max(dim=2).values.transpose(1, 2)).transpose(1, 2)
    pooled = F.gelu(pooled) + 0.3 * index_points(tokens, local_index)
    spread = inverse_distance_interpolate(centres, local_centres, pooled, k=3)
    adapted = torch.cat([base.blocks[1](block_inputs[0])[:, :1], tokens + 0.3 * spread], dim=1)
    torch.testing.assert_close(out, base.norm(adapted), rtol=1e-5, atol=1e-5)


def test_local_groups_are_computed_once_per_forward() -> None:
    model = make_peft_model(tiny_deep, PointPEFTConfig, {"target_modules": r"blocks\.\d", **SMALL})
    fill_bank(model)
    state = model.base_model.point_state
    run(model, clouds())
    first = dict(state.subgroups)
    assert len(first) == 1
    (groups, neighbours), local = next(iter(first.items()))
    assert (groups, neighbours) == (GROUPS // 2, SMALL["geometry_neighbors"])
    assert local.centres is base_backbone(model).last_centres
    run(model, clouds(seed=9))
    assert state.subgroups[(groups, neighbours)] is not local


def test_mlp_adapter_scale_is_applied_to_the_mlp_output() -> None:
    config = {
        "target_modules": ["blocks.0"],
        "use_prompts": False,
        "use_prior": False,
        "use_geometry": False,
        "adapter_dropout": 0.0,
    }
    model = make_peft_model(tiny_backbone, PointPEFTConfig, {**config, "mlp_adapter_scale": 0.7})
    randomize_adapters(model)
    layer = adapter_layers(model)[0]
    with torch.no_grad():
        layer.pointpeft_up["default"].weight.zero_()
        layer.pointpeft_up["default"].bias.zero_()
    x = torch.randn(2, 1 + GROUPS, DIM, generator=torch.Generator().manual_seed(3))
    block = layer.base_layer
    h = x + block.attn(block.norm1(x))
    m = block.mlp(block.norm2(h))
    down, up = layer.pointpeft_mlp_down["default"], layer.pointpeft_mlp_up["default"]
    z = down(m)
    expected = h + m + 0.7 * up(z * torch.sigmoid(1.702 * z))
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    ("switch", "gone"),
    [
        ({"use_prompts": False, "use_prior": False}, ("prompts", "prior_down", "memory_bank")),
        ({"use_prior": False}, ("prior_down", "memory_bank")),
        ({"use_geometry": False}, ("geometry_bn", "geometry_qkv")),
        ({"use_mlp_adapter": False}, ("mlp_down",)),
    ],
    ids=["no-prompts", "no-prior", "no-geometry", "no-mlp-adapter"],
)
def test_ablation_switches_remove_their_part(switch: dict, gone: tuple[str, ...]) -> None:
    full = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL})
    ablated = make_peft_model(tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL, **switch})
    for part in gone:
        assert any("default" in getattr(layer, f"pointpeft_{part}") for layer in adapter_layers(full)), part
        assert not any("default" in getattr(layer, f"pointpeft_{part}") for layer in adapter_layers(ablated))
    fill_bank(full)
    fill_bank(ablated)
    randomize_adapters(full, seed=3)
    ablated.load_state_dict(full.state_dict(), strict=False)
    x = clouds()
    assert not torch.allclose(run(full, x), run(ablated, x))


# --- DAPT --------------------------------------------------------------------------------------------------


def test_dapt_internal_prompts_reach_the_later_blocks() -> None:
    model = make_peft_model(tiny_deep, DAPTConfig, {"target_modules": r"blocks\.[0-3]", "bottleneck_dim": 4})
    layers = adapter_layers(model)
    assert [("default" in layer.dapt_prompt_scale) for layer in layers] == [True, True, True, False]
    lengths = []
    for layer in layers:
        layer.base_layer.register_forward_pre_hook(lambda m, i: lengths.append(i[0].shape[1]))
    run(model, clouds())
    assert lengths == [1 + GROUPS, 2 + GROUPS, 3 + GROUPS, 4 + GROUPS]
    carried = model.base_model.point_state.carried["default"]
    assert len(carried) == 3 and all(p.shape == (3, 1, DIM) for p in carried)


def test_dapt_one_block_is_the_identity_and_a_fresh_prompt_is_its_shift() -> None:
    x = clouds()
    model = make_peft_model(tiny_backbone, DAPTConfig, {"target_modules": ["blocks.0"], "bottleneck_dim": 4})
    torch.testing.assert_close(run(model, x), run(tiny_backbone(), x), rtol=0, atol=0)
    model = make_peft_model(tiny_backbone, DAPTConfig, {"target_modules": BLOCKS, "bottleneck_dim": 4})
    run(model, x)
    (prompt,) = model.base_model.point_state.carried["default"]
    torch.testing.assert_close(prompt, torch.zeros(3, 1, DIM))  # GELU(0) averaged, times 1, plus 0


def test_dapt_layer_by_hand() -> None:
    model = make_peft_model(tiny_backbone, DAPTConfig, {"target_modules": ["blocks.0"], "bottleneck_dim": 4})
    randomize_adapters(model)
    layer = adapter_layers(model)[0]
    block = layer.base_layer
    x = torch.randn(2, 1 + GROUPS, DIM, generator=torch.Generator().manual_seed(3))

    def ssf(path: str, value: torch.Tensor) -> torch.Tensor:
        key = path.replace(".", "_")
        return value * layer.dapt_ssf_scale["default"][key] + layer.dapt_ssf_shift["default"][key]

    def attention(h: torch.Tensor) -> torch.Tensor:
        qkv = ssf("attn.qkv", block.attn.qkv(h)).reshape(2, 1 + GROUPS, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(h.shape)
        return ssf("attn.proj", block.attn.proj(mixed))

    h = x + attention(ssf("norm1", block.norm1(x)))
    xn = ssf("norm2", block.norm2(h))
    mlp = ssf("mlp.fc2", block.mlp.fc2(block.mlp.act(ssf("mlp.fc1", block.mlp.fc1(xn)))))
    ln = layer.dapt_norm["default"](xn)
    adapter = layer.dapt_up["default"](F.gelu(layer.dapt_down["default"](ln)))
    adapter = adapter * F.relu(layer.dapt_scale["default"](ln))
    torch.testing.assert_close(layer(x), h + mlp + adapter)


def test_dapt_ablation_switches() -> None:
    full = make_peft_model(tiny_backbone, DAPTConfig, {"target_modules": BLOCKS, "bottleneck_dim": 4})
    layer = adapter_layers(full)[0]
    assert set(layer.dapt_ssf_scale["default"]) == {m.replace(".", "_") for m in DEFAULT_SCALE_SHIFT_MODULES}
    for switch, container in [
        ({"dynamic_scale": False}, "dapt_scale"),
        ({"scale_shift": False}, "dapt_ssf_scale"),
        ({"internal_prompts": False}, "dapt_prompt_scale"),
    ]:
        ablated = make_peft_model(
            tiny_backbone, DAPTConfig, {"target_modules": BLOCKS, "bottleneck_dim": 4, **switch}
        )
        assert "default" in getattr(layer, container)
        assert not any("default" in getattr(m, container) for m in adapter_layers(ablated)), switch
    only_norms = make_peft_model(
        tiny_backbone,
        DAPTConfig,
        {"target_modules": BLOCKS, "bottleneck_dim": 4, "scale_shift_modules": ["norm1", "norm2"]},
    )
    assert set(adapter_layers(only_norms)[0].dapt_ssf_scale["default"]) == {"norm1", "norm2"}


# --- parameter counts --------------------------------------------------------------------------------------


def _layer_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if any(f".{x}" in n for x in PREFIXES))


@pytest.mark.parametrize(
    "switch",
    [
        {},
        {"use_prior": False},
        {"use_prompts": False, "use_prior": False},
        {"use_geometry": False},
        {"use_mlp_adapter": False},
    ],
    ids=["all", "no-prior", "no-prompts", "no-geometry", "no-mlp"],
)
def test_point_peft_parameter_count_matches_the_model(switch: dict) -> None:
    kwargs = {
        "bottleneck_dim": 4,
        "prior_bottleneck_dim": 2,
        "num_prompts": 4,
        "top_k": 2,
        "prompt_blocks": 3,
    }
    model = make_peft_model(tiny_deep, PointPEFTConfig, {"target_modules": r"blocks\.\d", **kwargs, **switch})
    formula_kwargs = {k: v for k, v in kwargs.items() if k != "top_k"}
    assert _layer_parameters(model) == point_peft_parameter_count(DIM, 4, **formula_kwargs, **switch)


@pytest.mark.parametrize(
    "switch", [{}, {"dynamic_scale": False}, {"internal_prompts": False}, {"scale_shift": False}]
)
def test_dapt_parameter_count_matches_the_model(switch: dict) -> None:
    model = make_peft_model(
        tiny_deep, DAPTConfig, {"target_modules": r"blocks\.\d", "bottleneck_dim": 4, **switch}
    )
    assert _layer_parameters(model) == dapt_parameter_count(DIM, 4, bottleneck_dim=4, **switch)


def test_parameter_counts_at_point_mae_size() -> None:
    # Point-MAE: 12 blocks of 384. Point-PEFT per block two bottlenecks of 16 (2*384*16 + 16 + 384 each) and a
    # BatchNorm (2*384); per prompted block 10 prompts and a bottleneck of 8; once, the geometry attention
    # (LayerNorm, qkv 384 -> 54 without bias, proj 18 -> 384).
    bottleneck16, bottleneck8 = 2 * 384 * 16 + 16 + 384, 2 * 384 * 8 + 8 + 384
    expected = 12 * (2 * bottleneck16 + 768) + 6 * (3840 + bottleneck8) + (768 + 384 * 54 + 18 * 384 + 384)
    assert point_peft_parameter_count(384) == expected == 404_784
    # DAPT (rank 64): per block LayerNorm, scale, down, up and SSF pairs on 11 * 384 channels, prompts on 11.
    per_block = 768 + 385 + 2 * 384 * 64 + 64 + 384 + 2 * 11 * 384
    assert dapt_parameter_count(384) == 12 * per_block + 11 * 768 == 718_860


# --- registration, configs, errors -------------------------------------------------------------------------


def test_registered_with_peft_and_reachable_through_core_adapt() -> None:
    assert {"point_peft", "dapt"} <= set(registered_methods())
    model = adapt(tiny_classifier(), "point_peft", targets=BLOCKS, trainable=["head"], **SMALL)
    assert isinstance(model, PeftModel) and isinstance(model.base_model, PointPEFTModel)
    assert [layer.module_name for layer in adapter_layers(model)] == [
        "backbone.blocks.0",
        "backbone.blocks.1",
    ]
    model = adapt(tiny_classifier(), "dapt", targets=BLOCKS, bottleneck_dim=4)
    assert isinstance(model.base_model, DAPTModel)
    assert run(model, clouds()).shape == (3, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"use_prompts": False}, r"`use_prior=True` needs `use_prompts=True`"),
        ({"num_prompts": 9}, r"`num_prompts` must be `top_k` \+ 2 = 10 .* got num_prompts=9"),
        ({"top_k": 0}, r"`top_k` must be an integer >= 1, got 0"),
        ({"prompt_blocks": 1.5}, r"`prompt_blocks` must be an integer >= 1, got 1.5"),
        ({"bottleneck_dim": True}, r"`bottleneck_dim` must be an integer >= 1, got True"),
        ({"prior_feature": "mean"}, r"`prior_feature` must be one of \['max', 'cls'\].*got 'mean'"),
        ({"geometry_heads": 4}, r"`geometry_heads` \(4\) must divide `geometry_dim` \(18\)"),
        ({"geometry_groups": 0}, r"`geometry_groups` must be None or an integer >= 1, got 0"),
        ({"geometry_scale": float("nan")}, r"`geometry_scale` must be a finite number, got nan"),
        ({"prompt_dropout": 1.0}, r"`prompt_dropout` must be a probability in \[0, 1\), got 1.0"),
        ({"use_geometry": "yes"}, r"`use_geometry` must be True or False, got 'yes'"),
        ({"num_prefix_tokens": -1}, r"`num_prefix_tokens` must be None \(read from the model\) or"),
        ({"mlp_module": "mlp..fc1"}, r"`mlp_module` must name a submodule"),
        ({"target_modules": "blocks.(["}, r"`target_modules` 'blocks.\(\[' is not a valid regex"),
    ],
)
def test_point_peft_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PointPEFTConfig(**{"target_modules": BLOCKS, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bottleneck_dim": 0}, r"`bottleneck_dim` must be an integer >= 1, got 0"),
        ({"dropout": -0.1}, r"`dropout` must be a probability in \[0, 1\), got -0.1"),
        ({"scale_shift_modules": "norm1"}, r"`scale_shift_modules` must be a list of submodule names"),
        ({"scale_shift_modules": ["norm1", "norm1"]}, r"names a module twice"),
        ({"internal_prompts": 1}, r"`internal_prompts` must be True or False, got 1"),
        ({"hidden_size": 0}, r"`hidden_size` must be None \(inferred\) or an integer >= 1, got 0"),
    ],
)
def test_dapt_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DAPTConfig(**{"target_modules": BLOCKS, **kwargs})


def test_model_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="`target_modules` is required for Point-PEFT adapters"):
        get_peft_model(tiny_backbone(), PointPEFTConfig())

    class Plain(nn.Module):  # blocks without a backbone that exposes `last_centres`
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(DIM, 2)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[0](x)

    with pytest.raises(ValueError, match="no module enclosing 'blocks.0' has a `last_centres` attribute"):
        get_peft_model(Plain(), PointPEFTConfig(target_modules=["blocks.0"]))
    headless = tiny_backbone()
    del headless.grouper  # `last_centres` but nowhere to see the raw cloud
    with pytest.raises(ValueError, match="point prior needs the backbone's `grouper`.*Set `use_prior=False`"):
        get_peft_model(headless, PointPEFTConfig(target_modules=BLOCKS, **SMALL))
    plain = get_peft_model(
        Plain(),
        PointPEFTConfig(target_modules=["blocks.0"], use_prompts=False, use_prior=False, use_geometry=False),
    )
    torch.testing.assert_close(
        plain(torch.ones(1, 4, DIM)), Plain.forward(plain.get_base_model(), torch.ones(1, 4, DIM))
    )
    with pytest.raises(
        ValueError, match="`scale_shift_modules` entry 'attn.q' is not a submodule of block 'blocks.0'"
    ):
        get_peft_model(Plain(), DAPTConfig(target_modules=["blocks.0"], scale_shift_modules=["attn.q"]))
    with pytest.raises(ValueError, match="`mlp_module` 'ffn' is not a submodule"):
        get_peft_model(Plain(), DAPTConfig(target_modules=["blocks.0"], mlp_module="ffn"))

    model = make_peft_model(
        tiny_backbone,
        PointPEFTConfig,
        {"target_modules": BLOCKS, **SMALL, "use_prior": False, "geometry_neighbors": 17},
    )
    with pytest.raises(ValueError, match="16 group tokens cannot form .*`geometry_neighbors`=17"):
        run(model, clouds())
    model = make_peft_model(
        tiny_backbone,
        PointPEFTConfig,
        {"target_modules": BLOCKS, **SMALL, "use_prior": False, "hidden_size": 8},
    )
    with pytest.raises(ValueError, match="was built for 8 features"):
        run(model, clouds())
    model = make_peft_model(
        tiny_backbone, PointPEFTConfig, {"target_modules": BLOCKS, **SMALL, "use_prior": False}
    )
    with pytest.raises(RuntimeError, match="`last_centres`, which is None"):
        base_backbone(model).blocks[0](torch.randn(1, 1 + GROUPS, DIM))
    model.add_adapter("other", PointPEFTConfig(target_modules=BLOCKS, **SMALL, use_prior=False))
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(
        ValueError, match=r"applies one adapter at a time, but \['default', 'other'\] are active"
    ):
        run(model, clouds())
