"""``adjoint-core torsion-train`` and the torsional branch of ``adjoint-core conformers``.

``adjoint-core torsion-train CONFIG --out RUN_DIR`` trains (or resumes) an amortized torsional
sampler (:mod:`adjoint_core_torsion.amortized`, YAML ``kind: torsion_amortized``).

``adjoint-core conformers RUN_DIR ...`` is the chemistry plugin's command; when ``RUN_DIR`` is a
torsional run it calls :func:`run_conformers` here, which writes the same outputs (one SDF per
molecule with ``conformer_id``, ``energy_mmff_kcal_mol``, ``relaxed`` and additionally
``torsions_rad``; ``summary.json``; the same exit codes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

__all__ = ["add_commands", "run_conformers"]


def run_conformers(args: argparse.Namespace) -> int:
    """The ``conformers`` command for a torsional run directory (see the module docstring)."""
    from adjoint_core_chem.commands import _safe, write_sdf
    from adjoint_core_chem.energy import MMFFEnergy, XTBEnergy
    from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles, read_smiles_file

    from .amortized import generate_torsional, load_torsional

    loaded = load_torsional(args.run_dir)
    cfg = loaded[2]
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_smiles_file(args.smiles_file)
    if args.limit:
        rows = rows[:args.limit]
    n_steps = args.n_sde_steps or cfg.train.n_sde_steps
    done, skipped = [], []
    for idx, (name, smi) in enumerate(rows):
        t0 = time.perf_counter()
        try:
            mol = mol_from_smiles(smi, name)
            mmff = MMFFEnergy(mol)
            x, tau = generate_torsional(args.run_dir, mol, args.num_conformers, n_steps,
                                        args.seed + idx, args.batch_size, loaded)
            k = x.shape[0]
            props: dict[str, list] = {"conformer_id": list(range(k)),
                                      "relaxed": [args.relax] * k,
                                      "torsions_rad": [" ".join(f"{v:.4f}" for v in row)
                                                       for row in tau.tolist()]}
            if args.relax == "mmff":
                x = mmff.minimize(x, max_iters=args.relax_steps)
            elif args.relax == "xtb":
                xtb = XTBEnergy(mol)
                x = xtb.minimize(x, max_iters=args.relax_steps)
                props["energy_xtb_kcal_mol"] = [float(v) for v in xtb.energy(x.double())]
            props["energy_mmff_kcal_mol"] = [float(v) for v in mmff.energy(x.double())]
        except (MoleculeError, RuntimeError, ImportError) as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            print(f"skipped {name}: {exc}")
            continue
        path = out / f"{_safe(name)}.sdf"
        write_sdf(path, mol, x, props)
        e = torch.tensor(props["energy_mmff_kcal_mol"])
        done.append({"name": name, "smiles": smi, "sdf": str(path), "n_conformers": len(x),
                     "n_torsions": int(tau.shape[1]),
                     "min_energy_mmff": float(e[e.isfinite()].min()) if e.isfinite().any()
                     else None, "seconds": time.perf_counter() - t0})
        print(f"{name}: {len(x)} conformers ({tau.shape[1]} torsions) -> {path} "
              f"({done[-1]['seconds']:.1f} s)")
    (out / "summary.json").write_text(json.dumps(
        {"run_dir": str(args.run_dir), "kind": "torsion_amortized",
         "num_conformers": args.num_conformers, "relax": args.relax, "n_sde_steps": n_steps,
         "written": done, "skipped": skipped}, indent=2))
    print(f"{len(done)} molecule(s) written, {len(skipped)} skipped"
          + (": " + ", ".join(s["name"] for s in skipped) if skipped else ""))
    if not done and rows:
        return 1
    return 2 if skipped else 0


def _run_train(args: argparse.Namespace) -> int:
    from .amortized import train_torsional

    torch.set_num_threads(max(1, args.threads))
    rec = train_torsional(args.config, args.out)
    print(f"trained to epoch {rec['stopped_at_epoch']} in {rec['wall_seconds']:.0f} s; "
          f"run directory {args.out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``torsion-train`` to the ``adjoint-core`` command line."""
    p = subparsers.add_parser("torsion-train", help="train an amortized torsional conformer "
                              "sampler (torsion plugin; generate with `conformers`)")
    p.add_argument("config", help="YAML config (kind: torsion_amortized)")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=_run_train)
