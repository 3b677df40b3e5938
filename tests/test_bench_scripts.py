"""Smoke tests of the benchmark scripts that must keep working unattended.

``bench/gpu_check.sh --dry-run`` is the CPU form of the one-command GPU check (run unchanged on a
lent GPU machine), and ``bench/throughput.py --quick`` is the EGNN throughput benchmark at tiny
sizes. Both write JSON; the tests check its structure, not any timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("adjoint_core_egnn")
pytest.importorskip("adjoint_core_particles")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_throughput_quick_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--threads", "1",
         "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert json.loads(proc.stdout) == res  # the same JSON on stdout
    assert res["quick"] is True
    m = res["machine"]
    assert m["torch"] and m["cpu_model"] and m["cpu_count"] >= 1
    cpu = [r for r in res["rows"] if r["device"] == "cpu"]
    assert {r["size"] for r in cpu} == {"dw4", "lj13"} and {r["threads"] for r in cpu} == {1}
    for r in cpu:
        assert r["sde_step_s"] > 0 and r["train_step_s"] > 0
        assert r["edges_per_call"] == r["batch"] * r["n_particles"] * (r["n_particles"] - 1)
    import torch

    if not torch.cuda.is_available():  # CUDA is skipped cleanly, and said so
        assert any(s.startswith("cuda:") for s in res["skipped"])
        assert all(r["device"] == "cpu" for r in res["rows"])


@pytest.mark.slow  # ~30 s of CPU time: five Python processes, each importing the plugins
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["dry_run"]
    stages = summary["stages"]
    assert set(stages) == {"environment", "cuda_tests", "nccl", "throughput", "lj13_run"}
    assert all(s["status"] == "ok" for s in stages.values()), stages
    env = json.loads((out / "environment.json").read_text())
    assert env["dry_run"] and env["machine"]["torch"]
    tests = json.loads((out / "cuda_tests.json").read_text())
    assert tests["pytest_exit"] == 0 and tests["cases"]
    nccl = json.loads((out / "nccl.json").read_text())
    assert nccl["ok"] and nccl["all_reduce_ok"] and nccl["library_context"]["reused_group"]
    thr = json.loads((out / "throughput.json").read_text())
    assert thr["rows"] and thr["quick"]
    run = json.loads((out / "lj13_run.json").read_text())
    assert run["epochs"] >= 1 and run["energy_evals"] > 0 and run["overrides"]["dry_run"]
    assert run["config"] == "bench/configs/lj13_paper.yaml"
    for key in ("energy_w2", "geometric_w2_papers", "path_ess"):
        assert key in run["metrics"]


def _conformers_script():
    import importlib.util

    pytest.importorskip("adjoint_core_chem")
    spec = importlib.util.spec_from_file_location("bench_conformers",
                                                  ROOT / "bench" / "conformers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_conformers_needs_data(tmp_path, capsys):
    mod = _conformers_script()
    with pytest.raises(SystemExit) as exc:  # the CREST references are not shipped
        mod.main(["--methods", "etkdg", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "CC BY-NC" in err
    assert mod.main(["--methods", "etkdg", "--data", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path)]) == 2
    assert "spice_test.tsv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--methods", "rdkit", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert not (tmp_path / "etkdg.json").exists()


def _synthetic_references(tmp_path):
    """A data folder like the CREST one: ETKDG conformers of butanol written shuffled as
    CREST-style XYZ, and a second molecule without a reference file."""
    import gzip

    import numpy as np
    from adjoint_core_chem.molecule import mol_from_smiles

    data = tmp_path / "data"
    (data / "spice_test").mkdir(parents=True)
    (data / "spice_test.tsv").write_text("Rotatable_Bonds\tSMILES\tHash_Name\n"
                                         "2\tCCCCO\trot2_butanol\n"
                                         "0\tCCO\trot0_no_reference\n")
    m = mol_from_smiles("CCCCO", "rot2_butanol")
    x = m.embed(4, seed=3).numpy()
    perm = np.random.default_rng(0).permutation(m.n_atoms)
    syms = [a.GetSymbol() for a in m.mol.GetAtoms()]
    blocks = ["\n".join([str(m.n_atoms), "-10.0"] + [
        f"{syms[i]} {c[i, 0]:.6f} {c[i, 1]:.6f} {c[i, 2]:.6f}" for i in perm]) for c in x]
    with gzip.open(data / "spice_test" / "rot2_butanol.xyz.gz", "wt") as fh:
        fh.write("\n".join(blocks) + "\n")
    return data


def test_conformers_end_to_end_on_synthetic_references(tmp_path):
    """Tiny ETKDG run on made-up references, K capped (recorded as such)."""
    mod = _conformers_script()
    data = _synthetic_references(tmp_path)
    out = tmp_path / "out"
    assert mod.main(["--methods", "etkdg", "--data", str(data), "--out", str(out),
                     "--k-min", "8", "--k-max", "6", "--relax-steps", "5"]) == 0
    res = json.loads((out / "etkdg.json").read_text())
    assert res["complete"] and res["n_molecules_with_references"] == 1
    assert res["n_molecules"] == 1 and res["skipped"] == [] and res["excluded"] == []
    row = res["molecules"][0]
    assert row["n_refs"] == 4 and row["refs_unmatched"] == 0
    assert row["k_protocol"] == 8 and row["k_asked"] == 6 and row["k"] == 6
    assert res["k_per_molecule"] == {"rot2_butanol": 6}
    assert res["protocol"]["k_max"] == 6 and not res["protocol"]["full_protocol"]
    assert res["n_molecules_k_capped"] == 1
    s = res["summary"]
    for tag in ("raw", "relaxed"):
        for key in mod.KEYS:
            assert set(s[tag][key]) == {"mean", "std", "median", "n"}
            assert s[tag][key]["std"] == 0.0  # one molecule
        assert 0.0 <= s[tag]["cov_r@1.25"]["mean"] <= 1.0
    assert s["seconds_per_conformer"]["generate"] > 0
    assert s["seconds_per_conformer"]["relax"] > 0
    table = (out / "table.md").read_text()
    assert "| etkdg | none | 1 | 6–6 |" in table and "±" in table
    assert "K capped at 6" in table


def test_conformers_ours_from_a_run_directory(tmp_path):
    """``--methods ours --run DIR`` on a tiny trained molecular run (a few seconds of training)."""
    mod = _conformers_script()
    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import train_run

    tiny = {"seed": 0, "problem": {"name": "molecules", "smiles": ["CCO", "CCCN"]},
            "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 1.0},
            "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4,
                      "precondition": True, "data_scale": 0.5},
            "buffer": {"name": "fifo", "capacity": 16},
            "train": {"n_epochs": 2, "warmup_epochs": 1, "targets_per_epoch": 2,
                      "samples_per_epoch": 4, "grad_steps_per_epoch": 2, "targets_per_step": 2,
                      "train_batch_size": 4, "n_sde_steps": 6}}
    run = tmp_path / "run"
    train_run(load_config(tiny), run, progress=False, log=lambda *a: None)
    data = _synthetic_references(tmp_path)
    out = tmp_path / "out"
    assert mod.main(["--methods", "ours", "--run", str(run), "--tag", "ours_tiny",
                     "--data", str(data), "--out", str(out), "--k-min", "8",
                     "--relax-steps", "5"]) == 0
    res = json.loads((out / "ours_tiny.json").read_text())
    assert res["method"] == "ours" and res["run"] == str(run) and res["n_sde_steps"] == 6
    assert res["seconds_load_model"] > 0 and res["device"] == "cpu"
    assert res["k_per_molecule"] == {"rot2_butanol": 8} and res["n_molecules_k_capped"] == 0
    assert not res["protocol"]["full_protocol"]  # --k-min 8 is not the protocol's 128
    assert res["summary"]["seconds_per_conformer"]["generate"] > 0
    assert "| ours_tiny | MMFF | 1 | 8–8 |" in (out / "table.md").read_text()
