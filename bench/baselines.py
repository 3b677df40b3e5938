"""Baselines on one system: Adjoint Sampling vs iDEM vs MCMC, same energy, metrics and protocol.

Usage (from the repository root; state the thread count, the numbers depend on it)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/baselines.py dw4 --as-epochs 30 --idem-epochs 30
    OMP_NUM_THREADS=1 .venv/bin/python bench/baselines.py lj13 --as-epochs 15 --idem-epochs 15

Methods (``--methods``, default all):

* ``as``: ``bench/configs/<system>_cpu.yaml`` (Adjoint Sampling), ``n_epochs`` overridden;
* ``idem``: ``examples/<system>_idem.yaml`` (``algorithm: idem``), ``n_epochs`` overridden;
* ``mcmc_matched``: MALA with ``--matched-chains`` chains and as many energy evaluations as the
  AS run used (the per-evaluation baseline): half the steps burn-in, the rest kept;
* ``mcmc_reference``: ``examples/<system>_mcmc.yaml`` (long HMC, the reference generator).

Protocol (as ``bench/synthetic.py``): 2,000 samples per method (trained samplers: a fixed
generator; MCMC: a seeded random subset of the kept states) against 2,000 reference samples of
the config's ``eval.reference`` (the registered ``<system>_val`` set); energy W2, geometric W2
(papers' and invariant protocol) on ``--geometric-samples`` of them. Reported per method: the
metrics, the energy evaluations (training, or the whole chain), the wall time (training phases,
or the chain) and the time to draw the 2,000 samples. Writes
``bench/results/baselines_<system>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from adjoint_core.app.config import load_config
from adjoint_core.app.run import evaluate_samples, load_reference, load_run, train_run
from adjoint_core.mcmc.run import load_mcmc_config, run_mcmc_config
from adjoint_core.mcmc.samplers import run_mcmc
from adjoint_core.plugins.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]


def config_path(name: str) -> Path:
    """``examples/<name>.yaml`` (the canonical configs), else ``bench/configs/<name>.yaml``."""
    canonical = ROOT / "examples" / f"{name}.yaml"
    return canonical if canonical.is_file() else ROOT / "bench" / "configs" / f"{name}.yaml"
METHODS = ("as", "idem", "mcmc_matched", "mcmc_reference")


def _evaluate(x, ref, energy, space, n, geo) -> dict:
    return evaluate_samples(x.cpu(), ref, energy, space, n, geo, ("papers", "invariant"), seed=0)


def _trained(system: str, kind: str, epochs: int | None, ref, n: int, geo: int,
             run_root: Path) -> dict:
    name = f"{system}_cpu" if kind == "as" else f"{system}_idem"
    cfg_path = config_path(name)
    cfg = load_config(cfg_path)
    if epochs is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"n_epochs": epochs})})
    # no evaluations inside training: the benchmark evaluates once, below
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reference": None})})
    run_dir = run_root / f"{system}_{kind}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    record = train_run(cfg, run_dir, progress=False, log=lambda *a: None)
    command_wall = time.perf_counter() - t0
    sampler = load_run(run_dir)
    t0 = time.perf_counter()
    x = sampler.sample(n, generator=torch.Generator().manual_seed(2024))
    sample_wall = time.perf_counter() - t0
    metrics = _evaluate(x, ref, sampler.energy, sampler.space, n, geo)
    c, tm = record["counters"], record["timers"]
    return {"method": kind, "config": str(cfg_path.relative_to(ROOT)), "epochs": c["epoch"],
            "energy_evals": c["energy_evals"], "grad_steps": c["grad_steps"],
            "model_evals": c["model_evals"],
            "wall_time_s": round(tm["simulate"] + tm["energy"] + tm["train"], 1),
            "train_command_s": round(command_wall, 1), "sample_s": round(sample_wall, 1),
            "metrics": metrics}


def _mcmc_matched(system: str, budget: int, chains: int, ref, n: int, geo: int) -> dict:
    cfg = load_mcmc_config(config_path(f"{system}_mcmc"))
    reg = default_registry()
    space = reg.build("space", cfg.space.name, cfg.space.params)
    energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=space)
    steps = max(budget // chains - 1, 2)
    burn = steps // 2
    kept = steps - burn
    thin = max(1, kept * chains // n)
    res = run_mcmc(energy, space, n_chains=chains, n_steps=kept, burn_in=burn, thin=thin,
                   step_size=0.05, method="mala", grad_clip=cfg.mcmc.grad_clip,
                   generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(res.samples.shape[0], generator=torch.Generator().manual_seed(0))
    metrics = _evaluate(res.samples[perm], ref, energy, space, n, geo)
    return {"method": "mcmc_matched", "settings": {"method": "mala", "n_chains": chains,
                                                   "burn_in": burn, "n_steps": kept,
                                                   "thin": thin},
            "energy_evals": res.energy_evals, "wall_time_s": round(res.wall_time_s, 1),
            "sample_s": 0.0, "diagnostics": res.diagnostics(), "metrics": metrics}


def _mcmc_reference(system: str, ref, n: int, geo: int, run_root: Path,
                    reuse: str | None) -> dict:
    cfg_path = config_path(f"{system}_mcmc")
    cfg = load_mcmc_config(cfg_path)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reference": None})})
    if reuse:  # samples and report of an earlier `adjoint-core mcmc` run of this config
        out = Path(reuse)
        report = json.loads(out.with_suffix(".json").read_text())
        if type(cfg.mcmc)(**report["config"]["mcmc"]) != cfg.mcmc:
            raise SystemExit(f"{out} was made with other mcmc settings than {cfg_path}")
    else:
        out = run_root / f"{system}_mcmc_reference.npy"
        report = run_mcmc_config(cfg, out, progress=False)
    reg = default_registry()
    space = reg.build("space", cfg.space.name, cfg.space.params)
    energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=space)
    import numpy as np

    x = space.unflatten(torch.as_tensor(np.load(out)))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    metrics = _evaluate(x[perm], ref, energy, space, n, geo)
    d = report["diagnostics"]
    return {"method": "mcmc_reference", "config": str(cfg_path.relative_to(ROOT)),
            "energy_evals": d["energy_evals"], "wall_time_s": round(d["wall_time_s"], 1),
            "sample_s": 0.0, "diagnostics": d, "metrics": metrics}


def _table(rows: list[dict], system: str) -> str:
    head = ("| system | method | energy evals | wall time (s) | energy W2 | geom. W2 (papers) "
            "| geom. W2 (invariant) | mean E (ref) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {system} | {r['method']} | {r['energy_evals']:,} | {r['wall_time_s']} | "
            f"{m['energy_w2']:.3g} | {m.get('geometric_w2_papers', float('nan')):.3g} | "
            f"{m.get('geometric_w2_invariant', float('nan')):.3g} | "
            f"{m['energy_mean']:.2f} ({m['reference_energy_mean']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", choices=["dw4", "lj13"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--as-epochs", type=int, default=None, help="override AS train.n_epochs")
    p.add_argument("--idem-epochs", type=int, default=None, help="override iDEM n_epochs")
    p.add_argument("--matched-chains", type=int, default=200)
    p.add_argument("--matched-evals", type=int, default=None,
                   help="energy budget of mcmc_matched (default: the AS run's)")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--geometric-samples", type=int, default=2000)
    p.add_argument("--reuse-mcmc", default=None,
                   help="FILE.npy of an earlier `adjoint-core mcmc examples/<system>_mcmc.yaml` "
                        "run (with FILE.json) instead of running it again")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    cfg = load_mcmc_config(config_path(f"{args.system}_mcmc"))
    reg = default_registry()
    space = reg.build("space", cfg.space.name, cfg.space.params)
    ref_path = ROOT / "examples" / cfg.eval.reference
    ref = load_reference(ref_path if ref_path.exists() else Path(cfg.eval.reference), space)
    run_root = ROOT / "runs" / "bench" / "baselines"
    run_root.mkdir(parents=True, exist_ok=True)
    n, geo = args.n_samples, args.geometric_samples
    rows = []
    for method in args.methods:
        t0 = time.perf_counter()
        if method == "as":
            rows.append(_trained(args.system, "as", args.as_epochs, ref, n, geo, run_root))
        elif method == "idem":
            rows.append(_trained(args.system, "idem", args.idem_epochs, ref, n, geo, run_root))
        elif method == "mcmc_matched":
            budget = args.matched_evals or next(
                (r["energy_evals"] for r in rows if r["method"] == "as"), None)
            if budget is None:
                raise SystemExit("mcmc_matched needs --matched-evals or the 'as' method first")
            rows.append(_mcmc_matched(args.system, budget, args.matched_chains, ref, n, geo))
        else:
            rows.append(_mcmc_reference(args.system, ref, n, geo, run_root, args.reuse_mcmc))
        rows[-1]["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "diagnostics"}), flush=True)
    out = {"system": args.system, "n_samples": n, "geometric_samples": geo, "rows": rows,
           "machine": {"torch_threads": torch.get_num_threads(),
                       "platform": platform.platform(), "torch": str(torch.__version__)}}
    path = Path(args.out or ROOT / "bench" / "results" / f"baselines_{args.system}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(_table(rows, args.system))


if __name__ == "__main__":
    main()
