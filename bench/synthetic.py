"""Synthetic benchmark: train one system, sample 2,000 points, evaluate, print/write JSON.

Usage (from the repository root)::

    .venv/bin/python bench/synthetic.py dw4 --budget cpu      # bench/configs/dw4_cpu.yaml
    .venv/bin/python bench/synthetic.py lj13 --budget paper   # bench/configs/lj13_paper.yaml (GPU)
    .venv/bin/python bench/synthetic.py gmm40 --budget cpu --epochs 2   # quick smoke run
    .venv/bin/python bench/synthetic.py dw4 --config examples/dw4_cpu_reweight_sde400.yaml

``--budget B`` runs ``<system>_<B>.yaml`` from ``examples/``, else from ``bench/configs/``.

Protocol (fixed): after training, 2,000 samples are drawn with a fixed generator and compared
with 2,000 reference samples (a seeded subset of the config's ``eval.reference``, e.g. the
registered ``dw4_val`` / ``lj13_val`` sets of adjoint-core-particles; GMM-40: exact samples of
the mixture). Reported: energy W2; geometric W2 with the papers'
protocol and with the invariant protocol on all 2,000 (particles), or Euclidean W2 (GMM-40);
path ESS of the 2,000 simulated paths; for mixtures (GMM-40) the modes visited and the
total-variation distance of the mode weights from uniform; energy evaluations, model
evaluations, gradient steps; wall time per phase (simulate / energy / train / evaluate).
Results go to ``bench/results/<system>_<budget>.json`` and the run directory
``runs/bench/<system>_<budget>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adjoint_core.app.config import load_config
from adjoint_core.app.run import _reference_for, evaluate_samples, load_run, train_run
from adjoint_core.evaluation import metrics
from adjoint_core.evaluation.importance import importance_resample

ROOT = Path(__file__).resolve().parents[1]


def config_path(name: str) -> Path:
    """``examples/<name>.yaml`` (the canonical configs), else ``bench/configs/<name>.yaml``."""
    canonical = ROOT / "examples" / f"{name}.yaml"
    return canonical if canonical.is_file() else ROOT / "bench" / "configs" / f"{name}.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", choices=["dw4", "lj13", "lj55", "gmm40"])
    p.add_argument("--budget", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="override train.n_epochs")
    p.add_argument("--config", default=None,
                   help="config YAML (default <system>_<budget>.yaml in examples/, else in "
                        "bench/configs/); results and "
                        "the run directory are then named after its file name")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--fresh", action="store_true", help="delete an existing run dir first")
    p.add_argument("--resample", type=int, default=0, metavar="K",
                   help="also report importance-resampled samples: simulate K x n-samples "
                        "paths and resample n-samples by path weights (0: off)")
    p.add_argument("--protocols", nargs="+", default=["papers", "invariant"],
                   choices=["papers", "invariant"], help="geometric W2 protocols")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: evaluate the run directory's latest checkpoint")
    p.add_argument("--sde-steps", type=int, default=None, metavar="S",
                   help="Euler-Maruyama steps of the final sampling (default: eval.n_sde_steps "
                        "of the config, else the training value)")
    p.add_argument("--draws", type=int, default=1, metavar="D",
                   help="evaluate D independent draws of n-samples (generator seeds 2024, "
                        "2025, ...) and report each and their mean/std; 'metrics' is draw 0")
    args = p.parse_args()

    name = Path(args.config).stem if args.config else f"{args.system}_{args.budget}"
    cfg_path = Path(args.config).resolve() if args.config else config_path(name)
    cfg = load_config(cfg_path)
    if args.epochs is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"n_epochs": args.epochs})})
    if cfg.eval.reference:  # a file beside the config, like the CLI (else a registered name)
        ref = Path(cfg.eval.reference)
        if not ref.is_absolute() and not ref.exists() and (cfg_path.parent / ref).is_file():
            cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(
                update={"reference": str((cfg_path.parent / ref).resolve())})})
    if not cfg.eval.reference:  # generated references (e.g. LJ-55 from `adjoint-core mcmc`)
        try:
            from adjoint_core_particles.reference import find_reference

            found = find_reference(args.system)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(
                update={"reference": str(found)})})
    run_dir = Path(args.run_dir or ROOT / "runs" / "bench" / name)
    if args.fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)

    t0 = time.perf_counter()
    if args.eval_only:
        record = json.loads((run_dir / "metrics.json").read_text())
    else:
        record = train_run(cfg, run_dir, progress=True)
    train_wall = time.perf_counter() - t0

    if args.draws < 1:
        p.error(f"--draws must be >= 1, got {args.draws}")
    if args.sde_steps is not None and args.sde_steps < 1:
        p.error(f"--sde-steps must be >= 1, got {args.sde_steps}")
    sampler = load_run(run_dir)
    reference = _reference_for(cfg, sampler, None)
    sde_steps = args.sde_steps or cfg.eval.n_sde_steps or sampler.settings.n_sde_steps
    t0 = time.perf_counter()
    draws = [_evaluate_draw(sampler, reference, cfg, args, sde_steps, 2024 + k)
             for k in range(args.draws)]
    res = draws[0]
    eval_wall = time.perf_counter() - t0
    resampled = None
    if args.resample:
        t0 = time.perf_counter()
        rs = importance_resample(sampler, args.n_samples, args.resample,
                                 generator=torch.Generator().manual_seed(2025), progress=True)
        resampled = {"oversample": args.resample, "paths_simulated": rs.n_drawn,
                     "energy_evals": rs.n_drawn, "ess": rs.ess,
                     "effective_samples": rs.n_effective, "unique_states": rs.n_unique}
        if rs.few_effective_warning():
            print(f"warning: {rs.few_effective_warning()}", file=sys.stderr)
        if reference is not None:
            resampled.update(evaluate_samples(rs.x, reference, sampler.energy, sampler.space,
                                              args.n_samples, args.n_samples,
                                              tuple(args.protocols), seed=cfg.seed))
        resampled.update(_mode_coverage(sampler, rs.x))
        resampled["wall_time_s"] = round(time.perf_counter() - t0, 2)

    c = record["counters"]
    summary = None
    if args.draws > 1:
        keys = [k for k, v in draws[0].items() if isinstance(v, float)]
        summary = {k: {"mean": float(np.mean([d[k] for d in draws])),
                       "std": float(np.std([d[k] for d in draws], ddof=1))} for k in keys}
    out = {
        "system": args.system,
        "budget": args.budget,
        "config": os.path.relpath(cfg_path, ROOT),
        "epochs": c["epoch"],
        "sde_steps": sde_steps,
        "metrics": res,
        "metrics_draws": draws if args.draws > 1 else None,
        "metrics_draws_summary": summary,
        "metrics_resampled": resampled,
        "counts": {"energy_evals": c["energy_evals"], "model_evals": c["model_evals"],
                   "grad_steps": c["grad_steps"],
                   "grad_steps_per_energy_eval": c["grad_steps"] / max(c["energy_evals"], 1),
                   "nonfinite_dropped": c["nonfinite_dropped"]},
        "wall_time_s": {**{k: round(v, 2) for k, v in record["timers"].items()},
                        "final_evaluation": round(eval_wall, 2),
                        "train_command_total": None if args.eval_only else round(train_wall, 2)},
        "evaluated_without_retraining": bool(args.eval_only),
        # a warm-started run (config init_from): the source run's checkpoint, counters, times
        "init_from": record.get("init_from"),
        "training_evaluations": record["evaluations"],
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": str(torch.__version__), "device": cfg.device},
    }
    path = Path(args.out or ROOT / "bench" / "results" / f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"] | out["counts"] | {"wall_time_s": out["wall_time_s"]}
                     | {"resampled": resampled, "draws_summary": summary}, indent=2))


def _evaluate_draw(sampler, reference, cfg, args, sde_steps: int, seed: int) -> dict:
    """Metrics of one draw of ``args.n_samples`` samples simulated with generator ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x, log_w = sampler.path_log_weights(args.n_samples, n_steps=sde_steps, generator=gen)
    res: dict = {"path_ess": metrics.path_ess(log_w[torch.isfinite(log_w)].numpy())}
    if reference is not None:
        res.update(evaluate_samples(x, reference, sampler.energy, sampler.space,
                                    args.n_samples, args.n_samples, tuple(args.protocols),
                                    seed=cfg.seed))
    else:
        with torch.no_grad():
            e = sampler.energy.energy(x).double()
        res.update({"energy_mean": float(e[torch.isfinite(e)].mean()),
                    "nonfinite_energies": float((~torch.isfinite(e)).sum()),
                    "note": "no reference samples for this system: W2 metrics not computed"})
    res.update(_mode_coverage(sampler, x))
    return res


def _mode_coverage(sampler, x: torch.Tensor) -> dict:
    """Modes visited and mode-weight TV for mixture targets (GMM-40); ``{}`` for others."""
    coverage = getattr(sampler.energy, "mode_coverage", None)
    return coverage(x) if callable(coverage) else {}


if __name__ == "__main__":
    main()
