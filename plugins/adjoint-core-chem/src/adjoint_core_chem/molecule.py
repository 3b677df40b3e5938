"""SMILES → molecule context: atom types, bonds / graph, optional ETKDG geometry.

This is the molecule representation shared by the chemistry plugin (energies, the amortized
sampler, the ``conformers`` command, the metrics) and by other plugins that need a molecule
(torsional sampling, eSEN energies). Usage::

    from adjoint_core_chem.molecule import mol_from_smiles

    m = mol_from_smiles("CCO")            # RDKit, explicit hydrogens
    m.n_atoms                              # 9
    m.atomic_numbers                       # LongTensor (9,): [6, 6, 8, 1, 1, 1, 1, 1, 1]
    m.atom_types                           # LongTensor (9,): index into SUPPORTED_ELEMENTS
    m.edge_index                           # LongTensor (2, 16): both directions of each bond
    m.bond_types                           # LongTensor (16,): 1 single, 2 double, 3 triple,
                                           #                    4 aromatic
    m.context()                            # dict for models (see Molecule.context)
    m.embed(4, seed=0)                     # Tensor (4, 9, 3): ETKDG conformers in Å
    m.to_pyg()                             # torch_geometric.data.Data(z, edge_index, ...)

Atom order is RDKit's order of ``Chem.AddHs(Chem.MolFromSmiles(smiles))``: heavy atoms in SMILES
order, then the hydrogens. Coordinates are in Å throughout the plugin.

Errors: :class:`MoleculeError` (a ``ValueError``) names the molecule for an unparsable SMILES,
an element outside :data:`SUPPORTED_ELEMENTS`, a molecule with fewer than two atoms, or a
failed embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

__all__ = [
    "SUPPORTED_ELEMENTS", "ELEMENT_SYMBOLS", "N_ATOM_FEATURES", "N_PAIR_FEATURES", "MAX_TOPO",
    "FURTHER_PAIR_FEATURE",
    "MoleculeError", "Molecule", "mol_from_smiles", "mol_from_rdkit", "read_smiles_file",
]

#: Atomic numbers the plugin supports (the SPICE / paper set): H C N O F P S Cl Br I.
SUPPORTED_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
#: Element symbols of :data:`SUPPORTED_ELEMENTS`, same order.
ELEMENT_SYMBOLS: tuple[str, ...] = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
_TYPE_OF = {z: i for i, z in enumerate(SUPPORTED_ELEMENTS)}
_HYBRID = (Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
_BOND = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
         Chem.BondType.AROMATIC: 4}
#: Topological distances are one-hot encoded up to this many bonds (longer: last bin).
MAX_TOPO = 4
#: Width of :meth:`Molecule.atom_features`: element one-hot (10), aromatic, ring,
#: hybridisation sp/sp2/sp3/other (4), formal charge -1/0/+1 (3), total H count / 4.
N_ATOM_FEATURES = len(SUPPORTED_ELEMENTS) + 2 + 4 + 3 + 1
#: Width of :meth:`Molecule.pair_features`: bond type none/single/double/triple/aromatic (5),
#: topological distance 1..MAX_TOPO and "further" (MAX_TOPO + 1), same ring (1).
N_PAIR_FEATURES = 5 + MAX_TOPO + 1 + 1
#: Index in :meth:`Molecule.pair_features` of the "more than :data:`MAX_TOPO` bonds apart" bin.
FURTHER_PAIR_FEATURE = 5 + MAX_TOPO


class MoleculeError(ValueError):
    """A molecule that cannot be used; the message names the molecule and the reason."""


@dataclass
class Molecule:
    """One molecule with explicit hydrogens, and everything models and energies need.

    Build it with :func:`mol_from_smiles`.

    Attributes:
        smiles: The input SMILES.
        name: A label used in messages and file names (default: the SMILES).
        mol: RDKit molecule with explicit hydrogens (no conformers unless embedded).
        atomic_numbers: ``(N,)`` long.
        atom_types: ``(N,)`` long, index of each element in :data:`SUPPORTED_ELEMENTS`.
        edge_index: ``(2, 2·n_bonds)`` long, each bond in both directions (PyG convention:
            row 0 sender, row 1 receiver).
        bond_types: ``(2·n_bonds,)`` long, 1 single, 2 double, 3 triple, 4 aromatic.
    """

    smiles: str
    name: str
    mol: Chem.Mol
    atomic_numbers: torch.Tensor
    atom_types: torch.Tensor
    edge_index: torch.Tensor
    bond_types: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_atoms(self) -> int:
        """Number of atoms ``N`` including hydrogens."""
        return int(self.atomic_numbers.shape[0])

    @property
    def heavy_atoms(self) -> torch.Tensor:
        """Indices of the non-hydrogen atoms, ``(N_heavy,)`` long."""
        return torch.nonzero(self.atomic_numbers != 1).flatten()

    def atom_features(self) -> torch.Tensor:
        """Per-atom input features, ``(N, N_ATOM_FEATURES)`` float32 (see the constant)."""
        if "atom" not in self._cache:
            rows = []
            for a in self.mol.GetAtoms():
                f = [0.0] * N_ATOM_FEATURES
                f[_TYPE_OF[a.GetAtomicNum()]] = 1.0
                k = len(SUPPORTED_ELEMENTS)
                f[k] = float(a.GetIsAromatic())
                f[k + 1] = float(a.IsInRing())
                hyb = a.GetHybridization()
                f[k + 2 + (_HYBRID.index(hyb) if hyb in _HYBRID else 3)] = 1.0
                f[k + 6 + min(max(a.GetFormalCharge(), -1), 1) + 1] = 1.0
                f[k + 9] = a.GetTotalNumHs() / 4.0
                rows.append(f)
            self._cache["atom"] = torch.tensor(rows, dtype=torch.float32)
        return self._cache["atom"]

    def pair_features(self) -> torch.Tensor:
        """Dense pair features ``(N, N, N_PAIR_FEATURES)`` float32 (diagonal is zero).

        Bond-type one-hot (index 0 = not bonded), topological distance one-hot
        (1 … :data:`MAX_TOPO`, then "further"), and "both atoms in a common ring".
        """
        if "pair" not in self._cache:
            n = self.n_atoms
            f = np.zeros((n, n, N_PAIR_FEATURES), dtype=np.float32)
            bt = np.zeros((n, n), dtype=np.int64)
            src, dst = self.edge_index.numpy()
            bt[src, dst] = self.bond_types.numpy()
            f[..., :5] = np.eye(5, dtype=np.float32)[bt]
            topo = Chem.GetDistanceMatrix(self.mol).astype(np.int64)
            topo = np.clip(topo, 0, MAX_TOPO + 1)
            onehot = np.eye(MAX_TOPO + 2, dtype=np.float32)[topo][..., 1:]
            f[..., 5:FURTHER_PAIR_FEATURE + 1] = onehot
            ring = np.zeros((n, n), dtype=np.float32)
            for r in self.mol.GetRingInfo().AtomRings():
                idx = np.array(r)
                ring[np.ix_(idx, idx)] = 1.0
            f[..., -1] = ring
            f[np.arange(n), np.arange(n)] = 0.0
            self._cache["pair"] = torch.from_numpy(f)
        return self._cache["pair"]

    def context(self) -> dict:
        """Model context of this molecule.

        Returns:
            ``{"node_types": (N,) long, "atom_features": (N, N_ATOM_FEATURES) float,
            "pair_features": (N, N, N_PAIR_FEATURES) float, "edge_index": (2, E) long,
            "bond_types": (E,) long}``. ``node_types`` is what the EGNN plugin reads with
            ``n_node_types = len(SUPPORTED_ELEMENTS)``.
        """
        return {"node_types": self.atom_types, "atom_features": self.atom_features(),
                "pair_features": self.pair_features(), "edge_index": self.edge_index,
                "bond_types": self.bond_types}

    def embed(self, n: int, seed: int = 0, prune_rms: float = -1.0) -> torch.Tensor:
        """``n`` ETKDG(v3) conformers, ``(n, N, 3)`` float32 in Å.

        Raises:
            MoleculeError: If RDKit cannot embed the molecule.
        """
        mol = Chem.Mol(self.mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        params.pruneRmsThresh = float(prune_rms)
        params.numThreads = 1
        RDLogger.DisableLog("rdApp.*")
        try:
            ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n), params=params))
        finally:
            RDLogger.EnableLog("rdApp.*")
        if not ids:
            raise MoleculeError(f"molecule {self.name!r}: RDKit ETKDG could not embed it")
        return torch.tensor(np.stack([mol.GetConformer(i).GetPositions() for i in ids]),
                            dtype=torch.float32)

    def with_conformers(self, positions: torch.Tensor | np.ndarray,
                        props: dict[str, list] | None = None) -> Chem.Mol:
        """A copy of :attr:`mol` carrying ``positions`` ``(K, N, 3)`` (Å) as K conformers.

        Args:
            positions: Conformer coordinates.
            props: Optional per-conformer properties ``{name: [K values]}``, stored on each
                conformer as ``double`` properties.
        """
        pos = np.asarray(positions.detach().cpu() if isinstance(positions, torch.Tensor)
                         else positions, dtype=np.float64)
        if pos.ndim != 3 or pos.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"molecule {self.name!r}: positions must have shape "
                             f"(K, {self.n_atoms}, 3), got {pos.shape}")
        mol = Chem.Mol(self.mol)
        mol.RemoveAllConformers()
        for k in range(pos.shape[0]):
            conf = Chem.Conformer(self.n_atoms)
            for i in range(self.n_atoms):
                conf.SetAtomPosition(i, pos[k, i].tolist())
            for key, values in (props or {}).items():
                conf.SetDoubleProp(key, float(values[k]))
            mol.AddConformer(conf, assignId=True)
        return mol

    def to_pyg(self, positions: torch.Tensor | None = None):
        """This molecule as a :class:`torch_geometric.data.Data`.

        Fields: ``z`` (N,) atomic numbers, ``node_types`` (N,), ``x`` atom features,
        ``edge_index`` (2, E), ``edge_attr`` (E, 4) bond-type one-hot, and ``pos`` (N, 3) if
        ``positions`` is given.
        """
        from torch_geometric.data import Data

        data = Data(z=self.atomic_numbers, node_types=self.atom_types, x=self.atom_features(),
                    edge_index=self.edge_index,
                    edge_attr=torch.nn.functional.one_hot(self.bond_types - 1, 4).float(),
                    num_nodes=self.n_atoms)
        if positions is not None:
            data.pos = positions
        return data


def mol_from_smiles(smiles: str, name: str | None = None) -> Molecule:
    """Parse a SMILES into a :class:`Molecule` with explicit hydrogens.

    Args:
        smiles: The SMILES string.
        name: Label for messages and output files (default: the SMILES).

    Returns:
        The molecule (no conformer; use :meth:`Molecule.embed` for ETKDG geometries).

    Raises:
        MoleculeError: Unparsable SMILES, unsupported element (naming it and the allowed
            ones), fewer than two atoms.
    """
    label = name or smiles
    if not isinstance(smiles, str) or not smiles.strip():
        raise MoleculeError(f"molecule {label!r}: empty SMILES")
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise MoleculeError(f"molecule {label!r}: RDKit cannot parse the SMILES {smiles!r}")
    return _from_rdkit(mol, smiles.strip(), label)


def mol_from_rdkit(mol: Chem.Mol, name: str | None = None) -> Molecule:
    """A :class:`Molecule` from an RDKit molecule, keeping its atom order.

    Hydrogens are added (``Chem.AddHs``) after the molecule's own atoms, as for a SMILES;
    explicit hydrogen atoms already in ``mol`` keep their places.

    Args:
        mol: The molecule (conformers, if any, are ignored).
        name: Label (default: the ``_Name`` property, else the SMILES).

    Raises:
        MoleculeError: Not an RDKit molecule, an unsupported element or fewer than two atoms.
    """
    if not isinstance(mol, Chem.Mol):
        raise MoleculeError(f"molecule {name!r}: expected an RDKit Mol, got "
                            f"{type(mol).__name__}")
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    label = name or (mol.GetProp("_Name") if mol.HasProp("_Name") and mol.GetProp("_Name")
                     else smiles)
    base = Chem.Mol(mol)
    base.RemoveAllConformers()
    return _from_rdkit(base, smiles, label)


def _from_rdkit(mol: Chem.Mol, smiles: str, label: str) -> Molecule:
    """The :class:`Molecule` of a parsed RDKit molecule (hydrogens added here)."""
    mol = Chem.AddHs(mol)
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()
                  if a.GetAtomicNum() not in _TYPE_OF})
    if bad:
        raise MoleculeError(
            f"molecule {label!r}: unsupported element(s) {', '.join(bad)}; supported are "
            f"{', '.join(ELEMENT_SYMBOLS)}")
    if mol.GetNumAtoms() < 2:
        raise MoleculeError(f"molecule {label!r}: needs at least 2 atoms, got "
                            f"{mol.GetNumAtoms()}")
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.long)
    types = torch.tensor([_TYPE_OF[int(v)] for v in z], dtype=torch.long)
    src, dst, bt = [], [], []
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        k = _BOND.get(b.GetBondType(), 1)
        src += [i, j]
        dst += [j, i]
        bt += [k, k]
    edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
    return Molecule(smiles=smiles, name=label, mol=mol, atomic_numbers=z,
                    atom_types=types, edge_index=edge_index,
                    bond_types=torch.tensor(bt, dtype=torch.long))


def read_smiles_file(path: str) -> list[tuple[str, str]]:
    """Read ``(name, smiles)`` pairs from a SMILES file.

    Accepts a TSV with a header containing a ``SMILES`` column (and optionally ``Hash_Name`` /
    ``Rot_Hash`` / ``name`` for the name), or plain lines ``SMILES [name]``. Blank lines and
    lines starting with ``#`` are skipped; Windows line ends (CRLF) are accepted; a ``.gz``
    file is decompressed. Unnamed molecules are called ``mol<index>``.
    """
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        lines = [ln.rstrip("\r\n") for ln in fh if ln.strip() and not ln.startswith("#")]
    if not lines:
        return []
    head = lines[0].split("\t")
    if "SMILES" in head:
        si = head.index("SMILES")
        ni = next((head.index(c) for c in ("Hash_Name", "Rot_Hash", "name") if c in head), None)
        out = []
        for k, ln in enumerate(lines[1:]):
            cols = ln.split("\t")
            name = cols[ni] if ni is not None and ni < len(cols) else f"mol{k}"
            out.append((name, cols[si] if si < len(cols) else ""))
        return out
    out = []
    for k, ln in enumerate(lines):
        parts = ln.split()
        out.append((parts[1] if len(parts) > 1 else f"mol{k}", parts[0]))
    return out
