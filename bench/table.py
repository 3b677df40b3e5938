"""Print the synthetic-benchmark results (bench/results/*.json) as a Markdown table.

Usage: ``.venv/bin/python bench/table.py`` (prints to stdout; the README table is pasted from it).
"""

from __future__ import annotations

import json
from pathlib import Path

from adjoint_core.app.config import read_config_file

ROOT = Path(__file__).resolve().parents[1]

# Adjoint Sampling (Havens et al. 2025) Table 1 as quoted by ASBS: geometric W2 / energy W2.
PUBLISHED = {
    "dw4": (0.62, 0.55),
    "lj13": (1.67, 2.40),
    "lj55": (4.04, 30.83),
}
# ASBS (Liu et al. 2025) Table 2, for rows trained with algorithm: asbs.
PUBLISHED_ASBS = {
    "dw4": (0.43, 0.20),
    "lj13": (1.59, 1.99),
    "lj55": (4.00, 28.10),
}


def fmt(x, nd=3):
    return "—" if x is None else f"{x:.{nd}g}"


def sde_steps(r: dict) -> str:
    """Euler–Maruyama steps of the final sampling (older results: the config's training value)."""
    if r.get("sde_steps"):
        return str(r["sde_steps"])
    cfg_path = ROOT / r["config"]
    if not cfg_path.exists():
        return "—"
    cfg = read_config_file(cfg_path)
    steps = (cfg.get("eval") or {}).get("n_sde_steps") or (cfg.get("train") or {}).get(
        "n_sde_steps")
    return "—" if steps is None else str(steps)


def with_draws(r: dict, key: str) -> str:
    """``value`` of draw 0, plus ``mean ± std over D draws`` when several were evaluated."""
    value = fmt(r["metrics"].get(key))
    summary = (r.get("metrics_draws_summary") or {}).get(key)
    if summary is None:
        return value
    n = len(r["metrics_draws"])
    return f"{value} ({summary['mean']:.3g} ± {summary['std']:.2g}, {n} draws)"


def published(r: dict) -> str:
    """The published geometric / energy W2 to compare with: ASBS's for ASBS runs, else AS's."""
    cfg_path = ROOT / r["config"]
    algorithm = read_config_file(cfg_path).get("algorithm") if cfg_path.exists() else None
    if algorithm == "asbs":
        pub = PUBLISHED_ASBS.get(r["system"])
        return f"ASBS {pub[0]} / {pub[1]}" if pub else "—"
    pub = PUBLISHED.get(r["system"])
    return f"{pub[0]} / {pub[1]}" if pub else "—"


def budget_cells(r: dict) -> tuple[str, str, str, str]:
    """Epochs, energy evaluations, gradient steps and wall times (simulate / energy / train).

    A warm-started run (config ``init_from``) shows its source run's share first,
    ``source + this run``, so the row states the whole budget behind its samples.
    """
    c, w = r["counts"], r["wall_time_s"]
    src = r.get("init_from")
    if not src:
        return (str(r["epochs"]), f"{c['energy_evals']:,}", f"{c['grad_steps']:,}",
                f"{w['simulate']:.0f} / {w['energy']:.1f} / {w['train']:.0f}")
    sc, sw = src["counters"], src["timers"]
    return (f"{sc['epoch']} + {r['epochs']}", f"{sc['energy_evals']:,} + {c['energy_evals']:,}",
            f"{sc['grad_steps']:,} + {c['grad_steps']:,}",
            " / ".join(f"{sw[k]:.{nd}f} + {w[k]:.{nd}f}"
                       for k, nd in (("simulate", 0), ("energy", 1), ("train", 0))))


def main() -> None:
    rows = []
    # an --eval-only re-evaluation (e.g. with --resample) repeats its run's plain metrics: print
    # those once, and label the extra rows with the budget of the row they repeat
    printed: dict[str, str] = {}
    for path in sorted((Path(__file__).parent / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if "metrics" not in r:  # another script's results (e.g. bench/baselines.py)
            continue
        m = r["metrics"]
        epochs, evals, grads, walls = budget_cells(r)
        pub = published(r)
        # label a row by its results file (bench/synthetic.py --out), e.g. dw4_cpu_reweight ->
        # "cpu_reweight", so two evaluations of one run (--eval-only) stay distinguishable
        budget = path.stem.removeprefix(f"{r['system']}_")
        steps = sde_steps(r)
        # the same draw evaluated again (e.g. --eval-only --resample with fewer --protocols)
        same = [m.get(k) for k in ("energy_w2", "geometric_w2_papers", "euclidean_w2",
                                   "path_ess")]
        key = json.dumps([r["system"], r["epochs"], steps, same,
                          r.get("metrics_draws_summary")], sort_keys=True)
        if key in printed:
            budget = printed[key]
        else:
            printed[key] = budget
            rows.append("| " + " | ".join([
                r["system"], budget, epochs, steps,
                with_draws(r, "geometric_w2_papers"), with_draws(r, "geometric_w2_invariant"),
                fmt(m.get("euclidean_w2")), with_draws(r, "energy_w2"), fmt(m.get("path_ess")),
                pub, evals, grads, walls,
            ]) + " |")
        rs = r.get("metrics_resampled")
        if rs:  # importance-resampled samples of the same run (adjoint_core.evaluation.importance)
            rows.append("| " + " | ".join([
                r["system"], f"{budget} + importance resampling ×{rs['oversample']}",
                epochs, steps,
                fmt(rs.get("geometric_w2_papers")), fmt(rs.get("geometric_w2_invariant")),
                fmt(rs.get("euclidean_w2")), fmt(rs.get("energy_w2")),
                f"{fmt(rs.get('ess'))} (≈{rs['ess'] * rs['paths_simulated']:,.0f} effective, "
                f"{rs['unique_states']:,} distinct)",
                pub, f"{evals} + {rs['energy_evals']:,}", grads,
                f"{walls} (+{rs['wall_time_s']:.0f} resampling)",
            ]) + " |")
    print("| system | budget | epochs | SDE steps | geom. W2 (papers) | geom. W2 (invariant) | "
          "Eucl. W2 | energy W2 | path ESS | paper geom./energy W2 (AS; ASBS rows: ASBS) | "
          "energy evals | "
          "grad steps | "
          "wall s simulate / energy / train |")
    print("|" + " --- |" * 13)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
