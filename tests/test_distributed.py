"""Data-parallel training on torch.distributed (gloo, CPU, 2 processes launched by torchrun).

The multi-process tests launch ``python -m torch.distributed.run --standalone`` (free port
chosen by the c10d rendezvous). ``test_two_rank_semantics`` runs this very file as the worker
script (see ``_worker`` at the bottom); ``test_cli_two_processes_dw4`` runs the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adjoint_core import ConfigError
from adjoint_core.app.checkpoint import load_checkpoint
from adjoint_core.app.cli import main
from adjoint_core.training import distributed as D

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is needed",
)

REPO = Path(__file__).resolve().parents[1]

# A flat Gaussian target with the core's MLP: no plugin needed, seconds per run.
GAUSS = {
    "seed": 5,
    "energy": {"name": "gaussian", "mean": [1.0, -1.0]},
    "space": {"name": "euclidean", "dim": 2},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "mlp", "hidden": 8, "n_layers": 2, "time_dim": 4},
    "buffer": {"name": "fifo", "capacity": 40},
    # odd global budgets: ranks get 5/4 samples, 3/2 initial samples and 4/3 batch rows
    "train": {"n_epochs": 3, "samples_per_epoch": 9, "init_samples": 5,
              "grad_steps_per_epoch": 4, "train_batch_size": 7, "n_sde_steps": 5},
    "eval": {"n_samples": 8, "geometric_samples": 0},
}

# DW-4 with a tiny EGNN (the end-to-end setting).
DW4 = {
    "seed": 3,
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 16, "n_layers": 2},
    "buffer": {"name": "fifo", "capacity": 256},
    "train": {"n_epochs": 3, "samples_per_epoch": 64, "grad_steps_per_epoch": 5,
              "train_batch_size": 32, "n_sde_steps": 10},
    "checkpoint_every": 1,
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ---------------------------------------------------------------------- single-process units
def test_split_evenly():
    for n in (0, 1, 5, 7, 64):
        for w in (1, 2, 3, 8):
            shares = [D.split_evenly(n, r, w) for r in range(w)]
            assert sum(shares) == n
            assert max(shares) - min(shares) <= 1
            assert shares == sorted(shares, reverse=True)  # the first ranks take the remainder
    assert [D.split_evenly(7, r, 2) for r in (0, 1)] == [4, 3]
    with pytest.raises(ValueError, match="not in a world of size 2"):
        D.split_evenly(4, 2, 2)


def test_launch_detection_and_device():
    assert not D.launched_by_torchrun({})
    assert not D.launched_by_torchrun({"WORLD_SIZE": "1"})
    assert D.launched_by_torchrun({"WORLD_SIZE": "2"})
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("cpu", local_rank=1) == torch.device("cpu")
    if torch.cuda.is_available():
        assert D.resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    else:
        assert D.resolve_device("auto", local_rank=1) == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            D.resolve_device("cuda", local_rank=0)
    with pytest.raises(RuntimeError, match="WORLD_SIZE > 1"):
        D.init_from_env("cpu", env={})


def test_distributed_sampler_needs_a_process_group():
    from adjoint_core import AdjointSampler, EuclideanSpace, GaussianEnergy, GeometricSchedule
    from adjoint_core.problem.models import MLP

    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        AdjointSampler(GaussianEnergy(torch.zeros(2), torch.eye(2)), EuclideanSpace(dim=2),
                       GeometricSchedule(), MLP(2, hidden=4, n_layers=1, time_dim=2),
                       distributed=True)


def _tiny_sampler(seed: int = 0):
    from adjoint_core import AdjointSampler, EuclideanSpace, GaussianEnergy, GeometricSchedule
    from adjoint_core.problem.buffer import ReplayBuffer
    from adjoint_core.problem.models import MLP

    s = AdjointSampler(GaussianEnergy(torch.zeros(2), torch.eye(2)), EuclideanSpace(dim=2),
                       GeometricSchedule(), MLP(2, hidden=4, n_layers=1, time_dim=2),
                       ReplayBuffer(16), settings={"samples_per_epoch": 4, "n_sde_steps": 3,
                                                   "grad_steps_per_epoch": 1,
                                                   "train_batch_size": 4}, seed=seed)
    s.collect(4)
    return s


def test_state_for_rank_maps_shards_and_seeds_new_ranks():
    from adjoint_core import AdjointSampler

    r0, r1 = _tiny_sampler(0), _tiny_sampler(1)
    gathered = r0.state_dict()
    gathered["distributed"] = {"world_size": 2, "shards": [
        {"rank": 1, "buffers": [r1.buffer.state_dict()], "generator": r1.generator.get_state()}]}

    single = AdjointSampler.state_for_rank(gathered, 0, 1)  # what a single process loads
    assert "distributed" not in single
    assert torch.equal(single["buffers"][0]["data"]["x1"], r0.buffer.state_dict()["data"]["x1"])
    assert torch.equal(single["generator"], r0.generator.get_state())

    same = AdjointSampler.state_for_rank(gathered, 1, 2)  # rank 1 of a 2-process resume
    assert torch.equal(same["buffers"][0]["data"]["x1"], r1.buffer.state_dict()["data"]["x1"])
    assert torch.equal(same["generator"], r1.generator.get_state())
    assert same["model"] is gathered["model"]

    new = [AdjointSampler.state_for_rank(gathered, r, 4) for r in (2, 3)]  # ranks new to the run
    x1 = [s["buffers"][0]["data"]["x1"] for s in (*new, single, same)]
    assert torch.equal(x1[0], x1[2])  # 2 % 2
    assert torch.equal(x1[1], x1[3])  # 3 % 2
    assert new[0]["generator"] is None and new[0]["generator_seed"] != new[1]["generator_seed"]
    assert AdjointSampler.state_for_rank(gathered, 2, 4)["generator_seed"] == \
        new[0]["generator_seed"]

    target = _tiny_sampler(9)  # a single process loads a gathered state directly
    target.load_state_dict(gathered)
    assert torch.equal(target.generator.get_state(), r0.generator.get_state())
    assert len(target.buffer) == len(r0.buffer)


def test_plain_train_does_not_use_torch_distributed(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({**GAUSS, "train": {**GAUSS["train"], "n_epochs": 1}}))
    assert "WORLD_SIZE" not in os.environ
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert not torch.distributed.is_initialized()
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert rec["distributed"]["world_size"] == 1 and rec["distributed"]["backend"] is None
    assert rec["counters"]["energy_evals"] == 9 + 5


# ---------------------------------------------------------------------- two processes
def test_two_rank_semantics(tmp_path):
    """Global-batch gradient, distinct rank streams, identical models, bit-exact resume."""
    ref = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) + torch.tensor([1., -1.])
    np.save(tmp_path / "ref.npy", ref.numpy())
    _torchrun(str(Path(__file__).resolve()), str(tmp_path),
              env=_env(ADJOINT_CORE_PLUGINS="core", PYTHONPATH=str(REPO)))
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in res] == [2, 2] and res[0]["backend"] == "gloo"
    # uneven split of the global batch of 5: 3 + 2 rows; the optimizer step (SGD, lr 1) is
    # exactly minus the mean gradient over the 5 rows
    assert [r["local_batch"] for r in res] == [3, 2]
    for r in res:
        assert r["grad_scale"] > 1e-3
        assert r["grad_err"] <= 1e-5 * r["grad_scale"], r
    assert res[0]["digest"] == res[1]["digest"]  # identical parameters after the step
    assert res[0]["first_sample"] != res[1]["first_sample"]  # seed + rank: distinct noise
    # broadcast_module: rank 0's parameters and buffers everywhere (they differed before);
    # average_gradients: the mean of 1 and 2, and (1 + 0)/2 where rank 1 had no gradient
    m0, m1 = res[0]["module"], res[1]["module"]
    assert m0["digest_before"] != m1["digest_before"]
    assert m0["digest_after"] == m1["digest_after"] == m0["digest_before"]
    assert m0["mean_grads"] == m1["mean_grads"] == [[1.5]] * 5 + [[0.5]]
    assert m0["buffers"] == m1["buffers"] == [[0.0] * 4, 7]

    # train_run under torchrun: counters are global, each rank did its share
    rec = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert rec["counters"]["energy_evals"] == 3 * 9 + 5
    assert rec["counters"]["grad_steps"] == 3 * 4
    d = rec["distributed"]
    assert d["world_size"] == 2 and d["parameters_in_sync"]
    assert [p["energy_evals_this_launch"] for p in d["per_rank"]] == [3 + 3 * 5, 2 + 3 * 4]
    assert [e["tag"] for e in rec["evaluations"]] == ["untrained", "final"]  # rank 0 only
    # a 2-process resume continues every rank's buffer shard and random stream bit for bit
    assert res[0]["resume_bit_exact"], res[0]
    assert res[0]["returned_counters"] == res[1]["returned_counters"] == rec["counters"]


@pytest.mark.slow
def test_cli_two_processes_dw4(tmp_path):
    """``adjoint-core train`` under torchrun; the checkpoint resumes in a single process."""
    pytest.importorskip("adjoint_core_egnn")
    pytest.importorskip("adjoint_core_particles")
    cfg = tmp_path / "dw4.yaml"
    cfg.write_text(yaml.safe_dump(DW4))
    run = tmp_path / "dist"
    proc = _torchrun("-m", "adjoint_core.app.cli", "train", str(cfg), "--out", str(run),
                     "--no-progress", env=_env())
    assert proc.stdout.count('"run_dir"') == 1  # only rank 0 prints the summary
    for f in ("config.yaml", "checkpoints/latest.pt", "metrics.json", "plots/loss.png"):
        assert (run / f).is_file(), f
    rec = json.loads((run / "metrics.json").read_text())
    d = rec["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["device"] == "cpu"
    assert d["parameters_in_sync"] and len(set(d["parameter_digests"])) == 1
    assert [p["energy_evals_this_launch"] for p in d["per_rank"]] == [3 * 32, 3 * 32]

    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")["state"]
    assert D.parameter_digest(ckpt["model"]) == d["parameter_digests"][0]
    assert ckpt["distributed"]["world_size"] == 2
    assert [s["rank"] for s in ckpt["distributed"]["shards"]] == [1]
    assert len(ckpt["buffers"][0]["data"]["x1"]) == 3 * 32  # rank 0's shard

    # the same config in one process: same global budget, same counts
    single = tmp_path / "single"
    assert main(["train", str(cfg), "--out", str(single), "--no-progress"]) == 0
    ref = json.loads((single / "metrics.json").read_text())
    for k in ("energy_evals", "grad_steps", "epoch"):
        assert rec["counters"][k] == ref["counters"][k], k
    assert rec["counters"]["energy_evals"] == 3 * 64
    assert [h["energy_evals"] for h in rec["history"]] == [64, 128, 192]

    # resume the 2-process run in a single process with a longer budget
    cfg.write_text(yaml.safe_dump({**DW4, "train": {**DW4["train"], "n_epochs": 5}}))
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert not torch.distributed.is_initialized()
    rec2 = json.loads((run / "metrics.json").read_text())
    assert rec2["counters"]["epoch"] == 5
    assert rec2["counters"]["energy_evals"] == 5 * 64
    assert rec2["counters"]["grad_steps"] == 5 * 5
    assert rec2["history"][:3] == rec["history"]
    assert rec2["distributed"]["world_size"] == 1
    assert rec2["distributed"]["per_rank"][0]["energy_evals_this_launch"] == 2 * 64
    after = load_checkpoint(run / "checkpoints" / "latest.pt")["state"]
    assert "distributed" not in after
    assert any(not torch.equal(after["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert len(after["buffers"][0]["data"]["x1"]) == 3 * 32 + 2 * 64  # shard 0 + new rows


# ---------------------------------------------------------------------- worker (under torchrun)
def _global_batch_gradient(ctx: D.DistContext) -> dict:
    """One SGD(lr=1) step with the gradient all-reduce vs the mean gradient over the global
    batch."""
    import torch.distributed as dist

    from adjoint_core import AdjointSampler, EuclideanSpace, GaussianEnergy, GeometricSchedule
    from adjoint_core.problem.buffer import ReplayBuffer
    from adjoint_core.problem.models import MLP

    torch.manual_seed(0)
    model = MLP(3, hidden=8, n_layers=2, time_dim=4)
    torch.nn.init.normal_(model.net[-1].weight, std=0.3)  # every parameter gets a gradient
    params = list(model.parameters())
    sampler = AdjointSampler(
        GaussianEnergy(torch.tensor([1.0, -1.0, 0.5]), torch.eye(3)), EuclideanSpace(dim=3),
        GeometricSchedule(sigma_max=1.5), model, ReplayBuffer(64),
        settings={"samples_per_epoch": 8, "train_batch_size": 5, "n_sde_steps": 4,
                  "grad_steps_per_epoch": 1},
        seed=11, optimizer=torch.optim.SGD(params, lr=1.0), distributed=True)
    sampler.collect(D.split_evenly(8, ctx.rank, ctx.world_size))
    first = sampler.buffer.tensors()["x1"][0].tolist()
    b = D.split_evenly(5, ctx.rank, ctx.world_size)
    gen_state = sampler.generator.get_state()
    # reference: the sum of this rank's per-row gradients (bare model, same random draws),
    # summed over ranks and divided by the global batch
    batch = sampler.buffer.sample(b, sampler.generator)
    grads = torch.autograd.grad(sampler.loss(batch) * b, params)
    ref = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(ref)
    ref /= 5
    before = torch.cat([p.detach().reshape(-1) for p in params])
    sampler.generator.set_state(gen_state)
    sampler.train_step()
    step = before - torch.cat([p.detach().reshape(-1) for p in params])
    return {"local_batch": b, "grad_err": float((step - ref).abs().max()),
            "grad_scale": float(ref.abs().max()), "first_sample": first,
            "digest": D.parameter_digest(model)}


def _module_collectives(ctx: D.DistContext) -> dict:
    """``broadcast_module`` and ``average_gradients`` on a module that differs per rank."""
    torch.manual_seed(100 + ctx.rank)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 1)).double()
    model[1].running_mean.fill_(ctx.rank)  # buffers too, in two dtypes (float64, int64)
    model[1].num_batches_tracked.fill_(7 + ctx.rank)
    before = D.parameter_digest(model)
    D.broadcast_module(model)
    # gradients: rank r sets grad = (r + 1) · ones on every parameter, except that rank 1
    # leaves the last layer's bias without a gradient (it contributes zeros)
    params = list(model.parameters())
    for i, p in enumerate(params):
        if not (ctx.rank == 1 and i == len(params) - 1):
            p.grad = torch.full_like(p, float(ctx.rank + 1))
    D.average_gradients(model)
    return {"digest_before": before, "digest_after": D.parameter_digest(model),
            "buffers": [model[1].running_mean.tolist(), int(model[1].num_batches_tracked)],
            "mean_grads": [sorted(set(p.grad.flatten().tolist())) for p in params]}


def _train_run_resume(ctx: D.DistContext, out: Path) -> dict:
    """``train_run`` straight for 3 epochs vs 2 epochs then resumed to 3 (both 2 processes)."""
    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import train_run

    def cfg(n_epochs: int):
        return load_config({**GAUSS, "train": {**GAUSS["train"], "n_epochs": n_epochs},
                            "eval": {**GAUSS["eval"], "reference": str(out / "ref.npy")}})

    quiet = {"progress": False, "log": lambda *a: None}
    rec = train_run(cfg(3), out / "straight", **quiet)
    train_run(cfg(2), out / "resumed", **quiet)
    train_run(cfg(3), out / "resumed", **quiet)
    res = {"returned_counters": rec["counters"]}
    if ctx.is_main:
        a = load_checkpoint(out / "straight" / "checkpoints" / "latest.pt")["state"]
        b = load_checkpoint(out / "resumed" / "checkpoints" / "latest.pt")["state"]
        bufs = [(a["buffers"][0], b["buffers"][0])] + [
            (sa["buffers"][0], sb["buffers"][0])
            for sa, sb in zip(a["distributed"]["shards"], b["distributed"]["shards"], strict=True)]
        # model_evals also counts the evaluations, and the resumed run made one more (the
        # "final" one of its first launch), so it is left out of the comparison
        counters = [{k: v for k, v in c.items() if k != "model_evals"}
                    for c in (a["counters"], b["counters"])]
        res["resume_bit_exact"] = (
            counters[0] == counters[1]
            and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
            and all(torch.equal(x["data"][k], y["data"][k]) for x, y in bufs for k in x["data"])
            and torch.equal(a["distributed"]["shards"][0]["generator"],
                            b["distributed"]["shards"][0]["generator"]))
    return res


def _worker(out: Path) -> None:
    ctx = D.init_from_env("cpu")
    try:
        res = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend}
        res.update(_global_batch_gradient(ctx))
        res["module"] = _module_collectives(ctx)
        res.update(_train_run_resume(ctx, out))
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(res))
    finally:
        D.shutdown(ctx)


def _threads() -> list[str]:
    """Names of this process's threads (Linux ``/proc``)."""
    task = Path("/proc/self/task")
    return sorted((task / t / "comm").read_text().strip() for t in os.listdir(task))


def _release_worker(out: Path, config: Path) -> None:
    """The CLI in this process under torchrun, then the threads left behind."""
    rc = main(["train", str(config), "--out", str(out / "run"), "--no-progress"])
    rank = os.environ["RANK"]
    (out / f"threads{rank}.json").write_text(json.dumps(
        {"rc": rc, "threads": _threads(),
         "initialized": torch.distributed.is_initialized()}))


if __name__ == "__main__":
    if sys.argv[1] == "release":
        _release_worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        _worker(Path(sys.argv[1]))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_process_group_released_after_train(tmp_path):
    """After ``train`` under torchrun no gloo thread is left running.

    A process group that outlives ``destroy_process_group()`` (kept by a
    ``DistributedDataParallel`` wrapper, or by a library such as torch_geometric imported after
    the group was created) keeps its worker threads; one of them can still be releasing the
    last collective's tensors when the interpreter shuts down, which aborts the process
    (``terminate called without an active exception``) after a successful run. The DW-4
    config uses the EGNN plugin, which imports torch_geometric.
    """
    pytest.importorskip("adjoint_core_egnn")
    cfg = tmp_path / "dw4.yaml"
    cfg.write_text(yaml.safe_dump({**DW4, "train": {**DW4["train"], "n_epochs": 1}}))
    _torchrun(str(Path(__file__).resolve()), "release", str(tmp_path), str(cfg),
              env=_env(PYTHONPATH=str(REPO)))
    for rank in (0, 1):
        res = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert res["rc"] == 0 and not res["initialized"]
        assert not [t for t in res["threads"] if "gloo" in t], res["threads"]


def test_two_process_warm_start(tmp_path):
    """``init_from`` under torchrun: both ranks load the source network and stay in sync."""
    from adjoint_core.app.checkpoint import load_checkpoint
    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import train_run

    train_run(load_config(GAUSS), tmp_path / "source", progress=False, log=lambda *a: None)
    cfg = json.loads(json.dumps(GAUSS))
    cfg["train"].update(n_epochs=1, n_sde_steps=7, lr=1e-9)
    cfg["init_from"] = str(tmp_path / "source")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    _torchrun("-m", "adjoint_core.app.cli", "train", str(tmp_path / "ft.yaml"), "--out",
              str(tmp_path / "ft"), "--no-progress", env=_env())
    rec = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert rec["distributed"]["world_size"] == 2 and rec["distributed"]["parameters_in_sync"]
    assert rec["init_from"]["counters"]["epoch"] == 3
    assert rec["counters"]["epoch"] == 1 and rec["counters"]["energy_evals"] == 5 + 9
    src = load_checkpoint(tmp_path / "source" / "checkpoints" / "latest.pt")["state"]["model"]
    new = load_checkpoint(tmp_path / "ft" / "checkpoints" / "latest.pt")["state"]["model"]
    for k, v in src.items():  # lr 1e-9: four Adam steps move no weight by more than ~4e-9
        torch.testing.assert_close(new[k], v, atol=1e-7, rtol=0)
