"""Sample quality against the number of energy evaluations: AS, ASBS, iDEM and MCMC on one system.

Usage (from the repository root; one thread, the numbers depend on it; parts can be run
separately, each run replaces its methods in the JSON and redraws the plot)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/efficiency.py dw4 --methods floor reuse mcmc
    OMP_NUM_THREADS=1 .venv/bin/python bench/efficiency.py dw4 --methods as --as-epochs 60
    OMP_NUM_THREADS=1 .venv/bin/python bench/efficiency.py dw4 --methods idem
    .venv/bin/python bench/efficiency.py dw4 --plot-only     # table + plot from the JSON

Methods (``--methods``):

* ``as``: Adjoint Sampling with the system's best CPU config (``SYSTEMS[...]["as_config"]``,
  from ``examples/`` or ``bench/configs/``), trained for ``--as-epochs`` epochs (the config's
  learning-rate schedule unchanged, so these are the first epochs of the full run) and
  evaluated after each of ``--as-eval-epochs`` through the trainer's epoch callback;
* ``idem``: iDEM (``examples/<system>_idem.yaml``), likewise (``--idem-epochs``);
* ``reuse``: the evaluations along training already stored in committed full runs of the AS
  and ASBS configs (``bench/results/<config>.json``: their ``training_evaluations`` and final
  ``metrics``), without running anything; their wall time at an epoch is the run's total
  phase times scaled linearly by epoch (marked ``wall_estimated``); without an ``idem``
  curve, also the iDEM row of ``bench/results/baselines_<system>.json``;
* ``mcmc``: MALA and HMC (the system's ``<system>_mcmc.yaml`` kernel: leapfrog steps,
  temperature ladder, drift clip) at every budget of ``--budgets`` energy evaluations. At a
  budget ``B`` with ``c`` evaluations per chain-step (MALA 1; HMC ``n_leapfrog`` x the number
  of temperatures), chains and steps are both ``sqrt(B / c)`` (at least 4 chains, at most
  1,000, the steps then fill the budget): half the steps are burn-in with step-size adaptation,
  the kept half is thinned to about ``--n-samples`` states;
* ``floor``: the reference against itself: energy and geometric W2 between disjoint random
  subsets of ``--n-samples`` states of the reference set (several pairs), the smallest value
  a perfect sampler can show at this sample size.

Every sampler's states are scored with :func:`adjoint_core.app.run.evaluate_samples` against
``--n-samples`` reference states (a seeded subset of the registered ``<system>_val`` set):
energy W2 on all of them, geometric W2 (papers' protocol) on the first
``SYSTEMS[...]["geometric_samples"]``. Counted: the training energy evaluations (AS, ASBS,
iDEM; iDEM counts ``K`` per Monte Carlo score estimate) or every evaluation of every chain,
burn-in and all temperatures included (MCMC). Timed: the training phases without the energy
(``network_s`` = simulate + train; simulate includes the energies of these cheap systems,
measured separately as ``energy_s``), the time to draw the evaluated samples (``sample_s``),
and for MCMC the chain's wall time minus its energy evaluations at the measured cost per
evaluation of the system's energy (``overhead_s``).

From those, ``crossover``: for each quality threshold of ``SYSTEMS[...]["thresholds"]``, the
first AS evaluation point from which on the curve stays below it (``N_AS`` evaluations,
network + sampling time ``T_AS``) and the smallest MCMC budget from which on it does with at
least 95 % of ``--n-samples`` states (``N_MC``, overhead ``T_MC``; both are single-seed
curves); with an energy that costs ``c`` seconds per evaluation, AS is sooner in wall time when
``T_AS + N_AS c < T_MC + N_MC c``, i.e. above ``c* = (T_AS - T_MC) / (N_MC - N_AS)``.

Writes ``bench/results/efficiency_<system>.json``, ``docs/efficiency_<system>.png`` (log-x plot
of both metrics against evaluations, the reference floor as a horizontal line) and the
Markdown crossover table ``bench/results/efficiency_crossover.md`` (all systems whose JSON
exists, with the per-evaluation costs of ``bench/results/energy_costs.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adjoint_core.app.config import load_config
from adjoint_core.app.run import build_trainer, evaluate_samples, load_reference
from adjoint_core.mcmc.run import load_mcmc_config
from adjoint_core.mcmc.samplers import run_mcmc
from adjoint_core.plugins.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

SYSTEMS = {
    "dw4": {
        "label": "DW-4",
        "as_config": "dw4_cpu_reweight_sde400",
        "as_eval_epochs": [2, 5, 10, 20, 40, 70, 100],
        "reuse": {"as": "dw4_cpu_reweight_sde400", "asbs": "dw4_cpu_asbs"},
        "idem_config": "dw4_idem",
        "idem_eval_epochs": [5, 10, 20, 40],
        "mcmc_config": "dw4_mcmc",
        "geometric_samples": 2000,
        "thresholds": [("energy_w2", 1.0), ("energy_w2", 0.6), ("geometric_w2_papers", 0.8),
                       ("geometric_w2_papers", 0.6)],
    },
    "lj13": {
        "label": "LJ-13",
        "as_config": "lj13_cpu_sigma1_long",
        "as_eval_epochs": [5, 10, 20],
        "reuse": {"as": "lj13_cpu_sigma1_long", "asbs": "lj13_cpu_asbs"},
        "idem_config": "lj13_idem",
        "idem_eval_epochs": [5, 10, 20, 30],
        "mcmc_config": "lj13_mcmc",
        "geometric_samples": 1000,
        "thresholds": [("energy_w2", 20.0), ("energy_w2", 10.0), ("energy_w2", 6.5),
                       ("geometric_w2_papers", 2.0), ("geometric_w2_papers", 1.8)],
    },
}
METHODS = ("floor", "reuse", "mcmc", "as", "idem")
DEFAULT_BUDGETS = [1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7]
METRICS = ("energy_w2", "geometric_w2_papers")


def config_path(name: str) -> Path:
    """``examples/<name>.yaml`` (the canonical configs), else ``bench/configs/<name>.yaml``."""
    canonical = ROOT / "examples" / f"{name}.yaml"
    return canonical if canonical.is_file() else ROOT / "bench" / "configs" / f"{name}.yaml"


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


class Context:
    """Energy, space and reference of one system, built once."""

    def __init__(self, system: str, reference: str | None, n: int):
        self.system = system
        self.spec = SYSTEMS[system]
        cfg = load_mcmc_config(config_path(self.spec["mcmc_config"]))
        self.mcmc_cfg = cfg
        reg = default_registry()
        self.space = reg.build("space", cfg.space.name, cfg.space.params)
        self.energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=self.space)
        self.reference_name = reference or cfg.eval.reference
        self.reference = load_reference(self.reference_name, self.space)
        self.n = n
        self.geo = min(self.spec["geometric_samples"], n)

    def score(self, x: torch.Tensor) -> dict:
        m = evaluate_samples(x.detach().cpu().float(), self.reference, self.energy, self.space,
                             self.n, self.geo, ("papers",), seed=0)
        return {k: m[k] for k in ("energy_w2", "geometric_w2_papers", "energy_mean",
                                  "reference_energy_mean", "nonfinite_energies", "n_samples")
                if k in m} | {"geometric_samples": min(self.geo, int(m["n_samples"]))}

    def energy_cost(self, batch: int = 1000, repeats: int = 5) -> float:
        """Seconds per energy-and-gradient evaluation of this system's energy, batch ``batch``."""
        x = self.space.project(torch.randn(batch, *self.space.event_shape,
                                           generator=torch.Generator().manual_seed(0)))
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            self.energy.energy_and_grad(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]) / batch


# ------------------------------------------------------------------------------ floor
def reference_floor(ctx: Context, pairs: int = 2) -> dict:
    """Energy and geometric W2 between disjoint random subsets of the reference."""
    ref = ctx.reference
    n = ctx.n
    perm = torch.randperm(ref.shape[0], generator=torch.Generator().manual_seed(7))
    pairs = min(pairs, ref.shape[0] // (2 * n))
    rows = []
    for k in range(pairs):
        a = ref[perm[2 * k * n:(2 * k + 1) * n]]
        b = ref[perm[(2 * k + 1) * n:(2 * k + 2) * n]]
        m = evaluate_samples(a, b, ctx.energy, ctx.space, n, ctx.geo, ("papers",), seed=0)
        rows.append({k2: m[k2] for k2 in METRICS})
        print(f"floor pair {k}: {rows[-1]}", file=sys.stderr, flush=True)
    return {"reference": ctx.reference_name, "reference_size": int(ref.shape[0]),
            "n_samples": n, "geometric_samples": ctx.geo, "pairs": rows,
            **{k: float(np.mean([r[k] for r in rows])) for k in METRICS}}


# ------------------------------------------------------------------------------ trained
def trained_curve(ctx: Context, config: str, epochs: int, eval_epochs: list[int],
                  run_label: str) -> dict:
    """Train ``config`` for ``epochs`` epochs; evaluate after each epoch in ``eval_epochs``."""
    cfg_path = config_path(config)
    cfg = load_config(cfg_path)
    # no evaluations inside the trainer: this benchmark evaluates at its own epochs
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reference": None,
                                                                     "every": 0})})
    sampler = build_trainer(cfg)
    steps = cfg.eval.n_sde_steps or cfg.train.n_sde_steps
    points = []
    wanted = sorted(e for e in set(eval_epochs) if 0 < e <= epochs)

    def on_epoch(s, row) -> None:
        e = s.counters["epoch"]
        if e not in wanted:
            return
        t0 = time.perf_counter()
        x = s.sample(ctx.n, n_steps=steps, generator=torch.Generator().manual_seed(2024))
        sample_s = time.perf_counter() - t0
        m = ctx.score(x)
        tm = s.timers
        point = {"epoch": e, "energy_evals": int(s.counters["energy_evals"]),
                 "grad_steps": int(s.counters["grad_steps"]),
                 "network_s": round(tm["simulate"] + tm["train"], 2),
                 "energy_s": round(tm["energy"], 3),
                 "wall_s": round(tm["simulate"] + tm["energy"] + tm["train"], 2),
                 "sample_s": round(sample_s, 2), **m}
        points.append(point)
        print(f"{run_label} {json.dumps(point)}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    sampler.fit(n_epochs=epochs, callback=on_epoch)
    c = sampler.counters
    return {"config": rel(cfg_path), "epochs_run": int(c["epoch"]),
            "epochs_configured": cfg.train.n_epochs,
            "samples_per_epoch": cfg.train.samples_per_epoch,
            "grad_steps_per_epoch": cfg.train.grad_steps_per_epoch,
            "sde_steps": steps, "benchmark_wall_s": round(time.perf_counter() - t0, 1),
            "note": f"first {c['epoch']} of the config's {cfg.train.n_epochs} epochs (same "
                    "learning-rate schedule), evaluated along the way",
            "points": points}


def _comparable(m: dict, geo: int) -> dict:
    """``m``'s metrics, the geometric W2 only if it was computed on ``geo`` samples."""
    out = {k: m.get(k) for k in (*METRICS, "energy_mean", "n_samples", "geometric_samples")
           if k in m}
    if out.get("geometric_samples") != geo:
        out.pop("geometric_w2_papers", None)
        out.pop("geometric_samples", None)
    return out


def reused_curve(name: str, geo: int) -> dict | None:
    """Evaluations along training stored in ``bench/results/<name>.json`` (no new runs).

    A stored geometric W2 is kept only where it was computed on ``geo`` samples (the
    protocol of this benchmark): the metric's finite-sample floor depends on the sample size.
    """
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    cfg_path = ROOT / r["config"]
    cfg = load_config(cfg_path)
    per_epoch = cfg.train.samples_per_epoch
    epochs = r["epochs"]
    w = r["wall_time_s"]
    points = []
    for ev in r.get("training_evaluations") or []:
        e = ev["epoch"]
        if e == 0 or e >= epochs:
            continue
        f = e / epochs
        points.append({"epoch": e, "energy_evals": e * per_epoch + cfg.train.init_samples,
                       "network_s": round(f * (w["simulate"] + w["train"]), 1),
                       "energy_s": round(f * w["energy"], 2),
                       "wall_s": round(f * (w["simulate"] + w["energy"] + w["train"]), 1),
                       "wall_estimated": True, **_comparable(ev, geo)})
    final = {"epoch": epochs, "energy_evals": r["counts"]["energy_evals"],
             "network_s": round(w["simulate"] + w["train"], 1), "energy_s": w["energy"],
             "wall_s": round(w["simulate"] + w["energy"] + w["train"], 1),
             **_comparable(r["metrics"], geo), "final": True}
    summary = r.get("metrics_draws_summary")
    if summary:
        final["draws_mean"] = {k: summary[k]["mean"] for k in METRICS if k in summary}
    points.append(final)
    return {"source": rel(path), "config": r["config"], "epochs": epochs,
            "machine": r.get("machine"),
            "note": "stored evaluations of a committed full run (training-time evaluations "
                    "on the config's eval.n_samples, see n_samples; the last point is the "
                    "final 2,000-sample evaluation); wall time scaled linearly by epoch; "
                    "geometric W2 only where computed on this benchmark's geometric_samples",
            "points": points}


def reused_baseline(system: str, method: str, geo: int) -> dict | None:
    """The ``method`` row of ``bench/results/baselines_<system>.json`` as a one-point curve."""
    path = RESULTS / f"baselines_{system}.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    row = next((x for x in r["rows"] if x["method"] == method), None)
    if row is None:
        return None
    point = {"epoch": row.get("epochs"), "energy_evals": row["energy_evals"],
             "network_s": row["wall_time_s"], "wall_s": row["wall_time_s"],
             "sample_s": row.get("sample_s"), **_comparable(row["metrics"], geo)}
    return {"source": rel(path), "config": row.get("config"), "machine": r.get("machine"),
            "note": "one stored bench/baselines.py row (wall_s: training phases, energy "
                    "included)", "points": [point]}


# ------------------------------------------------------------------------------ MCMC
def mcmc_kernels(ctx: Context) -> dict:
    """MALA, and HMC with the leapfrog steps, ladder and clip of ``<system>_mcmc.yaml``."""
    m = ctx.mcmc_cfg.mcmc
    common = {"grad_clip": m.grad_clip, "lattice_spacing": m.lattice_spacing}
    return {
        "mala": {"method": "mala", "step_size": 0.05, "temperatures": None, **common},
        "hmc": {"method": "hmc", "step_size": m.step_size, "n_leapfrog": m.n_leapfrog,
                "temperatures": m.temperatures, "swap_every": m.swap_every,
                "jitter": m.jitter, **common},
    }


def mcmc_point(ctx: Context, kernel: dict, budget: float, seed: int = 0) -> dict | None:
    """One MCMC run of ``budget`` evaluations (chains = steps = sqrt(budget / cost))."""
    n_t = len(kernel["temperatures"] or [1.0])
    per_step = n_t * (kernel.get("n_leapfrog", 1) if kernel["method"] == "hmc" else 1)
    chains = int(min(1000, max(4, round(math.sqrt(budget / per_step)))))
    # the initial states cost one evaluation per replica; every step costs per_step per chain
    steps = int(budget // (chains * per_step)) - 1
    if steps < 2:
        return None
    burn = steps // 2
    kept = steps - burn
    # thin so that every chain keeps at least ceil(n / chains) states (>= n in all, if possible)
    thin = max(1, kept // math.ceil(ctx.n / chains))
    kw = {k: v for k, v in kernel.items() if v is not None}
    res = run_mcmc(ctx.energy, ctx.space, n_chains=chains, n_steps=kept, burn_in=burn,
                   thin=thin, generator=torch.Generator().manual_seed(seed), **kw)
    x = res.samples
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    m = ctx.score(x)
    d = res.diagnostics()
    return {"budget": budget, "energy_evals": int(res.energy_evals), "n_chains": chains,
            "burn_in": burn, "n_steps": kept, "thin": thin,
            "wall_s": round(res.wall_time_s, 3), "acceptance": d["acceptance_per_temperature"],
            "rhat_energy": d["rhat_energy"], "frozen_chains": d["frozen_chains"], **m}


def mcmc_curves(ctx: Context, budgets: list[float]) -> dict:
    cost = ctx.energy_cost()
    out = {"energy_cost_s_per_eval": cost,
           "energy_cost_note": "median time of energy_and_grad on 1,000 states / 1,000",
           "chains_rule": "chains = steps = sqrt(budget / evaluations per chain-step), "
                          "4 <= chains <= 1000; half the steps burn-in (step size adapted)",
           "kernels": {}}
    for name, kernel in mcmc_kernels(ctx).items():
        points = []
        for b in budgets:
            p = mcmc_point(ctx, kernel, b)
            if p is None:
                continue
            p["overhead_s"] = round(max(p["wall_s"] - p["energy_evals"] * cost, 0.0), 3)
            points.append(p)
            print(f"mcmc {name} {json.dumps(p)}", file=sys.stderr, flush=True)
        out["kernels"][name] = {"settings": {k: v for k, v in kernel.items()}, "points": points}
    return out


# ------------------------------------------------------------------------------ crossover
def _first(points: list[dict], key: str, q: float, n_min: int = 0) -> dict | None:
    """The first point from which on every later point with the metric meets ``<= q``.

    Single-seed points scatter (a lucky small budget can meet a threshold that larger ones
    miss), so "reached" means reached and kept over the rest of the measured curve.
    """
    pts = [p for p in sorted(points, key=lambda p: p["energy_evals"])
           if p.get("n_samples", n_min) >= n_min and p.get(key) is not None]
    ok = [math.isfinite(p[key]) and p[key] <= q for p in pts]
    for i, p in enumerate(pts):
        if all(ok[i:]):
            return p
    return None


def crossover(result: dict) -> list[dict]:
    """Energy cost per evaluation above which AS reaches each threshold sooner than MCMC."""
    spec = SYSTEMS[result["system"]]
    curves = result.get("curves", {})
    as_points = list((curves.get("as") or {}).get("points", []))
    reused = (curves.get("as_reused") or {}).get("points", [])
    fresh_epochs = {p["epoch"] for p in as_points}
    as_points += [p for p in reused if p["epoch"] not in fresh_epochs]
    sample_times = [p["sample_s"] for p in as_points if "sample_s" in p]
    sample_s = statistics.median(sample_times) if sample_times else None
    mc = (curves.get("mcmc") or {}).get("kernels", {})
    rows = []
    for key, q in spec["thresholds"]:
        a = _first(as_points, key, q)
        best = None
        for kname, kern in mc.items():
            # an MCMC run counts only if it delivers (95 % of) as many states as the trained
            # samplers are scored on (they draw any number without energy evaluations)
            p = _first(kern["points"], key, q, n_min=int(0.95 * result["n_samples"]))
            if p is not None and (best is None or p["energy_evals"] < best[1]["energy_evals"]):
                best = (kname, p)
        row = {"metric": key, "threshold": q}
        if a is not None:
            t_as = a["network_s"] + (a.get("sample_s", sample_s) or 0.0)
            row["as"] = {"epoch": a["epoch"], "energy_evals": a["energy_evals"],
                         "time_s": round(t_as, 1), "value": a[key],
                         "wall_estimated": bool(a.get("wall_estimated"))}
        if best is not None:
            kname, p = best
            row["mcmc"] = {"kernel": kname, "energy_evals": p["energy_evals"],
                           "time_s": p["overhead_s"], "value": p[key],
                           "n_chains": p["n_chains"]}
        if a is not None and best is not None:
            n_as, n_mc = row["as"]["energy_evals"], row["mcmc"]["energy_evals"]
            t_as, t_mc = row["as"]["time_s"], row["mcmc"]["time_s"]
            if n_mc <= n_as:
                row["crossover_s_per_eval"] = None
                row["verdict"] = "MCMC needs no more evaluations: MCMC at any energy cost"
            else:
                row["crossover_s_per_eval"] = max(t_as - t_mc, 0.0) / (n_mc - n_as)
        elif a is None:
            row["verdict"] = "AS did not reach it in the measured budget"
        else:
            row["verdict"] = "MCMC did not reach it in the measured budgets"
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ output
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result.get("curves", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"as": ("AS (this run)", "C0", "o", "-"),
              "as_reused": ("AS (stored full run)", "C0", "s", "--"),
              "asbs_reused": ("ASBS (stored full run)", "C2", "^", "--"),
              "idem": ("iDEM", "C3", "D", "-"),
              "idem_reused": ("iDEM (stored baselines row)", "C3", "D", "--")}
    mc_styles = {"mala": ("MCMC: MALA", "C1", "v", ":"), "hmc": ("MCMC: HMC", "C4", "h", ":")}
    for ax, key in zip(axes, METRICS, strict=True):
        series = []
        for name, (label, color, marker, ls) in styles.items():
            pts = (curves.get(name) or {}).get("points", [])
            series.append((label, color, marker, ls, pts))
        for name, kern in ((curves.get("mcmc") or {}).get("kernels") or {}).items():
            label, color, marker, ls = mc_styles.get(name, (name, "k", "x", ":"))
            series.append((label, color, marker, ls, kern["points"]))
        n_full = result["n_samples"]
        floor = (result.get("floor") or {}).get(key)
        # energy W2 of unconverged samplers reaches 1e12 (overlapping particles): values above
        # 300 x the floor are drawn on the top edge as open upward triangles
        top = 300 * floor if floor else math.inf
        for label, color, marker, ls, pts in series:
            pts = sorted((p for p in pts if p.get(key) is not None and math.isfinite(p[key])),
                         key=lambda p: p["energy_evals"])
            off = [p for p in pts if p[key] > top]
            pts = [p for p in pts if p[key] <= top]
            if off:
                ax.plot([p["energy_evals"] for p in off], [top] * len(off), ls="none",
                        marker="^", ms=7, color=color, mfc="none")
            if not pts:
                continue
            xs = [p["energy_evals"] for p in pts]
            ax.plot(xs, [p[key] for p in pts], ls=ls, color=color, lw=1.2)
            full = [p.get("n_samples", n_full) >= n_full for p in pts]
            for is_full in (True, False):
                sel = [p for p, f in zip(pts, full, strict=True) if f == is_full]
                if sel:
                    ax.plot([p["energy_evals"] for p in sel], [p[key] for p in sel], ls="none",
                            marker=marker, ms=5, color=color,
                            mfc=color if is_full else "none",
                            label=label if is_full or not any(full) else None)
        if floor is not None:
            ax.axhline(floor, color="grey", lw=1, ls="-.",
                       label=f"reference vs reference, "
                             f"{'energy' if key == 'energy_w2' else 'geom.'} W2 {floor:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("energy evaluations")
        ax.set_ylabel({"energy_w2": "energy W2",
                       "geometric_w2_papers": "geometric W2 (papers' protocol)"}[key])
        ax.grid(True, which="both", alpha=0.3)
    handles: dict = {}
    for ax in axes:  # one legend for both panels (a series can be off scale in one of them)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.suptitle(f"{SYSTEMS[result['system']]['label']}: quality against energy evaluations "
                 f"({result['n_samples']:,} samples vs the reference; hollow: fewer samples; "
                 "^ on the top edge: off scale; CPU budgets, see the JSON)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_cost(c: float | None) -> str:
    if c is None:
        return "—"
    if c < 1e-3:
        return f"{c * 1e6:.3g} µs"
    if c < 1:
        return f"{c * 1e3:.3g} ms"
    return f"{c:.3g} s"


def crossover_table() -> str:
    """Markdown: the crossover per system and threshold, and where measured energies sit."""
    costs_path = RESULTS / "energy_costs.json"
    all_costs = json.loads(costs_path.read_text())["rows"] if costs_path.is_file() else []
    costs = [c for c in all_costs if "molecule" in c]  # the real energies get a column each
    head = ["system", "quality reached", "AS: evaluations, network time",
            "MCMC: evaluations (kernel), overhead", "AS sooner above"]
    head += [f"{c['label']} ({_fmt_cost(c['s_per_eval'])})" for c in costs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for system in SYSTEMS:
        path = RESULTS / f"efficiency_{system}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        for row in r.get("crossover", []):
            metric = {"energy_w2": "energy W2", "geometric_w2_papers": "geom. W2"}[row["metric"]]
            a, m = row.get("as"), row.get("mcmc")
            a_txt = (f"{a['energy_evals']:,}, {a['time_s']:,.0f} s"
                     + (" (est.)" if a["wall_estimated"] else "")) if a else "not in the points"
            m_txt = (f"{m['energy_evals']:,} ({m['kernel'].upper()}), {m['time_s']:.1f} s"
                     if m else "not in the budgets")
            c = row.get("crossover_s_per_eval")
            if c is not None:
                cross = _fmt_cost(c)
                verdicts = ["**AS**" if e["s_per_eval"] > c else "MCMC" for e in costs]
            else:
                cross = "never (MCMC)" if a and m and "any" in row.get("verdict", "") else "—"
                verdicts = ["MCMC" if cross.startswith("never") else "—" for _ in costs]
            cells = [SYSTEMS[system]["label"], f"{metric} ≤ {row['threshold']:g}", a_txt, m_txt,
                     cross, *verdicts]
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if all_costs:
        text += ("\nPer-evaluation costs (energy and gradient, one conformer at a time inside a "
                 "batch; `bench/results/energy_costs.json`):\n\n"
                 "| energy | system | atoms | device, threads | seconds per evaluation |\n"
                 "| --- | --- | --- | --- | --- |\n")
        info = json.loads(costs_path.read_text())
        for c in all_costs:
            where = c.get("device", "cpu")
            text += (f"| {c['label']} | {c.get('molecule', c['label'])} | "
                     f"{info['n_atoms'] if 'molecule' in c else '—'} | "
                     f"{where}, {info['torch_threads']} | {_fmt_cost(c['s_per_eval'])} |\n")
    return text + throughput_table()


def throughput_table() -> str:
    """Markdown: the EGNN's seconds per SDE and training step (``throughput_*.json``)."""
    rows = []
    for path in sorted(RESULTS.glob("throughput_*.json")):
        r = json.loads(path.read_text())
        if r.get("quick"):
            continue
        m = r["machine"]
        load = m.get("load_average_1_5_15")
        load_txt = f", load {load[0]:.1f}" if load else ""
        for row in r["rows"]:
            where = (f"CPU ({m['cpu_model']}), {row['threads']} thread(s){load_txt}"
                     if row["device"] == "cpu" else
                     f"{m.get('cuda_device', 'CUDA')}" + (" compiled" if row["compiled"] else ""))
            rows.append(f"| {row['size']} | {row['hidden']}×{row['n_layers']} | {row['batch']} | "
                        f"{where} | {row['sde_step_s']:.3g} | {row['train_step_s']:.3g} | "
                        f"`{rel(path)}` ({r['date']}) |")
    if not rows:
        return ""
    return ("\nEGNN time per step at the papers' sizes (`bench/throughput.py`; median of "
            "repeats; SDE step = forward without gradient, training step = forward + "
            "backward):\n\n| system | EGNN | batch | device | SDE step (s) | training step (s) "
            "| source |\n| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", choices=sorted(SYSTEMS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--as-epochs", type=int, default=None,
                   help="AS epochs to run (default: the last of the system's eval epochs)")
    p.add_argument("--as-eval-epochs", type=int, nargs="+", default=None)
    p.add_argument("--idem-epochs", type=int, default=None)
    p.add_argument("--idem-eval-epochs", type=int, nargs="+", default=None)
    p.add_argument("--budgets", type=float, nargs="+", default=DEFAULT_BUDGETS)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--reference", default=None,
                   help="reference set (registered name or .npy; default: the mcmc config's)")
    p.add_argument("--out", default=None, help="JSON (default bench/results/efficiency_<s>.json)")
    p.add_argument("--plot", default=None, help="PNG (default docs/efficiency_<system>.png)")
    p.add_argument("--table", default=str(RESULTS / "efficiency_crossover.md"),
                   help="Markdown crossover table of all systems ('-': do not write)")
    p.add_argument("--plot-only", action="store_true",
                   help="recompute the crossover, plot and table from the JSON; run nothing")
    args = p.parse_args()
    spec = SYSTEMS[args.system]
    out = Path(args.out or RESULTS / f"efficiency_{args.system}.json")
    result = json.loads(out.read_text()) if out.is_file() else {
        "system": args.system, "n_samples": args.n_samples, "curves": {}, "budgets": {}}
    if result.get("n_samples") != args.n_samples and not args.plot_only:
        raise SystemExit(f"{out} was made with n_samples {result.get('n_samples')}; use "
                         f"--n-samples {result.get('n_samples')} or another --out")
    if not args.plot_only:
        ctx = Context(args.system, args.reference, args.n_samples)
        result.update({"reference": ctx.reference_name, "geometric_samples": ctx.geo,
                       "geometric_protocol": "papers"})
        for method in args.methods:
            t0 = time.perf_counter()
            if method == "floor":
                result["floor"] = reference_floor(ctx)
            elif method == "reuse":
                for kind, name in spec["reuse"].items():
                    curve = reused_curve(name, ctx.geo)
                    if curve is not None:
                        result["curves"][f"{kind}_reused"] = curve
                if "idem" not in result["curves"]:  # no iDEM curve measured here
                    curve = reused_baseline(args.system, "idem", ctx.geo)
                    if curve is not None:
                        result["curves"]["idem_reused"] = curve
            elif method == "mcmc":
                result["curves"]["mcmc"] = mcmc_curves(ctx, args.budgets)
                result["budgets"]["mcmc"] = {"energy_evals": args.budgets}
            elif method == "as":
                eval_epochs = args.as_eval_epochs or spec["as_eval_epochs"]
                epochs = args.as_epochs or max(eval_epochs)
                result["curves"]["as"] = trained_curve(ctx, spec["as_config"], epochs,
                                                       eval_epochs, "as")
                result["budgets"]["as"] = {"epochs": epochs, "eval_epochs": eval_epochs}
            elif method == "idem":
                eval_epochs = args.idem_eval_epochs or spec["idem_eval_epochs"]
                epochs = args.idem_epochs or max(eval_epochs)
                result["curves"]["idem"] = trained_curve(ctx, spec["idem_config"], epochs,
                                                         eval_epochs, "idem")
                result["budgets"]["idem"] = {"epochs": epochs, "eval_epochs": eval_epochs}
            result.setdefault("benchmark_wall_s", {})[method] = round(
                time.perf_counter() - t0, 1)
        result.setdefault("machine", {}).update({
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%d")})
    result["crossover"] = crossover(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(args.plot or ROOT / "docs" / f"efficiency_{args.system}.png"))
    table = crossover_table()
    if args.table != "-":
        Path(args.table).write_text(table)
    print(json.dumps(result["crossover"], indent=2))
    print(table)


if __name__ == "__main__":
    main()
