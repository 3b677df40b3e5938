r"""Conformer metrics: coverage and AMR (recall and precision) with heavy-atom RMSD.

Protocol (the Adjoint Sampling paper's, Havens et al., ICML 2025):

* RMSD between two conformers of the same molecule over the **heavy atoms**, minimised over
  proper rotations, translations and the molecule's graph automorphisms (symmetry-aware, as
  RDKit's ``rdMolAlign.GetBestRMS``). :func:`rmsd_matrix` computes the whole
  ``(n_ref, n_gen)`` matrix at once: the automorphisms come from RDKit
  (``GetSubstructMatches`` of the heavy-atom graph on itself, bond orders ignored), the optimal
  rotation of every pair and permutation from a batched Kabsch SVD.
  It agrees with ``GetBestRMS`` (tested).
* ``COV-R(δ)`` = fraction of references whose nearest generated conformer is closer than δ
  (strict ``<``); ``AMR-R`` = mean over references of that nearest RMSD; ``COV-P`` / ``AMR-P``
  the same with the roles swapped.
* thresholds δ = 0, 0.125, …, 2.5 Å (:data:`THRESHOLDS`), reported at 1.0 and 1.25 Å;
  references capped at 512 (:data:`MAX_REFS`), ``K = 2 × n_refs`` generated, at least 128
  (:func:`num_generated`).

References (CREST ``.xyz.gz`` files) are read by :func:`read_reference_xyz`, which maps each
block's atoms onto the SMILES molecule's atom order by graph matching
(:func:`map_to_molecule`), so every conformer of a molecule lives in one atom order.
"""

from __future__ import annotations

import gzip

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

from .molecule import Molecule

__all__ = ["THRESHOLDS", "MAX_REFS", "REPORT_AT", "num_generated", "heavy_automorphisms",
           "rmsd_matrix", "coverage_metrics", "read_reference_xyz", "map_to_molecule"]

#: RMSD thresholds δ (Å): 0, 0.125, …, 2.5.
THRESHOLDS = np.round(np.arange(0.0, 2.5 + 1e-9, 0.125), 3)
#: Thresholds singled out in reports (Å).
REPORT_AT = (1.0, 1.25)
#: Largest number of reference conformers used per molecule.
MAX_REFS = 512


def num_generated(n_refs: int, factor: int = 2, minimum: int = 128) -> int:
    """``K = max(factor · n_refs, minimum)`` conformers to generate for ``n_refs`` references."""
    if n_refs < 0 or factor < 1 or minimum < 0:
        raise ValueError(f"num_generated needs n_refs >= 0, factor >= 1, minimum >= 0; got "
                         f"{n_refs}, {factor}, {minimum}")
    return max(factor * n_refs, minimum)


def heavy_automorphisms(molecule: Molecule, max_matches: int = 10_000) -> np.ndarray:
    """Permutations of the heavy atoms that preserve elements and connectivity.

    Bond orders are ignored, so that e.g. the two oxygens of a carboxylic acid or a nitro group
    are interchangeable once hydrogens are removed, as in ``GetBestRMS`` (whose default
    ``symmetrizeConjugatedTerminalGroups=True`` does this for conjugated terminal groups).

    Returns:
        ``(n_perm, N_heavy)`` int array; row ``p`` maps heavy atom ``k`` to ``p[k]`` (indices
        into the heavy-atom list, i.e. :attr:`Molecule.heavy_atoms` order).
    """
    heavy = Chem.RemoveHs(molecule.mol, sanitize=False)
    params = Chem.AdjustQueryParameters.NoAdjustments()
    params.makeBondsGeneric = True
    query = Chem.AdjustQueryProperties(heavy, params)
    matches = heavy.GetSubstructMatches(query, uniquify=False, useChirality=False,
                                        maxMatches=max_matches)
    return np.asarray(matches, dtype=np.int64).reshape(len(matches), -1)


def rmsd_matrix(ref: np.ndarray, gen: np.ndarray, perms: np.ndarray | None = None,
                chunk: int = 2**16) -> np.ndarray:
    """Symmetry-aware minimum RMSD of every reference–generated pair.

    Args:
        ref: ``(n_ref, M, 3)`` heavy-atom coordinates.
        gen: ``(n_gen, M, 3)`` heavy-atom coordinates (same atom order).
        perms: ``(n_perm, M)`` automorphisms (default: identity only).
        chunk: Pairs per batched SVD.

    Returns:
        ``(n_ref, n_gen)`` RMSDs in the coordinates' unit; NaN where a conformer is not finite.
    """
    ref = np.asarray(ref, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    if ref.ndim != 3 or gen.ndim != 3 or ref.shape[1:] != gen.shape[1:]:
        raise ValueError(f"rmsd_matrix needs (n, M, 3) arrays of equal M, got {ref.shape} "
                         f"and {gen.shape}")
    m = ref.shape[1]
    if perms is None:
        perms = np.arange(m)[None]
    bad = ~np.isfinite(ref).all((1, 2))[:, None] | ~np.isfinite(gen).all((1, 2))[None, :]
    ref = np.nan_to_num(ref - ref.mean(1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
    gen = np.nan_to_num(gen - gen.mean(1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
    r2 = (ref**2).sum((1, 2))
    g2 = (gen**2).sum((1, 2))
    best = np.full((ref.shape[0], gen.shape[0]), np.inf)
    ii, jj = np.meshgrid(np.arange(ref.shape[0]), np.arange(gen.shape[0]), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    for p in perms:
        gp = gen[:, p]
        for s in range(0, ii.size, chunk):
            a, b = ii[s:s + chunk], jj[s:s + chunk]
            h = np.einsum("kmi,kmj->kij", ref[a], gp[b])
            sv = np.linalg.svd(h, compute_uv=False)
            d = np.sign(np.linalg.det(h))
            trace = sv[:, 0] + sv[:, 1] + d * sv[:, 2]
            msd = np.clip((r2[a] + g2[b] - 2.0 * trace) / m, 0.0, None)
            best[a, b] = np.minimum(best[a, b], msd)
    out = np.sqrt(best)
    out[bad | ~np.isfinite(out)] = np.nan
    return out


def coverage_metrics(rmsd: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> dict:
    """Coverage and AMR from an ``(n_ref, n_gen)`` RMSD matrix.

    NaN entries never cover; a reference (or generated conformer) whose row is all NaN counts
    as not covered and is left out of the AMR mean.

    Returns:
        ``{"thresholds", "cov_r", "cov_p"}`` (lists, fractions in [0, 1]), ``"amr_r"``,
        ``"amr_p"`` (Å), and ``"cov_r@1.0"``, ``"cov_r@1.25"``, ``"cov_p@…"`` shortcuts.
    """
    rmsd = np.asarray(rmsd, dtype=np.float64)
    if rmsd.ndim != 2 or 0 in rmsd.shape:
        raise ValueError(f"coverage_metrics needs a non-empty (n_ref, n_gen) matrix, got "
                         f"{rmsd.shape}")
    filled = np.where(np.isnan(rmsd), np.inf, rmsd)
    min_r, min_p = filled.min(1), filled.min(0)
    cov_r = [float((min_r < d).mean()) for d in thresholds]
    cov_p = [float((min_p < d).mean()) for d in thresholds]

    def amr(v: np.ndarray) -> float:
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")

    out = {"thresholds": [float(d) for d in thresholds], "cov_r": cov_r, "cov_p": cov_p,
           "amr_r": amr(min_r), "amr_p": amr(min_p), "n_ref": int(rmsd.shape[0]),
           "n_gen": int(rmsd.shape[1])}
    for d in REPORT_AT:
        out[f"cov_r@{d}"] = float((min_r < d).mean())
        out[f"cov_p@{d}"] = float((min_p < d).mean())
    return out


def map_to_molecule(molecule: Molecule, symbols: list[str], coords: np.ndarray
                    ) -> np.ndarray | None:
    """Reorder one XYZ conformer into ``molecule``'s atom order by graph matching.

    Bonds of the XYZ block are perceived from distances (RDKit ``DetermineConnectivity``); the
    molecule (explicit H, bond orders ignored) is matched onto that graph.

    Returns:
        ``(N, 3)`` coordinates in the molecule's atom order, or ``None`` if the perceived graph
        does not contain the molecule's graph.
    """
    if len(symbols) != molecule.n_atoms:
        return None
    block = f"{len(symbols)}\n\n" + "\n".join(
        f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(symbols, coords, strict=True))
    RDLogger.DisableLog("rdApp.*")
    try:
        xyz = Chem.MolFromXYZBlock(block)
        if xyz is None:
            return None
        rdDetermineBonds.DetermineConnectivity(xyz)
        query = _generic_query(molecule)
        match = xyz.GetSubstructMatch(query)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if len(match) != molecule.n_atoms:
        return None
    return np.asarray(coords, dtype=np.float64)[list(match)]


def _generic_query(molecule: Molecule) -> Chem.Mol:
    if "generic_query" not in molecule._cache:
        params = Chem.AdjustQueryParameters.NoAdjustments()
        params.makeBondsGeneric = True
        params.aromatizeIfPossible = False
        mol = Chem.Mol(molecule.mol)
        for atom in mol.GetAtoms():  # XYZ graphs carry no charges: match elements only
            atom.SetFormalCharge(0)
        q = Chem.AdjustQueryProperties(mol, params)
        molecule._cache["generic_query"] = q
    return molecule._cache["generic_query"]


def read_reference_xyz(path: str, molecule: Molecule, max_refs: int = MAX_REFS
                       ) -> tuple[np.ndarray, int]:
    """Read up to ``max_refs`` conformers of ``molecule`` from a (gzipped) multi-XYZ file.

    Returns:
        ``(coords (n, N, 3) in the molecule's atom order, n_unmatched)``: blocks whose
        perceived bonding does not match the molecule are skipped and counted.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        lines = fh.read().splitlines()
    out, bad, k = [], 0, 0
    while k < len(lines) and len(out) < max_refs:
        if not lines[k].strip():
            k += 1
            continue
        n = int(lines[k].split()[0])
        atoms = [ln.split() for ln in lines[k + 2:k + 2 + n]]
        k += 2 + n
        syms = [a[0] for a in atoms]
        xyz = np.array([[float(v) for v in a[1:4]] for a in atoms])
        mapped = map_to_molecule(molecule, syms, xyz)
        if mapped is None:
            bad += 1
        else:
            out.append(mapped)
    arr = np.stack(out) if out else np.zeros((0, molecule.n_atoms, 3))
    return arr, bad
