"""Plugin system: entry points, in-process plugins, failing plugins, name resolution."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adjoint_core import ConfigError, Energy, Registry, hookimpl
from adjoint_core.app.config import build_components, load_config
from adjoint_core.training.trainer import AdjointSampler


class ShiftedQuadratic(Energy):
    """E(x) = 0.5 |x - shift|^2 on R^dim (a user's own energy)."""

    def __init__(self, dim: int = 2, shift: float = 1.0, temperature: float = 1.0):
        super().__init__((dim,), temperature)
        self.shift = shift

    def _energy(self, x):
        return 0.5 * (x - self.shift).pow(2).sum(-1)


class MyPlugin:
    @hookimpl
    def register_energies(self):
        return {"shifted_quadratic": ShiftedQuadratic}


def _registry_with_my_plugin():
    reg = Registry()  # installed entry points: core + particles + egnn
    reg.add_plugin(MyPlugin(), name="my-plugin")
    return reg


def test_in_process_plugin_usable_by_name_from_config():
    reg = _registry_with_my_plugin()
    cfg = load_config({
        "seed": 3,
        "energy": {"name": "shifted_quadratic", "dim": 2, "shift": 2.0},
        "space": {"name": "euclidean", "dim": 2},
        "schedule": {"name": "geometric", "sigma_min": 0.01, "sigma_max": 2.0},
        "model": {"name": "mlp", "hidden": 32, "n_layers": 2},
        "buffer": {"name": "fifo", "capacity": 2048},
        "train": {"n_epochs": 30, "samples_per_epoch": 256, "grad_steps_per_epoch": 60,
                  "train_batch_size": 256, "n_sde_steps": 50, "lr": 3e-3,
                  "max_grad_norm": None},
    })
    c = build_components(cfg, reg)
    assert isinstance(c["energy"], ShiftedQuadratic) and c["energy"].shift == 2.0
    torch.manual_seed(0)
    s = AdjointSampler(c["energy"], c["space"], c["schedule"], c["model"], c["buffer"],
                       settings=cfg.train, seed=cfg.seed)
    s.fit()
    x = s.sample(4000).double()
    assert torch.allclose(x.mean(0), torch.full((2,), 2.0, dtype=torch.float64), atol=0.15)
    assert torch.allclose(x.std(0), torch.ones(2, dtype=torch.float64), atol=0.15)
    entry = reg.get("energy", "shifted_quadratic")
    assert entry.plugin == "my-plugin"


def test_builtin_and_plugin_components_are_listed_with_distribution():
    reg = Registry()
    dists = {(e.kind, e.name): e.distribution for e in reg.entries()}
    assert dists[("space", "euclidean")] == "adjoint-core"
    assert dists[("schedule", "geometric")] == "adjoint-core"
    assert dists[("energy", "dw4")] == "adjoint-core-particles"
    assert dists[("model", "egnn")] == "adjoint-core-egnn"


def test_unknown_name_lists_registered_ones():
    reg = Registry()
    with pytest.raises(ConfigError, match=r"unknown energy 'dw5'.*dw4.*lj13"):
        reg.get("energy", "dw5")


def test_bad_parameters_name_the_field():
    reg = Registry()
    with pytest.raises(ConfigError, match=r"schedule.*sigma_max"):
        reg.build("schedule", "geometric", {"sigma_min": 1.0, "sigma_max": 0.5})
    with pytest.raises(ConfigError, match=r"schedule\.sigma_min.*'abc'"):
        reg.build("schedule", "geometric", {"sigma_min": "abc"})
    with pytest.raises(ConfigError, match=r"buffer\.size: .*: unknown parameter.*capacity"):
        reg.build("buffer", "fifo", {"size": 3})


def test_name_clash_between_plugins_is_an_error():
    reg = Registry(load_entry_points=False)
    reg.register("energy", "e", ShiftedQuadratic, plugin="a")
    with pytest.raises(ValueError, match="clashes"):
        reg.register("energy", "e", lambda: None, plugin="b")


def _make_dist(root: Path, name: str, module: str, body: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[adjoint_core]\n{module} = {module}\n")


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    _make_dist(tmp_path, "broken-plugin", "broken_ac_plugin",
               "raise ImportError('needs a library that is not installed')\n")
    _make_dist(tmp_path, "good-plugin", "good_ac_plugin", """
        from adjoint_core import hookimpl
        from adjoint_core.problem.gaussian import gaussian

        @hookimpl
        def register_energies():
            return {"good_gaussian": gaussian}
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_failing_plugin_is_reported_and_others_load(fake_plugins):
    with pytest.warns(RuntimeWarning, match="broken_ac_plugin"):
        reg = Registry()
    assert [f.plugin for f in reg.failures] == ["broken_ac_plugin"]
    assert reg.failures[0].distribution == "broken-plugin"
    assert "needs a library" in reg.failures[0].error
    assert reg.get("energy", "good_gaussian").distribution == "good-plugin"
    assert "dw4" in reg.names("energy") and "euclidean" in reg.names("space")
    with pytest.raises(ConfigError, match="broken_ac_plugin"):
        reg.get("energy", "something_from_the_broken_plugin")


def test_plugins_command_lists_components_and_failures(fake_plugins):
    env = {**os.environ, "PYTHONPATH": str(fake_plugins)}
    out = subprocess.run([sys.executable, "-m", "adjoint_core.app.cli", "plugins"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "FAILED plugin 'broken_ac_plugin' from broken-plugin" in out
    lines = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert ("energy", "good_gaussian", "good-plugin") in lines
    assert ("energy", "lj55", "adjoint-core-particles") in lines
    assert ("model", "mlp", "adjoint-core") in lines


def test_env_var_restricts_plugins(fake_plugins, monkeypatch):
    monkeypatch.setenv("ADJOINT_CORE_PLUGINS", "good_ac_plugin")
    reg = Registry()
    assert not reg.failures
    assert "good_gaussian" in reg.names("energy") and "dw4" not in reg.names("energy")
    assert "euclidean" in reg.names("space")  # core always loads
