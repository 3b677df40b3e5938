import numpy as np
import pytest
import torch
from adjoint_core_particles import (
    PACKAGED_REFERENCES,
    REFERENCE_FILES,
    dw4,
    find_reference,
    lj13,
    load_named_reference,
    load_reference,
    packaged_reference_path,
)
from adjoint_core_particles.reference import DATA_ENV_VAR


def test_load_flattened_and_mean_free(tmp_path):
    arr = np.arange(2 * 8, dtype=np.float32).reshape(2, 8)
    path = tmp_path / "toy.npy"
    np.save(path, arr)
    x = load_reference(path, 4, 2)
    assert x.shape == (2, 4, 2) and x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=1), torch.zeros(2, 2))
    raw = load_reference(path, 4, 2, mean_free=False, dtype=torch.float64)
    assert raw.dtype == torch.float64
    # (x1, y1, x2, y2, ...) ordering: particle 1 of sample 0 is (2, 3)
    assert raw[0, 1].tolist() == [2.0, 3.0]
    assert torch.allclose(raw - raw.mean(1, keepdim=True), x.double())


def test_load_already_shaped(tmp_path):
    path = tmp_path / "shaped.npy"
    np.save(path, np.ones((3, 13, 3)))
    assert load_reference(path, 13, 3).shape == (3, 13, 3)


def test_wrong_shape_names_file_and_shapes(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((5, 9), dtype=np.float32))
    with pytest.raises(ValueError) as info:
        load_reference(path, 4, 2)
    msg = str(info.value)
    assert "bad.npy" in msg and "(5, 9)" in msg and "(N, 8)" in msg


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_reference(tmp_path / "nope.npy", 4, 2)


def test_non_float_rejected(tmp_path):
    path = tmp_path / "ints.npy"
    np.save(path, np.zeros((2, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        load_reference(path, 4, 2)


def test_find_reference_uses_env_var(tmp_path, monkeypatch):
    (tmp_path / "particles").mkdir()
    np.save(tmp_path / "particles" / "lj13_val.npy", np.zeros((2, 39), dtype=np.float32))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert find_reference("lj13") == tmp_path / "particles" / "lj13_val.npy"
    np.save(tmp_path / "dw4_val.npy", np.zeros((2, 8), dtype=np.float32))
    assert find_reference("dw4") == tmp_path / "dw4_val.npy"


def test_find_reference_unknown_name():
    with pytest.raises(ValueError, match="known: dw4, lj13, lj55"):
        find_reference("lj99")
    assert REFERENCE_FILES == {"dw4": "dw4_val.npy", "lj13": "lj13_val.npy",
                               "lj55": "lj55_mcmc.npy"}


def _require(name):
    path = find_reference(name)
    assert path is not None, f"{name}: the package data should always be found"
    return path


def test_packaged_sets_ship_with_the_package():
    assert set(PACKAGED_REFERENCES) == {"dw4_val", "lj13_val", "lj55_mcmc"}
    for name, shape in (("dw4_val", (10000, 8)), ("lj13_val", (10000, 39)),
                        ("lj55_mcmc", (2000, 165))):
        path = packaged_reference_path(name)
        assert path.is_file() and path.parent.name == "data"
        arr = np.load(path)
        assert arr.shape == shape and arr.dtype == np.float32 and np.isfinite(arr).all()
    data = packaged_reference_path("dw4_val").parent
    assert "jarridrb/DEM" in (data / "README.md").read_text()
    assert "MIT License" in (data / "LICENSE-DEM.txt").read_text()
    with pytest.raises(ValueError, match="packaged: dw4_val, lj13_val, lj55_mcmc"):
        packaged_reference_path("dw4")


def test_find_reference_prefers_the_package_data(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # no data/ folder near the working directory
    assert find_reference("dw4") == packaged_reference_path("dw4_val")
    assert find_reference("lj13") == packaged_reference_path("lj13_val")
    found = find_reference("lj55")  # a generated full set in the repository's data/, else packaged
    assert found.name == "lj55_mcmc.npy" or found == packaged_reference_path("lj55_mcmc")


def test_plugin_registers_the_packaged_sets():
    from adjoint_core.plugins.registry import Registry

    reg = Registry()
    assert {"dw4_val", "lj13_val", "lj55_mcmc"} <= set(reg.names("reference"))
    entry = reg.get("reference", "dw4_val")
    assert entry.distribution == "adjoint-core-particles" and entry.plugin == "particles"
    assert entry.target == str(packaged_reference_path("dw4_val"))


def test_config_loader_reads_a_registered_name():
    from adjoint_core import EuclideanSpace
    from adjoint_core.app.run import load_reference as load_run_reference

    x = load_run_reference("dw4_val", EuclideanSpace(4, 2, mean_free=True))
    assert x.shape == (10000, 4, 2)
    assert x.mean(dim=1).abs().max() < 1e-4  # projected onto the mean-free subspace
    assert dw4().energy(x.double()).mean().item() == pytest.approx(-22.4, abs=0.3)


def test_dw4_reference_mean_energy():
    path = _require("dw4")
    x = load_reference(path, 4, 2)
    assert x.shape == (10000, 4, 2)
    raw = load_reference(path, 4, 2, mean_free=False)
    assert raw.mean(dim=1).abs().max() > 1.0  # the file itself is not mean-free
    assert x.mean(dim=1).abs().max() < 1e-4
    mean_e = dw4().energy(x.double()).mean().item()
    assert mean_e == pytest.approx(-22.4, abs=0.3)


def test_lj13_reference_mean_energy():
    _require("lj13")
    x = load_named_reference("lj13", dtype=torch.float64)
    assert x.shape == (10000, 13, 3)
    mean_e = lj13().energy(x).mean().item()
    assert mean_e == pytest.approx(-43.2, abs=0.5)
    # the halved (unordered-pair) convention would be far off: about -17
    halved = (0.5 * lj13().lj_energy(x) + lj13().oscillator_energy(x)).mean().item()
    assert halved > -25.0


def test_lj55_reference_mean_energy():
    from adjoint_core_particles import lj55

    x = load_reference(packaged_reference_path("lj55_mcmc"), 55, 3, dtype=torch.float64)
    assert x.shape == (2000, 55, 3)
    # the HMC run's report (data/lj55_mcmc.json) gives -325.38 for all 10,000 states
    assert lj55().energy(x).mean().item() == pytest.approx(-325.4, abs=1.5)
