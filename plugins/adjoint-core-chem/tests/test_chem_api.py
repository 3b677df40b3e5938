"""The chemist's API (SMILES / RDKit Mol → RDKit Mol with conformers, energies, importance
weights, ASE), the conformers command's bad-input handling and re-runs, and the per-molecule
diagnostics, on one tiny preconditioned run."""

import json
import math

import pytest
import torch
from adjoint_core_chem.api import generate_conformers, parse_molecule
from adjoint_core_chem.diagnostics import (
    DiagnosticsCallback,
    conformer_diagnostics,
    plot_diagnostics,
    reference_geometry,
)
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles
from rdkit import Chem

from adjoint_core.app.cli import main
from adjoint_core.app.config import load_config
from adjoint_core.app.run import build_trainer, train_run
from adjoint_core.problem.models import PreconditionedControl


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run_config):
    run = tmp_path_factory.mktemp("chem_api") / "run"
    rec = train_run(load_config(tiny_run_config), run, progress=False, log=lambda *a: None)
    assert [r.get("stage") for r in rec["history"]] == ["warm-up", "warm-up", None]
    assert all(math.isfinite(r["loss"]) for r in rec["history"])
    return run


def test_generate_from_smiles_mol_ase_and_weights(run_dir):
    from adjoint_core_chem.api import load_conformer_run

    trainer = load_conformer_run(run_dir)
    assert isinstance(trainer.model, PreconditionedControl)
    mol = generate_conformers("OCC(C)C", trainer, 5, seed=1)
    assert isinstance(mol, Chem.Mol) and mol.GetNumConformers() == 5
    assert mol.GetNumAtoms() == 15 and mol.GetProp("_Name") == "OCC(C)C"
    e = [c.GetDoubleProp("energy_mmff_kcal_mol") for c in mol.GetConformers()]
    assert len(e) == 5
    # an RDKit Mol keeps its atom order (explicit H first here)
    rd = Chem.AddHs(Chem.MolFromSmiles("OCC"))
    rd = Chem.RenumberAtoms(rd, list(range(rd.GetNumAtoms()))[::-1])
    out = generate_conformers(rd, trainer, 3)
    assert [a.GetAtomicNum() for a in out.GetAtoms()] == [a.GetAtomicNum()
                                                          for a in rd.GetAtoms()]
    # importance weights: self-normalised, ESS in [1, K]
    w_mol = generate_conformers("CCO", run_dir, 8, weights=True, seed=2)
    w = torch.tensor([c.GetDoubleProp("importance_weight") for c in w_mol.GetConformers()])
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-9) and (w >= 0).all()
    ess = w_mol.GetDoubleProp("ess")
    assert 1.0 <= ess <= 8.0 + 1e-9
    assert math.isclose(ess, float(1 / w.square().sum()), rel_tol=1e-9)
    with pytest.raises(ValueError, match="raw samples"):
        generate_conformers("CCO", trainer, 2, weights=True, relax="mmff")
    pytest.importorskip("ase")
    mol, atoms = generate_conformers("CCO", trainer, 2, ase=True)
    assert len(atoms) == 2 and atoms[0].get_chemical_symbols()[:3] == ["C", "C", "O"]
    assert "energy_mmff_kcal_mol" in atoms[0].info


@pytest.mark.parametrize("smiles, reason", [
    ("C1CC", "cannot parse"), ("CC(=O)[O-].[Na+]", "fragments"), ("CC[NH3+]", "net charge"),
    ("C[CH2]", "radical"), ("C[Si](C)(C)C", "unsupported element"), ("CCCCCCCCCC", "limit"),
])
def test_check_molecule_reasons(smiles, reason):
    with pytest.raises(MoleculeError, match=reason) as info:
        parse_molecule(smiles, "x", max_atoms=20)
    assert "'x'" in str(info.value)


def test_conformers_cli_bad_input_and_rerun(run_dir, tmp_path, capsys, monkeypatch):
    smi = tmp_path / "in.smi"
    smi.write_bytes(b"# a comment\r\nCCO ethanol\r\n\r\n  \t\r\nC1CC broken\r\n"
                    b"CC(=O)[O-].[Na+] salt\r\n"
                    b"CC[NH3+] cation\r\nC[CH2] radical\r\nC[Si](C)(C)C tms\r\n"
                    b"CCCCCCCCCC decane\r\nCCN ethanol\r\nCC(=O)N acetamide\r\n")
    out = tmp_path / "confs"
    args = ["conformers", "--run", str(run_dir), "--smiles-file", str(smi),
            "--num-conformers", "2", "--out", str(out), "--max-atoms", "20"]
    assert main(args) == 2
    text = capsys.readouterr().out
    for name, why in [("broken", "cannot parse"), ("salt", "fragments"),
                      ("cation", "net charge"), ("radical", "radical"),
                      ("tms", "unsupported element"), ("decane", "limit"),
                      ("ethanol", "duplicate name")]:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"skipped {name} "))
        assert why in line, line
    summary = json.loads((out / "summary.json").read_text())
    assert [d["name"] for d in summary["written"]] == ["ethanol", "acetamide"]
    assert len(summary["skipped"]) == 7
    assert not any("\r" in s["name"] for s in summary["skipped"])
    mtime = (out / "ethanol.sdf").stat().st_mtime_ns
    assert main(args) == 2  # re-run: the done molecules are skipped, the bad ones reported
    text = capsys.readouterr().out
    assert "ethanol: already done" in text and "acetamide: already done" in text
    assert (out / "ethanol.sdf").stat().st_mtime_ns == mtime
    # --smiles, and no run given
    assert main(["conformers", "--run", str(run_dir), "--smiles", "CCCO", "--smiles", "CCN",
                 "--num-conformers", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "CCCO.sdf").is_file() and (tmp_path / "s" / "CCN.sdf").is_file()
    # no run given and the default model not installed: one message saying how to get one
    import adjoint_core_chem.pretrained as pretrained

    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", tmp_path / "no_model")
    assert main(["conformers", "--smiles", "CCO", "--num-conformers", "2",
                 "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "default conformer model is not installed" in err and "--run" in err
    assert "chem-export" in err and str(tmp_path / "no_model") in err
    assert not (tmp_path / "n").exists()


def test_diagnostics_and_callback(tmp_path, tiny_run_config):
    m = mol_from_smiles("CCCC", "butane")
    ref = reference_geometry(m)
    good = conformer_diagnostics(m, m.embed(8, seed=3), ref)
    assert good["valid_fraction"] == 1.0 and good["bond_mae"] < 0.05
    assert good["angle_mae_deg"] < 6 and good["energy_median"] < 30
    noise = conformer_diagnostics(m, torch.randn(8, m.n_atoms, 3), ref)
    assert noise["broken_bond_fraction"] > 0.5 and noise["bond_mae"] > 0.3
    cfg = dict(tiny_run_config, train=dict(tiny_run_config["train"], n_epochs=3))
    tr = build_trainer(load_config(cfg))
    rows = tr.fit(callback=DiagnosticsCallback(targets=[0, 1], every=2, n_samples=4))
    assert "diag/CCO/bond_mae" in rows[0] and "diag/CCO/bond_mae" not in rows[2]
    assert "diag/CCCN/energy_median" in rows[1]
    assert "diag/CCO/buffer_energy_median" not in rows[1]  # warm-up: no energies yet
    assert tr.history[0]["diag/CCO/valid_fraction"] == rows[0]["diag/CCO/valid_fraction"]
    png = plot_diagnostics(tr.history, tmp_path / "diag.png")
    assert png.stat().st_size > 1000


def test_gpu_config_model_builds_preconditioned():
    """examples/chem_spice_gpu.yaml validates (tests/test_example_configs.py) and its model
    section builds the preconditioned network with the run's schedule."""
    from pathlib import Path

    from adjoint_core.plugins.registry import default_registry

    path = Path(__file__).resolve().parents[3] / "examples" / "chem_spice_gpu.yaml"
    cfg = load_config(path)
    reg = default_registry()
    schedule = reg.build("schedule", cfg.schedule.name, cfg.schedule.params)
    model = reg.build("model", cfg.model.name, cfg.model.params, schedule=schedule)
    assert isinstance(model, PreconditionedControl)
    assert model.data_scale == 1.0 and model.noise_floor == 1.0
