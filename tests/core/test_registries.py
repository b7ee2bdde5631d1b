"""The registries a domain fills from its own folder: backbone families and models (PEFT methods: see
test_peft_methods.py)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from verticals.core.adapters.families import (
    _unregister_family,
    every_block_has,
    register_family,
    registered_families,
)
from verticals.core.adapters.targets import detect_families, resolve_targets
from verticals.core.registry import _unregister_model, build_model, import_object, registered_models

# --- backbone families ----------------------------------------------------------------------------------


class Mixer(nn.Module):
    """A toy block: ``token`` and ``channel`` Linears, a LayerNorm."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.token = nn.Linear(width, width)
        self.channel = nn.Linear(width, width)


class MixerNet(nn.Module):
    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.mixers = nn.ModuleList(Mixer() for _ in range(depth))
        self.head = nn.Linear(4, 2)


def is_mixer_net(module: nn.Module) -> bool:
    return every_block_has(module, "mixers", {"token": nn.Linear, "channel": nn.Linear})


MIXER_PRESETS = {"attention": r"mixers\.\d+\.token", "mlp": r"mixers\.\d+\.channel", "mixers": r"mixers\.\d+"}


@pytest.fixture
def mixer_family():
    family = register_family(
        name="vtest_mixer",
        detect=is_mixer_net,
        presets=MIXER_PRESETS,
        unsupported={"qv": "a mixer has no queries or values"},
    )
    yield family
    _unregister_family("vtest_mixer")
    assert "vtest_mixer" not in registered_families()


def test_core_registers_only_its_generic_families():
    core = [
        name for name, f in registered_families().items() if f.detect.__module__.startswith("verticals.core")
    ]
    assert core == ["hf_bert", "timm_vit", "open_clip"]


def test_a_registered_family_resolves_its_presets_relative_to_its_root(mixer_family):
    wrapper = nn.Module()
    wrapper.net = MixerNet()
    assert detect_families(wrapper) == [mixer_family]
    assert resolve_targets(wrapper, "attention") == ["net.mixers.0.token", "net.mixers.1.token"]
    # The family's own preset, for a method that wraps whole blocks; LoRA-like kinds find none in it.
    assert resolve_targets(wrapper, "mixers", kinds=(nn.Module,)) == ["net.mixers.0", "net.mixers.1"]
    with pytest.raises(ValueError, match="'mixers' matched no module"):
        resolve_targets(wrapper, "mixers")
    with pytest.raises(
        ValueError, match=r"'qv' cannot apply to Module \(vtest_mixer: a mixer has no queries"
    ):
        resolve_targets(wrapper, "qv")
    with pytest.raises(ValueError, match="No backbone family .* defines preset 'all-linear'"):
        resolve_targets(wrapper, "all-linear")


def test_a_preset_of_a_family_the_model_is_not_is_an_error_naming_it(mixer_family):
    with pytest.raises(
        ValueError, match=r"'mixers' belongs to backbone family \['vtest_mixer'\].*is generic"
    ):
        resolve_targets(nn.Sequential(nn.Linear(2, 2)), "mixers")


def test_registering_the_same_family_again_is_a_no_op_and_a_different_one_an_error(mixer_family):
    again = register_family(
        name="vtest_mixer",
        detect=is_mixer_net,
        presets=dict(MIXER_PRESETS),
        unsupported=mixer_family.unsupported,
    )
    assert again is mixer_family
    with pytest.raises(ValueError, match="'vtest_mixer' is already registered"):
        register_family(
            name="vtest_mixer", detect=is_mixer_net, presets={"attention": r"mixers\.\d+\.channel"}
        )
    with pytest.raises(ValueError, match="'vtest_mixer' is already registered"):
        register_family(name="vtest_mixer", detect=lambda module: False, presets=MIXER_PRESETS)
    assert registered_families()["vtest_mixer"] is mixer_family


def test_register_family_is_keyword_only():
    with pytest.raises(TypeError):
        register_family("vtest_positional", is_mixer_net, MIXER_PRESETS)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "Mixer"}, ValueError, "lower-case identifier"),
        ({"detect": "mixers"}, TypeError, "must be a callable"),
        ({"presets": {}}, ValueError, "at least one preset"),
        ({"presets": {"attention": "(unclosed"}}, ValueError, "must be a regex string"),
        ({"presets": {"Attention": "x"}}, ValueError, "must be lower case"),
        ({"presets": {"layernorm": "x"}}, ValueError, "resolved model-wide"),
        ({"unsupported": {"mixers": "why"}}, ValueError, "only standard presets"),
        ({"unsupported": {"attention": "why"}}, ValueError, "both defines and declares unsupported"),
        ({"unsupported": {"qv": " "}}, ValueError, "must say why"),
    ],
)
def test_register_family_validates_eagerly(kwargs, error, match):
    arguments = {"name": "vtest_bad", "detect": is_mixer_net, "presets": MIXER_PRESETS, **kwargs}
    with pytest.raises(error, match=match):
        register_family(**arguments)
    assert "vtest_bad" not in registered_families()


def test_unregistering_an_unknown_family_names_the_registered_ones():
    with pytest.raises(KeyError, match="'vtest_nothing' is not a registered backbone family.*hf_bert"):
        _unregister_family("vtest_nothing")


# --- models: registered names, class_path mappings, plugin packages ----------------------------------------


def fixed_net(width: int = 4) -> nn.Module:
    """A factory that takes none of the task's arguments."""
    return nn.Linear(width, 2)


def test_class_path_builds_any_module_and_passes_only_accepted_task_arguments():
    model = build_model(
        {"class_path": "monai.networks.nets.FullyConnectedNet", "init_args": {"hidden_channels": [8]}},
        model_args={"dropout": 0.1},
        input_shape=(4,),
        num_outputs=3,
        task="classification",
        in_channels=4,
        out_channels=3,
    )
    assert model(torch.randn(2, 4)).shape == (2, 3)  # input_shape/num_outputs/task: not in its signature
    assert model.hidden_0[1].D.p == 0.1


def test_class_path_init_args_override_task_arguments_and_kwargs_factories_get_everything(monkeypatch):
    import torch.nn as torch_nn

    received = {}

    def factory(**kwargs):
        received.update(kwargs)
        return torch_nn.Identity()

    monkeypatch.setattr(torch_nn, "vtest_factory", factory, raising=False)
    build_model(
        {"class_path": "torch.nn.vtest_factory", "init_args": {"num_outputs": 7}},
        input_shape=(3,),
        num_outputs=2,
    )
    assert received == {"input_shape": (3,), "num_outputs": 7}


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ({"class_path": "torch.nn.Linear", "args": {}}, ValueError, "takes `class_path` .* and `init_args`"),
        ({"init_args": {}}, ValueError, "takes `class_path`"),
        ({"class_path": "Linear"}, ValueError, "must be a dotted path"),
        ({"class_path": "torch.nn.NoSuchLayer"}, ImportError, "has no attribute 'NoSuchLayer'"),
        ({"class_path": "vtest_no_such_package.Net"}, ImportError, "no importable module"),
        ({"class_path": "collections.OrderedDict"}, TypeError, "not an nn.Module subclass"),
        (
            {"class_path": "torch.zeros", "init_args": {"size": (2,)}},
            TypeError,
            "returned Tensor, not an nn.Module",
        ),
    ],
)
def test_class_path_errors_name_the_bad_value(spec, error, match):
    with pytest.raises(error, match=match):
        build_model(spec, input_shape=(2,))


def test_a_value_given_in_init_args_and_model_args_is_an_error():
    with pytest.raises(ValueError, match=r"\['in_features'\] given twice"):
        build_model(
            {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2}},
            model_args={"in_features": 2, "out_features": 2},
        )


def test_model_args_are_never_dropped():
    with pytest.raises(TypeError, match="widht"):
        build_model({"class_path": "torch.nn.ReLU"}, model_args={"widht": 3})


def test_import_object_reaches_attributes_of_classes():
    assert import_object("torch.nn.Linear") is nn.Linear
    assert import_object("torch.Tensor.add") is torch.Tensor.add


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package outside verticals that registers a model at import, and one with a missing dependency."""
    (tmp_path / "vtest_plugin").mkdir()
    (tmp_path / "vtest_plugin" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from verticals.core.registry import register_model

            def net(input_shape, num_outputs, **kwargs):
                return nn.Linear(input_shape[0], num_outputs)

            register_model(name="vtest_plugin.net", builder=net)
            """
        )
    )
    (tmp_path / "vtest_broken").mkdir()
    (tmp_path / "vtest_broken" / "__init__.py").write_text("import vtest_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [name for name in sys.modules if name.startswith(("vtest_plugin", "vtest_broken"))]:
        del sys.modules[name]
    if "vtest_plugin.net" in registered_models():
        _unregister_model("vtest_plugin.net")


def test_a_registered_name_imports_its_package_outside_verticals(plugin_package):
    assert "vtest_plugin.net" not in registered_models()
    model = build_model("vtest_plugin.net", input_shape=(5,), num_outputs=2)
    assert isinstance(model, nn.Linear) and model.in_features == 5
    assert "vtest_plugin.net" in registered_models()


def test_unknown_models_and_missing_dependencies_are_named(plugin_package):
    with pytest.raises(KeyError, match="Unknown model 'vtest_nowhere.net'.*class_path"):
        build_model("vtest_nowhere.net")
    with pytest.raises(ModuleNotFoundError, match="vtest_missing_dependency"):
        build_model("vtest_broken.net")
    with pytest.raises(ValueError, match=r"\['num_outputs'\] given twice"):
        build_model("vtest_plugin.net", input_shape=(5,), num_outputs=2, model_args={"num_outputs": 3})
    with pytest.raises(TypeError, match="registered name or a"):
        build_model(3)  # type: ignore[arg-type]


def test_a_task_keeps_a_class_path_model_as_a_plain_dict(tmp_path):
    from verticals.core.tasks import ClassificationTask

    spec = {"class_path": "monai.networks.nets.FullyConnectedNet", "init_args": {"hidden_channels": [8]}}
    task = ClassificationTask(
        model=spec,
        model_args={"in_channels": 4, "out_channels": 3},
        adapter={"method": "lora", "targets": r"hidden_0\.0|output", "options": {"r": 2}},
        input_shape=[4],
        num_classes=3,
    )
    assert task.hparams["model"] == spec and type(task.hparams["model"]) is dict
    assert task(torch.randn(2, 4)).shape == (2, 3)
    path = tmp_path / "hparams.pt"
    torch.save({"hyper_parameters": dict(task.hparams)}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["model"] == spec
