"""Checkpoint loading: a missing or incompatible file gives a clear error naming it."""

import copy

import pytest
import torch

pytest.importorskip(
    "fairchem.core",
    reason="fairchem-core is not installed (pip install adjoint-core[esen]); eSEN tests skipped")

from adjoint_core_esen import (  # noqa: E402
    ESENArchitecture,
    ESENCheckpointError,
    ESENPotential,
    build_random_checkpoint,
    inspect_checkpoint,
)
from adjoint_core_esen.plugin import register_energies  # noqa: E402

from adjoint_core import ConfigError, Registry  # noqa: E402

EXPECTED = "expected a fairchem-core 2.x inference checkpoint"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    arch = ESENArchitecture(sphere_channels=16, hidden_channels=16, edge_channels=16,
                            num_distance_basis=16, num_layers=1)
    return build_random_checkpoint(tmp_path_factory.mktemp("ck") / "good.pt", arch, seed=1)


def variant(good, tmp_path, name, edit):
    ck = torch.load(good, map_location="cpu", weights_only=False)
    ck = copy.deepcopy(ck)
    edit(ck)
    path = tmp_path / name
    torch.save(ck, path)
    return path


def test_esen_good_checkpoint_is_described(good):
    info = inspect_checkpoint(good)
    assert info.backbone.endswith("escn_md.eSCNMDBackbone")
    assert info.datasets == ("omol",) and info.energy_task == "omol_energy"
    assert info.has_forces_task and info.backbone_config["direct_forces"] is False
    assert info.fairchem_version.startswith("2.")


def test_esen_missing_checkpoint(tmp_path):
    path = tmp_path / "nowhere" / "esen.pt"
    with pytest.raises(ESENCheckpointError) as err:
        ESENPotential(path)
    msg = str(err.value)
    assert str(path) in msg and "no such file" in msg and EXPECTED in msg
    reg = Registry(load_entry_points=False)
    for name, factory in register_energies().items():
        reg.register("energy", name, factory)
    with pytest.raises(ConfigError, match=r"energy 'esen' rejected its parameters.*nowhere"):
        reg.build("energy", "esen", {"checkpoint": str(path), "atomic_numbers": [8, 1, 1]})


def test_esen_unreadable_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ESENCheckpointError, match=r"junk\.pt.*cannot be read as a torch"):
        inspect_checkpoint(junk)
    v1 = tmp_path / "esen_v1.pt"
    torch.save({"config": {"model": {"name": "esen"}}, "state_dict": {}}, v1)
    with pytest.raises(ESENCheckpointError, match=r"esen_v1\.pt.*fairchem-core 1\.x"):
        inspect_checkpoint(v1)
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ESENCheckpointError, match=r"weights\.pt.*holds a dict with keys"):
        inspect_checkpoint(plain)
    with pytest.raises(ESENCheckpointError, match="is not a file"):
        inspect_checkpoint(tmp_path)


def test_esen_incompatible_models(good, tmp_path):
    def direct(ck):
        ck.model_config["backbone"]["direct_forces"] = True

    with pytest.raises(ESENCheckpointError, match="direct-force model"):
        inspect_checkpoint(variant(good, tmp_path, "direct.pt", direct))

    def other(ck):
        ck.model_config["backbone"]["model"] = "torch.nn.Linear"

    with pytest.raises(ESENCheckpointError, match="'torch.nn.Linear' is not of the eSEN family"):
        inspect_checkpoint(variant(good, tmp_path, "other.pt", other))

    with pytest.raises(ESENCheckpointError,
                       match=r"no energy task for task_name 'omat'.*cover \['omol'\]"):
        inspect_checkpoint(good, task_name="omat")

    def truncated(ck):
        key = next(k for k in ck.model_state_dict if "blocks" in k)
        del ck.model_state_dict[key]
        del ck.ema_state_dict["module." + key]

    bad = variant(good, tmp_path, "truncated.pt", truncated)
    with pytest.raises(ESENCheckpointError, match=r"truncated\.pt.*could not build the model"):
        ESENPotential(bad)


def test_esen_energy_only_checkpoint_gets_autograd_forces(good, tmp_path):
    """A checkpoint with only an energy task still yields forces (fairchem's autograd)."""
    def energy_only(ck):
        ck.tasks_config = [t for t in ck.tasks_config if t["property"] == "energy"]

    path = variant(good, tmp_path, "energy_only.pt", energy_only)
    assert not inspect_checkpoint(path).has_forces_task
    x = torch.tensor([[[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]]])
    ((e1, f1),) = ESENPotential(path).evaluate([[8, 1, 1]], [x])
    ((e2, f2),) = ESENPotential(good).evaluate([[8, 1, 1]], [x])
    assert torch.allclose(e1, e2) and torch.allclose(f1, f2, atol=1e-6)
