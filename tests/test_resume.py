"""Crash and resume: a run killed with SIGKILL and restarted with the same command ends with
bit-for-bit the same parameters as an uninterrupted run (CPU, fixed seed)."""

import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from adjoint_core.app.checkpoint import load_checkpoint

CFG = {
    "seed": 7,
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 16, "n_layers": 2},
    "buffer": {"name": "fifo", "capacity": 300},
    "train": {"n_epochs": 8, "samples_per_epoch": 64, "grad_steps_per_epoch": 10,
              "train_batch_size": 32, "n_sde_steps": 20},
    "checkpoint_every": 1,
}


def _cmd(cfg, out):
    return [sys.executable, "-m", "adjoint_core.app.cli", "train", str(cfg), "--out", str(out),
            "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _params(run):
    state = load_checkpoint(run / "checkpoints" / "latest.pt")["state"]
    return state["model"], state["counters"], state["buffers"][0]


def test_sigkill_and_resume_is_bit_for_bit(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    subprocess.run(_cmd(cfg, tmp_path / "straight"), env=_env(), check=True,
                   capture_output=True)

    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "latest.pt"
    kills = 0
    for target_epoch in (2, 5):  # kill twice, at different points of the run
        proc = subprocess.Popen(_cmd(cfg, run), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                try:
                    epoch = load_checkpoint(ckpt)["state"]["counters"]["epoch"]
                except Exception as exc:  # a torn checkpoint would fail here
                    raise AssertionError(f"latest checkpoint unreadable: {exc}") from exc
                if epoch >= target_epoch:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        load_checkpoint(ckpt)  # still a valid checkpoint after the kill
    assert kills == 2
    subprocess.run(_cmd(cfg, run), env=_env(), check=True, capture_output=True)

    a_model, a_counters, a_buffer = _params(tmp_path / "straight")
    b_model, b_counters, b_buffer = _params(run)
    assert a_counters == b_counters
    assert a_counters["epoch"] == 8 and a_counters["energy_evals"] == 8 * 64
    for k in a_model:
        assert torch.equal(a_model[k], b_model[k]), k
    for k in a_buffer["data"]:
        assert torch.equal(a_buffer["data"][k], b_buffer["data"][k]), k


def test_checkpoint_is_weights_only_and_rejects_other_config(tmp_path):
    import pytest

    from adjoint_core.app.checkpoint import CheckpointError, save_checkpoint

    path = save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(2)}, {"model": {"name": "a"}})
    torch.load(path, weights_only=True)  # loads without unpickling code
    with pytest.raises(CheckpointError, match="another configuration.*model"):
        load_checkpoint(path, expected_config={"model": {"name": "b"}})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_config_check_ignores_runtime_keys(tmp_path):
    """A resumed launch may change speed-only settings (RUNTIME_KEYS) but not the problem."""
    import pytest
    import torch

    from adjoint_core.app.checkpoint import (
        FORMAT_VERSION,
        RUNTIME_KEYS,
        CheckpointError,
        load_checkpoint,
    )

    assert "energy_workers" in RUNTIME_KEYS
    stored = {"problem": {"name": "molecules", "max_molecules": 10, "energy_workers": 0}}
    path = tmp_path / "latest.pt"
    torch.save({"format": FORMAT_VERSION, "config": stored, "state": {}}, path)
    same = {"problem": {"name": "molecules", "max_molecules": 10, "energy_workers": 4}}
    assert load_checkpoint(path, expected_config=same)["config"] == stored
    other = {"problem": {"name": "molecules", "max_molecules": 11, "energy_workers": 0}}
    with pytest.raises(CheckpointError, match="problem"):
        load_checkpoint(path, expected_config=other)
