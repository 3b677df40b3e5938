"""Held-out validity check of an amortized conformer model against RDKit ETKDG.

For the first ``--molecules`` molecules of the SPICE test list shipped with adjoint-core-chem
(``spice_test``; none of them is a training molecule), samples ``--k`` raw conformers with a
trained run or exported model (default: the model shipped with the plugin) and as many
ETKDGv3 conformers, and compares them against MMFF-minimised ETKDG geometry
(:func:`adjoint_core_chem.diagnostics.compare_with_etkdg`): bond-length mean absolute error,
angle error, broken bonds, clashes, MMFF94 energies. It is the gate the raw samples must pass
before coverage means anything: bond MAE at most 0.02 Å, median MMFF energy at most ETKDG's
+ 10 kcal/mol, valid (no bond off by more than 25 %, no clash) in 99 % of conformers.

    OMP_NUM_THREADS=1 python bench/chem_heldout.py [--run RUN] --molecules 12 --k 32 \\
        --out bench/results/chem_heldout.json
    OMP_NUM_THREADS=1 python bench/chem_heldout.py --smiles SMILES --k 16   # any molecule
    OMP_NUM_THREADS=1 python bench/chem_heldout.py --smiles-file bench/data/drugs_50_100.smi \
        --molecules 17 --k 16 --out bench/results/chem_heldout_drugs.json   # 52-99 atoms
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    """Run the check; returns (and optionally writes) per-molecule rows and means."""
    from adjoint_core_chem.api import load_conformer_run, parse_molecule
    from adjoint_core_chem.commands import generate_for_molecule
    from adjoint_core_chem.diagnostics import compare_with_etkdg
    from adjoint_core_chem.molecule import MoleculeError, read_smiles_file
    from adjoint_core_chem.problem import packaged_smiles_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run or exported model (default: shipped)")
    p.add_argument("--smiles", action="append", default=None,
                   help="check these SMILES instead of the SPICE test list (repeatable)")
    p.add_argument("--smiles-file", default=None,
                   help="check the molecules of this SMILES file (lines 'SMILES name'; e.g. "
                        "bench/data/drugs_50_100.smi) instead of the SPICE test list")
    p.add_argument("--molecules", type=int, default=12)
    p.add_argument("--offset", type=int, default=0, help="skip this many test molecules")
    p.add_argument("--k", type=int, default=32, help="conformers per molecule")
    p.add_argument("--n-sde-steps", type=int, default=0, help="0: the model's value")
    p.add_argument("--max-atoms", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    trainer = load_conformer_run(a.run)
    n_steps = a.n_sde_steps or trainer.settings.n_sde_steps
    rows = []
    if a.smiles:
        test = [(smi, smi) for smi in a.smiles]
    elif a.smiles_file:
        test = read_smiles_file(a.smiles_file)[a.offset:]
    else:
        test = read_smiles_file(str(packaged_smiles_path("spice_test")))[a.offset:]
    for name, smi in test:
        if len(rows) >= a.molecules:
            break
        try:
            mol = parse_molecule(smi, name, a.max_atoms)
        except MoleculeError:
            continue
        t0 = time.perf_counter()
        x, _ = generate_for_molecule(trainer, mol, a.k, n_steps, seed=a.seed)
        gen_s = time.perf_counter() - t0
        res = compare_with_etkdg(mol, x)
        row = {"name": name, "smiles": smi, "n_atoms": mol.n_atoms,
               "seconds_per_conformer": gen_s / a.k, **res}
        rows.append(row)
        g, e = res["generated"], res["etkdg"]
        print(f"{name[:40]:40s} N={mol.n_atoms:3d}  bond MAE {g['bond_mae']:.3f} "
              f"(ETKDG {e['bond_mae']:.3f})  median MMFF {g['energy_median']:9.1f} "
              f"(ETKDG {e['energy_median']:7.1f})  valid {g['valid_fraction']:.2f}", flush=True)

    def mean(method: str, key: str) -> float:
        return float(np.nanmean([r[method][key] for r in rows]))

    keys = ("bond_mae", "angle_mae_deg", "valid_fraction", "broken_bond_fraction",
            "clash_fraction")
    summary = {m: {k: mean(m, k) for k in keys} for m in ("generated", "etkdg")}
    gap = [r["generated"]["energy_median"] - r["etkdg"]["energy_median"] for r in rows]
    summary["median_energy_gap_kcal_mol"] = {"median": float(np.median(gap)),
                                             "mean": float(np.mean(gap))}
    summary["molecules_within_10_kcal_mol"] = int(sum(v <= 10 for v in gap))
    out = {"run": a.run or "shipped", "k": a.k, "n_sde_steps": n_steps,
           "n_molecules": len(rows), "summary": summary, "molecules": rows}
    print(json.dumps(summary, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
