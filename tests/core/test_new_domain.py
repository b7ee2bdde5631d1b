"""A new domain is one folder: a throwaway package with its own backbone family and preset, PEFT method,
model, data and YAML config runs through ``verticals fit`` with nothing in the core edited."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import verticals.domains
from verticals.core.adapters.families import _unregister_family, registered_families
from verticals.core.cli import packaged_configs, run_cli
from verticals.core.peft_methods import _unregister_method, registered_methods
from verticals.core.registry import _unregister_model, build_model, registered_models

REPOSITORY = Path(__file__).resolve().parents[2]

MODELS = '''
"""A gated MLP stack: ``stack.N`` blocks of ``norm`` (LayerNorm), ``mix`` and ``gate`` (Linear)."""
import torch
from torch import nn

from verticals.core.adapters.families import every_block_has, register_family
from verticals.core.registry import register_model


class GatedBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        h = self.norm(x)
        return x + self.mix(h) * torch.sigmoid(self.gate(h))


class GatedNet(nn.Module):
    def __init__(self, input_shape, num_outputs, width=8, depth=2):
        super().__init__()
        self.embed = nn.Linear(input_shape[0], width)
        self.stack = nn.ModuleList(GatedBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x):
        h = self.embed(x)
        for block in self.stack:
            h = block(h)
        return self.head(h)


def gated_net(input_shape, num_outputs, task="classification", **options):
    return GatedNet(input_shape, num_outputs, **options)


def is_gated_net(module):
    return every_block_has(module, "stack", {"norm": nn.LayerNorm, "mix": nn.Linear, "gate": nn.Linear})


register_family(
    name="vtoy_gated",
    detect=is_gated_net,
    presets={"gates": r"stack\\.\\d+\\.(?:norm|gate)", "attention": r"stack\\.\\d+\\.mix", "blocks": r"stack\\.\\d+"},
)
register_model(name="vtoy_domain.gated_net", builder=gated_net)
'''

ADAPTERS = '''
"""A per-feature output scale on nn.Linear layers, as a peft method (``vtoy_scale``)."""
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType
from torch import nn

from verticals.core.peft_methods import register_method


@dataclass
class ScaleConfig(PeftConfig):
    target_kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)
    target_modules: list[str] | str | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType("VTOY_SCALE")


class ScaleLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names = ("vtoy_scale_vector",)

    def __init__(self, base_layer, adapter_name):
        super().__init__()
        self.base_layer = base_layer
        self.vtoy_scale_vector = nn.ParameterDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name)

    def update_layer(self, adapter_name):
        self.vtoy_scale_vector[adapter_name] = nn.Parameter(torch.ones(self.base_layer.out_features))
        self.set_adapter(self.active_adapters)

    def forward(self, x, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return out
        for name in self.active_adapters:
            out = out * self.vtoy_scale_vector[name]
        return out


class ScaleModel(BaseTuner):
    prefix = "vtoy_scale_"
    tuner_layer_cls = ScaleLayer
    target_module_mapping = {}

    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, ScaleLayer):
            target.update_layer(adapter_name)
            return
        self._replace_module(parent, target_name, ScaleLayer(target, adapter_name), target)


register_method(name="vtoy_scale", config_cls=ScaleConfig, model_cls=ScaleModel, prefix=ScaleModel.prefix)
'''

DATA = '''
"""Generated data with a planted rule: the class is whether the first feature is positive."""
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class Planted(Dataset):
    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(count, 4, generator=generator)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class ToyDataModule(L.LightningDataModule):
    input_shape = (4,)
    num_classes = 2

    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(Planted(64, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Planted(32, 1), batch_size=self.batch_size)
'''

CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 2
  default_root_dir: {root}
  enable_progress_bar: false
model:
  class_path: verticals.core.tasks.ClassificationTask
  init_args:
    model: {model}
    model_args: {{width: 8}}
    adapter: {{method: vtoy_scale, targets: gates, trainable: [head]}}
    learning_rate: 0.05
data:
  class_path: vtoy_domain.data.ToyDataModule
  init_args: {{batch_size: 16}}
"""


@pytest.fixture
def toy_domain(tmp_path, monkeypatch):
    """Write the throwaway domain package; afterwards remove every trace of it from the registries."""
    package = tmp_path / "vtoy_domain"
    (package / "configs").mkdir(parents=True)
    (package / "__init__.py").write_text("from vtoy_domain import adapters, models  # registers all three\n")
    (package / "models.py").write_text(textwrap.dedent(MODELS))
    (package / "adapters.py").write_text(textwrap.dedent(ADAPTERS))
    (package / "data.py").write_text(textwrap.dedent(DATA))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_cli sets sys.argv for Lightning's launchers
    yield package
    for name in [name for name in sys.modules if name.split(".")[0] == "vtoy_domain"]:
        del sys.modules[name]
    if "vtoy_scale" in registered_methods():
        _unregister_method("vtoy_scale")
    if "vtoy_gated" in registered_families():
        _unregister_family("vtoy_gated")
    if "vtoy_domain.gated_net" in registered_models():
        _unregister_model("vtoy_domain.gated_net")


def _fit(package: Path, root: Path, model: str) -> object:
    config = package / "configs" / f"{root.name}.yaml"
    config.write_text(CONFIG.format(root=root, model=model))
    return run_cli(["fit", "--config", str(config)])


def test_a_new_domain_folder_runs_verticals_fit(toy_domain, tmp_path):
    cli = _fit(toy_domain, tmp_path / "by_name", "vtoy_domain.gated_net")  # a registered name: imports it
    assert "vtoy_gated" in registered_families() and "vtoy_scale" in registered_methods()
    net = cli.model.net
    assert isinstance(net, PeftModel) and type(net.base_model).__name__ == "ScaleModel"
    # The family's preset, narrowed to the method's declared kinds (nn.Linear): the gates, not the norms.
    assert set(net.peft_config["default"].target_modules) == {"stack.0.gate", "stack.1.gate"}
    scales = {name: p for name, p in net.named_parameters() if "vtoy_scale_vector" in name}
    assert len(scales) == 2 and all(p.requires_grad for p in scales.values())
    assert not all(torch.equal(p, torch.ones_like(p)) for p in scales.values())  # the adapter trained
    assert cli.trainer.global_step == 8
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert checkpoint["hyper_parameters"]["model"] == "vtoy_domain.gated_net"


def test_a_new_domain_model_can_be_named_by_class_path(toy_domain, tmp_path):
    spec = "{class_path: vtoy_domain.models.GatedNet, init_args: {depth: 3}}"
    cli = _fit(toy_domain, tmp_path / "by_class_path", spec)
    net = cli.model.net
    assert set(net.peft_config["default"].target_modules) == {f"stack.{i}.gate" for i in range(3)}
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    expected = {"class_path": "vtoy_domain.models.GatedNet", "init_args": {"depth": 3}}
    assert checkpoint["hyper_parameters"]["model"] == expected


def _plugin_folder(tmp_path: Path) -> Path:
    """A plugin distribution's layout: ``verticals/domains/<name>/`` with no ``verticals.domains`` of its own."""
    domain = tmp_path / "verticals" / "domains" / "vtoy_plugin"
    (domain / "configs").mkdir(parents=True)
    (domain / "__init__.py").write_text(
        "from torch import nn\nfrom verticals.core.registry import register_model\n"
        "register_model(name='vtoy_plugin.net', builder=lambda input_shape, num_outputs: nn.Linear(2, 2))\n"
    )
    (domain / "configs" / "demo.yaml").write_text("# A plugin config.\nseed_everything: 0\n")
    return tmp_path


def test_a_plugin_folder_on_the_path_joins_verticals_domains(tmp_path):
    root = _plugin_folder(tmp_path)
    code = "import verticals.domains.vtoy_plugin as plugin; print(plugin.__file__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(root / "verticals" / "domains" / "vtoy_plugin" / "__init__.py")


def test_a_joined_plugin_folder_lists_its_configs_and_registers_its_models(tmp_path, monkeypatch):
    root = _plugin_folder(tmp_path)
    monkeypatch.setattr(
        verticals.domains, "__path__", [*verticals.domains.__path__, str(root / "verticals/domains")]
    )
    try:
        assert (
            packaged_configs()["vtoy_plugin/demo"] == root / "verticals/domains/vtoy_plugin/configs/demo.yaml"
        )
        assert "timeseries/gunpoint_lora" in packaged_configs()  # the package's own folder still comes first
        assert isinstance(build_model("vtoy_plugin.net", input_shape=(2,), num_outputs=2), torch.nn.Linear)
    finally:
        sys.modules.pop("verticals.domains.vtoy_plugin", None)
        if "vtoy_plugin.net" in registered_models():
            _unregister_model("vtoy_plugin.net")


def test_setup_finds_every_package_so_a_new_domain_needs_no_pyproject_edit(tmp_path, monkeypatch):
    for package in ("core", "core/tasks", "domains", "domains/vtoy_new", "domains/vtoy_new/sub", "kernels"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    packages = runpy.run_path(str(REPOSITORY / "setup.py"), run_name="verticals_setup")["packages"]
    assert set(packages) == {
        "verticals.core",
        "verticals.core.tasks",
        "verticals.domains",
        "verticals.domains.vtoy_new",
        "verticals.domains.vtoy_new.sub",
        "verticals.kernels",
    }
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert '"verticals.domains" = ["*/configs/*.yaml"]' in pyproject and "packages = [" not in pyproject


def test_a_method_a_domain_registers_is_found_without_importing_the_domain(tmp_path, monkeypatch):
    """A config may name a domain's PEFT method on a backbone of its own (nothing of the domain imported
    yet): the core imports the installed domains' ``adapters`` modules before calling the method unknown."""
    from verticals.core.adapters.api import build_peft_config

    domain = tmp_path / "verticals" / "domains" / "vtoy_methods"
    domain.mkdir(parents=True)
    (domain / "__init__.py").write_text("")
    (domain / "adapters.py").write_text(textwrap.dedent(ADAPTERS))
    monkeypatch.setattr(
        verticals.domains, "__path__", [*verticals.domains.__path__, str(tmp_path / "verticals/domains")]
    )
    assert "vtoy_scale" not in registered_methods()
    try:
        config = build_peft_config(torch.nn.Sequential(torch.nn.Linear(2, 2)), "vtoy_scale", ["0"])
        assert type(config).__module__ == "verticals.domains.vtoy_methods.adapters"
        with pytest.raises(ValueError, match="Unknown adapter method 'vtoy_nothing'.*vtoy_scale"):
            build_peft_config(torch.nn.Linear(2, 2), "vtoy_nothing", None)
    finally:
        for name in [name for name in sys.modules if name.startswith("verticals.domains.vtoy_methods")]:
            del sys.modules[name]
        if "vtoy_scale" in registered_methods():
            _unregister_method("vtoy_scale")
