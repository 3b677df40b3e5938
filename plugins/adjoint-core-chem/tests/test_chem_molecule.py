"""SMILES → molecule context."""

import pytest
import torch
from adjoint_core_chem.molecule import (
    N_ATOM_FEATURES,
    N_PAIR_FEATURES,
    SUPPORTED_ELEMENTS,
    MoleculeError,
    mol_from_smiles,
    read_smiles_file,
)


def test_ethanol_context():
    m = mol_from_smiles("CCO", name="ethanol")
    assert m.n_atoms == 9
    assert m.atomic_numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert m.atom_types.tolist() == [SUPPORTED_ELEMENTS.index(z) for z in
                                     m.atomic_numbers.tolist()]
    assert m.edge_index.shape == (2, 16) and m.bond_types.tolist() == [1] * 16
    ctx = m.context()
    assert ctx["atom_features"].shape == (9, N_ATOM_FEATURES)
    pf = ctx["pair_features"]
    assert pf.shape == (9, 9, N_PAIR_FEATURES)
    assert pf[0, 1, 1] == 1 and pf[0, 1, 0] == 0  # C-C single bond
    assert pf[0, 2, 0] == 1 and pf[0, 2, 5 + 1] == 1  # C...O: not bonded, 2 bonds apart
    assert torch.equal(pf, pf.transpose(0, 1))
    assert m.heavy_atoms.tolist() == [0, 1, 2]


def test_aromatic_bonds_and_pyg():
    m = mol_from_smiles("c1ccccc1O")
    assert 4 in m.bond_types.tolist()
    data = m.to_pyg(torch.zeros(m.n_atoms, 3))
    assert data.num_nodes == m.n_atoms and data.edge_attr.shape == (m.edge_index.shape[1], 4)
    assert data.pos.shape == (m.n_atoms, 3)


def test_embed_gives_bonded_geometry():
    m = mol_from_smiles("CC(=O)Nc1ccc(O)cc1")
    x = m.embed(3, seed=1)
    assert x.shape == (3, m.n_atoms, 3)
    i, j = m.edge_index
    d = (x[:, i] - x[:, j]).norm(dim=-1)
    assert 0.9 < float(d.min()) and float(d.max()) < 1.6


@pytest.mark.parametrize("smiles, match", [("C1CC", "cannot parse"), ("", "empty"),
                                           ("[Na+].[Cl-]", "unsupported element.*Na"),
                                           ("[Si](C)(C)(C)C", "unsupported element.*Si")])
def test_bad_smiles_named(smiles, match):
    with pytest.raises(MoleculeError, match=match) as info:
        mol_from_smiles(smiles, name="bad-one")
    assert "bad-one" in str(info.value)


def test_read_smiles_file(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("Rotatable_Bonds\tSMILES\tHash_Name\n3\tCCO\tetoh\n1\tCC\tethane\n")
    assert read_smiles_file(str(tsv)) == [("etoh", "CCO"), ("ethane", "CC")]
    smi = tmp_path / "b.smi"
    smi.write_text("# comment\nCCO ethanol\nCC\n")
    assert read_smiles_file(str(smi)) == [("ethanol", "CCO"), ("mol1", "CC")]
