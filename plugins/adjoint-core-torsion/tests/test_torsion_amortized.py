"""Amortized torsional training, resume, the `conformers` command and single-molecule configs."""

import json
import math

import pytest
import torch

pytest.importorskip("adjoint_core_chem.torsion")

from adjoint_core_chem import plugin as chem_plugin  # noqa: E402
from adjoint_core_chem.molecule import mol_from_smiles  # noqa: E402
from adjoint_core_chem.torsion import cached_torsions  # noqa: E402
from adjoint_core_torsion.amortized import (  # noqa: E402
    TorsionConfig,
    is_torsional_run,
    load_torsional,
    train_torsional,
)
from rdkit import Chem  # noqa: E402
from rdkit.Chem import rdMolTransforms  # noqa: E402

from adjoint_core import TorsionalSpace  # noqa: E402
from adjoint_core.cli import main  # noqa: E402
from adjoint_core.registry import ConfigError, Registry  # noqa: E402

SMILES = ["CCCO", "c1ccccc1", "CCOC(=O)C"]


def _config(n_epochs: int) -> dict:
    return {"kind": "torsion_amortized", "seed": 0,
            "molecules": {"smiles_file": "unused.tsv"},
            "model": {"hidden": 8, "n_layers": 1, "n_rbf": 4},
            "reference": {"seed": 0, "relax": False},
            "train": {"n_epochs": n_epochs, "molecules_per_epoch": 2,
                      "conformers_per_molecule": 8, "grad_steps_per_epoch": 3,
                      "molecules_per_step": 2, "batch_per_molecule": 4, "n_sde_steps": 8}}


def test_train_resume_and_generate(tmp_path):
    mols = [mol_from_smiles(s) for s in SMILES]
    run = tmp_path / "run"
    rec = train_torsional(_config(3), run, log=lambda *_: None, molecules=mols)
    assert rec["stopped_at_epoch"] == 3 and is_torsional_run(run)
    metrics = json.loads((run / "metrics.json").read_text())
    # 6 visits cycle the 3 molecules twice; benzene has no rotatable bond and is skipped
    assert metrics["no_rotatable_bond"] == ["c1ccccc1"]
    assert metrics["counters"]["energy_evals"] == 4 * 8
    assert metrics["molecule_torsions"] == {"CCCO": 3, "c1ccccc1": 0, "CCOC(=O)C": 4}
    assert all(math.isfinite(r["loss"]) for r in metrics["history"] if r["grad_steps"])
    # resume continues the same run; a different config is refused
    rec = train_torsional(_config(4), run, log=lambda *_: None, molecules=mols)
    assert rec["stopped_at_epoch"] == 4
    other = _config(5)
    other["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match="different config"):
        train_torsional(other, run, log=lambda *_: None, molecules=mols)
    model, schedule, cfg = load_torsional(run)
    assert isinstance(cfg, TorsionConfig) and cfg.train.n_epochs == 4
    # `adjoint-core conformers` on the torsional run: SDF per molecule, bad SMILES skipped
    smi = tmp_path / "mols.smi"
    smi.write_text("CCOC(=O)C ester\nc1ccccc1 benzene\nC1CC(N bad\n")
    out = tmp_path / "confs"
    code = main(["conformers", str(run), "--smiles-file", str(smi), "--num-conformers", "4",
                 "--out", str(out), "--n-sde-steps", "6"])
    assert code == 2  # one molecule skipped
    summary = json.loads((out / "summary.json").read_text())
    assert [w["name"] for w in summary["written"]] == ["ester", "benzene"]
    assert [s["name"] for s in summary["skipped"]] == ["bad"]
    supplier = [m for m in Chem.SDMolSupplier(str(out / "ester.sdf"), removeHs=False)]
    assert len(supplier) == 4
    tors = cached_torsions("CCOC(=O)C", 0, False)
    for m in supplier:
        want = [float(v) for v in m.GetProp("torsions_rad").split()]
        got = [rdMolTransforms.GetDihedralRad(m.GetConformer(), *q)
               for q in tors.index.tolist()]
        assert all(abs(math.remainder(a - b, 2 * math.pi)) < 1e-3
                   for a, b in zip(got, want, strict=True))
        assert m.HasProp("energy_mmff_kcal_mol")
    assert len(Chem.SDMolSupplier(str(out / "benzene.sdf"), removeHs=False)) == 4


def test_single_molecule_registry_factories():
    reg = Registry(load_entry_points=False)
    from adjoint_core import builtins

    reg.add_plugin(builtins, name="core")
    reg.add_plugin(chem_plugin, name="chem")
    space = reg.build("space", "torsional", {"n_torsions": 4})
    energy = reg.build("energy", "torsional", {"smiles": "CCCCO"}, space=space)
    model = reg.build("model", "molecular_torsion_net", {"smiles": "CCCCO", "hidden": 8},
                      space=space)
    tau = space.uniform(3, torch.Generator().manual_seed(0), dtype=torch.float64)
    e, g = energy.energy_and_grad(tau)
    assert e.shape == (3,) and g.shape == (3, 4) and torch.isfinite(g).all()
    assert model(torch.rand(3), tau.float()).shape == (3, 4)
    with pytest.raises(ValueError, match="n_torsions=4"):
        reg.build("energy", "torsional", {"smiles": "CCCCO"}, space=TorsionalSpace(3))
