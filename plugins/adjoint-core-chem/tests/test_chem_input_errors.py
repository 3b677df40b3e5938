"""Input mistakes of ``conformers`` and ``chem-train`` end with one clean ``error:`` line.

Each bad argument, file or config is given in-process through
:func:`adjoint_core.app.cli.main`; each must end with a non-zero status and exactly one line
``error: <argument or field>: <value>: <what is allowed>`` on stderr, never a traceback, and
``conformers`` must fail before it writes anything.
"""

from __future__ import annotations

import pytest
import yaml

from adjoint_core.testing import CLEAN_ERROR, run_cli

CLEAN = CLEAN_ERROR



def error_line(status: int, err: str, expected: int = 2) -> str:
    assert status == expected, (status, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], err
    assert CLEAN.fullmatch(lines[-1]), lines[-1]
    return lines[-1]


def chem_config(**problem) -> dict:
    return {"seed": 0, "problem": {"name": "molecules", **problem},
            "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 1, "time_dim": 4},
            "buffer": {"name": "fifo", "capacity": 16},
            "train": {"n_epochs": 1, "samples_per_epoch": 4, "grad_steps_per_epoch": 1,
                      "train_batch_size": 4, "n_sde_steps": 4, "max_grad_norm": 150.0}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("chem_inputs")
    (d / "smi.txt").write_text("CCO ethanol\nCCCN propylamine\n")
    (d / "empty.txt").write_text("# nothing here\n\n")
    (d / "binary.txt").write_bytes(bytes(range(256)))
    (d / "unparsable.txt").write_text("C1CC broken\nXx nonsense\n")
    cfg = d / "chem.yaml"
    cfg.write_text(yaml.safe_dump(chem_config(smiles_file=str(d / "smi.txt"))))
    status, _, err = run_cli(["chem-train", str(cfg), "--out", str(d / "run"), "--no-progress"])
    assert status == 0, err
    dw4 = d / "dw4.yaml"
    dw4.write_text(yaml.safe_dump({
        "energy": {"name": "dw4"},
        "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
        "model": {"name": "egnn", "hidden": 4, "n_layers": 1},
        "train": {"n_epochs": 1, "samples_per_epoch": 4, "grad_steps_per_epoch": 1,
                  "train_batch_size": 4, "n_sde_steps": 2}}))
    status, _, err = run_cli(["train", str(dw4), "--out", str(d / "dw4_run"), "--no-progress"])
    assert status == 0, err
    return {"dir": d, "run": d / "run", "dw4_run": d / "dw4_run", "cfg": cfg}


@pytest.mark.parametrize("change, fragment", [
    ({"--smiles-file": "%(dir)s/missing.txt"}, "--smiles-file: %(dir)s/missing.txt: no such file"),
    ({"--smiles-file": "%(dir)s/empty.txt"}, "--smiles-file: %(dir)s/empty.txt: holds no SMILES"),
    ({"--smiles-file": "%(dir)s/binary.txt"}, "cannot be read as text"),
    ({"--num-conformers": "0"}, "--num-conformers: '0': an integer >= 1"),
    ({"--num-conformers": "-1"}, "--num-conformers: '-1'"),
    ({"--num-conformers": "three"}, "--num-conformers: 'three'"),
    ({"--out": "/proc/no/such/dir"}, "--out: /proc/no/such/dir: cannot write in /proc"),
    ({"--out": "%(dir)s/smi.txt"}, "--out: %(dir)s/smi.txt: exists and is not a directory"),
    ({"--relax": "amber"}, "--relax: 'amber': one of 'none', 'mmff', 'xtb'"),
    ({"--relax-steps": "-5"}, "--relax-steps: '-5': an integer >= 0"),
    ({"--n-sde-steps": "0"}, "--n-sde-steps: '0': an integer >= 1"),
    ({"--batch-size": "0"}, "--batch-size: '0': an integer >= 1"),
    ({"--seed": "-3"}, "--seed: '-3': an integer from 0 to"),
    ({"--limit": "-1"}, "--limit: '-1': an integer >= 0"),
    ({"--threads": "0"}, "--threads: '0': an integer >= 1"),
    ({"run_dir": "/nonexistent/run"}, "run_dir: /nonexistent/run: not a run directory"),
    ({"run_dir": "%(dw4_run)s"}, "--run: %(dw4_run)s: its problem cannot make a target"),
    ({"--smiles-file": None}, "--smiles, --smiles-file: neither given"),
    ({"--num-conformers": None}, "--num-conformers: missing: required"),
])
def test_conformers_bad_inputs(setup, tmp_path, change, fragment):
    fill = {k: str(v) for k, v in setup.items()}
    args = {"run_dir": str(setup["run"]), "--smiles-file": str(setup["dir"] / "smi.txt"),
            "--num-conformers": "2", "--out": str(tmp_path / "out")}
    args.update({k: None if v is None else v % fill for k, v in change.items()})
    argv = ["conformers", args.pop("run_dir")]
    argv += [t for k, v in args.items() if v is not None for t in (k, v)]
    assert fragment % fill in error_line(*run_cli(argv)[::2])
    assert not (tmp_path / "out").exists()


def test_conformers_of_only_unparsable_molecules(setup, tmp_path):
    status, _, err = run_cli(["conformers", str(setup["run"]), "--smiles-file",
                              str(setup["dir"] / "unparsable.txt"), "--num-conformers", "2",
                              "--out", str(tmp_path / "out")])
    line = error_line(status, err, expected=1)
    assert "none of the 2 molecule(s) could be generated" in line
    assert "RDKit cannot parse the SMILES 'C1CC'" in line
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.parametrize("problem, args, fragment", [
    ({"smiles_file": "%(dir)s/missing.txt"}, [], "problem.smiles_file: %(dir)s/missing.txt: "
                                                 "file not found"),
    ({"smiles_file": "%(dir)s/binary.txt"}, [], "problem.smiles_file: %(dir)s/binary.txt: "
                                                "cannot be read as text"),
    ({"smiles": []}, [], "problem.smiles: 0 SMILES: no usable molecule"),
    ({"smiles": ["Xx", "C1CC"]}, [], "problem.smiles: 2 SMILES: no usable molecule (2 skipped"),
    ({"smiles": ["CCO"], "smiles_file": "%(dir)s/smi.txt"}, [],
     "problem.smiles_file, problem.smiles: both given"),
    ({"smiles": ["CCO"], "max_atoms": "many"}, [], "problem.max_atoms: 'many'"),
    ({"smiles": ["CCO"]}, ["--threads", "0"], "--threads: '0': an integer >= 1"),
    ({"smiles": ["CCO"]}, ["--threads", "x"], "--threads: 'x'"),
    ({"smiles": ["CCO"]}, ["--out", "/proc/no/such/dir"], "--out: /proc/no/such/dir"),
])
def test_chem_train_bad_inputs(setup, tmp_path, problem, args, fragment):
    fill = {k: str(v) for k, v in setup.items()}
    cfg = chem_config(**{k: v % fill if isinstance(v, str) else v for k, v in problem.items()})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = ["chem-train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]
    assert fragment % fill in error_line(*run_cli(argv + [a % fill for a in args])[::2])
