"""Amortized conformer training as a core problem: one target per molecule (``molecules``).

The core trainer (:class:`adjoint_core.training.trainer.Trainer`) trains one network over a
:class:`~adjoint_core.problem.target.Problem` of several targets. This module builds that
problem from a set of molecules:

* each molecule is a :class:`~adjoint_core.problem.target.Target` with a mean-free
  :class:`~adjoint_core.problem.spaces.EuclideanSpace` ``(N, 3)`` (Å), its energy
  (:func:`~adjoint_core_chem.energy.make_energy`: MMFF94 or GFN2-xTB, optionally regularised),
  its graph as the model context (:meth:`~adjoint_core_chem.molecule.Molecule.context`), its
  own replay buffer and RDKit ETKDG conformers as reference states (``Target.data``, used by
  the bridge-matching warm-up, ``train.warmup_epochs``);
* :attr:`Problem.make_target` builds the same kind of target for a new molecule (a SMILES
  string or a :class:`~adjoint_core_chem.molecule.Molecule`), to generate its conformers with a
  trained network: ``trainer.sample(k, target=trainer.problem.make_target("CCO"))``;
* :attr:`Problem.info` records the molecule set (atom counts, molecules that were skipped and
  why); the core writes it to ``metrics.json`` under ``"problem"``.

Config (``adjoint-core train``)::

    problem:
      name: molecules
      smiles_file: spice_train            # packaged SPICE set, or a file, or smiles: [CCO]
      max_molecules: 1000
      kind: mmff                           # energy: mmff | xtb
    model: {name: molecular_egnn, hidden: 32, n_layers: 4}

A relative ``smiles_file`` is read relative to the working directory (the directory
``adjoint-core train`` is started from), not the config file's folder.

The same molecule selection (:func:`select_molecules`) is used by other plugins' problems, e.g.
the torsion plugin's ``torsional_molecules``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.spaces import EuclideanSpace
from adjoint_core.problem.target import Problem, Target

from .energy import KT_300K, make_energy
from .molecule import Molecule, MoleculeError, mol_from_smiles, read_smiles_file

__all__ = ["PACKAGED_SMILES", "packaged_smiles_path", "select_molecules", "molecules",
           "molecule_target", "etkdg_seed"]


#: SMILES sets shipped with this package (SPICE, CC0; provenance in ``data/README.md``):
#: name → file in the package's ``data/`` folder.
PACKAGED_SMILES: dict[str, str] = {"spice_train": "spice_train.tsv.gz",
                                   "spice_test": "spice_test.tsv"}


def packaged_smiles_path(name: str) -> Path:
    """Installed path of a packaged SMILES set (a key of :data:`PACKAGED_SMILES`)."""
    import importlib.resources

    return Path(str(importlib.resources.files(__package__).joinpath("data"))) / \
        PACKAGED_SMILES[name]


def etkdg_seed(seed: int) -> int:
    """A positive RDKit seed from any integer (RDKit treats seeds ``<= 0`` specially)."""
    return int(seed) % (2**31 - 2) + 1


def select_molecules(
    smiles_file: str | None = None, smiles: list[str] | None = None,
    max_molecules: int = 256, max_atoms: int = 60, offset: int = 0,
    shuffle_seed: int | None = None, min_rotatable_bonds: int = 0,
    check_mmff: bool = True,
) -> tuple[list[Molecule], list[dict]]:
    """Parse the training molecules; unusable ones are skipped and reported.

    Args:
        smiles_file: A packaged set (``"spice_train"``, ``"spice_test"``: SPICE molecules,
            CC0, the Adjoint Sampling paper's split; :data:`PACKAGED_SMILES`), or a TSV with a
            ``SMILES`` column, or lines ``SMILES [name]`` (``.gz`` accepted; relative paths:
            the working directory).
        smiles: SMILES strings instead of a file (named by their SMILES).
        max_molecules: Keep the first this many usable molecules (after the filters).
        max_atoms: Drop molecules with more atoms (hydrogens included).
        offset: Skip this many rows first.
        shuffle_seed: Visit the rows in a random order drawn with this seed (the SPICE files
            are sorted by rotatable bonds, so the first rows are all rigid).
        min_rotatable_bonds: Drop molecules with fewer rotatable bonds (RDKit's strict count).
        check_mmff: Skip molecules MMFF94 cannot type.

    Returns:
        ``(molecules, skipped)`` with ``skipped = [{"name", "smiles", "reason"}, …]`` (molecules
        dropped by the size or rotatable-bond filters are not listed).

    Raises:
        ConfigError: Neither or both of ``smiles_file`` and ``smiles``, or a missing file.
    """
    from rdkit.Chem.rdMolDescriptors import CalcNumRotatableBonds

    if (smiles_file is None) == (smiles is None):
        given = "both" if smiles_file is not None else "neither"
        raise ConfigError(f"problem.smiles_file, problem.smiles: {given} given: give "
                          "smiles_file (a SMILES file) or smiles (a list), not both or neither")
    if smiles_file is not None:
        if not Path(smiles_file).is_file() and smiles_file in PACKAGED_SMILES:
            smiles_file = str(packaged_smiles_path(smiles_file))
        if not Path(smiles_file).is_file():
            raise ConfigError(f"problem.smiles_file: {smiles_file}: file not found (relative "
                              f"paths are read from the working directory {Path.cwd()}; "
                              f"packaged sets: {', '.join(sorted(PACKAGED_SMILES))})")
        try:
            rows = read_smiles_file(smiles_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"problem.smiles_file: {smiles_file}: cannot be read as text "
                              f"({exc}); give one SMILES per line") from None
    else:
        rows = [(s, s) for s in smiles]
    rows = rows[offset:]
    if shuffle_seed is not None:
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
            shuffle_seed)).tolist()
        rows = [rows[k] for k in perm]
    mols: list[Molecule] = []
    skipped: list[dict] = []
    for name, smi in rows:
        if len(mols) >= max_molecules:
            break
        try:
            m = mol_from_smiles(smi, name)
            if m.n_atoms > max_atoms or (
                    min_rotatable_bonds and CalcNumRotatableBonds(m.mol) < min_rotatable_bonds):
                continue
            if check_mmff:
                make_energy(m, "mmff", KT_300K, False)  # MMFF typing check
        except MoleculeError as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            continue
        mols.append(m)
    if not mols:
        source = f"problem.smiles_file: {smiles_file}" if smiles_file is not None else \
            f"problem.smiles: {len(rows)} SMILES"
        raise ConfigError(f"{source}: no usable molecule ({len(skipped)} skipped"
                          + "".join(f"; {s['reason']}" for s in skipped[:3])
                          + "); give SMILES that RDKit parses and MMFF types")
    return mols, skipped


def molecule_target(molecule: Molecule | str, buffer: Buffer, kind: str = "mmff",
                    temperature: float = KT_300K, regularize: bool = True,
                    alpha: float = 100.0) -> Target:
    """The Cartesian target of one molecule (see the module docstring).

    Raises:
        MoleculeError: Unparsable SMILES, or an energy that cannot type the molecule.
    """
    mol = mol_from_smiles(molecule) if isinstance(molecule, str) else molecule
    return Target(
        energy=make_energy(mol, kind, temperature, regularize, alpha),
        space=EuclideanSpace(mol.n_atoms, 3, mean_free=True), buffer=buffer,
        context=mol.context(), name=mol.name,
        data=lambda n, seed: mol.embed(n, seed=etkdg_seed(seed)),
        info={"smiles": mol.smiles, "molecule": mol})


def molecules(
    smiles_file: str | None = None, smiles: list[str] | None = None,
    max_molecules: int = 256, max_atoms: int = 60, offset: int = 0,
    shuffle_seed: int | None = None, min_rotatable_bonds: int = 0,
    kind: Literal["mmff", "xtb"] = "mmff", temperature: float = KT_300K,
    regularize: bool = True, alpha: float = 100.0,
    make_buffer: Callable[[], Buffer] | None = None,
) -> Problem:
    """Registry factory of the problem ``molecules``: one Cartesian target per molecule.

    Args:
        smiles_file: SMILES file (see :func:`select_molecules`; relative to the working
            directory).
        smiles: SMILES strings instead of a file.
        max_molecules: At most this many molecules.
        max_atoms: Skip molecules with more atoms (hydrogens included).
        offset: Skip this many rows of the file first.
        shuffle_seed: Shuffle the rows with this seed first.
        min_rotatable_bonds: Skip molecules with fewer rotatable bonds.
        kind: Energy, ``"mmff"`` (MMFF94) or ``"xtb"`` (GFN2-xTB).
        temperature: ``τ`` in kcal/mol (default ``k_B · 300 K``).
        regularize: Add the bond-structure regulariser.
        alpha: Regulariser weight.
        make_buffer: Builds one replay buffer (the config's ``buffer:`` section; injected by
            the core). Default: a 10,000-row FIFO.

    Returns:
        The :class:`~adjoint_core.problem.target.Problem`; its ``make_target(smiles or
        Molecule)`` builds a target for a new molecule with the same energy settings.
    """
    mols, skipped = select_molecules(smiles_file, smiles, max_molecules, max_atoms, offset,
                                     shuffle_seed, min_rotatable_bonds, kind == "mmff")
    new_buffer = make_buffer or (lambda: ReplayBuffer(10_000))

    def make_target(molecule: Molecule | str, buffer: Buffer | None = None) -> Target:
        return molecule_target(molecule, buffer if buffer is not None else new_buffer(), kind,
                               temperature, regularize, alpha)

    targets = [make_target(m) for m in mols]
    info = {"n_molecules": len(mols),
            "molecule_atoms": {m.name: m.n_atoms for m in mols},
            "skipped": skipped}
    return Problem(targets, make_target=make_target, info=info)
