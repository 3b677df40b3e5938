"""Seconds per energy-and-gradient evaluation of real energies on a drug-sized molecule.

Usage (from the repository root; the numbers depend on the thread count)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/energy_costs.py
    .venv/bin/python bench/energy_costs.py --device cuda --out $OUT/energy_costs_cuda.json

Times, through the library's own energies (what a run calls, one conformer after another
inside a batch), the energy and gradient of ``--batch`` ETKDG conformers of the molecule
(default imatinib, 68 atoms with hydrogens), after one untimed call:

* ``mmff``: MMFF94 (RDKit; adjoint-core-chem), force field set up once per molecule;
* ``xtb``: GFN2-xTB (tblite; adjoint-core-chem);
* ``esen``: eSEN (fairchem-core; adjoint-core-esen) with random weights of the plugin's
  default architecture (a trained checkpoint of the same size costs the same), on
  ``--device``;
* ``dw4``, ``lj13``: the synthetic energies of the benchmarks, for scale (batch 1,000).

Energies whose package is missing are skipped and named in the JSON. Writes
``bench/results/energy_costs.json`` (``--out``); ``bench/efficiency.py`` reads it for the
crossover table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MOLECULES = {
    "imatinib": "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1",
    "risperidone": "Cc1nc2n(c(=O)c1CCN1CCC(c3noc4cc(F)ccc34)CC1)CCCC2",
}


def _time(fn, x: torch.Tensor, repeats: int) -> dict:
    fn(x[:1])  # untimed: set-up, caches, lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": int(x.shape[0]), "seconds_per_batch": med, "s_per_eval": med / x.shape[0],
            "repeats": repeats}


def molecular(kind: str, smiles: str, batch: int, repeats: int, device: str,
              tmp: Path) -> dict:
    from adjoint_core_chem.molecule import mol_from_smiles

    mol = mol_from_smiles(smiles)
    x = mol.embed(batch, seed=1).float()
    if kind in ("mmff", "xtb"):
        from adjoint_core_chem.energy import make_energy

        t0 = time.perf_counter()
        energy = make_energy(mol, kind, regularize=False)
        setup = time.perf_counter() - t0
        row = _time(energy.energy_and_grad, x, repeats)
        row["setup_s"] = setup
        row["label"] = {"mmff": "MMFF94", "xtb": "GFN2-xTB"}[kind]
        row["package"] = {"mmff": "rdkit", "xtb": "tblite"}[kind]
        return row
    from adjoint_core_esen.checkpoint import build_random_checkpoint
    from adjoint_core_esen.energy import ESENEnergy, ESENPotential

    ckpt = build_random_checkpoint(tmp / "esen_random.pt", seed=0)
    energy = ESENEnergy(ESENPotential(ckpt), molecule=mol)
    row = _time(energy.energy_and_grad, x.to(device), repeats)
    row.update({"label": "eSEN (random weights)" + ("" if device == "cpu" else f", {device}"),
                "package": "fairchem-core", "device": device})
    return row


def synthetic(name: str, repeats: int) -> dict:
    from adjoint_core.plugins.registry import default_registry

    reg = default_registry()
    shapes = {"dw4": (4, 2), "lj13": (13, 3)}
    n, d = shapes[name]
    space = reg.build("space", "euclidean", {"n_particles": n, "spatial_dim": d,
                                             "mean_free": True})
    energy = reg.build("energy", name, {}, space=space)
    x = space.project(torch.randn(1000, n, d, generator=torch.Generator().manual_seed(0)))
    row = _time(energy.energy_and_grad, x, repeats)
    row.update({"label": {"dw4": "DW-4", "lj13": "LJ-13"}[name], "package": "adjoint-core"})
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecule", choices=sorted(MOLECULES), default="imatinib")
    p.add_argument("--energies", nargs="+", default=["mmff", "xtb", "esen", "dw4", "lj13"],
                   choices=["mmff", "xtb", "esen", "dw4", "lj13"])
    p.add_argument("--batch", type=int, default=8, help="conformers per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="device of the eSEN model")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "energy_costs.json"))
    args = p.parse_args(argv)
    rows, skipped = [], []
    smiles = MOLECULES[args.molecule]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.energies:
            try:
                if kind in ("dw4", "lj13"):
                    row = synthetic(kind, args.repeats)
                else:
                    row = molecular(kind, smiles, args.batch, args.repeats, args.device,
                                    Path(tmp))
                    row["molecule"] = args.molecule
            except ImportError as exc:
                skipped.append(f"{kind}: {exc}")
                continue
            row["energy"] = kind
            rows.append(row)
            print(f"{kind}: {row['s_per_eval'] * 1e3:.4g} ms per evaluation", file=sys.stderr,
                  flush=True)
    sys.path.insert(0, str(ROOT / "bench"))
    from adjoint_core_chem.molecule import mol_from_smiles
    from throughput import machine

    out = {"benchmark": "bench/energy_costs.py", "date": time.strftime("%Y-%m-%d"),
           "molecule": args.molecule, "smiles": smiles,
           "n_atoms": mol_from_smiles(smiles).n_atoms,
           "timed": "energy and gradient of a batch of ETKDG conformers (median of repeats "
                    "after one untimed call) / batch",
           "torch_threads": torch.get_num_threads(), "machine": machine(),
           "versions": _versions(), "rows": rows, "skipped": skipped,
           "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    text = json.dumps(out, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "rdkit", "tblite", "fairchem-core"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    main()
