import importlib.metadata as im

import adjoint_core_particles
import adjoint_core_particles.plugin as plugin
import pytest
import torch
from adjoint_core_particles import DoubleWellEnergy, GaussianMixtureEnergy, LennardJonesEnergy

from adjoint_core import ConfigError, Registry

NAMES = {"dw4", "lj13", "lj55", "gmm40", "double_well", "lennard_jones", "gaussian_mixture"}


@pytest.fixture
def registry():
    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="particles")
    assert reg.failures == []
    return reg


def test_registers_names(registry):
    assert NAMES <= set(registry.names("energy"))
    entry = registry.get("energy", "lj13")
    assert entry.plugin == "particles"


def test_build_presets(registry):
    e = registry.build("energy", "dw4", {})
    assert isinstance(e, DoubleWellEnergy) and e.event_shape == (4, 2)
    assert (e.a, e.b, e.c, e.offset) == (0.0, -4.0, 0.9, 4.0)
    e = registry.build("energy", "lj13", {"temperature": 2.0})
    assert isinstance(e, LennardJonesEnergy) and e.event_shape == (13, 3)
    assert e.temperature == 2.0
    assert registry.build("energy", "lj55", {}).event_shape == (55, 3)
    g = registry.build("energy", "gmm40", {})
    assert isinstance(g, GaussianMixtureEnergy) and g.event_shape == (2,)
    x = torch.zeros(3, 4, 2)
    assert registry.build("energy", "dw4", {}).energy(x).shape == (3,)


def test_build_general(registry):
    e = registry.build("energy", "lennard_jones", {"n_particles": 7, "spatial_dim": 2})
    assert e.event_shape == (7, 2)
    e = registry.build("energy", "double_well", {"n_particles": "3", "c": 1})
    assert e.event_shape == (3, 2) and e.c == 1.0
    e = registry.build("energy", "gaussian_mixture", {"n_modes": 4, "dim": 3})
    assert e.event_shape == (3,) and e.means.shape == (4, 3)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("lj13", {"n_particles": 0}, "energy.n_particles: 0: unknown parameter"),
        ("lennard_jones", {"n_particles": 0}, "n_particles must be >= 2, got 0"),
        ("lennard_jones", {"epsilon": -1.0}, "epsilon must be > 0, got -1.0"),
        ("lennard_jones", {"n_particles": 2.5}, "energy.n_particles"),
        ("dw4", {"temperature": "hot"}, "energy.temperature"),
        ("dw4", {"temperature": 0.0}, "temperature must be > 0"),
        ("gmm40", {"n_modes": 3}, "energy.n_modes: 3: unknown parameter"),
        ("double_well", {"c": -1.0}, "unbounded below"),
    ],
)
def test_bad_parameters_raise_config_error(registry, name, params, match):
    with pytest.raises(ConfigError, match=match):
        registry.build("energy", name, params)
    assert issubclass(ConfigError, ValueError)


def test_entry_point_declared():
    try:
        dist = im.distribution("adjoint-core-particles")
    except im.PackageNotFoundError:
        pytest.skip("adjoint-core-particles is not installed (pip install -e the plugin)")
    eps = [ep for ep in dist.entry_points if ep.group == "adjoint_core"]
    assert [(ep.name, ep.value) for ep in eps] == [("particles", "adjoint_core_particles.plugin")]
    assert eps[0].load() is plugin
    assert dist.version == adjoint_core_particles.__version__
