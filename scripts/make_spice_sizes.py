"""Write the packaged SMILES set ``spice_sizes``: SPICE-train molecules of every size to 100 atoms.

Every SPICE-train molecule has at most 50 atoms (hydrogens included), so a conformer model
trained on them alone has never seen a molecule of 60-100 atoms, the size of many drugs. This
script keeps ``--small`` random SPICE-train molecules as they are and adds ``--joined``
molecules of ``--min-atoms``-``--max-atoms`` atoms, each made from two random SPICE-train
molecules joined by one single bond between a hydrogen-bearing carbon or nitrogen of each (one
hydrogen removed from each; bonds inside rings and charged atoms are never touched). The joined
molecules are drug-like the way SPICE's are: the same fragments, chained as in a larger drug.

Deterministic for a given ``--seed``. Every molecule written parses, is neutral, has one
fragment and is typed by MMFF94 (``adjoint_core_chem.problem.select_molecules`` checks it again
at training time).

Example (what made ``adjoint_core_chem/data/spice_sizes.tsv.gz``)::

    .venv/bin/python scripts/make_spice_sizes.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
from pathlib import Path

from adjoint_core_chem.problem import packaged_smiles_path
from rdkit import Chem, RDLogger
from rdkit.Chem import rdForceFieldHelpers
from rdkit.Chem.rdMolDescriptors import CalcNumRotatableBonds

OUT = (Path(__file__).resolve().parents[1] / "plugins" / "adjoint-core-chem" / "src"
       / "adjoint_core_chem" / "data" / "spice_sizes.tsv.gz")


def _join_sites(mol: Chem.Mol) -> list[int]:
    """Heavy atoms where a substituent may replace a hydrogen (neutral C or N with an H)."""
    return [a.GetIdx() for a in mol.GetAtoms()
            if a.GetSymbol() in ("C", "N") and a.GetTotalNumHs() > 0
            and a.GetFormalCharge() == 0 and not a.GetNumRadicalElectrons()]


def join(a: Chem.Mol, b: Chem.Mol, rng: random.Random) -> Chem.Mol | None:
    """``a`` and ``b`` (no explicit hydrogens) joined by one single bond; None if not possible."""
    sa, sb = _join_sites(a), _join_sites(b)
    if not sa or not sb:
        return None
    ia, ib = rng.choice(sa), rng.choice(sb)
    combo = Chem.RWMol(Chem.CombineMols(a, b))
    jb = a.GetNumAtoms() + ib
    combo.AddBond(ia, jb, Chem.BondType.SINGLE)
    for k in (ia, jb):
        atom = combo.GetAtomWithIdx(k)
        atom.SetNumExplicitHs(max(atom.GetNumExplicitHs() - 1, 0))
        atom.SetNoImplicit(False)
    try:
        out = combo.GetMol()
        Chem.SanitizeMol(out)
    except (Chem.rdchem.MolSanitizeException, ValueError, RuntimeError):
        return None
    return out


def _usable(mol: Chem.Mol, min_atoms: int, max_atoms: int) -> bool:
    molh = Chem.AddHs(mol)
    n = molh.GetNumAtoms()
    if not min_atoms <= n <= max_atoms or len(Chem.GetMolFrags(mol)) != 1:
        return False
    if any(a.GetFormalCharge() or a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return False
    return rdForceFieldHelpers.MMFFHasAllMoleculeParams(molh)


def main(argv: list[str] | None = None) -> Path:
    """Write the set (``--out``) and print its size range and checksum; returns the path."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=1000, help="SPICE-train molecules kept as is")
    p.add_argument("--joined", type=int, default=1000, help="joined molecules added")
    p.add_argument("--min-atoms", type=int, default=51)
    p.add_argument("--max-atoms", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    RDLogger.DisableLog("rdApp.*")
    from adjoint_core_chem.molecule import read_smiles_file

    rows = read_smiles_file(str(packaged_smiles_path("spice_train")))
    mols = []
    for name, smi in rows:
        m = Chem.MolFromSmiles(smi)
        if m is not None and _usable(m, 1, 50):
            mols.append((name, m))
    rng = random.Random(a.seed)
    out = [(name, Chem.MolToSmiles(m), "spice") for name, m in rng.sample(mols, a.small)]
    seen = {s for _, s, _ in out}
    tries = 0
    while len(out) < a.small + a.joined:
        tries += 1
        if tries > 100 * (a.joined + 1):
            raise SystemExit(f"only {len(out) - a.small} of {a.joined} joined molecules after "
                             f"{tries} tries; widen --min-atoms/--max-atoms")
        (na, ma), (nb, mb) = rng.sample(mols, 2)
        if ma.GetNumAtoms() + mb.GetNumAtoms() < 12:
            continue
        m = join(ma, mb, rng)
        if m is None or not _usable(m, a.min_atoms, a.max_atoms):
            continue
        smi = Chem.MolToSmiles(m)
        if smi in seen:
            continue
        seen.add(smi)
        out.append((f"{na}+{nb}", smi, "joined"))
    rng.shuffle(out)
    text = "Rotatable_Bonds\tSMILES\tname\tsource\n" + "".join(
        f"{CalcNumRotatableBonds(Chem.MolFromSmiles(s))}\t{s}\t{n}\t{src}\n"
        for n, s, src in out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(a.out, "wb", mtime=0) as fh:
        fh.write(text.encode())
    sizes = sorted(Chem.AddHs(Chem.MolFromSmiles(s)).GetNumAtoms() for _, s, _ in out)
    print(f"wrote {a.out}: {len(out)} molecules ({a.small} SPICE-train, {a.joined} joined), "
          f"{sizes[0]}-{sizes[-1]} atoms, median {sizes[len(sizes) // 2]}; sha256 of the "
          f"uncompressed file {hashlib.sha256(text.encode()).hexdigest()}")
    return a.out


if __name__ == "__main__":
    main()
