"""Input mistakes of ``torsion-train`` end with one clean ``error:`` line (never a traceback)."""

from __future__ import annotations

import pytest
import yaml

from adjoint_core.testing import CLEAN_ERROR, run_cli

pytest.importorskip("adjoint_core_chem.torsion")

CLEAN = CLEAN_ERROR


def _config(**problem) -> dict:
    return {"seed": 0,
            "problem": {"name": "torsional_molecules", "relax": False, **problem},
            "schedule": {"name": "geometric", "sigma_min": 0.031415927, "sigma_max": 3.14159265},
            "model": {"name": "molecular_torsion_net", "hidden": 8, "n_layers": 1, "n_rbf": 4},
            "train": {"n_epochs": 1, "samples_per_epoch": 4, "grad_steps_per_epoch": 1,
                      "train_batch_size": 4, "n_sde_steps": 4}}


@pytest.mark.parametrize("problem, args, fragment", [
    ({"smiles": ["C", "O"]}, [], "problem: 'torsional_molecules': none of the 2 molecules has a "
                                 "rotatable bond"),
    ({"smiles": ["Xx"]}, [], "problem.smiles: 1 SMILES: no usable molecule"),
    ({"smiles": ["CCCO"], "relax": "maybe"}, [], "problem.relax: 'maybe'"),
    ({"smiles": ["CCCO"]}, ["--threads", "-2"], "--threads: '-2': an integer >= 1"),
    ({"smiles": ["CCCO"]}, ["--out", "%(cfg)s"], "--out: %(cfg)s: exists and is not a directory"),
    ({"smiles": ["CCCO"]}, ["--config-typo"], "--config-typo: unrecognized"),
    (None, [], "config: %(missing)s: config file not found"),
])
def test_torsion_train_bad_inputs(tmp_path, problem, args, fragment):
    cfg = tmp_path / "c.yaml"
    if problem is not None:
        cfg.write_text(yaml.safe_dump(_config(**problem)))
    fill = {"cfg": str(cfg), "missing": str(cfg)}
    argv = ["torsion-train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]
    status, _, err = run_cli(argv + [a % fill for a in args])
    assert status == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], err
    assert CLEAN.fullmatch(lines[-1]) and fragment % fill in lines[-1], lines[-1]
