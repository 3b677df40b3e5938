"""Measure 1- vs N-process data-parallel training on this machine (CPU, gloo); writes the figure.

Usage (from the repository root)::

    .venv/bin/python docs/scaling_cpu.py --procs 1 2 --repeats 2 --out runs/scaling

Each repeat trains the same DW-4 config (EGNN 64×3, 256 samples × 100 SDE steps per epoch,
25 gradient steps of global batch 256, 6 epochs, no evaluation) once per process count, with
``OMP_NUM_THREADS=1`` for every process: a plain ``adjoint-core train`` for one process,
``python -m torch.distributed.run --standalone --nproc-per-node N`` otherwise. The per-epoch
time is rank 0's ``simulate + energy + train`` wall time divided by the epochs; the
end-to-end time is the whole command (start-up, plots). Results go to ``OUT/scaling.json``
and the figure (medians as bars, every run as a dot) to ``docs/scaling_cpu.png``;
``--plot-only A.json B.json`` redraws it from several result files without running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "seed": 0,
    "device": "cpu",
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 64, "n_layers": 3},
    "buffer": {"name": "fifo", "capacity": 10000},
    "train": {"n_epochs": 6, "samples_per_epoch": 256, "sim_batch_size": 256,
              "grad_steps_per_epoch": 25, "train_batch_size": 256, "n_sde_steps": 100,
              "lr": 0.001},
    "checkpoint_every": 6,
}


def run_once(n_procs: int, out: Path, config: Path) -> dict:
    """Train the config with ``n_procs`` processes into a fresh ``out``; return its timings."""
    train = ["train", str(config), "--out", str(out), "--no-progress"]
    if n_procs == 1:
        cmd = [sys.executable, "-m", "adjoint_core.app.cli", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(n_procs), "-m", "adjoint_core.app.cli", *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rec = json.loads((out / "metrics.json").read_text())
    c, t = rec["counters"], rec["timers"]
    epochs = c["epoch"]
    epoch_s = (t["simulate"] + t["energy"] + t["train"]) / epochs
    return {"procs": n_procs, "epochs": epochs, "epoch_s": epoch_s,
            "simulate_s_per_epoch": t["simulate"] / epochs,
            "train_s_per_epoch": t["train"] / epochs,
            "samples_per_s": c["energy_evals"] / (epoch_s * epochs),
            "grad_steps_per_s": c["grad_steps"] / (epoch_s * epochs),
            "end_to_end_s": wall, "energy_evals": c["energy_evals"],
            "grad_steps": c["grad_steps"], "load_avg_1min_before": load}


def plot(results: list[dict], path: Path) -> None:
    """Bar chart of seconds per epoch and samples per second against the process count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    procs = sorted({r["procs"] for r in results})

    def med(key: str, p: int) -> float:
        return statistics.median(r[key] for r in results if r["procs"] == p)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, key, label in zip(axes, ("epoch_s", "samples_per_s", "grad_steps_per_s"),
                              ("wall time per epoch [s]", "samples simulated per s",
                               "gradient steps per s"), strict=True):
        ax.bar([str(p) for p in procs], [med(key, p) for p in procs], color="tab:blue")
        for r in results:
            ax.plot(str(r["procs"]), r[key], "k.", ms=4)
        ax.set_xlabel("processes (gloo, 1 thread each)")
        ax.set_title(label, fontsize=10)
    fig.suptitle("DW-4, EGNN 64×3, 256 samples × 100 SDE steps + 25 steps of batch 256 per "
                 "epoch; 2-core shared CPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "scaling")
    p.add_argument("--figure", type=Path, default=REPO / "docs" / "scaling_cpu.png")
    p.add_argument("--plot-only", type=Path, nargs="+", default=None, metavar="JSON",
                   help="no runs: plot the results of earlier scaling.json files together")
    args = p.parse_args()
    if args.plot_only:
        results = [r for f in args.plot_only for r in json.loads(f.read_text())]
        plot(results, args.figure)
        summarise(results)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "dw4_scaling.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    results = []
    for rep in range(args.repeats):
        for n in args.procs:
            run_dir = args.out / f"p{n}_r{rep}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            res = run_once(n, run_dir, config)
            results.append(res)
            print(json.dumps(res), flush=True)
    (args.out / "scaling.json").write_text(json.dumps(results, indent=2))
    plot(results, args.figure)
    summarise(results)


def summarise(results: list[dict]) -> None:
    """Print the median and range of each measure per process count."""
    for n in sorted({r["procs"] for r in results}):
        rows = [r for r in results if r["procs"] == n]
        parts = []
        for key in ("epoch_s", "simulate_s_per_epoch", "train_s_per_epoch", "samples_per_s",
                    "grad_steps_per_s", "end_to_end_s"):
            v = [r[key] for r in rows]
            parts.append(f"{key} {statistics.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]")
        print(f"{n} process(es), {len(rows)} runs: " + "; ".join(parts))


if __name__ == "__main__":
    main()
