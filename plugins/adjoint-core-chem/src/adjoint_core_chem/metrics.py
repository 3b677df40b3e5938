r"""Conformer metrics: coverage and AMR (recall and precision) with heavy-atom RMSD.

Protocol (the Adjoint Sampling paper's, Havens et al., ICML 2025):

* RMSD between two conformers of the same molecule over the **heavy atoms**, minimised over
  proper rotations, translations and the molecule's graph automorphisms (symmetry-aware, as
  RDKit's ``rdMolAlign.GetBestRMS``). :func:`rmsd_matrix` computes the whole
  ``(n_ref, n_gen)`` matrix at once: the automorphisms come from RDKit
  (``GetSubstructMatches`` of the heavy-atom graph on itself, bond orders ignored), the optimal
  rotation of every pair and permutation from Theobald's QCP (one matrix product for the
  correlation matrices, vectorised Newton for the largest quaternion eigenvalue).
  It agrees with ``GetBestRMS`` and with a per-pair Kabsch SVD (tested).
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
                chunk: int = 2**18) -> np.ndarray:
    """Symmetry-aware minimum RMSD of every reference–generated pair.

    For each automorphism the ``3 × 3`` correlation matrices ``H = Σ_m r_m g_{p(m)}ᵀ`` of all
    pairs come from one matrix product; the best proper rotation's ``max tr(R H)`` is the
    largest eigenvalue of Horn's ``4 × 4`` quaternion matrix, found for all pairs at once by
    Newton's method on its characteristic polynomial (Theobald's QCP; Theobald, Acta Cryst. A
    61, 478, 2005; Liu, Agrafiotis & Theobald, J. Comput. Chem. 31, 1561, 2010), starting from
    the upper bound ``(|r|² + |g|²) / 2``. Pairs where Newton does not converge fall back to
    a batched SVD (Kabsch). Equal to the SVD result to round-off (tested) and to
    ``GetBestRMS`` (tested).

    Args:
        ref: ``(n_ref, M, 3)`` heavy-atom coordinates.
        gen: ``(n_gen, M, 3)`` heavy-atom coordinates (same atom order).
        perms: ``(n_perm, M)`` automorphisms (default: identity only).
        chunk: Pairs handled at once (memory: about 40 float64 arrays of this length).

    Returns:
        ``(n_ref, n_gen)`` RMSDs in the coordinates' unit; NaN where a conformer is not finite.
    """
    ref = np.asarray(ref, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    if ref.ndim != 3 or gen.ndim != 3 or ref.shape[1:] != gen.shape[1:] or ref.shape[2] != 3:
        raise ValueError(f"rmsd_matrix needs (n, M, 3) arrays of equal M, got {ref.shape} "
                         f"and {gen.shape}")
    n_ref, m = ref.shape[:2]
    n_gen = gen.shape[0]
    if perms is None:
        perms = np.arange(m)[None]
    perms = np.asarray(perms, dtype=np.int64).reshape(-1, m)
    bad = ~np.isfinite(ref).all((1, 2))[:, None] | ~np.isfinite(gen).all((1, 2))[None, :]
    ref = np.nan_to_num(ref - ref.mean(1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
    gen = np.nan_to_num(gen - gen.mean(1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
    r2 = (ref**2).sum((1, 2))
    g2 = (gen**2).sum((1, 2))
    best = np.full((n_ref, n_gen), np.inf)
    rows = max(1, chunk // max(n_gen, 1))
    ref_t = np.ascontiguousarray(ref.transpose(0, 2, 1))  # (n_ref, 3, M)
    for p in perms:
        g_p = np.ascontiguousarray(gen[:, p].transpose(1, 0, 2)).reshape(m, 3 * n_gen)
        for s in range(0, n_ref, rows):
            e = min(s + rows, n_ref)
            # h[i, a, j, b] = Σ_m ref[i, m, a] gen[j, p[m], b]
            h = (ref_t[s:e].reshape(-1, m) @ g_p).reshape(e - s, 3, n_gen, 3)
            e0 = 0.5 * (r2[s:e, None] + g2[None, :])
            trace = _max_rotation_trace(h.transpose(1, 3, 0, 2), e0)
            msd = np.clip(2.0 * (e0 - trace) / m, 0.0, None)
            np.minimum(best[s:e], msd, out=best[s:e])
    out = np.sqrt(best)
    out[bad | ~np.isfinite(out)] = np.nan
    return out


def _max_rotation_trace(h: np.ndarray, e0: np.ndarray, tol: float = 1e-13,
                        max_iter: int = 50) -> np.ndarray:
    """``max_R tr(R H)`` over proper rotations for a batch of ``H`` (shape ``(3, 3, …)``).

    Newton on the characteristic polynomial ``λ⁴ + c2 λ² + c1 λ + c0`` of Horn's matrix from
    ``e0 ≥ λ_max``; entries that do not converge in ``max_iter`` steps use the SVD
    (``s1 + s2 + sign(det H) s3``).
    """
    sxx, sxy, sxz = h[0, 0], h[0, 1], h[0, 2]
    syx, syy, syz = h[1, 0], h[1, 1], h[1, 2]
    szx, szy, szz = h[2, 0], h[2, 1], h[2, 2]
    # Horn's traceless symmetric matrix; its characteristic polynomial is
    # λ⁴ + c2 λ² + c1 λ + c0 with c2 = -2 |H|², c1 = -8 det H, c0 = det K.
    k00, k11 = sxx + syy + szz, sxx - syy - szz
    k22, k33 = syy - sxx - szz, szz - sxx - syy
    k01, k02, k03 = syz - szy, szx - sxz, sxy - syx
    k12, k13, k23 = sxy + syx, szx + sxz, syz + szy
    c2 = -2.0 * (sxx * sxx + sxy * sxy + sxz * sxz + syx * syx + syy * syy + syz * syz
                 + szx * szx + szy * szy + szz * szz)
    c1 = -8.0 * (sxx * (syy * szz - syz * szy) - sxy * (syx * szz - syz * szx)
                 + sxz * (syx * szy - syy * szx))
    # det K by Laplace expansion along the first two rows (2 × 2 minors)
    m0, m1, m2 = k00 * k11 - k01 * k01, k00 * k12 - k01 * k02, k00 * k13 - k01 * k03
    m3, m4, m5 = k01 * k12 - k11 * k02, k01 * k13 - k11 * k03, k02 * k13 - k12 * k03
    n5, n4, n3 = k22 * k33 - k23 * k23, k12 * k33 - k13 * k23, k12 * k23 - k13 * k22
    n2, n1, n0 = k02 * k33 - k03 * k23, k02 * k23 - k03 * k22, k02 * k13 - k03 * k12
    c0 = m0 * n5 - m1 * n4 + m2 * n3 + m3 * n2 - m4 * n1 + m5 * n0
    lam = e0.copy()
    scale = np.maximum(np.abs(e0), 1e-300)
    done = np.zeros(lam.shape, dtype=bool)
    for _ in range(max_iter):
        x2 = lam * lam
        b = (x2 + c2) * lam
        a = b + c1
        den = 2.0 * x2 * lam + b + a
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(den != 0.0, (a * lam + c0) / den, 0.0)
        lam -= delta
        done = np.abs(delta) <= tol * scale
        if done.all():
            break
    if not done.all():
        idx = np.nonzero(~done)
        sub = np.moveaxis(h, (0, 1), (-2, -1))[idx]
        sv = np.linalg.svd(sub, compute_uv=False)
        lam[idx] = sv[:, 0] + sv[:, 1] + np.sign(np.linalg.det(sub)) * sv[:, 2]
    return lam


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
