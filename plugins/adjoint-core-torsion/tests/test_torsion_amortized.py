"""Amortized torsional training on the core trainer (problem ``torsional_molecules``): resume,
the `conformers` command, single-molecule configs, SIGKILL + restart, torchrun."""

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

pytest.importorskip("adjoint_core_chem.torsion")

from adjoint_core_chem import plugin as chem_plugin  # noqa: E402
from adjoint_core_chem.torsion import cached_torsions  # noqa: E402
from adjoint_core_torsion import TorsionNet  # noqa: E402
from adjoint_core_torsion import plugin as torsion_plugin  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import rdMolTransforms  # noqa: E402

from adjoint_core import TorsionalSpace  # noqa: E402
from adjoint_core.app.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from adjoint_core.app.cli import main  # noqa: E402
from adjoint_core.app.config import load_config  # noqa: E402
from adjoint_core.app.run import load_run, train_run  # noqa: E402
from adjoint_core.plugins.registry import Registry  # noqa: E402

SMILES = ["CCCO", "c1ccccc1", "CCOC(=O)C"]


def _config(n_epochs: int, **train) -> dict:
    return {"seed": 0,
            "problem": {"name": "torsional_molecules", "smiles": SMILES, "relax": False},
            "schedule": {"name": "geometric", "sigma_min": 0.031415927,
                         "sigma_max": 3.14159265},
            "model": {"name": "molecular_torsion_net", "hidden": 8, "n_layers": 1, "n_rbf": 4},
            "buffer": {"name": "fifo", "capacity": 256},
            "train": {"n_epochs": n_epochs, "targets_per_epoch": 2, "samples_per_epoch": 8,
                      "grad_steps_per_epoch": 3, "targets_per_step": 2, "train_batch_size": 4,
                      "n_sde_steps": 8, "lr": 1e-3, "max_grad_norm": 500.0, **train}}


def test_train_resume_and_generate(tmp_path):
    run = tmp_path / "run"
    rec = train_run(load_config(_config(3)), run, progress=False, log=lambda *_: None)
    assert rec["counters"]["epoch"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    # benzene has no rotatable bond: not a training target, recorded
    info = metrics["problem"]
    assert info["no_rotatable_bond"] == ["c1ccccc1"] and info["n_molecules"] == 2
    assert info["molecule_torsions"] == {"CCCO": 3, "c1ccccc1": 0, "CCOC(=O)C": 4}
    assert metrics["counters"]["energy_evals"] == 3 * 2 * 8
    assert all(math.isfinite(r["loss"]) for r in metrics["history"] if r["grad_steps"])
    # resume continues the same run; another problem or model is refused
    rec = train_run(load_config(_config(4)), run, progress=False, log=lambda *_: None)
    assert rec["counters"]["epoch"] == 4
    other = _config(5)
    other["problem"]["relax"] = True
    with pytest.raises(CheckpointError, match="another configuration"):
        train_run(load_config(other), run, progress=False, log=lambda *_: None)
    trainer = load_run(run)
    assert isinstance(trainer.model, TorsionNet) and trainer.settings.n_epochs == 4
    torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
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
    from adjoint_core.plugins import builtins

    reg.add_plugin(builtins, name="core")
    reg.add_plugin(chem_plugin, name="chem")
    reg.add_plugin(torsion_plugin, name="torsion")
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
    assert isinstance(reg.build("model", "molecular_torsion_net", {"hidden": 8}, space=space),
                      TorsionNet)


def test_chem_plugin_does_not_import_torsion():
    root = Path(chem_plugin.__file__).parent
    for path in root.glob("*.py"):
        assert "adjoint_core_torsion" not in path.read_text(), path


# ---------------------------------------------------------------- crash, resume, torchrun
#: A tiny torsional run with one warm-up epoch on ETKDG torsions.
TORS = {**_config(10, warmup_epochs=1, grad_steps_per_epoch=8, n_sde_steps=20),
        "seed": 3, "checkpoint_every": 1}
TORS["problem"] = {**TORS["problem"], "smiles": ["CCCO", "CCCC", "CCO"]}


def _cmd(cfg, out):
    return [sys.executable, "-m", "adjoint_core.app.cli", "train", str(cfg), "--out", str(out),
            "--no-progress"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_sigkill_and_resume_is_bit_for_bit(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TORS))
    subprocess.run(_cmd(cfg, tmp_path / "straight"), env=_env(), check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "latest.pt"
    for target_epoch in (1, 5):  # after the warm-up epoch, and mid-run
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
        load_checkpoint(ckpt)
    subprocess.run(_cmd(cfg, run), env=_env(), check=True, capture_output=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")["state"]
    b = torch.load(ckpt, weights_only=True)["state"]
    assert a["counters"] == b["counters"] and a["counters"]["epoch"] == 10
    assert a["counters"]["energy_evals"] == 9 * 2 * 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for buf_a, buf_b in zip(a["buffers"], b["buffers"], strict=True):
        for k in buf_a["data"]:
            assert torch.equal(buf_a["data"][k], buf_b["data"][k]), k


@pytest.mark.skipif(not (torch.distributed.is_available()
                         and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is needed")
def test_torchrun_two_processes(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TORS, "train": {**TORS["train"], "n_epochs": 3}}))
    run = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *_cmd(cfg, run)[1:]]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d = json.loads((run / "metrics.json").read_text())["distributed"]
    assert d["world_size"] == 2 and d["parameters_in_sync"]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["state"]
    assert state["counters"]["epoch"] == 3 and state["counters"]["energy_evals"] == 2 * 2 * 8
