"""Torsional coordinates: rotatable bonds, the torsion → Cartesian map and the chain rule."""

import math

import pytest
import torch
from adjoint_core_chem.energy import make_energy
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles
from adjoint_core_chem.torsion import (
    MoleculeTorsions,
    TorsionalEnergy,
    dihedral,
    find_torsions,
    torsion_gradient,
)
from rdkit.Chem import rdMolTransforms

from adjoint_core import TorsionalSpace

DT = torch.float64
# a chiral centre, an amide, a ring, a halogen, OH and methyl rotors
SMILES = "CC(=O)NC[C@H](O)c1ccc(CCCl)cc1"


@pytest.fixture(scope="module")
def tors() -> MoleculeTorsions:
    return MoleculeTorsions.from_molecule(mol_from_smiles(SMILES), seed=0)


def _random_tau(k: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g, dtype=DT) * 2 - 1) * math.pi


def test_rotatable_bond_detection():
    counts = {"CCCC": 3, "C1CCCCC1": 0, "CC#CC": 0, "CCO": 2, "c1ccccc1C(=O)O": 2}
    for smi, k in counts.items():
        index, masks = find_torsions(mol_from_smiles(smi))
        assert index.shape == (k, 4) and masks.shape[0] == k, smi
    mol = mol_from_smiles(SMILES)
    index, masks = find_torsions(mol)
    rd = mol.mol
    for (a, b, c, d), m in zip(index.tolist(), masks, strict=True):
        bond = rd.GetBondBetweenAtoms(b, c)
        assert bond is not None and not bond.IsInRing() and bond.GetBondTypeAsDouble() == 1.0
        assert rd.GetBondBetweenAtoms(a, b) and rd.GetBondBetweenAtoms(c, d)
        # the moved side contains c and d, not a and b, and is the smaller fragment
        assert m[c] and m[d] and not m[a] and not m[b]
        assert int(m.sum()) <= mol.n_atoms - int(m.sum())
        # no bond crosses the cut except b–c
        for bd in rd.GetBonds():
            i, j = bd.GetBeginAtomIdx(), bd.GetEndAtomIdx()
            if {i, j} != {b, c}:
                assert bool(m[i]) == bool(m[j])


def test_map_sets_dihedrals_and_keeps_bonds_and_angles(tors):
    mol = tors.molecule
    assert tors.n_torsions == 8
    tau = _random_tau(tors.n_torsions, 6, 0)
    x = tors.positions(tau)
    assert x.shape == (6, mol.n_atoms, 3) and x.dtype == DT
    assert torch.allclose(x.mean(1), torch.zeros(6, 3, dtype=DT), atol=1e-12)
    # RDKit's GetDihedralRad on the generated conformers gives the requested angles
    rd = mol.with_conformers(x)
    for k in range(6):
        conf = rd.GetConformer(k)
        for j, q in enumerate(tors.index.tolist()):
            got = rdMolTransforms.GetDihedralRad(conf, *q)
            assert abs(math.remainder(got - float(tau[k, j]), 2 * math.pi)) < 1e-8
    assert torch.allclose(tors.torsions_of(x), tau, atol=1e-8)
    tors.check(tau)
    # every bond length and bond angle equals the reference's
    ref = tors.reference
    bonds = mol.edge_index
    d = (x[:, bonds[0]] - x[:, bonds[1]]).norm(dim=-1)
    d0 = (ref[bonds[0]] - ref[bonds[1]]).norm(dim=-1)
    assert torch.allclose(d, d0.expand_as(d), atol=1e-10)
    for atom in mol.mol.GetAtoms():
        j = atom.GetIdx()
        nbs = [n.GetIdx() for n in atom.GetNeighbors()]
        for p in range(len(nbs)):
            for q in range(p + 1, len(nbs)):
                i, k = nbs[p], nbs[q]

                def angle(y, i=i, k=k, j=j):
                    u, v = y[..., i, :] - y[..., j, :], y[..., k, :] - y[..., j, :]
                    return torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)))

                assert torch.allclose(angle(x), angle(ref).expand(6), atol=1e-9)
    # chirality is kept: the signed volume at the stereocentre does not change sign
    centre = 5
    nb = [n.GetIdx() for n in mol.mol.GetAtomWithIdx(centre).GetNeighbors()][:3]
    vol = lambda y: torch.linalg.det(y[..., nb, :] - y[..., centre:centre + 1, :])  # noqa: E731
    assert (torch.sign(vol(x)) == torch.sign(vol(ref[None]))).all()
    # the map is 2π-periodic and its reference angles give back the reference geometry
    assert torch.allclose(tors.positions(tau + 2 * math.pi), x, atol=1e-9)
    assert torch.allclose(tors.positions(tors.reference_torsions[None])[0], ref, atol=1e-10)


def test_torsion_gradient_matches_finite_differences(tors):
    mol = tors.molecule
    energy = tors.energy(make_energy(mol, "mmff", regularize=False))
    assert isinstance(energy, TorsionalEnergy) and energy.event_shape == (tors.n_torsions,)
    assert energy.temperature == pytest.approx(make_energy(mol, "mmff").temperature)
    tau = _random_tau(tors.n_torsions, 3, 1)
    e, g = energy.energy_and_grad(tau)
    assert torch.allclose(e, energy.cartesian.energy(tors.positions(tau)))
    eps = 1e-5
    eye = torch.eye(tors.n_torsions, dtype=DT)
    fd = torch.stack([(energy.energy(tau + eps * eye[k]) - energy.energy(tau - eps * eye[k]))
                      / (2 * eps) for k in range(tors.n_torsions)], -1)
    scale = float(g.abs().max())
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6 * scale), (g, fd)
    # the chain rule for a rotation-invariant energy: Σ_{i moved} (n_k × (x_i − x_b))·∇_i E
    # (the generator of the rotation of the moved side about bond k, at the final geometry)
    x = tors.positions(tau)
    _, gx = energy.cartesian.energy_and_grad(x)
    manual = []
    for k, (_, b, c, _) in enumerate(tors.index.tolist()):
        n = x[:, c] - x[:, b]
        n = n / n.norm(dim=-1, keepdim=True)
        lever = torch.cross(n[:, None].expand_as(x), x - x[:, b:b + 1], dim=-1)
        manual.append((lever * gx)[:, tors.masks[k]].sum((-1, -2)))
    assert torch.allclose(torch.stack(manual, -1), g, rtol=1e-8, atol=1e-8 * scale)
    assert torch.allclose(torsion_gradient(tors, tau, gx), g)


def test_space_energy_and_errors(tors):
    space = tors.space()
    assert isinstance(space, TorsionalSpace) and space.n_torsions == tors.n_torsions
    tau = space.uniform(4, torch.Generator().manual_seed(0), dtype=DT)
    assert torch.allclose(space.to_cartesian(tau), tors.positions(tau))
    ctx = tors.context()
    assert ctx["torsion_index"].shape == (tors.n_torsions, 4) and callable(ctx["to_cartesian"])
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        tors.positions(torch.zeros(2, 3))
    rigid = MoleculeTorsions.from_molecule(mol_from_smiles("c1ccccc1"), relax=False)
    assert rigid.n_torsions == 0
    with pytest.raises(MoleculeError, match="no rotatable bond"):
        rigid.space()
    other = make_energy(mol_from_smiles("CCO"), "mmff")
    with pytest.raises(ValueError, match="atoms"):
        TorsionalEnergy(other, tors)
    with pytest.raises(MoleculeError, match="shape"):
        MoleculeTorsions.from_molecule(tors.molecule, reference=torch.zeros(3, 3))
    # dihedral() agrees with positions at the reference
    assert torch.allclose(dihedral(tors.reference[None], tors.index)[0],
                          tors.reference_torsions)
