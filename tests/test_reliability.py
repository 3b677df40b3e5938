"""Reliability of training runs: divergence, pre-emption, run-directory locks, failed writes.

* A diverged epoch (non-finite loss, or every new sample non-finite) stops training with a
  message naming the epoch, the count and the last good checkpoint; nothing of the diverged
  state is saved, and the same command resumes from that checkpoint bit for bit.
* SIGTERM (a real subprocess) and SIGUSR1 make training write a checkpoint after the current
  epoch and exit with status 143; the same command resumes bit for bit.
* A run directory is locked while a training writes it: a second ``train`` fails naming the
  holder (pid, host); a lock left by a dead process is taken over.
* A failed checkpoint write (disk full) stops with the path and errno; the previous checkpoint
  stays loadable and resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from adjoint_core import MLP, AdjointSampler, Energy, EuclideanSpace, GeometricSchedule
from adjoint_core.app import checkpoint as checkpoint_module
from adjoint_core.app.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from adjoint_core.app.cli import EXIT_DIVERGED, EXIT_FAILED, EXIT_PREEMPTED, EXIT_USAGE
from adjoint_core.app.run import LOCK_FILE
from adjoint_core.testing import run_cli
from adjoint_core.training.trainer import Trainer, TrainingDiverged

CFG = {
    "seed": 5,
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 8, "n_layers": 1},
    "buffer": {"name": "fifo", "capacity": 128},
    "train": {"n_epochs": 5, "samples_per_epoch": 16, "grad_steps_per_epoch": 3,
              "train_batch_size": 8, "n_sde_steps": 5},
    "eval": {"n_samples": 8, "geometric_samples": 2},
    "checkpoint_every": 1,
}



def one_line(err: str, prefix: str = "error: ") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith(prefix), err
    assert sum(line.startswith(prefix) for line in lines) == 1, err
    return lines[-1]


def write_cfg(folder: Path, **train) -> Path:
    cfg = json.loads(json.dumps(CFG))
    cfg["train"].update(train)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: Path, run: Path) -> tuple[int, str, str]:
    return run_cli(["train", str(cfg), "--out", str(run), "--no-progress"])


def state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "latest.pt")["state"]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-for-bit equal parameters, optimizer moments, buffers and counters."""
    sa, sb = state(a), state(b)
    assert sa["counters"] == sb["counters"]
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k in sa["buffers"][0]["data"]:
        assert torch.equal(sa["buffers"][0]["data"][k], sb["buffers"][0]["data"][k]), k
    for i, moments in sa["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"])
    assert [r["loss"] for r in sa["history"]] == [r["loss"] for r in sb["history"]]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted in-process run of ``CFG``."""
    d = tmp_path_factory.mktemp("straight")
    status, _, err = train(write_cfg(d), d / "run")
    assert status == 0, err
    return d / "run"


# ---------------------------------------------------------------------------- divergence
class NaNAfter(Energy):
    """``0.5|x|²`` until ``broken`` is set, then NaN everywhere."""

    broken = False

    def __init__(self) -> None:
        super().__init__((2,))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        e = 0.5 * x.pow(2).sum(-1)
        return e * float("nan") if self.broken else e


def _sampler(energy: Energy, **settings) -> AdjointSampler:
    torch.manual_seed(0)
    s = dict(n_epochs=3, samples_per_epoch=32, grad_steps_per_epoch=3, train_batch_size=16,
             n_sde_steps=5)
    s.update(settings)
    return AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(0.01, 1.5),
                          MLP(2, hidden=8, n_layers=1), settings=s)


def test_trainer_stops_on_an_epoch_of_nonfinite_samples():
    energy = NaNAfter()
    s = _sampler(energy)
    s.fit(1)
    energy.broken = True
    with pytest.raises(TrainingDiverged, match=r"^training diverged in epoch 2: all 32 new "
                                                r"samples have a non-finite energy") as info:
        s.fit(1)
    assert info.value.epoch == 2
    assert len(s.history) == 1  # the diverged epoch is not logged


def test_trainer_stops_on_a_nonfinite_loss():
    s = _sampler(NaNAfter(), lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"epoch 1: the mean loss is nan \(\d of 3 "
                                               r"regression losses are NaN or inf\)"):
        s.fit()


def test_healthy_runs_keep_their_random_stream():
    """The divergence checks read values only: two runs are identical, with or without it."""
    a, b = _sampler(NaNAfter()), _sampler(NaNAfter())
    a.fit()
    b._check_divergence = lambda *args: None  # the check switched off
    b.fit()
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_cli_divergence_without_a_checkpoint(tmp_path):
    cfg = write_cfg(tmp_path, lr=1e30)
    status, _, err = train(cfg, tmp_path / "run")
    line = one_line(err)
    assert status == EXIT_DIVERGED
    assert "training diverged in epoch 1: the mean loss is nan" in line
    assert "no checkpoint was written (no epoch had finished)" in line
    assert "lower train.lr (now 1e+30)" in line
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_cli_divergence_keeps_the_last_good_checkpoint_which_resumes(tmp_path, straight,
                                                                      monkeypatch):
    cfg = write_cfg(tmp_path)
    run = tmp_path / "run"
    real_step = Trainer.train_step

    def step(self):  # epoch 4 (counter 3) diverges
        loss = real_step(self)
        return float("nan") if self.counters["epoch"] == 3 else loss

    monkeypatch.setattr(Trainer, "train_step", step)
    status, _, err = train(cfg, run)
    line = one_line(err)
    assert status == EXIT_DIVERGED
    assert "training diverged in epoch 4: the mean loss is nan (3 of 3 regression losses" in line
    assert f"the last good checkpoint {run / 'checkpoints' / 'latest.pt'} (epoch 3) is kept" \
        in line
    assert state(run)["counters"]["epoch"] == 3
    assert json.loads((run / "metrics.json").read_text())["counters"]["epoch"] == 3
    monkeypatch.setattr(Trainer, "train_step", real_step)
    status, out, err = train(cfg, run)  # the same command resumes from epoch 3
    assert status == 0, err
    assert "resuming" in out and "from epoch 3" in out
    assert_same_run(straight, run)


def test_cli_raise_policy_names_the_checkpoint(tmp_path, monkeypatch):
    from adjoint_core.training.trainer import NonFiniteEnergyError

    def fail(self, e, a):
        raise NonFiniteEnergyError("epoch 0: 1 of 16 samples have a non-finite energy")

    monkeypatch.setattr(Trainer, "finite_rows", fail)
    status, _, err = train(write_cfg(tmp_path, nonfinite="raise"), tmp_path / "run")
    assert status == EXIT_DIVERGED
    assert "no checkpoint was written" in one_line(err)


# ---------------------------------------------------------------------------- pre-emption
def _cmd(cfg: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "adjoint_core.app.cli", "train", str(cfg), "--out", str(run),
            "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread():
    """One torch thread, as the subprocesses (``OMP_NUM_THREADS=1``): identical arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_sigterm_checkpoints_exits_143_and_resumes_bit_for_bit(tmp_path):
    """A real process: SIGTERM mid-run, status 143, resume; a second train meanwhile fails."""
    cfg = json.loads(json.dumps(CFG))
    cfg["train"].update(n_epochs=16, samples_per_epoch=32, grad_steps_per_epoch=20)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "preempted"
    ckpt = run / "checkpoints" / "latest.pt"
    proc = subprocess.Popen(_cmd(path, run), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    with one_thread():  # the uninterrupted run, in this process while the other one starts
        status, _, err = train(path, tmp_path / "straight")
    assert status == 0, err
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["state"]["counters"]["epoch"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be pre-empted"
    # the directory is locked by the running training: a second train names it
    status, _, err = train(path, run)
    line = one_line(err)
    assert status == EXIT_USAGE
    assert f"in use by another training (pid {proc.pid} on host {socket.gethostname()}" in line
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    line = one_line(err, "preempted: ")
    epoch = load_checkpoint(ckpt)["state"]["counters"]["epoch"]
    assert 2 <= epoch < 16
    assert f"SIGTERM received: wrote the checkpoint of epoch {epoch} to {ckpt}" in line
    assert json.loads((run / "metrics.json").read_text())["counters"]["epoch"] == epoch
    assert (run / LOCK_FILE).read_text() == ""  # released
    with one_thread():  # the same command again (in this process: it is faster)
        status, out, err = train(path, run)
    assert status == 0, err
    assert f"resuming {run} from epoch {epoch}" in out
    assert_same_run(tmp_path / "straight", run)


def test_sigusr1_between_epochs_checkpoints_and_resumes(tmp_path, straight, monkeypatch):
    cfg = write_cfg(tmp_path)
    run = tmp_path / "run"
    real_epoch = Trainer.train_epoch

    def epoch_with_signal(self):
        row = real_epoch(self)
        if self.counters["epoch"] == 2:  # SLURM's warning arrives during epoch 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return row

    monkeypatch.setattr(Trainer, "train_epoch", epoch_with_signal)
    status, _, err = train(cfg, run)
    assert status == EXIT_PREEMPTED
    assert "SIGUSR1 received: wrote the checkpoint of epoch 2" in one_line(err, "preempted: ")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    status, _, err = train(cfg, run)
    assert status == 0, err
    assert_same_run(straight, run)


def test_signal_with_sparse_checkpoints_writes_the_current_epoch(tmp_path, monkeypatch):
    cfg = json.loads(json.dumps(CFG))
    cfg["checkpoint_every"] = 100
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    real_epoch = Trainer.train_epoch

    def epoch_with_signal(self):
        row = real_epoch(self)
        if self.counters["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return row

    monkeypatch.setattr(Trainer, "train_epoch", epoch_with_signal)
    status, _, _ = train(path, tmp_path / "run")
    assert status == EXIT_PREEMPTED
    assert state(tmp_path / "run")["counters"]["epoch"] == 3


# ---------------------------------------------------------------------------- locks
def test_held_lock_names_its_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK_FILE, "w") as fh:  # another open file: flock conflicts in-process too
        fh.write(json.dumps({"pid": 4242, "host": "gpu-node-7", "started": "2030-01-01"}))
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, _, err = train(write_cfg(tmp_path), run)
    assert status == EXIT_USAGE
    assert one_line(err) == (f"error: --out: {run}: in use by another training (pid 4242 on "
                             "host gpu-node-7, since 2030-01-01); wait for it to finish, stop "
                             "it, or choose another run directory")
    assert not (run / "checkpoints" / "latest.pt").exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "earlier"}))
    status, out, err = train(write_cfg(tmp_path, n_epochs=1), run)
    assert status == 0, err
    assert f"taking over {run / LOCK_FILE} from pid {dead.pid}" in out
    assert (run / LOCK_FILE).read_text() == ""


# ---------------------------------------------------------------------------- failed writes
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, straight, monkeypatch):
    cfg = write_cfg(tmp_path)
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "latest.pt"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the checkpoint of epoch 3: the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    status, _, err = train(cfg, run)
    line = one_line(err)
    assert status == EXIT_FAILED
    assert line == (f"error: {ckpt}: cannot be written (ENOSPC: No space left on device); the "
                    "previous version of the file is unchanged")
    assert state(run)["counters"]["epoch"] == 2  # the previous checkpoint loads
    assert not list((run / "checkpoints").glob("*.tmp"))
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    status, _, err = train(cfg, run)
    assert status == 0, err
    assert_same_run(straight, run)


def test_atomic_write_failure_names_path_and_errno(tmp_path):
    target = tmp_path / "c.pt"
    save_checkpoint(target, {"x": torch.ones(2)})
    (tmp_path / "sub").write_text("a file where a folder should be")
    with pytest.raises(CheckpointWriteError, match=r"cannot be written \((ENOTDIR|EEXIST)"):
        save_checkpoint(tmp_path / "sub" / "c.pt", {"x": torch.zeros(2)})
    assert torch.equal(load_checkpoint(target)["state"]["x"], torch.ones(2))
