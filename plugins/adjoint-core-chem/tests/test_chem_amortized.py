"""Amortized conformer training on the core trainer (problem ``molecules``), the commands, and
the model: resume, SIGKILL + restart bit-for-bit, weights-only checkpoints, torchrun."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from adjoint_core_chem.model import MolecularEGNN
from adjoint_core_chem.molecule import mol_from_smiles
from rdkit import Chem

from adjoint_core.app.checkpoint import CheckpointError, load_checkpoint
from adjoint_core.app.cli import main
from adjoint_core.app.config import load_config
from adjoint_core.app.run import build_trainer, load_run, train_run
from adjoint_core.plugins.registry import ConfigError

#: A tiny amortized Cartesian run: 3 molecules, 2 visited per epoch, 2 warm-up epochs.
CHEM = {
    "seed": 3,
    "problem": {"name": "molecules", "smiles": ["CCO", "CCCO", "CCCC"]},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 1.0},
    "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4},
    "buffer": {"name": "fifo", "capacity": 64},
    "train": {"n_epochs": 10, "warmup_epochs": 3, "samples_per_epoch": 8,
              "targets_per_epoch": 2, "targets_per_step": 2, "train_batch_size": 8,
              "grad_steps_per_epoch": 8, "n_sde_steps": 20, "lr": 3e-4,
              "max_grad_norm": 150.0},
    "checkpoint_every": 1,
}


def _config(smiles_file, **train):
    t = {"n_epochs": 3, "warmup_epochs": 1, "targets_per_epoch": 2, "samples_per_epoch": 4,
         "grad_steps_per_epoch": 2, "targets_per_step": 2, "train_batch_size": 4,
         "n_sde_steps": 4, "max_grad_norm": 150.0}
    t.update(train)
    return {"seed": 0,
            "problem": {"name": "molecules", "smiles_file": str(smiles_file),
                        "max_molecules": 3},
            "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4},
            "buffer": {"name": "fifo", "capacity": 16}, "train": t}


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


def test_local_messages_are_equivariant_and_ignore_far_atoms():
    """``cutoff``: rotation / translation / permutation equivariant, and with one layer an atom
    far from both atoms 0 and 1 (> 4 bonds, > cutoff) does not change their relative update."""
    torch.manual_seed(0)
    net = MolecularEGNN(hidden=16, n_layers=1, time_dim=4, cutoff=3.0).double()
    for p in net.parameters():  # non-trivial coordinate weights (the init makes them ~1e-3)
        torch.nn.init.normal_(p, std=0.3)
    m = mol_from_smiles("CCCCCCCCCC")  # carbons 0-9 first, then hydrogens
    ctx = m.context()
    line = torch.zeros(m.n_atoms, 3, dtype=torch.float64)
    line[:, 0] = 1.5 * torch.arange(m.n_atoms)  # a stretched chain: atoms 1.5 A apart
    x = line + 0.1 * torch.randn(2, m.n_atoms, 3, dtype=torch.float64)
    t = torch.rand(2, dtype=torch.float64)
    out = net(t, x, ctx)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    torch.testing.assert_close(net(t, x @ q.T - 2.0, ctx), out @ q.T)
    perm = torch.randperm(m.n_atoms)
    ctx_p = {"atom_features": ctx["atom_features"][perm],
             "pair_features": ctx["pair_features"][perm][:, perm]}
    torch.testing.assert_close(net(t, x[:, perm], ctx_p), out[:, perm])
    far = 9  # carbon 9: 8-9 bonds from carbons 0 and 1, 12+ A away
    moved = x.clone()
    moved[:, far] += torch.tensor([0.0, 0.7, -0.4], dtype=torch.float64)
    out_m = net(t, moved, ctx)
    torch.testing.assert_close(out_m[:, 0] - out_m[:, 1], out[:, 0] - out[:, 1])
    dense = MolecularEGNN(hidden=16, n_layers=1, time_dim=4).double()
    dense.load_state_dict(net.state_dict())  # same weights, every pair: the far atom counts
    a, b = dense(t, x, ctx), dense(t, moved, ctx)
    assert not torch.allclose(a[:, 0] - a[:, 1], b[:, 0] - b[:, 1])
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        MolecularEGNN(cutoff=0.0)


def test_train_resume_and_conformers_cli(tmp_path, smiles_file, capsys):
    run = tmp_path / "run"
    rec = train_run(load_config(_config(smiles_file, n_epochs=2)), run, progress=False,
                    log=lambda *a: None)
    info = rec["problem"]
    assert info["n_molecules"] == 3 and len(info["skipped"]) == 2  # broken SMILES, Si
    assert {s["reason"].split(":")[0] for s in info["skipped"]} == {"molecule 'broken'",
                                                                  "molecule 'tms'"}
    assert info["molecule_atoms"] == {"etoh": 9, "propylamine": 13, "meac": 11}
    h = rec["history"]
    assert [r.get("stage") for r in h] == ["warm-up", None]
    assert h[0]["energy_evals"] == 0 and h[1]["energy_evals"] == 8
    assert math.isfinite(h[1]["loss"])
    # resume to epoch 3 in the same directory (a longer budget is allowed)
    rec = train_run(load_config(_config(smiles_file, n_epochs=3)), run, progress=False,
                    log=lambda *a: None)
    assert rec["counters"]["epoch"] == 3 and len(rec["history"]) == 3
    assert [r["loss"] for r in rec["history"][:2]] == [r["loss"] for r in h]
    other = _config(smiles_file, n_epochs=3)
    other["model"]["hidden"] = 4
    with pytest.raises(CheckpointError, match="another configuration"):
        train_run(load_config(other), run, progress=False, log=lambda *a: None)
    trainer = load_run(run)
    assert isinstance(trainer.model, MolecularEGNN) and trainer.counters["epoch"] == 3
    torch.load(run / "checkpoints" / "latest.pt", weights_only=True)

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


def test_problem_errors_paths_and_make_target(tmp_path, smiles_file, monkeypatch):
    with pytest.raises(ConfigError, match="train.n_sde_steps"):
        load_config(_config(smiles_file, n_sde_steps=0))
    missing = _config(tmp_path / "nope.tsv")
    with pytest.raises(ConfigError, match="file not found"):
        build_trainer(load_config(missing))
    both = _config(smiles_file)
    both["problem"]["smiles"] = ["CCO"]
    with pytest.raises(ConfigError, match="not both"):
        build_trainer(load_config(both))
    # a relative smiles_file is read from the working directory
    monkeypatch.chdir(smiles_file.parent)
    trainer = build_trainer(load_config(_config(smiles_file.name)))
    assert [t.name for t in trainer.targets] == ["etoh", "propylamine", "meac"]
    # a new molecule with the same settings, sampled by the (untrained) network
    tg = trainer.problem.make_target("CCCCO")
    assert tg.info["smiles"] == "CCCCO" and tg.space.event_shape == (15, 3)
    assert trainer.sample(2, target=tg).shape == (2, 15, 3)
    assert trainer.targets[0].data(2, 0).shape == (2, 9, 3)


def test_single_molecule_core_run_from_registry():
    cfg = load_config({
        "energy": {"name": "mmff", "smiles": "CCO"},
        "space": {"name": "euclidean", "n_particles": 9, "spatial_dim": 3, "mean_free": True},
        "model": {"name": "molecular_egnn", "smiles": "CCO", "hidden": 8, "n_layers": 2,
                  "time_dim": 4},
        "train": {"n_epochs": 1, "samples_per_epoch": 8, "grad_steps_per_epoch": 2,
                  "train_batch_size": 8, "n_sde_steps": 4, "max_grad_norm": 150.0}})
    sampler = build_trainer(cfg)
    row = sampler.train_epoch()
    assert row["energy_evals"] == 8 and math.isfinite(row["loss"])
    bad = cfg.model_copy(deep=True)
    bad.space = bad.space.model_copy(update={"n_particles": 5})
    with pytest.raises(Exception, match="9 atoms"):
        build_trainer(bad)


# ---------------------------------------------------------------- crash, resume, torchrun
def _cmd(cfg, out):
    return [sys.executable, "-m", "adjoint_core.app.cli", "train", str(cfg), "--out", str(out),
            "--no-progress"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def kill_and_resume(cfg_dict: dict, tmp_path: Path, kill_at=(2, 5)) -> tuple[dict, dict]:
    """Train straight, and killed by SIGKILL after epochs ``kill_at`` then restarted.

    Returns:
        The final checkpoint states of the two runs.
    """
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict))
    subprocess.run(_cmd(cfg, tmp_path / "straight"), env=_env(), check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "latest.pt"
    for target_epoch in kill_at:
        proc = subprocess.Popen(_cmd(cfg, run), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and load_checkpoint(ckpt)["state"]["counters"]["epoch"] \
                    >= target_epoch:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        load_checkpoint(ckpt)  # still a valid checkpoint after the kill
    subprocess.run(_cmd(cfg, run), env=_env(), check=True, capture_output=True)
    return (load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")["state"],
            load_checkpoint(ckpt)["state"])


def test_sigkill_and_resume_is_bit_for_bit(tmp_path):
    a, b = kill_and_resume(CHEM, tmp_path)
    assert a["counters"] == b["counters"] and a["counters"]["epoch"] == 10
    assert a["counters"]["energy_evals"] == 7 * 2 * 8  # 7 epochs after the warm-up
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for buf_a, buf_b in zip(a["buffers"], b["buffers"], strict=True):
        for k in buf_a["data"]:
            assert torch.equal(buf_a["data"][k], buf_b["data"][k]), k
    # plain tensors and containers: loads without unpickling code
    state = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    assert "warmup" in state["state"]


@pytest.mark.skipif(not (torch.distributed.is_available()
                         and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is needed")
def test_torchrun_two_processes(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**CHEM, "train": {**CHEM["train"], "n_epochs": 4}}))
    run = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *_cmd(cfg, run)[1:]]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d = json.loads((run / "metrics.json").read_text())["distributed"]
    assert d["world_size"] == 2 and d["parameters_in_sync"]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["state"]
    assert state["counters"]["epoch"] == 4 and state["counters"]["energy_evals"] == 2 * 8


def test_packaged_spice_sets_load_by_name(tmp_path, monkeypatch):
    """``smiles_file: spice_train`` / ``spice_test`` need no file beside the repository."""
    from adjoint_core_chem.problem import PACKAGED_SMILES, packaged_smiles_path, select_molecules

    monkeypatch.chdir(tmp_path)
    for name in PACKAGED_SMILES:
        assert packaged_smiles_path(name).is_file()
    mols, _ = select_molecules("spice_test", max_molecules=3, check_mmff=False)
    assert len(mols) == 3
    from adjoint_core_chem.molecule import read_smiles_file

    rows = read_smiles_file(str(packaged_smiles_path("spice_train")))
    assert len(rows) == 24_477 and all(smi for _, smi in rows[:100])


def test_packaged_spice_sizes_is_what_its_script_makes(tmp_path):
    """``spice_sizes`` (training molecules of every size to 100 atoms): 1000 SPICE-train and 1000
    joined ones of 51-100 atoms, exactly as ``scripts/make_spice_sizes.py`` writes it."""
    import gzip
    import importlib.util
    from pathlib import Path

    from adjoint_core_chem.molecule import mol_from_smiles, read_smiles_file
    from adjoint_core_chem.problem import packaged_smiles_path

    script = Path(__file__).resolve().parents[3] / "scripts" / "make_spice_sizes.py"
    if not script.is_file():
        pytest.skip("scripts/ is not beside the installed plugin")
    spec = importlib.util.spec_from_file_location("make_spice_sizes", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.main(["--out", str(tmp_path / "sizes.tsv.gz")])
    shipped = packaged_smiles_path("spice_sizes")
    assert gzip.open(made, "rt").read() == gzip.open(shipped, "rt").read()
    text = gzip.open(shipped, "rt").read().splitlines()
    assert text[0].split("\t") == ["Rotatable_Bonds", "SMILES", "name", "source"]
    assert sum(ln.endswith("\tjoined") for ln in text) == 1000
    rows = read_smiles_file(str(shipped))
    assert len(rows) == 2000 and len({s for _, s in rows}) == 2000
    joined = [(n, s) for (n, s), ln in zip(rows, text[1:], strict=True) if ln.endswith("\tjoined")]
    for name, smi in joined[:20]:  # parse as single neutral molecules of 51-100 atoms
        assert 51 <= mol_from_smiles(smi, name).n_atoms <= 100
