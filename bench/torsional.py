"""Torsional Adjoint Sampling on the SPICE conformer benchmark, vs Cartesian AS and ETKDG.

Same molecules, references, K, relaxation and metrics as ``bench/conformers.py`` (the chemistry
plugin's benchmark, whose selection and evaluation functions are reused): for every selected
SPICE test molecule with CREST references, ``K = max(2 · n_refs, 128)`` conformers (optionally
capped with ``--k-max``), coverage recall / precision at 1.0 and 1.25 Å and AMR with
symmetry-aware heavy-atom RMSD, without and with ``--relax-steps`` MMFF94 iterations.

Methods (each writes ``<out>/<name>.json``; ``<out>/table.md`` collects every file present):

* ``torsional``: a trained torsional run (``--torsion-run``, ``adjoint-core torsion-train``);
  the reference geometry is built as in training (one MMFF-relaxed ETKDG conformer);
* ``torsional_base``: the untrained base process on the same torus, i.e. uniform-like wrapped
  normal torsions ``WN(0, h(1)²)`` on the same reference geometry (AS-mol's
  ``--random_torsions`` baseline; shows what training adds);
* ``etkdg`` and ``cartesian``: ``bench/conformers.py``'s ``etkdg`` and ``ours`` (the Cartesian
  amortized run ``--cartesian-run``), rerun here on the same subset so that the table compares
  like with like.

Example (CPU budget; the subset is stated in every JSON)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/torsional.py \\
        --methods torsional,torsional_base,etkdg,cartesian --max-n-refs 32 --max-molecules 12 \\
        --k-max 128 --torsion-run runs/torsion_spice_cpu --cartesian-run runs/chem_spice_cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from adjoint_core_chem.energy import MMFFEnergy
from adjoint_core_chem.metrics import (
    MAX_REFS,
    heavy_automorphisms,
    num_generated,
    read_reference_xyz,
)
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "torsional"


def _conformers_bench():
    """``bench/conformers.py`` as a module (selection, evaluation, table)."""
    spec = importlib.util.spec_from_file_location("bench_conformers", HERE / "conformers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_torsional(method: str, args) -> dict:
    """Evaluate ``torsional`` or ``torsional_base`` on the selected molecules."""
    from adjoint_core_chem.commands import sample_conformers

    from adjoint_core.app.run import load_run

    cb = _conformers_bench()
    trainer = load_run(args.torsion_run)
    n_steps = args.n_sde_steps or trainer.settings.n_sde_steps
    results, skipped = [], []
    t_start = time.perf_counter()
    for name, smi, path in cb.select(args):
        if len(results) >= args.max_molecules:
            break
        try:
            mol = mol_from_smiles(smi, name)
            refs, bad = read_reference_xyz(path, mol, args.max_refs)
            if len(refs) == 0:
                raise MoleculeError(f"molecule {name!r}: no reference matched its graph")
            if args.max_n_refs and len(refs) > args.max_n_refs:
                continue
            k = num_generated(len(refs), args.k_factor, args.k_min)
            if args.k_max:
                k = min(k, args.k_max)
            heavy = mol.heavy_atoms.numpy()
            perms = heavy_automorphisms(mol)
            ref_h = refs[:, heavy]
            mmff = MMFFEnergy(mol)
            t0 = time.perf_counter()
            target = trainer.problem.make_target(mol)
            n_tors = int(target.info.get("n_torsions", 0))
            gen = torch.Generator().manual_seed(args.seed)
            if method == "torsional" or "fixed_positions" in target.info:
                x = sample_conformers(trainer, mol, k, n_steps, args.seed, args.batch_size)[0]
            else:
                tau = target.space.sample_base(k, trainer.schedule, gen, dtype=torch.float64)
                x = target.info["to_positions"](tau).float()
            t_gen = time.perf_counter() - t0
            row = {"name": name, "smiles": smi, "n_atoms": mol.n_atoms,
                   "n_heavy": int(len(heavy)), "n_refs": int(len(refs)),
                   "refs_unmatched": int(bad), "k": int(x.shape[0]), "k_asked": int(k),
                   "n_torsions": n_tors, "n_automorphisms": int(len(perms)),
                   "seconds_generate": t_gen}
            row["raw"] = cb.evaluate(mol, ref_h, perms, x, heavy)
            e_raw = mmff.energy(x.double())
            t0 = time.perf_counter()
            xr = mmff.minimize(x, max_iters=args.relax_steps)
            row["seconds_relax"] = time.perf_counter() - t0
            row["relaxed"] = cb.evaluate(mol, ref_h, perms, xr, heavy)
            e_rel = mmff.energy(xr.double())
            row["mmff_median_raw"] = float(np.nanmedian(e_raw.numpy()))
            row["mmff_median_relaxed"] = float(np.nanmedian(e_rel.numpy()))
            for tag in ("raw", "relaxed"):
                for key in ("thresholds", "cov_r", "cov_p"):
                    row[tag].pop(key, None)
            results.append(row)
            print(f"[{method}] {name} N={mol.n_atoms} K_tors={n_tors} "
                  f"refs={len(refs)} K={row['k']}: COV-R@1.25 raw "
                  f"{row['raw']['cov_r@1.25']:.3f} relaxed {row['relaxed']['cov_r@1.25']:.3f}"
                  f"  AMR-R raw {row['raw']['amr_r']:.3f} relaxed {row['relaxed']['amr_r']:.3f}"
                  f" ({t_gen:.1f}+{row['seconds_relax']:.1f} s)", flush=True)
        except (MoleculeError, RuntimeError, ValueError) as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            print(f"[{method}] skipped {name}: {exc}", flush=True)
    summary = {}
    for tag in ("raw", "relaxed"):
        summary[tag] = {key: float(np.nanmean([r[tag][key] for r in results]))
                        if results else None for key in cb.KEYS}
        summary[tag].update({f"median_{key}": float(np.nanmedian([r[tag][key] for r in results]))
                             if results else None for key in cb.KEYS})
    train = json.loads((Path(args.torsion_run) / "metrics.json").read_text())
    return {"method": method, "run": args.torsion_run,
            "training": {"wall_seconds": train.get("wall_seconds"),
                         "epochs": train.get("stopped_at_epoch"),
                         "counters": train.get("counters")},
            "n_sde_steps": n_steps if method == "torsional" else None,
            "settings": {k: v for k, v in vars(args).items() if k != "methods"},
            "n_molecules": len(results), "skipped": skipped, "summary": summary,
            "molecules": results, "wall_seconds": time.perf_counter() - t_start,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv=None) -> int:
    cb = _conformers_bench()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="torsional,torsional_base,etkdg,cartesian",
                   help="comma list of torsional, torsional_base, etkdg, cartesian")
    p.add_argument("--torsion-run", default="runs/torsion_spice_cpu")
    p.add_argument("--cartesian-run", default="runs/chem_spice_cpu")
    p.add_argument("--checkpoint", default="latest", help="Cartesian run checkpoint")
    p.add_argument("--data", default=str(cb.DATA), help="conformers data folder")
    p.add_argument("--max-refs", type=int, default=MAX_REFS)
    p.add_argument("--max-n-refs", type=int, default=0,
                   help="skip molecules with more (matched, capped) references (0: keep all)")
    p.add_argument("--max-molecules", type=int, default=1000)
    p.add_argument("--k-factor", type=int, default=2)
    p.add_argument("--k-min", type=int, default=128)
    p.add_argument("--k-max", type=int, default=0, help="cap K (0: no cap)")
    p.add_argument("--n-sde-steps", type=int, default=0, help="0: each run's training value")
    p.add_argument("--relax-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            if method in ("torsional", "torsional_base"):
                res = run_torsional(method, args)
            elif method in ("etkdg", "cartesian"):
                args.run = args.cartesian_run
                res = cb.run_method("etkdg" if method == "etkdg" else "ours", args)
                res["method"] = method
            else:
                print(f"unknown method {method!r}", file=sys.stderr)
                return 2
            (out / f"{method}.json").write_text(json.dumps(res, indent=2))
    text = cb.table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
