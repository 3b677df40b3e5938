"""``adjoint-core --version``, ``adjoint-core info``, the train verdict and named reference sets."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import adjoint_core
from adjoint_core import EuclideanSpace, hookimpl
from adjoint_core.app import cli
from adjoint_core.app.run import load_reference
from adjoint_core.plugins.registry import ConfigError, Registry


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"adjoint-core {adjoint_core.__version__}"


def test_info_lists_versions_and_device(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"adjoint-core {adjoint_core.__version__}\n")
    for dist in ("adjoint-core-particles", "adjoint-core-egnn", "adjoint-core-chem",
                 "adjoint-core-torsion", "adjoint-core-esen"):
        assert f"  {dist} " in out, dist
    for key in ("python:", "torch:", "numpy:", "rdkit:", "device:"):
        assert key in out
    assert torch.__version__ in out and np.__version__ in out
    if not torch.cuda.is_available():
        assert f"device: cpu: {torch.get_num_threads()} threads" in out


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adjoint-core"] == adjoint_core.__version__
    assert info["plugins"]["adjoint-core-particles"]
    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    assert info["device"].startswith(("cpu:", "cuda:"))
    assert isinstance(info["plugin_failures"], list)


def test_plugins_lists_the_reference_sets(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["components"]
    refs = {r["name"]: r for r in rows if r["kind"] == "reference"}
    assert {"dw4_val", "lj13_val", "lj55_mcmc"} <= set(refs)
    assert refs["dw4_val"]["distribution"] == "adjoint-core-particles"
    assert refs["dw4_val"]["target"].endswith("dw4_val.npy")


def test_reference_by_name_before_file_and_unknown_names(tmp_path, monkeypatch):
    space = EuclideanSpace(4, 2, mean_free=True)
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "dw4_val", np.zeros((3, 8), dtype=np.float32))  # writes dw4_val.npy
    assert load_reference("dw4_val", space).shape == (10000, 4, 2)  # the name wins
    assert load_reference("dw4_val.npy", space).shape == (3, 4, 2)  # a file path still works
    with pytest.raises(ConfigError) as info:
        load_reference("dw5_val", space)
    msg = str(info.value)
    assert "'dw5_val' is neither a registered reference set nor an existing file" in msg
    assert "dw4_val" in msg and "lj13_val" in msg  # the registered names are listed
    with pytest.raises(ConfigError, match=r"has shape \(10000, 39\), expected \(N, 8\)"):
        load_reference("lj13_val", space)


def test_third_party_plugin_registers_references(tmp_path):
    path = tmp_path / "ring.npy"
    np.save(path, np.ones((5, 6), dtype=np.float32))
    plugin = types.SimpleNamespace(register_references=hookimpl(
        lambda: {"ring_file": str(path), "ring_loader": lambda: np.zeros((7, 6))}))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="ring", distribution="ring-plugin")
    assert reg.names("reference") == ["ring_file", "ring_loader"]
    assert reg.get("reference", "ring_file").target == str(path)
    space = EuclideanSpace(dim=6)
    assert load_reference("ring_file", space, registry=reg).shape == (5, 6)
    assert load_reference("ring_loader", space, registry=reg).shape == (7, 6)


def test_train_verdict_reads_the_evaluations(tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "energy_hist.png").write_bytes(b"")
    ev = {"n_samples": 1000.0, "geometric_samples": 500.0, "reference_energy_mean": -22.45}
    record = {
        "evaluations": [
            {"tag": "untrained", "epoch": 0, "energy_w2": 300.0, "geometric_w2_papers": 1.8,
             "energy_mean": 98.0, **ev},
            {"tag": "final", "epoch": 30, "energy_w2": 2.0, "geometric_w2_papers": 0.7,
             "energy_mean": -20.5, **ev},
        ],
        "counters": {"energy_evals": 7680, "grad_steps": 2250},
    }
    text = cli._verdict(record, tmp_path)
    assert "before training (untrained)" in text and "after training (epoch 30)" in text
    assert "reference samples" in text and "-22.45" in text
    assert "150-fold" in text and "7,680 energy evaluations" in text
    assert str(plots / "energy_hist.png") in text
    assert "pair_distances.png" not in text  # only pictures that exist are listed
    no_ref = cli._verdict({"evaluations": [], "counters": {}}, tmp_path)
    assert "no evaluation against a reference" in no_ref
