"""What Boltzmann samples of one molecule look like under the validity diagnostics.

Adjoint Sampling targets ``p(x) ∝ exp(−E(x)/τ)``; at 300 K a Boltzmann conformer is not a
minimised one: bonds vibrate by a few hundredths of an Ångström and the MMFF94 energy sits
about ``(3N − 6)·τ/2`` above the nearest minimum. This script measures that yardstick with
MALA chains on MMFF94 (the core's :func:`adjoint_core.mcmc.samplers.run_mcmc`, started from
ETKDG conformers) and reports :func:`adjoint_core_chem.diagnostics.conformer_diagnostics`
of the chains' samples next to ETKDG's, so that a sampler's bond-length error and median
energy can be read against the distribution it is meant to reach.

    OMP_NUM_THREADS=1 python bench/chem_boltzmann_reference.py --smiles CCCC \\
        --out bench/results/chem_warmup_probe/butane_boltzmann.json
    OMP_NUM_THREADS=1 python bench/chem_boltzmann_reference.py --spice-test 12 \\
        --out bench/results/chem_boltzmann_spice_test.json   # the molecules of chem_heldout.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    """Run the chains; returns (and optionally writes) the diagnostics."""
    from adjoint_core_chem.energy import KT_300K
    from adjoint_core_chem.molecule import mol_from_smiles

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--smiles")
    g.add_argument("--spice-test", type=int, default=0,
                   help="the first N usable molecules of the packaged spice_test list")
    p.add_argument("--temperature", type=float, default=KT_300K, help="tau in kcal/mol")
    p.add_argument("--chains", type=int, default=64)
    p.add_argument("--burn-in", type=int, default=3000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--thin", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.spice_test:
        from adjoint_core_chem.api import parse_molecule
        from adjoint_core_chem.molecule import MoleculeError, read_smiles_file
        from adjoint_core_chem.problem import packaged_smiles_path

        mols = []
        for name, smi in read_smiles_file(str(packaged_smiles_path("spice_test"))):
            if len(mols) >= a.spice_test:
                break
            try:
                mols.append(parse_molecule(smi, name, 100))
            except MoleculeError:
                continue
    else:
        mols = [mol_from_smiles(a.smiles)]
    rows = [_one(mol, a) for mol in mols]
    out = rows[0] if a.smiles else {
        "molecules": rows,
        "summary": {m: {k: float(sum(r[m][k] for r in rows) / len(rows))
                        for k in ("bond_mae", "angle_mae_deg", "valid_fraction")}
                    for m in ("boltzmann_mala", "etkdg")}
        | {"median_energy_gap_kcal_mol": sorted(
            r["boltzmann_mala"]["energy_median"] - r["etkdg"]["energy_median"]
            for r in rows)[len(rows) // 2]}}
    print(json.dumps(out.get("summary", out), indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


def _one(mol, a: argparse.Namespace) -> dict:
    """MALA chains and diagnostics of one molecule."""
    from adjoint_core_chem.diagnostics import conformer_diagnostics, reference_geometry
    from adjoint_core_chem.energy import MMFFEnergy

    from adjoint_core.mcmc.samplers import run_mcmc
    from adjoint_core.problem.spaces import EuclideanSpace

    energy = MMFFEnergy(mol, temperature=a.temperature)
    space = EuclideanSpace(mol.n_atoms, 3, mean_free=True)
    x0 = space.project(mol.embed(a.chains, seed=a.seed + 1).float())
    t0 = time.perf_counter()
    res = run_mcmc(energy, space, n_chains=a.chains, n_steps=a.steps, burn_in=a.burn_in,
                   thin=a.thin, step_size=0.01, method="mala", x0=x0,
                   generator=torch.Generator().manual_seed(a.seed))
    ref = reference_geometry(mol)
    out = {"name": mol.name, "smiles": mol.smiles, "n_atoms": mol.n_atoms,
           "temperature_kcal_mol": a.temperature,
           "chains": a.chains, "burn_in": a.burn_in, "steps": a.steps, "thin": a.thin,
           "acceptance": res.acceptance, "step_size": res.step_size,
           "energy_evals": res.energy_evals, "seconds": round(time.perf_counter() - t0, 1),
           "equipartition_kcal_mol": (3 * mol.n_atoms - 6) * a.temperature / 2,
           "boltzmann_mala": conformer_diagnostics(mol, res.samples, ref),
           "etkdg": conformer_diagnostics(mol, mol.embed(len(res.samples), seed=7), ref)}
    print(f"{mol.name[:40]:40s} N={mol.n_atoms:3d} Boltzmann bond MAE "
          f"{out['boltzmann_mala']['bond_mae']:.3f} median MMFF "
          f"{out['boltzmann_mala']['energy_median']:.1f} | ETKDG {out['etkdg']['bond_mae']:.3f} "
          f"{out['etkdg']['energy_median']:.1f} (acceptance {res.acceptance:.2f})", flush=True)
    return out


if __name__ == "__main__":
    main()
