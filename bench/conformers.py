"""Conformer benchmark on the SPICE test set: our amortized sampler vs RDKit ETKDG at equal K.

For every selected test molecule with CREST references (``spice_test/<Hash_Name>.xyz.gz``):

* references: the first ``--max-refs`` (512) conformers, mapped onto the SMILES atom order;
* ``K = max(--k-factor · n_refs, --k-min)`` (2 × refs, at least 128) conformers per method,
  optionally capped by ``--k-max`` (a CPU budget; stated in the JSON);
* methods: ``etkdg`` (RDKit ETKDGv3, randomSeed 42) and ``ours`` (a trained amortized run,
  ``--run``), each without and with a short MMFF94 relaxation (``--relax-steps`` iterations);
* metrics (``adjoint_core_chem.metrics``): coverage recall / precision at 1.0 and 1.25 Å over
  the 0..2.5 Å grid, AMR recall / precision, symmetry-aware heavy-atom RMSD.

Writes ``bench/results/conformers/<method>.json`` (per molecule and averaged) and prints and
writes ``bench/results/conformers/table.md`` from every method file present.

Example::

    OMP_NUM_THREADS=1 .venv/bin/python bench/conformers.py --methods etkdg --max-n-refs 64
    OMP_NUM_THREADS=1 .venv/bin/python bench/conformers.py --methods ours \
        --run runs/chem_spice_cpu --max-n-refs 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from adjoint_core_chem.energy import MMFFEnergy
from adjoint_core_chem.metrics import (
    MAX_REFS,
    coverage_metrics,
    heavy_automorphisms,
    num_generated,
    read_reference_xyz,
    rmsd_matrix,
)
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles, read_smiles_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conformers"
OUT = Path(__file__).resolve().parent / "results" / "conformers"
KEYS = ("cov_r@1.0", "cov_r@1.25", "cov_p@1.0", "cov_p@1.25", "amr_r", "amr_p")


def select(args) -> list[tuple[str, str, str]]:
    rows = read_smiles_file(str(Path(args.data) / "spice_test.tsv"))
    out = []
    for name, smi in rows:
        path = Path(args.data) / "spice_test" / f"{name}.xyz.gz"
        if not path.exists():
            continue
        out.append((name, smi, str(path)))
    return out


def evaluate(mol, refs_heavy, perms, x, heavy) -> dict:
    r = rmsd_matrix(refs_heavy, x[:, heavy].numpy(), perms)
    return {k: v for k, v in coverage_metrics(r).items()}


def generate(method: str, mol, k: int, args, model=None, schedule=None, n_steps=50):
    if method == "etkdg":
        return mol.embed(k, seed=42)
    from adjoint_core_chem.commands import sample_conformers

    # model: the trained run's Trainer (adjoint_core.app.run.load_run)
    return sample_conformers(model, mol, k, n_steps, args.seed, args.batch_size)[0]


def run_method(method: str, args) -> dict:
    model = schedule = None
    n_steps = None
    if method == "ours":
        from adjoint_core.app.run import load_run

        if args.checkpoint != "latest":
            raise SystemExit("--checkpoint: core run directories keep only latest.pt")
        model = load_run(args.run)
        n_steps = args.n_sde_steps or model.settings.n_sde_steps
    mols = select(args)
    results, skipped = [], []
    t_start = time.perf_counter()
    for name, smi, path in mols:
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
            x = generate(method, mol, k, args, model, schedule, n_steps)
            t_gen = time.perf_counter() - t0
            row = {"name": name, "smiles": smi, "n_atoms": mol.n_atoms,
                   "n_heavy": int(len(heavy)), "n_refs": int(len(refs)),
                   "refs_unmatched": int(bad), "k": int(x.shape[0]), "k_asked": int(k),
                   "n_automorphisms": int(len(perms)), "seconds_generate": t_gen}
            row["raw"] = evaluate(mol, ref_h, perms, x, heavy)
            e_raw = mmff.energy(x.double())
            t0 = time.perf_counter()
            xr = mmff.minimize(x, max_iters=args.relax_steps)
            row["seconds_relax"] = time.perf_counter() - t0
            row["relaxed"] = evaluate(mol, ref_h, perms, xr, heavy)
            e_rel = mmff.energy(xr.double())
            row["mmff_median_raw"] = float(np.nanmedian(e_raw.numpy()))
            row["mmff_median_relaxed"] = float(np.nanmedian(e_rel.numpy()))
            for tag in ("raw", "relaxed"):
                for key in ("thresholds", "cov_r", "cov_p"):
                    row[tag].pop(key, None)
            results.append(row)
            print(f"[{method}] {name} N={mol.n_atoms} refs={len(refs)} K={row['k']}: "
                  f"COV-R@1.25 raw {row['raw']['cov_r@1.25']:.3f} relaxed "
                  f"{row['relaxed']['cov_r@1.25']:.3f}  AMR-R raw {row['raw']['amr_r']:.3f} "
                  f"relaxed {row['relaxed']['amr_r']:.3f} ({t_gen:.1f}+"
                  f"{row['seconds_relax']:.1f} s)", flush=True)
        except (MoleculeError, RuntimeError, ValueError) as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            print(f"[{method}] skipped {name}: {exc}", flush=True)
    summary = {}
    for tag in ("raw", "relaxed"):
        summary[tag] = {key: float(np.nanmean([r[tag][key] for r in results]))
                        if results else None for key in KEYS}
        summary[tag].update({f"median_{key}": float(np.nanmedian([r[tag][key] for r in results]))
                             if results else None for key in KEYS})
    return {"method": method, "run": args.run if method == "ours" else None,
            "checkpoint": args.checkpoint if method == "ours" else None,
            "n_sde_steps": n_steps, "settings": {k: v for k, v in vars(args).items()
                                                 if k not in ("methods",)},
            "n_molecules": len(results), "skipped": skipped, "summary": summary,
            "molecules": results, "wall_seconds": time.perf_counter() - t_start,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def table(out_dir: Path) -> str:
    lines = ["| method | relax | molecules | COV-R@1.0 | COV-R@1.25 | COV-P@1.0 | COV-P@1.25 | "
             "AMR-R (Å) | AMR-P (Å) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        for tag in ("raw", "relaxed"):
            s = r["summary"][tag]
            if s["cov_r@1.0"] is None:
                continue
            label = path.stem
            lines.append(
                f"| {label} | {'MMFF' if tag == 'relaxed' else 'none'} | {r['n_molecules']} | "
                f"{100 * s['cov_r@1.0']:.1f} | {100 * s['cov_r@1.25']:.1f} | "
                f"{100 * s['cov_p@1.0']:.1f} | {100 * s['cov_p@1.25']:.1f} | "
                f"{s['amr_r']:.3f} | {s['amr_p']:.3f} |")
    files = {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}
    common = set.intersection(*[{m["name"] for m in r["molecules"]} for r in files.values()]) \
        if files else set()
    if len(files) > 1 and common:
        lines += ["", f"Same {len(common)} molecules for every method:", "",
                  lines[0], lines[1]]
        for stem, r in files.items():
            mols = [m for m in r["molecules"] if m["name"] in common]
            for tag in ("raw", "relaxed"):
                v = {k: float(np.nanmean([m[tag][k] for m in mols])) for k in KEYS}
                lines.append(
                    f"| {stem} | {'MMFF' if tag == 'relaxed' else 'none'} | {len(mols)} | "
                    f"{100 * v['cov_r@1.0']:.1f} | {100 * v['cov_r@1.25']:.1f} | "
                    f"{100 * v['cov_p@1.0']:.1f} | {100 * v['cov_p@1.25']:.1f} | "
                    f"{v['amr_r']:.3f} | {v['amr_p']:.3f} |")
    lines.append("")
    lines.append("Published (SPICE test, with relaxation, recall coverage at 1.25 / 1.0 Å): "
                 "RDKit ETKDG 81.6 / 70.2; Cartesian AS 94.1 / 82.4; AS + RDKit warm-up "
                 "96.7 / 87.8.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="etkdg,ours", help="comma list of etkdg, ours")
    p.add_argument("--run", default="runs/chem_spice_cpu", help="amortized run directory")
    p.add_argument("--checkpoint", default="latest", help="latest (core runs keep only latest.pt)")
    p.add_argument("--tag", default=None, help="result file name for 'ours' (default ours)")
    p.add_argument("--data", default=str(DATA), help="conformers data folder")
    p.add_argument("--max-refs", type=int, default=MAX_REFS)
    p.add_argument("--max-n-refs", type=int, default=0,
                   help="skip molecules with more (matched, capped) references (0: keep all)")
    p.add_argument("--max-molecules", type=int, default=1000)
    p.add_argument("--k-factor", type=int, default=2)
    p.add_argument("--k-min", type=int, default=128)
    p.add_argument("--k-max", type=int, default=0, help="cap K (0: no cap)")
    p.add_argument("--n-sde-steps", type=int, default=0, help="0: the training value")
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
            if method not in ("etkdg", "ours"):
                print(f"unknown method {method!r} (etkdg, ours)", file=sys.stderr)
                return 2
            res = run_method(method, args)
            name = (args.tag or "ours") if method == "ours" else "etkdg"
            (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    text = table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
