"""Registering verticals' PEFT methods with peft (enum extension, idempotency, conflicts, save/load)."""

from __future__ import annotations

import enum
import importlib
import pickle
import re

import peft
import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method
from torch import nn

import verticals.core.adapters.bottleneck as bottleneck_pkg
from verticals.core.adapters.bottleneck import BottleneckConfig, BottleneckModel

# `from verticals.core import peft_methods` would give `verticals.core.peft_methods()`, the function that
# core/__init__.py re-exports from adapters.api, so the module's names are imported one by one.
from verticals.core.peft_methods import (
    CHECKED_PEFT_VERSION,
    _add_enum_member,
    _remove_enum_member,
    _unregister_method,
    register_method,
    registered_methods,
)

# --- a throwaway method, registered and unregistered around the tests that need it ----------------------

SCALE_NAME = "vtest_scale"


class ScaleConfig(BottleneckConfig):
    """Reuses the bottleneck config fields; only the peft type differs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(SCALE_NAME.upper())


class ScaleModel(BottleneckModel):
    prefix = "vtest_scale_"


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(6, 6)
        self.lin1 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def _two_layer(seed: int = 0) -> TwoLayer:
    torch.manual_seed(seed)
    return TwoLayer().eval()


@pytest.fixture
def scale_method():
    """Register the throwaway method and remove every trace of it afterwards."""
    members_before = list(PeftType)
    register_method(name=SCALE_NAME, config_cls=ScaleConfig, model_cls=ScaleModel, prefix=ScaleModel.prefix)
    yield
    _unregister_method(SCALE_NAME)
    assert list(PeftType) == members_before
    assert not hasattr(PeftType, SCALE_NAME.upper())


# --- the enum extension itself --------------------------------------------------------------------------


def test_bottleneck_is_a_peft_type_after_import() -> None:
    member = PeftType("BOTTLENECK")
    assert member is PeftType.BOTTLENECK is PeftType["BOTTLENECK"]
    assert member == "BOTTLENECK" and member.value == "BOTTLENECK" and member.name == "BOTTLENECK"
    assert list(PeftType).count(member) == 1
    assert "BOTTLENECK" in PeftType.__members__
    assert PEFT_TYPE_TO_CONFIG_MAPPING["BOTTLENECK"] is BottleneckConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is BottleneckModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "bottleneck_" == BottleneckModel.prefix
    assert pickle.loads(pickle.dumps(member)) is member
    assert registered_methods()["bottleneck"] is BottleneckConfig


def test_registered_method_loads_config_from_dict() -> None:
    # The route `PeftConfig.from_pretrained` takes with the "peft_type" string of adapter_config.json.
    config = peft.PeftConfig.from_peft_type(peft_type="BOTTLENECK", target_modules=["lin0"], bottleneck_dim=3)
    assert isinstance(config, BottleneckConfig)
    assert config.peft_type is PeftType.BOTTLENECK
    assert config.bottleneck_dim == 3


def test_register_method_is_idempotent() -> None:
    members_before = list(PeftType)
    for _ in range(2):
        register_method(
            name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="bottleneck_"
        )
    importlib.reload(bottleneck_pkg)  # re-runs the package's register_method call
    assert list(PeftType) == members_before
    assert PEFT_TYPE_TO_CONFIG_MAPPING["BOTTLENECK"] is BottleneckConfig


def test_conflicting_registration_raises() -> None:
    class OtherConfig(BottleneckConfig):
        pass

    with pytest.raises(ValueError, match="'bottleneck' is already registered with config"):
        register_method(
            name="bottleneck", config_cls=OtherConfig, model_cls=BottleneckModel, prefix="bottleneck_"
        )
    assert PEFT_TYPE_TO_CONFIG_MAPPING["BOTTLENECK"] is BottleneckConfig


def test_peft_builtin_name_is_rejected() -> None:
    class LoraLike(BottleneckModel):
        prefix = "vtest_lora_"

    with pytest.raises(ValueError, match="'lora' is already taken"):
        register_method(name="lora", config_cls=BottleneckConfig, model_cls=LoraLike, prefix="vtest_lora_")


def test_taken_prefix_is_rejected() -> None:
    class LoraPrefix(BottleneckModel):
        prefix = "lora_"

    with pytest.raises(ValueError, match="`prefix` 'lora_' is already used by PEFT method 'lora'"):
        register_method(
            name="vtest_prefix", config_cls=BottleneckConfig, model_cls=LoraPrefix, prefix="lora_"
        )
    assert "VTEST_PREFIX" not in PeftType.__members__


@pytest.mark.parametrize(
    ("name", "prefix", "match"),
    [
        ("Vtest", "vtest_scale_", "`name` must be a lower-case"),
        ("vtest_", "vtest_scale_", "`name` must be a lower-case"),
        ("vtest-x", "vtest_scale_", "`name` must be a lower-case"),
        ("vtest_x", "vtest", "`prefix` must be a non-empty string ending in '_'"),
        ("vtest_x", "vtest_other_", "differs from .*ScaleModel.prefix"),
    ],
)
def test_bad_name_or_prefix_is_rejected(name: str, prefix: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        register_method(name=name, config_cls=ScaleConfig, model_cls=ScaleModel, prefix=prefix)
    assert name.upper() not in PeftType.__members__


def test_peft_still_needs_the_enum_member() -> None:
    """Canary: if peft starts accepting unknown names, the enum extension in peft_methods.py can go."""
    try:
        register_peft_method(
            name="vtest_canary", config_cls=ScaleConfig, model_cls=None, prefix="vtest_canary_"
        )
    except ValueError as exc:
        assert "Unknown PEFT type" in str(exc)
    else:  # pragma: no cover - only on a peft release that changed this
        for mapping in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING):
            mapping.pop("VTEST_CANARY", None)
        pytest.fail(
            f"peft {peft.__version__} registers a method that is not a PeftType member: drop the enum "
            "extension in verticals/core/peft_methods.py and use peft's mechanism instead."
        )


def test_throwaway_method_saves_and_reloads(scale_method, tmp_path) -> None:
    assert registered_methods()[SCALE_NAME] is ScaleConfig
    model = get_peft_model(_two_layer(), ScaleConfig(target_modules=["lin0"], bottleneck_dim=2))
    assert type(model.base_model) is ScaleModel
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    x = torch.randn(3, 6)
    expected = model(x)
    model.save_pretrained(tmp_path)
    assert '"peft_type": "VTEST_SCALE"' in (tmp_path / "adapter_config.json").read_text()

    reloaded = PeftModel.from_pretrained(_two_layer(), tmp_path)
    assert isinstance(reloaded.peft_config["default"], ScaleConfig)
    torch.testing.assert_close(reloaded(x), expected)


# --- the enum extension on a stand-in enum, including the failure paths ---------------------------------


def _make_enum() -> type[enum.Enum]:
    class Colour(str, enum.Enum):
        RED = "RED"
        GREEN = "GREEN"

    return Colour


def test_enum_member_is_added_and_removed() -> None:
    colour = _make_enum()
    blue = _add_enum_member(colour, "BLUE")
    assert colour("BLUE") is colour.BLUE is colour["BLUE"] is blue
    assert [c.name for c in colour] == ["RED", "GREEN", "BLUE"]
    assert len(colour) == 3 and blue in colour and "BLUE" in colour.__members__
    assert {blue: 1}["BLUE"] == 1  # str-keyed dicts (peft's mappings) find the member by its string
    with pytest.raises(ValueError, match="already has a member 'RED'"):
        _add_enum_member(colour, "RED")

    _remove_enum_member(colour, "BLUE")
    assert [c.name for c in colour] == ["RED", "GREEN"]
    with pytest.raises(ValueError):
        colour("BLUE")
    assert not hasattr(colour, "BLUE")


def test_enum_without_member_maps_raises_runtime_error_naming_peft_version() -> None:
    colour = _make_enum()
    type.__delattr__(colour, "_value2member_map_")
    expected = re.escape(f"peft {CHECKED_PEFT_VERSION} (installed: peft {peft.__version__}")
    with pytest.raises(RuntimeError, match=f"`_value2member_map_` is missing.*{expected}"):
        _add_enum_member(colour, "BLUE")


def test_non_str_enum_raises_runtime_error() -> None:
    class Number(enum.Enum):
        ONE = 1

    with pytest.raises(RuntimeError, match="no longer a `str, enum.Enum`"):
        _add_enum_member(Number, "TWO")


def test_enum_that_ignores_the_new_member_raises_and_rolls_back() -> None:
    class DeafDict(dict):
        def __setitem__(self, key, value) -> None:  # swallows the new value -> lookup by value fails
            pass

    colour = _make_enum()
    type.__setattr__(colour, "_value2member_map_", DeafDict(colour._value2member_map_))
    with pytest.raises(RuntimeError, match=r"did not give the new member: \[\"Colour\('BLUE'\)\"\]"):
        _add_enum_member(colour, "BLUE")
    assert [c.name for c in colour] == ["RED", "GREEN"]
    assert not hasattr(colour, "BLUE")


# --- the module kinds a method targets, declared by the method --------------------------------------------


class LinearAndPointwise(nn.Module):
    """``mlp.fc1`` is a Linear, ``mlp.fc2`` a 1x1 Conv1d: both are linear maps for the ``all-linear`` preset."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(6, 6)
        self.mlp.fc2 = nn.Conv1d(6, 6, kernel_size=1)
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp.fc2(self.mlp.fc1(x).transpose(1, 2)).transpose(1, 2))


def test_methods_declare_their_target_kinds_on_their_config() -> None:
    from peft import LNTuningConfig, LoraConfig

    from verticals.core.adapters.s2lora import S2LoRAConfig
    from verticals.core.peft_methods import target_kinds

    assert BottleneckConfig.target_kinds == (nn.Module,) and target_kinds(BottleneckConfig) == (nn.Module,)
    assert target_kinds(S2LoRAConfig) == (nn.Linear,)
    assert target_kinds(LNTuningConfig) == (nn.LayerNorm,)  # a peft built-in, declared by the core helper
    assert target_kinds(LoraConfig) is None  # default: every kind LoRA wraps
    assert "target_kinds" not in S2LoRAConfig(r=2).to_dict()  # a ClassVar, not a saved field


def test_a_preset_is_narrowed_to_the_kinds_the_method_declares() -> None:
    from verticals.core import adapt

    lora = adapt(LinearAndPointwise(), "lora", targets="all-linear", r=2)
    assert set(lora.peft_config["default"].target_modules) == {"mlp.fc1", "mlp.fc2"}
    s2lora = adapt(LinearAndPointwise(), "s2lora", targets="all-linear", r=2)
    assert set(s2lora.peft_config["default"].target_modules) == {"mlp.fc1"}  # S2-LoRA: nn.Linear only
    ln = adapt(LinearAndPointwise(), "ln_tuning", targets="layernorm")
    assert set(ln.peft_config["default"].target_modules) == {"norm"}
    with pytest.raises(ValueError, match=r"of the kinds this method adapts \(LayerNorm\)"):
        adapt(LinearAndPointwise(), "ln_tuning", targets="mlp")


def test_declare_target_kinds_validates_and_rejects_conflicts() -> None:
    from peft import LoraConfig

    from verticals.core.peft_methods import _DECLARED_KINDS, declare_target_kinds, target_kinds

    class ConvOnlyLora(LoraConfig):
        pass

    try:
        declare_target_kinds(config_cls=ConvOnlyLora, kinds=(nn.Conv2d,))
        declare_target_kinds(config_cls=ConvOnlyLora, kinds=(nn.Conv2d,))  # the same again: a no-op
        assert target_kinds(ConvOnlyLora) == (nn.Conv2d,)
        with pytest.raises(ValueError, match="already declared"):
            declare_target_kinds(config_cls=ConvOnlyLora, kinds=(nn.Linear,))
    finally:
        _DECLARED_KINDS.pop(ConvOnlyLora, None)
    with pytest.raises(TypeError, match="non-empty tuple of nn.Module subclasses"):
        declare_target_kinds(config_cls=ConvOnlyLora, kinds=(int,))
    with pytest.raises(ValueError, match="declares `target_kinds` itself"):
        declare_target_kinds(config_cls=BottleneckConfig, kinds=(nn.Linear,))


def test_register_method_checks_the_declared_kinds() -> None:
    class BadKindsConfig(ScaleConfig):
        target_kinds = [nn.Linear]  # a list, not a tuple

    with pytest.raises(TypeError, match="`target_kinds` of .*BadKindsConfig must be a non-empty tuple"):
        register_method(
            name=SCALE_NAME, config_cls=BadKindsConfig, model_cls=ScaleModel, prefix=ScaleModel.prefix
        )
    assert SCALE_NAME.upper() not in PeftType.__members__
