"""Amortized training over molecules of different sizes, the CLI commands, and the model."""

import json
import math

import pytest
import torch
from adjoint_core_chem.amortized import (
    AmortizedConformerSampler,
    load_amortized,
    load_chem_config,
    train_amortized,
)
from adjoint_core_chem.model import MolecularEGNN
from adjoint_core_chem.molecule import mol_from_smiles
from rdkit import Chem

from adjoint_core.cli import main
from adjoint_core.registry import ConfigError


def _config(smiles_file, **train):
    t = {"n_epochs": 3, "pretrain_epochs": 1, "molecules_per_epoch": 2,
         "conformers_per_molecule": 4, "grad_steps_per_epoch": 2, "molecules_per_step": 2,
         "batch_per_molecule": 4, "buffer_per_molecule": 16, "n_sde_steps": 4}
    t.update(train)
    return {"kind": "chem_amortized", "seed": 0,
            "molecules": {"smiles_file": str(smiles_file), "max_molecules": 3},
            "model": {"hidden": 8, "n_layers": 2, "time_dim": 4}, "train": t}


@pytest.fixture
def smiles_file(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("Rotatable_Bonds\tSMILES\tRot_Hash\n1\tCCO\tetoh\n1\tC1CC\tbroken\n"
                 "2\tCCCN\tpropylamine\n0\t[Si](C)(C)(C)C\ttms\n3\tCC(=O)OC\tmeac\n")
    return p


def test_model_equivariance_and_any_size():
    torch.manual_seed(0)
    net = MolecularEGNN(hidden=16, n_layers=2, time_dim=4)
    for smi in ("CCO", "c1ccccc1C(=O)O"):
        m = mol_from_smiles(smi)
        ctx = m.context()
        x = torch.randn(3, m.n_atoms, 3, dtype=torch.float64)
        net = net.double()
        t = torch.rand(3, dtype=torch.float64)
        out = net(t, x, ctx)
        assert out.shape == x.shape
        q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
        out2 = net(t, x @ q.T + 1.5, ctx)
        torch.testing.assert_close(out2, out @ q.T)
        torch.testing.assert_close(out.mean(1), torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="context"):
        net(t, x)


def test_train_resume_and_conformers_cli(tmp_path, smiles_file, capsys):
    run = tmp_path / "run"
    rec = train_amortized(_config(smiles_file, n_epochs=2), run, log=lambda *a: None)
    assert rec["n_molecules"] == 3 and len(rec["skipped"]) == 2  # broken SMILES, Si
    assert {s["reason"].split(":")[0] for s in rec["skipped"]} == {"molecule 'broken'",
                                                                 "molecule 'tms'"}
    h = rec["history"]
    assert [r["phase"] for r in h] == ["warm-up", "adjoint"]
    assert h[0]["energy_evals"] == 0 and h[1]["energy_evals"] == 8
    assert math.isfinite(h[1]["loss"])
    assert (run / "checkpoints" / "warmup.pt").exists()
    # resume to epoch 3 in the same directory
    rec = train_amortized(_config(smiles_file, n_epochs=3), run, log=lambda *a: None)
    assert rec["stopped_at_epoch"] == 3 and len(rec["history"]) == 3
    assert [la["from_epoch"] for la in rec["launches"]] == [0, 2]
    other = _config(smiles_file, n_epochs=3)
    other["model"]["hidden"] = 4
    with pytest.raises(ConfigError, match="different config"):
        train_amortized(other, run, log=lambda *a: None)
    model, schedule, cfg = load_amortized(run)
    assert isinstance(model, MolecularEGNN) and cfg.train.n_epochs == 3

    smi = tmp_path / "gen.smi"
    smi.write_text("CCO ethanol\nC1CC broken\n[Na+].[Cl-] salt\nCC(=O)N acetamide\n")
    out = tmp_path / "sdf"
    code = main(["conformers", str(run), "--smiles-file", str(smi), "--num-conformers", "3",
                 "--out", str(out), "--relax", "mmff", "--relax-steps", "20"])
    assert code == 2  # some molecules skipped, the others written
    text = capsys.readouterr().out
    assert "skipped broken" in text and "skipped salt" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [d["name"] for d in summary["written"]] == ["ethanol", "acetamide"]
    assert {s["name"] for s in summary["skipped"]} == {"broken", "salt"}
    mols = list(Chem.SDMolSupplier(str(out / "ethanol.sdf"), removeHs=False))
    assert len(mols) == 3 and mols[0].GetNumAtoms() == 9
    assert mols[0].HasProp("energy_mmff_kcal_mol") and mols[0].GetProp("relaxed") == "mmff"
    assert math.isfinite(mols[0].GetDoubleProp("energy_mmff_kcal_mol"))


def test_sampler_requires_molecules_and_config_errors(tmp_path, smiles_file):
    cfg, _ = load_chem_config(_config(smiles_file))
    with pytest.raises(ValueError, match="at least one molecule"):
        AmortizedConformerSampler([], cfg)
    with pytest.raises(ConfigError, match="train.n_sde_steps"):
        load_chem_config(_config(smiles_file, n_sde_steps=0))
    with pytest.raises(ConfigError, match="not an amortized chemistry run"):
        load_amortized(tmp_path)


def test_single_molecule_core_run_from_registry():
    from adjoint_core.config import load_config
    from adjoint_core.run import build_sampler

    cfg = load_config({
        "energy": {"name": "mmff", "smiles": "CCO"},
        "space": {"name": "euclidean", "n_particles": 9, "spatial_dim": 3, "mean_free": True},
        "model": {"name": "molecular_egnn", "smiles": "CCO", "hidden": 8, "n_layers": 2,
                  "time_dim": 4},
        "train": {"n_epochs": 1, "samples_per_epoch": 8, "grad_steps_per_epoch": 2,
                  "train_batch_size": 8, "n_sde_steps": 4, "max_grad_norm": 150.0}})
    sampler = build_sampler(cfg)
    row = sampler.train_epoch()
    assert row["energy_evals"] == 8 and math.isfinite(row["loss"])
    bad = cfg.model_copy(deep=True)
    bad.space = bad.space.model_copy(update={"n_particles": 5})
    with pytest.raises(Exception, match="9 atoms"):
        build_sampler(bad)
