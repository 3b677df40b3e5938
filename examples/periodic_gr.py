"""Radial distribution function g(r) of a periodic Lennard-Jones fluid: Adjoint Sampling vs MCMC.

Steps: (a) train ``examples/lj_periodic.yaml`` with ``adjoint_core.app.run.train_run`` (or reuse a
finished run directory), (b) draw samples from the trained sampler, (c) run a long MALA chain
ensemble of the same energy (``adjoint_core.mcmc.run_mcmc``) from non-overlapping random
starts, (d) compute g(r) of both with minimum-image distances
(``adjoint_core.problem.periodic.radial_distribution``), (e) write ``gr.json``, ``gr.npz`` and one
figure ``gr.png`` (g(r) of both, and their energy histograms) into the run directory.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python examples/periodic_gr.py \
        --config examples/lj_periodic.yaml --out runs/lj_periodic

``--retrain`` ignores a finished run in ``--out``; ``--mcmc-steps`` etc. size the reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from adjoint_core.app.config import load_config
from adjoint_core.app.run import load_run, train_run
from adjoint_core.evaluation import metrics
from adjoint_core.mcmc.samplers import run_mcmc
from adjoint_core.problem.periodic import radial_distribution


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/lj_periodic.yaml")
    p.add_argument("--out", default="runs/lj_periodic")
    p.add_argument("--retrain", action="store_true", help="train even if --out is finished")
    p.add_argument("--n-samples", type=int, default=4000, help="Adjoint Sampling samples")
    p.add_argument("--sample-steps", type=int, default=200,
                   help="SDE steps when sampling (finer than training: see docs/periodic.md)")
    p.add_argument("--mcmc-chains", type=int, default=128)
    p.add_argument("--mcmc-steps", type=int, default=20_000, help="steps after burn-in")
    p.add_argument("--mcmc-burn-in", type=int, default=2_000)
    p.add_argument("--mcmc-thin", type=int, default=50)
    p.add_argument("--n-bins", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    out = Path(args.out)
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    finished = False
    metrics_file = out / "metrics.json"
    if metrics_file.exists() and not args.retrain:
        rec = json.loads(metrics_file.read_text())
        finished = rec.get("counters", {}).get("epoch", 0) >= cfg.train.n_epochs
    if not finished:
        if args.retrain and (out / "checkpoints" / "latest.pt").exists():
            (out / "checkpoints" / "latest.pt").unlink()
            metrics_file.unlink(missing_ok=True)
        train_run(args.config, out)
    train_time = time.perf_counter() - t0
    sampler = load_run(out)
    energy, space = sampler.energy, sampler.space
    box = torch.tensor(space.box)

    # (b) Adjoint Sampling samples
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 1)
    x_as = sampler.sample(args.n_samples, n_steps=args.sample_steps, batch_size=1000,
                          generator=gen)
    sample_time = time.perf_counter() - t0
    with torch.no_grad():
        e_as = energy.energy(x_as).double()

    # (c) long MALA reference from non-overlapping starts
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed + 2)
    mc = run_mcmc(energy, space, n_chains=args.mcmc_chains, n_steps=args.mcmc_steps,
                  burn_in=args.mcmc_burn_in, thin=args.mcmc_thin, step_size=0.05,
                  method="mala", generator=g, min_distance=0.9, grad_clip=1e3, progress=True)
    mcmc_time = time.perf_counter() - t0
    x_mc, e_mc = mc.samples, mc.sample_energies.double()

    # (d) g(r) with minimum-image distances
    finite = torch.isfinite(e_as)
    r, g_as = radial_distribution(x_as, box, args.n_bins)
    _, g_mc = radial_distribution(x_mc, box, args.n_bins)
    dg = (g_as - g_mc).abs()
    ew2 = metrics.energy_w2(e_as[finite].numpy(), e_mc.numpy())
    result = {
        "config": str(args.config), "run_dir": str(out),
        "system": {"n_particles": space.event_shape[0], "spatial_dim": space.event_shape[1],
                   "box": list(space.box), "density": space.event_shape[0] / space.volume,
                   "temperature": energy.temperature, "energy": repr(energy)},
        "g_r": {"max_abs_diff": float(dg.max()), "mean_abs_diff": float(dg.mean()),
                "r_of_max_diff": float(r[int(dg.argmax())]),
                "peak_as": float(g_as.max()), "peak_mcmc": float(g_mc.max()),
                "r_peak_as": float(r[int(g_as.argmax())]),
                "r_peak_mcmc": float(r[int(g_mc.argmax())]),
                "n_bins": args.n_bins, "r_max": float(r[-1] + (r[1] - r[0]) / 2)},
        "adjoint_sampling": {
            "n_samples": int(x_as.shape[0]), "energy_mean": float(e_as[finite].mean()),
            "energy_median": float(e_as[finite].median()),
            "energy_std": float(e_as[finite].std()),
            "frac_energy_above_0": float((e_as > 0).double().mean()),
            "nonfinite": int((~finite).sum()),
            "train_energy_evals": sampler.counters["energy_evals"],
            "grad_steps": sampler.counters["grad_steps"],
            "sample_sde_steps": args.sample_steps,
            "train_wall_s_this_call": train_time, "sample_wall_s": sample_time,
            "timers": dict(sampler.timers)},
        "mcmc": {"method": mc.method, "n_chains": mc.n_chains, "burn_in": mc.burn_in,
                 "n_steps": args.mcmc_steps, "thin": mc.thin,
                 "n_samples": int(x_mc.shape[0]), "acceptance": mc.acceptance,
                 "step_size": mc.step_size, "energy_evals": mc.energy_evals,
                 "energy_mean": float(e_mc.mean()), "energy_median": float(e_mc.median()),
                 "energy_std": float(e_mc.std()),
                 "frac_energy_above_0": float((e_mc > 0).double().mean()),
                 # chain-mean energy in 10 consecutive blocks after burn-in (stationarity)
                 "energy_block_means": [float(b.mean()) for b in
                                        mc.energies_trace[mc.burn_in:].chunk(10)],
                 "wall_s": mcmc_time},
        "energy_w2_as_vs_mcmc": ew2,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gr.json").write_text(json.dumps(result, indent=2))
    np.savez(out / "gr.npz", r=r.numpy(), g_as=g_as.numpy(), g_mcmc=g_mc.numpy(),
             energies_as=e_as.numpy(), energies_mcmc=e_mc.numpy(),
             mcmc_energies_trace=mc.energies_trace.numpy())

    # (e) one figure: g(r) of both, energy histograms
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(r.numpy(), g_mc.numpy(), "k-", lw=2, label=f"MALA ({x_mc.shape[0]} samples)")
    a1.plot(r.numpy(), g_as.numpy(), "C1--", lw=2,
            label=f"Adjoint Sampling ({x_as.shape[0]} samples)")
    a1.axhline(1.0, color="0.7", lw=0.8)
    a1.set(xlabel="r / σ", ylabel="g(r)",
           title=f"LJ fluid, N={space.event_shape[0]}, d={space.event_shape[1]}, "
                 f"ρ={result['system']['density']:.2f}, kT={energy.temperature:g}")
    a1.legend()
    lo = float(np.quantile(e_mc.numpy(), 0.001)) - 2
    hi = float(np.quantile(e_mc.numpy(), 0.999)) + 10
    bins = np.linspace(lo, hi, 60)
    a2.hist(e_mc.numpy(), bins=bins, density=True, histtype="step", color="k", lw=2,
            label="MALA")
    a2.hist(e_as[finite].clamp(max=hi).numpy(), bins=bins, density=True, histtype="step",
            color="C1", lw=2, label="Adjoint Sampling (clamped at right edge)")
    a2.set(xlabel="E / ε", ylabel="density", title="energy")
    a2.legend()
    fig.tight_layout()
    fig.savefig(out / "gr.png", dpi=110)
    plt.close(fig)
    print(json.dumps({"g_r": result["g_r"], "as_energy_mean": result["adjoint_sampling"]
                      ["energy_mean"], "mcmc_energy_mean": result["mcmc"]["energy_mean"],
                      "energy_w2": ew2, "files": [str(out / f) for f in
                                                  ("gr.json", "gr.npz", "gr.png")]}, indent=2))
    return result


if __name__ == "__main__":
    main()
