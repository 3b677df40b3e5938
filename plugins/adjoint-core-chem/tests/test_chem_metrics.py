"""Coverage / AMR metrics and the symmetry-aware heavy-atom RMSD."""

import gzip

import numpy as np
import pytest
from adjoint_core_chem.metrics import (
    THRESHOLDS,
    coverage_metrics,
    heavy_automorphisms,
    num_generated,
    read_reference_xyz,
    rmsd_matrix,
)
from adjoint_core_chem.molecule import mol_from_smiles
from rdkit import Chem
from rdkit.Chem import rdMolAlign


@pytest.fixture(scope="module")
def mol_and_confs():
    m = mol_from_smiles("CC(C)(C)c1ccc(CC(=O)O)cc1", "tbu-acid")  # symmetric tBu and ring
    return m, m.embed(6, seed=7).numpy()


def test_rmsd_matches_rdkit_getbestrms(mol_and_confs):
    m, x = mol_and_confs
    heavy = m.heavy_atoms.numpy()
    perms = heavy_automorphisms(m)
    assert len(perms) > 1
    r = rmsd_matrix(x[:3, heavy], x[3:, heavy], perms)
    noh = Chem.RemoveHs(m.with_conformers(x))
    for i in range(3):
        for j in range(3):
            a = Chem.Mol(noh, confId=i)
            b = Chem.Mol(noh, confId=3 + j)
            want = rdMolAlign.GetBestRMS(b, a)
            assert r[i, j] == pytest.approx(want, abs=1e-4)


def test_rmsd_invariances(mol_and_confs):
    m, x = mol_and_confs
    h = x[:, m.heavy_atoms.numpy()]
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # proper rotation
    moved = h @ q.T + rng.normal(size=3)
    r = rmsd_matrix(h, moved)
    np.testing.assert_allclose(np.diag(r), 0.0, atol=1e-6)
    mirrored = h * np.array([-1.0, 1.0, 1.0])  # a reflection is not a rotation
    assert rmsd_matrix(h[:1], mirrored[:1])[0, 0] >= 0.0
    bad = h.copy()
    bad[0, 0, 0] = np.nan
    assert np.isnan(rmsd_matrix(bad[:1], h[:1])[0, 0])


def test_coverage_known_answers(mol_and_confs):
    m, x = mol_and_confs
    h = x[:, m.heavy_atoms.numpy()]
    same = coverage_metrics(rmsd_matrix(h, h, heavy_automorphisms(m)))
    assert same["cov_r@1.0"] == 1.0 and same["cov_p@1.25"] == 1.0
    assert same["amr_r"] == pytest.approx(0.0, abs=1e-6)
    assert same["amr_p"] == pytest.approx(0.0, abs=1e-6)
    assert same["cov_r"][0] == 0.0  # strict "<" at δ = 0
    # hand-made matrix: 2 references, 3 generated
    rm = np.array([[0.5, 1.1, 3.0], [2.0, 1.2, np.nan]])
    c = coverage_metrics(rm)
    assert c["cov_r@1.0"] == 0.5 and c["cov_r@1.25"] == 1.0
    assert c["cov_p@1.0"] == pytest.approx(1 / 3) and c["cov_p@1.25"] == pytest.approx(2 / 3)
    assert c["amr_r"] == pytest.approx((0.5 + 1.2) / 2)
    assert c["amr_p"] == pytest.approx((0.5 + 1.1 + 3.0) / 3)
    assert c["thresholds"][0] == 0.0 and c["thresholds"][-1] == 2.5 and len(THRESHOLDS) == 21
    with pytest.raises(ValueError):
        coverage_metrics(np.zeros((0, 3)))


def test_num_generated():
    assert num_generated(10) == 128 and num_generated(100) == 200 and num_generated(512) == 1024
    assert num_generated(10, factor=3, minimum=0) == 30


def test_read_reference_xyz_maps_atom_order(tmp_path, mol_and_confs):
    m, x = mol_and_confs
    rng = np.random.default_rng(1)
    perm = rng.permutation(m.n_atoms)  # write the atoms shuffled
    syms = [a.GetSymbol() for a in m.mol.GetAtoms()]
    blocks = []
    for k in range(3):
        lines = [str(m.n_atoms), "-1.0"] + [f"{syms[i]} {x[k, i, 0]:.6f} {x[k, i, 1]:.6f} "
                                            f"{x[k, i, 2]:.6f}" for i in perm]
        blocks.append("\n".join(lines))
    path = tmp_path / "refs.xyz.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(blocks) + "\n")
    refs, bad = read_reference_xyz(str(path), m, max_refs=2)
    assert bad == 0 and refs.shape == (2, m.n_atoms, 3)
    heavy = m.heavy_atoms.numpy()
    r = rmsd_matrix(refs[:, heavy], x[:2, heavy], heavy_automorphisms(m))
    np.testing.assert_allclose(np.diag(r), 0.0, atol=1e-4)


def _rmsd_svd(ref, gen, perms):
    """Reference: one Kabsch SVD per pair and automorphism (the former implementation)."""
    ref, gen = np.asarray(ref, dtype=np.float64), np.asarray(gen, dtype=np.float64)
    ref = ref - ref.mean(1, keepdims=True)
    gen = gen - gen.mean(1, keepdims=True)
    out = np.full((len(ref), len(gen)), np.inf)
    for i, a in enumerate(ref):
        for j, b in enumerate(gen):
            for p in perms:
                h = a.T @ b[p]
                s = np.linalg.svd(h, compute_uv=False)
                tr = s[0] + s[1] + np.sign(np.linalg.det(h)) * s[2]
                msd = max((np.sum(a**2) + np.sum(b**2) - 2.0 * tr) / len(a), 0.0)
                out[i, j] = min(out[i, j], msd)
    return np.sqrt(out)


def test_rmsd_matrix_equals_per_pair_kabsch(mol_and_confs):
    m, x = mol_and_confs
    heavy = m.heavy_atoms.numpy()
    perms = heavy_automorphisms(m)
    h = x[:, heavy]
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    gen = np.concatenate([h @ q.T + 2.0,  # rotated copies: RMSD ~ 0 on the diagonal
                          h[:2] * np.array([-1.0, 1.0, 1.0]),  # mirror images
                          h[:2] + rng.normal(scale=0.3, size=h[:2].shape)])
    want = _rmsd_svd(h, gen, perms)
    for chunk in (2**18, 5):  # one block, and row blocks of one reference
        got = rmsd_matrix(h, gen, perms, chunk=chunk)
        np.testing.assert_allclose(got, want, atol=1e-6)
    # random point clouds (no structure, many permutations)
    a, b = rng.normal(size=(4, 9, 3)) * 2.0, rng.normal(size=(5, 9, 3)) * 2.0
    p = np.stack([np.arange(9)] + [rng.permutation(9) for _ in range(5)])
    np.testing.assert_allclose(rmsd_matrix(a, b, p), _rmsd_svd(a, b, p), atol=1e-10)
    # planar and collinear clouds (degenerate eigenvalues of Horn's matrix)
    flat = a.copy()
    flat[..., 2] = 0.0
    np.testing.assert_allclose(rmsd_matrix(flat, flat), _rmsd_svd(flat, flat, p[:1]),
                               atol=1e-6)
    line = np.zeros((2, 4, 3))
    line[..., 0] = [[0.0, 1.0, 2.0, 3.5], [0.1, 0.9, 2.2, 3.0]]
    np.testing.assert_allclose(rmsd_matrix(line, line), _rmsd_svd(line, line, p[:1, :4]),
                               atol=1e-6)


def test_max_rotation_trace_newton_matches_svd_fallback():
    from adjoint_core_chem.metrics import _max_rotation_trace

    rng = np.random.default_rng(4)
    h = rng.normal(size=(3, 3, 50))
    h[..., :10] = np.einsum("ij,jkn->ikn", np.diag([1.0, 1.0, -1.0]), h[..., :10])
    sv = np.linalg.svd(np.moveaxis(h, -1, 0), compute_uv=False)
    e0 = sv.sum(1) * 1.5  # an upper bound of the largest eigenvalue
    newton = _max_rotation_trace(h, e0)
    svd_only = _max_rotation_trace(h, e0, max_iter=0)  # every entry takes the fallback
    np.testing.assert_allclose(newton, svd_only, rtol=1e-10, atol=1e-10)
