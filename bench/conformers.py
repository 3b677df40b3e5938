"""Conformer benchmark on the SPICE test set: our amortized sampler vs RDKit ETKDG at equal K.

Protocol (the Adjoint Sampling paper's conformer benchmark, Havens et al., ICML 2025):

* molecules: every SPICE test molecule (``spice_test.tsv``) that has CREST references
  (``spice_test/<Hash_Name>.xyz.gz``; 68 of the 79);
* references: the first ``--max-refs`` (512) conformers, mapped onto the SMILES atom order;
* ``K = max(--k-factor · n_refs, --k-min)`` = ``max(2 × n_refs, 128)`` generated conformers per
  molecule and method (so at most 1024). ``--k-max`` caps K as a compute budget; that is a
  deviation from the protocol, recorded in the JSON (``k_max``, ``n_molecules_k_capped``) and
  in the table;
* methods: ``etkdg`` (RDKit ETKDGv3, ``--etkdg-seed`` 42, one thread) and ``ours`` (a trained
  amortized run: ``--run DIR``, or without ``--run`` the model shipped with adjoint-core-chem,
  both through :func:`adjoint_core_chem.api.load_conformer_run`), each scored raw and after a
  short MMFF94 relaxation (``--relax-steps`` iterations of RDKit's minimiser);
* metrics (:mod:`adjoint_core_chem.metrics`): coverage recall / precision at 1.0 and 1.25 Å
  (strict ``<``), AMR recall / precision, symmetry-aware heavy-atom RMSD; mean ± std (and
  median) over molecules;
* wall time per conformer for each method: generation, and relaxation separately (sum of
  seconds over molecules / sum of K; model loading excluded and reported on its own).

The CREST reference conformers are CC BY-NC 4.0 and are not shipped: give their folder with
``--data`` (it must hold ``spice_test.tsv`` and ``spice_test/*.xyz.gz``).

Writes ``<out>/<method>.json`` (per molecule and summarised; rewritten after each molecule with
``"complete": false`` until the end), then ``<out>/table.md`` from every method file present.

Example::

    OMP_NUM_THREADS=1 .venv/bin/python bench/conformers.py --methods etkdg --data DIR
    OMP_NUM_THREADS=1 .venv/bin/python bench/conformers.py --methods ours --data DIR \\
        --run runs/chem_spice --tag ours
"""

from __future__ import annotations

import argparse
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
    coverage_metrics,
    heavy_automorphisms,
    num_generated,
    read_reference_xyz,
    rmsd_matrix,
)
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles, read_smiles_file

OUT = Path(__file__).resolve().parent / "results" / "conformers"
#: No default data folder: the references are not shipped (``--data`` is required).
DATA = None
KEYS = ("cov_r@1.0", "cov_r@1.25", "cov_p@1.0", "cov_p@1.25", "amr_r", "amr_p")
TAGS = ("raw", "relaxed")
DATA_WHAT = ("the folder of the CREST reference conformers (spice_test.tsv and "
             "spice_test/<Hash_Name>.xyz.gz); they are CC BY-NC 4.0 (FAIR Chemistry, Adjoint "
             "Sampling paper) and are not shipped with adjoint-core")
NO_DATA = f"--data is required: {DATA_WHAT}"
PUBLISHED = ("Published (Adjoint Sampling paper, SPICE test set, coverage recall at 1.25 Å): "
             "raw: RDKit ETKDG 72.7, AS 82.2, AS + RDKit warm-up 89.4; relaxed: ETKDG 81.6, "
             "AS 94.1, AS + warm-up 96.7 (relaxed at 1.0 Å: 70.2, 82.4, 87.8).")


def check_data(data: str | None) -> tuple[Path, Path]:
    """The reference table and folder under ``data``; ``SystemExit`` naming what is missing."""
    if not data:
        raise SystemExit(f"bench/conformers.py: {NO_DATA}")
    root = Path(data)
    tsv, refs = root / "spice_test.tsv", root / "spice_test"
    missing = [str(p) for p in (tsv, refs) if not p.exists()]
    if missing:
        raise SystemExit(f"bench/conformers.py: --data {data}: missing {', '.join(missing)}; "
                         f"give {DATA_WHAT}")
    return tsv, refs


def select(data) -> list[tuple[str, str, str]]:
    """``(name, smiles, reference path)`` of the test molecules with a reference file.

    ``data`` is the folder, or a namespace with a ``data`` attribute (``bench/torsional.py``).
    """
    tsv, refs = check_data(getattr(data, "data", data))
    out = []
    for name, smi in read_smiles_file(str(tsv)):
        path = refs / f"{name}.xyz.gz"
        if path.exists():
            out.append((name, smi, str(path)))
    return out


def evaluate(mol, ref_heavy: np.ndarray, perms: np.ndarray, x: torch.Tensor,
             heavy: np.ndarray) -> dict:
    """Coverage / AMR of generated ``x`` ``(K, N, 3)`` against heavy-atom references.

    ``mol`` is unused (kept for ``bench/torsional.py``, which calls this).
    """
    c = coverage_metrics(rmsd_matrix(ref_heavy, x[:, heavy].double().numpy(), perms))
    return {k: c[k] for k in KEYS}


def generate(method: str, mol, k: int, args, trainer=None, n_steps=None) -> torch.Tensor:
    """``k`` conformers ``(k, N, 3)`` in Å (ETKDG may return fewer when embedding fails)."""
    if method == "etkdg":
        return mol.embed(k, seed=getattr(args, "etkdg_seed", 42))
    from adjoint_core_chem.commands import sample_conformers

    # the sampling step of commands.generate_for_molecule (which the conformers command runs),
    # without its relaxation and energies, so that generation is timed on its own
    return sample_conformers(trainer, mol, k, n_steps, args.seed, args.batch_size)[0]


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "n": int(v.size)}


def summarise(rows: list[dict]) -> dict:
    """Mean, std (over molecules, ddof 0) and median of every metric; time per conformer."""
    out: dict = {tag: {key: _stats([r[tag][key] for r in rows]) for key in KEYS}
                 for tag in TAGS}
    n_conf = sum(r["k"] for r in rows)
    out["n_conformers"] = int(n_conf)
    out["seconds_per_conformer"] = {
        "generate": sum(r["seconds_generate"] for r in rows) / n_conf if n_conf else None,
        "relax": sum(r["seconds_relax"] for r in rows) / n_conf if n_conf else None}
    ks = [r["k"] for r in rows]
    out["k"] = {"min": min(ks), "max": max(ks), "total": int(n_conf)} if ks else None
    return out


def load_model(args):
    """The trained run for ``ours`` (``--run``, or the shipped model when not given)."""
    from adjoint_core_chem.api import load_conformer_run

    t0 = time.perf_counter()
    trainer = load_conformer_run(args.run, device=getattr(args, "device", None))
    seconds = time.perf_counter() - t0
    n_steps = args.n_sde_steps or trainer.settings.n_sde_steps
    return trainer, int(n_steps), seconds


def run_method(method: str, args, out_path: Path | None = None) -> dict:
    """Run one method over the selected molecules; rewrite ``out_path`` after each one."""
    trainer = n_steps = None
    seconds_load = 0.0
    if method == "ours":
        trainer, n_steps, seconds_load = load_model(args)
    mols = select(args.data)
    results, skipped, excluded = [], [], []
    settings = {k: v for k, v in vars(args).items() if k not in ("methods", "table_only")}
    t_start = time.perf_counter()
    for name, smi, path in mols:
        if len(results) >= args.max_molecules:
            excluded.append({"name": name, "reason": f"--max-molecules {args.max_molecules}"})
            continue
        try:
            mol = mol_from_smiles(smi, name)
            refs, bad = read_reference_xyz(path, mol, args.max_refs)
            if len(refs) == 0:
                raise MoleculeError(f"molecule {name!r}: no reference matched its graph")
            if args.max_n_refs and len(refs) > args.max_n_refs:
                excluded.append({"name": name, "reason": f"{len(refs)} references > "
                                 f"--max-n-refs {args.max_n_refs}"})
                continue
            k_protocol = num_generated(len(refs), args.k_factor, args.k_min)
            k = min(k_protocol, args.k_max) if args.k_max else k_protocol
            heavy = mol.heavy_atoms.numpy()
            perms = heavy_automorphisms(mol)
            ref_h = refs[:, heavy]
            mmff = MMFFEnergy(mol)
            t0 = time.perf_counter()
            x = generate(method, mol, k, args, trainer, n_steps).float().cpu()
            t_gen = time.perf_counter() - t0
            row = {"name": name, "smiles": smi, "n_atoms": mol.n_atoms,
                   "n_heavy": int(len(heavy)), "n_refs": int(len(refs)),
                   "refs_unmatched": int(bad), "k_protocol": int(k_protocol),
                   "k_asked": int(k), "k": int(x.shape[0]),
                   "n_automorphisms": int(len(perms)), "seconds_generate": t_gen}
            t0 = time.perf_counter()
            row["raw"] = evaluate(mol, ref_h, perms, x, heavy)
            t_rmsd = time.perf_counter() - t0
            t0 = time.perf_counter()
            xr = mmff.minimize(x, max_iters=args.relax_steps)
            row["seconds_relax"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            row["relaxed"] = evaluate(mol, ref_h, perms, xr, heavy)
            row["seconds_metrics"] = t_rmsd + time.perf_counter() - t0
            row["mmff_median_raw"] = float(np.nanmedian(mmff.energy(x.double()).numpy()))
            row["mmff_median_relaxed"] = float(np.nanmedian(mmff.energy(xr.double()).numpy()))
            results.append(row)
            print(f"[{method}] {name} N={mol.n_atoms} refs={len(refs)} K={row['k']}: "
                  f"COV-R@1.25 raw {row['raw']['cov_r@1.25']:.3f} relaxed "
                  f"{row['relaxed']['cov_r@1.25']:.3f}  AMR-R raw {row['raw']['amr_r']:.3f} "
                  f"relaxed {row['relaxed']['amr_r']:.3f} (gen {t_gen:.1f} s, relax "
                  f"{row['seconds_relax']:.1f} s, metrics {row['seconds_metrics']:.1f} s)",
                  flush=True)
        except (MoleculeError, RuntimeError, ValueError) as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            print(f"[{method}] skipped {name}: {exc}", flush=True)
        if out_path is not None:
            res = _result(method, args, settings, trainer, n_steps, seconds_load, mols, results,
                          skipped, excluded, time.perf_counter() - t_start, complete=False)
            out_path.write_text(json.dumps(res, indent=2))
    res = _result(method, args, settings, trainer, n_steps, seconds_load, mols, results,
                  skipped, excluded, time.perf_counter() - t_start, complete=True)
    if out_path is not None:
        out_path.write_text(json.dumps(res, indent=2))
    return res


def _result(method, args, settings, trainer, n_steps, seconds_load, mols, results, skipped,
            excluded, wall, complete) -> dict:
    capped = [r["name"] for r in results if r["k_asked"] < r["k_protocol"]]
    short = [r["name"] for r in results if r["k"] < r["k_asked"]]
    full = (not capped and not excluded and not skipped and args.max_refs == MAX_REFS
            and args.k_factor == 2 and args.k_min == 128)
    return {
        "method": method, "complete": complete,
        "run": (args.run or "shipped model (adjoint_core_chem)") if method == "ours" else None,
        "device": str(trainer.device) if trainer is not None else "cpu",
        "n_sde_steps": n_steps, "seconds_load_model": seconds_load if method == "ours" else None,
        "protocol": {"max_refs": args.max_refs, "k": f"max({args.k_factor} * n_refs, "
                     f"{args.k_min})", "k_max": args.k_max or None,
                     "relax": f"MMFF94, {args.relax_steps} iterations",
                     "etkdg_seed": getattr(args, "etkdg_seed", 42) if method == "etkdg"
                     else None,
                     "std": "population std over molecules (ddof 0)",
                     "full_protocol": full},
        "n_molecules_with_references": len(mols), "n_molecules": len(results),
        "n_molecules_k_capped": len(capped), "k_capped": capped,
        "k_short": short, "skipped": skipped, "excluded": excluded,
        "k_per_molecule": {r["name"]: r["k"] for r in results},
        "summary": summarise(results), "molecules": results, "wall_seconds": wall,
        "settings": settings, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads()}


def _row_stats(mols: list[dict]) -> dict:
    """Summary recomputed from per-molecule rows (older result files included)."""
    rows = [{**m, "k_asked": m.get("k_asked", m["k"])} for m in mols]
    return summarise(rows)


def _fmt(s: dict, key: str) -> str:
    if s["mean"] is None:
        return "–"
    if key.startswith("cov"):
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


HEADER = ["| method | relax | molecules | K | COV-R@1.0 (%) | COV-R@1.25 (%) | COV-P@1.0 (%) | "
          "COV-P@1.25 (%) | AMR-R (Å) | AMR-P (Å) | ms / conformer |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]


def _table_rows(stem: str, mols: list[dict]) -> list[str]:
    s = _row_stats(mols)
    per = s["seconds_per_conformer"]
    k = s["k"]
    out = []
    for tag in TAGS:
        ms = per["generate"] if tag == "raw" else per["relax"]
        what = "generation" if tag == "raw" else "relaxation"
        out.append(f"| {stem} | {'MMFF' if tag == 'relaxed' else 'none'} | {len(mols)} | "
                   f"{k['min']}–{k['max']} | "
                   + " | ".join(_fmt(s[tag][key], key) for key in KEYS)
                   + f" | {1000 * ms:.1f} ({what}) |")
    return out


def _note(stem: str, r: dict) -> str:
    st = r.get("settings", {})
    bits = []
    proto = r.get("protocol")
    if proto is None:
        bits.append("older result format")
    elif proto.get("full_protocol"):
        bits.append("full protocol")
    k_max = (proto or {}).get("k_max") or st.get("k_max")
    if k_max:
        capped = sum(m["k_asked"] < m.get("k_protocol", num_generated(
            m["n_refs"], st.get("k_factor", 2), st.get("k_min", 128))) for m in r["molecules"])
        bits.append(f"K capped at {k_max} (--k-max; {capped} of {len(r['molecules'])} "
                    "molecules affected)")
    if st.get("max_n_refs"):
        bits.append(f"only molecules with at most {st['max_n_refs']} references")
    if st.get("max_molecules", 1000) < r.get("n_molecules_with_references", 0):
        bits.append(f"first {st['max_molecules']} molecules")
    if r.get("skipped"):
        bits.append(f"{len(r['skipped'])} skipped (errors)")
    if not r.get("complete", True):
        bits.append("INCOMPLETE (run still going or interrupted)")
    if r.get("method") == "ours":
        bits.append(f"run {r.get('run')}, {r.get('n_sde_steps')} SDE steps"
                    + (f", device {r['device']}" if r.get("device") else "")
                    + (f", checkpoint {st['checkpoint']}"
                       if st.get("checkpoint") not in (None, "latest") else ""))
    bits.append(f"relax {st.get('relax_steps', 200)} MMFF iterations; "
                f"OMP_NUM_THREADS={r.get('omp_num_threads')}")
    return f"- `{stem}`: " + "; ".join(bits) + "."


def table(out_dir: Path) -> str:
    files = {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}
    files = {k: v for k, v in files.items() if v.get("molecules")}
    lines = ["Mean ± std over molecules; time per conformer: generation (raw row) and MMFF "
             "relaxation (MMFF row), summed over molecules / summed K.", "", *HEADER]
    for stem, r in files.items():
        lines += _table_rows(stem, r["molecules"])
    lines += ["", *[_note(stem, r) for stem, r in files.items()]]
    common = set.intersection(*[{m["name"] for m in r["molecules"]} for r in files.values()]) \
        if files else set()
    if len(files) > 1 and common and any(len(r["molecules"]) != len(common)
                                         for r in files.values()):
        lines += ["", f"Same {len(common)} molecules for every method:", "", *HEADER]
        for stem, r in files.items():
            lines += _table_rows(stem, [m for m in r["molecules"] if m["name"] in common])
    lines += ["", PUBLISHED]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="folder with spice_test.tsv and spice_test/*.xyz.gz (CREST references, "
                        "CC BY-NC, not shipped); required unless --table-only")
    p.add_argument("--methods", default="etkdg,ours", help="comma list of etkdg, ours")
    p.add_argument("--run", default=None,
                   help="trained run directory for 'ours' (default: the model shipped with "
                        "adjoint-core-chem)")
    p.add_argument("--device", default=None, help="device for 'ours' (default: the run's)")
    p.add_argument("--tag", default=None, help="result file name for 'ours' (default ours)")
    p.add_argument("--suffix", default="",
                   help="appended to every result file name, e.g. _k64 for a capped run")
    p.add_argument("--max-refs", type=int, default=MAX_REFS)
    p.add_argument("--max-n-refs", type=int, default=0,
                   help="skip molecules with more (matched, capped) references (0: keep all; "
                        "not the protocol)")
    p.add_argument("--max-molecules", type=int, default=1000)
    p.add_argument("--k-factor", type=int, default=2)
    p.add_argument("--k-min", type=int, default=128)
    p.add_argument("--k-max", type=int, default=0,
                   help="cap K as a compute budget (0: no cap, the protocol); recorded")
    p.add_argument("--n-sde-steps", type=int, default=0, help="0: the training value")
    p.add_argument("--relax-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of 'ours'")
    p.add_argument("--etkdg-seed", type=int, default=42)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--table-only", action="store_true",
                   help="only rewrite table.md from the result files in --out")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("etkdg", "ours")]
    if bad:
        p.error(f"unknown method(s) {', '.join(map(repr, bad))} (etkdg, ours)")
    if not args.table_only:
        if not args.data:
            p.error(NO_DATA)
        try:
            check_data(args.data)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        from adjoint_core.plugins.registry import ConfigError

        for method in methods:
            name = ((args.tag or "ours") if method == "ours" else "etkdg") + args.suffix
            try:
                run_method(method, args, out / f"{name}.json")
            except ConfigError as exc:
                print(f"bench/conformers.py: {exc}", file=sys.stderr)
                return 2
    text = table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
