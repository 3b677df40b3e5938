"""MMFF94 / GFN2-xTB energies against direct RDKit / tblite calls and finite differences."""

import numpy as np
import pytest
import torch
from adjoint_core_chem.energy import (
    BOHR_IN_ANGSTROM,
    HARTREE_IN_KCAL,
    KT_300K,
    BondRegularizedEnergy,
    MMFFEnergy,
    XTBEnergy,
    energy_and_grad_many,
    make_energy,
)
from adjoint_core_chem.molecule import MoleculeError, mol_from_smiles
from rdkit import Chem
from rdkit.Chem import AllChem

from adjoint_core import EuclideanSpace
from adjoint_core.testing import assert_energy_gradient, check_energy_contract


@pytest.fixture(scope="module")
def para():
    m = mol_from_smiles("CC(=O)Nc1ccc(O)cc1", "paracetamol")
    return m, m.embed(3, seed=3).double()


def test_mmff_matches_rdkit_and_fd(para):
    m, x = para
    e = MMFFEnergy(m)
    assert e.temperature == pytest.approx(KT_300K) and e.unit == "kcal/mol"
    E, G = e.energy_and_grad(x)
    mol = Chem.Mol(m.mol)
    mol.AddConformer(Chem.Conformer(m.n_atoms), assignId=True)
    for i, p in enumerate(x[1].tolist()):
        mol.GetConformer().SetAtomPosition(i, p)
    ff = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    assert float(E[1]) == pytest.approx(ff.CalcEnergy(), rel=1e-9)
    np.testing.assert_allclose(G[1].numpy().ravel(), ff.CalcGrad(), rtol=1e-8, atol=1e-8)
    # ⟨∇E, v⟩ against a central difference along one random direction v
    assert_energy_gradient(e, x, eps=1e-4, directions=1, rtol=1e-4, atol=1e-3)
    xr = x.clone().requires_grad_(True)  # the autograd path gives the same gradient
    (g2,) = torch.autograd.grad(e._energy(xr).sum(), xr)
    torch.testing.assert_close(g2, G)


def test_mmff_typing_failure_names_molecule():
    m = mol_from_smiles("[Cl-].[Cl-].[S+2]", "weird-salt")
    with pytest.raises(MoleculeError, match="weird-salt.*MMFF94 cannot type"):
        MMFFEnergy(m)


def test_nonfinite_conformer_gives_nan(para):
    m, x = para
    y = x.clone()
    y[0, 0, 0] = float("nan")
    E, G = MMFFEnergy(m).energy_and_grad(y)
    assert torch.isnan(E[0]) and torch.isfinite(E[1:]).all()


def test_xtb_matches_tblite_and_fd():
    from tblite.interface import Calculator

    m = mol_from_smiles("CO", "methanol")
    x = m.embed(2, seed=0).double()
    e = XTBEnergy(m)
    E, G = e.energy_and_grad(x)
    calc = Calculator("GFN2-xTB", m.atomic_numbers.numpy(), x[0].numpy() / BOHR_IN_ANGSTROM)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    assert float(E[0]) == pytest.approx(res.get("energy") * HARTREE_IN_KCAL, rel=1e-8)
    np.testing.assert_allclose(G[0].numpy(), res.get("gradient") * HARTREE_IN_KCAL
                               / BOHR_IN_ANGSTROM, rtol=1e-6, atol=1e-6)
    assert_energy_gradient(e, x, eps=1e-3, directions=1, rtol=1e-3, atol=5e-2)


def test_regularizer_terms_and_gradient(para):
    m, x = para
    base = MMFFEnergy(m, temperature=0.5)
    reg = BondRegularizedEnergy(base, alpha=100.0)
    assert torch.all(reg.regularizer(x) == 0)  # ETKDG geometry: no penalty
    y = x.clone()
    i, j = m.edge_index[:, 0].tolist()
    y[:, j] = y[:, i] + 3.0 * (y[:, j] - y[:, i])  # stretch one bond far beyond 1.5 (r_i+r_j)
    r = reg.regularizer(y)
    assert torch.all(r > 0)
    E, _ = reg.energy_and_grad(y)
    torch.testing.assert_close(E, base.energy(y) + 0.5 * r)  # E + τ·E_reg
    assert_energy_gradient(reg, y, eps=1e-4, directions=1, rtol=1e-4, atol=1e-2)
    # a hand check of one bonded pair: d - 1.5 (r_cov_i + r_cov_j), counted twice
    z = torch.zeros(1, 2, 3, dtype=torch.float64)
    z[0, 1, 0] = 2.0
    h2 = BondRegularizedEnergy(XTBEnergy(mol_from_smiles("[H][H]")), alpha=1.0)
    assert float(h2.regularizer(z)) == pytest.approx(2 * (2.0 - 1.5 * 0.62), abs=1e-5)


def test_energy_contracts(para):
    m, x = para
    space = EuclideanSpace(m.n_atoms, 3, mean_free=True)
    for e in (MMFFEnergy(m), make_energy(m, "mmff")):
        check_energy_contract(e, space, x)
        check_energy_contract(e, space, x.float())
    methanol = mol_from_smiles("CO", "methanol")
    check_energy_contract(XTBEnergy(methanol), EuclideanSpace(6, 3, mean_free=True),
                          methanol.embed(2, seed=0).double())


def test_make_energy_and_many_molecules(para):
    m, x = para
    small = mol_from_smiles("CCO")
    es = [make_energy(m, "mmff"), make_energy(small, "mmff", regularize=False)]
    out = energy_and_grad_many(es, [x, small.embed(2).double()])
    assert out[0][0].shape == (3,) and out[1][1].shape == (2, 9, 3)
    with pytest.raises(ValueError, match="'mmff' or 'xtb'"):
        make_energy(m, "uff")
