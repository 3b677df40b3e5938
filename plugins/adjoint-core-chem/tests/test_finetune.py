"""Per-molecule fine-tuning with Adjoint Sampling from a tiny amortized run, and the
``conformers --finetune-steps / --weights`` options."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from adjoint_core_chem.api import generate_conformers, load_conformer_run
from adjoint_core_chem.finetune import finetune
from adjoint_core_chem.pretrained import export_model
from rdkit import Chem

from adjoint_core.app.cli import main
from adjoint_core.app.config import load_config
from adjoint_core.app.run import train_run
from adjoint_core.plugins.registry import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run_config):
    run = tmp_path_factory.mktemp("finetune") / "run"
    train_run(load_config(tiny_run_config), run, progress=False, log=lambda *a: None)
    return run


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_finetune_one_molecule_with_mmff(run_dir):
    base = load_conformer_run(run_dir)
    before = _weights(base.sampling_model)
    tuned = finetune("CCOC", base, "mmff", steps=7, steps_per_epoch=3, samples_per_epoch=8,
                     batch_size=8, seed=1, progress=False)
    assert tuned.counters["grad_steps"] == 7 and tuned.counters["epoch"] == 3
    assert tuned.counters["energy_evals"] == 24 and tuned.target.energy.n_evaluations > 0
    assert all(math.isfinite(r["loss"]) for r in tuned.history)
    after = _weights(tuned.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the starting model is left as it was
    assert all(torch.equal(before[k], v) for k, v in _weights(base.sampling_model).items())
    mol = generate_conformers("CCOC", tuned, 4, seed=2)
    xyz = torch.from_numpy(np.stack([c.GetPositions() for c in mol.GetConformers()]))
    assert xyz.shape == (4, 12, 3) and torch.isfinite(xyz).all()
    e = [c.GetDoubleProp("energy_mmff_kcal_mol") for c in mol.GetConformers()]
    assert all(math.isfinite(v) for v in e)
    # the fine-tuned trainer also serves importance weights (towards its MMFF energy)
    w_mol = generate_conformers("CCOC", tuned, 6, weights=True, seed=3)
    assert 1.0 <= w_mol.GetDoubleProp("ess") <= 6.0 + 1e-9


def test_finetune_refusals(run_dir, monkeypatch):
    base = load_conformer_run(run_dir)
    with pytest.raises(ConfigError, match="steps: 0: an integer >= 1"):
        finetune("CCO", base, "mmff", steps=0, progress=False)
    with pytest.raises(ConfigError, match="energy: 'amber': one of 'mmff', 'xtb'"):
        finetune("CCO", base, "amber", steps=2, progress=False)
    with pytest.raises(ConfigError, match="clip: 0: a number > 0"):
        finetune("CCO", base, "mmff", steps=2, clip=0, progress=False)
    with pytest.raises(ConfigError, match="lr: nan: a number > 0"):
        finetune("CCO", base, "mmff", steps=2, lr=float("nan"), progress=False)
    monkeypatch.setitem(sys.modules, "tblite", None)
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    with pytest.raises(ConfigError, match="needs the optional package tblite"):
        finetune("CCO", base, "xtb", steps=2, progress=False)


def test_conformers_cli_finetune_and_weights(run_dir, tmp_path, capsys, monkeypatch):
    model = export_model(run_dir, tmp_path / "model")
    out = tmp_path / "confs"
    args = ["conformers", "--run", str(model), "--smiles", "CCOC", "--smiles", "C[N+](C)(C)C",
            "--num-conformers", "5", "--out", str(out), "--weights", "--finetune-steps", "4",
            "--no-progress"]
    assert main(args) == 2  # the cation is skipped, the ether written
    text = capsys.readouterr().out
    assert "skipped C[N+](C)(C)C" in text and "net charge" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] is True and summary["finetune"] == {"steps": 4, "energy": "mmff"}
    (row,) = summary["written"]
    assert row["finetune"]["steps"] == 4 and row["finetune"]["energy_evals"] > 0
    assert 1.0 <= row["ess"] <= 5.0 + 1e-9
    records = [m for m in Chem.SDMolSupplier(str(out / "CCOC.sdf"), removeHs=False)]
    assert len(records) == 5
    w = torch.tensor([m.GetDoubleProp("importance_weight") for m in records], dtype=torch.float64)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-9) and (w >= 0).all()
    assert all(math.isfinite(m.GetDoubleProp("log_weight")) or
               m.GetDoubleProp("importance_weight") == 0 for m in records)
    ess = records[0].GetDoubleProp("ess")
    assert math.isclose(ess, row["ess"], rel_tol=1e-9)
    assert math.isclose(ess, float(1 / w.square().sum()), rel_tol=1e-6)
    # --weights describes raw samples; xTB fine-tuning needs tblite: refused before any output
    bad = ["conformers", "--run", str(model), "--smiles", "CCO", "--num-conformers", "2",
           "--out", str(tmp_path / "bad")]
    assert main(bad + ["--weights", "--relax", "mmff"]) == 2
    assert "--weights: with --relax mmff" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tblite", None)
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    assert main(bad + ["--finetune-steps", "2", "--finetune-energy", "xtb"]) == 2
    assert "--finetune-energy: 'xtb': needs the optional package tblite" in \
        capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
