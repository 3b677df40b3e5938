"""Amortized conformer training as a core problem: one target per molecule (``molecules``).

The core trainer (:class:`adjoint_core.training.trainer.Trainer`) trains one network over a
:class:`~adjoint_core.problem.target.Problem` of several targets. This module builds that
problem from a set of molecules:

* each molecule is a :class:`~adjoint_core.problem.target.Target` with a mean-free
  :class:`~adjoint_core.problem.spaces.EuclideanSpace` ``(N, 3)`` (Å), its energy
  (:func:`~adjoint_core_chem.energy.make_energy`: MMFF94, GFN2-xTB or eSEN, optionally
  regularised),
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
      kind: mmff                           # energy: mmff | xtb | esen
      energy_workers: 4                    # mmff / xtb: worker processes (0: in-process; auto)
    model: {name: molecular_egnn, hidden: 32, n_layers: 4}

A relative ``smiles_file`` is read relative to the working directory (the directory
``adjoint-core train`` is started from), not the config file's folder.

**Energies.** ``kind: mmff`` (MMFF94, RDKit) and ``kind: xtb`` (GFN2-xTB, tblite) are CPU codes
called once per conformer. With ``energy_workers: N`` (``N >= 2``) each target's conformer batch
is split over ``N`` worker processes (:mod:`adjoint_core_chem.workers`), one pool shared by all
targets, each worker caching its per-molecule set-up; results equal the in-process path.
``0`` or ``1`` (the default) evaluates in-process; ``auto`` uses ``min(cores - 1, 8)``.

``kind: esen`` uses an eSEN model (the adjoint-core-esen plugin, fairchem-core) from the local
checkpoint ``esen_checkpoint: PATH`` (relative to the working directory; nothing is
downloaded). The checkpoint is loaded **once** and the model is shared by all molecules'
targets; it is a torch model, evaluated in-process on the device of the samples (worker
processes do not apply: ``energy_workers`` must be 0, 1 or ``auto``)::

    problem: {name: molecules, smiles_file: spice_train, kind: esen,
              esen_checkpoint: checkpoints/esen_sm_conserving_all.pt}

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

from .energy import ENERGY_KINDS, KT_300K, make_energy
from .molecule import Molecule, MoleculeError, mol_from_smiles, read_smiles_file
from .workers import EnergyWorkerPool, resolve_workers

__all__ = ["PACKAGED_SMILES", "packaged_smiles_path", "select_molecules", "molecules",
           "molecule_target", "etkdg_seed", "load_esen_potential"]


#: SMILES sets shipped with this package (SPICE, CC0; provenance in ``data/README.md``):
#: name → file in the package's ``data/`` folder.
PACKAGED_SMILES: dict[str, str] = {"spice_train": "spice_train.tsv.gz",
                                   "spice_test": "spice_test.tsv",
                                   "spice_sizes": "spice_sizes.tsv.gz"}


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


def load_esen_potential(checkpoint: str | Path | None, field: str = "problem.esen_checkpoint"):
    """Load the eSEN model of ``kind: esen`` once (adjoint-core-esen, imported only here).

    Args:
        checkpoint: Local fairchem checkpoint file (relative paths: the working directory).
        field: The setting's name, for the error messages.

    Returns:
        An ``adjoint_core_esen.ESENPotential`` to share between all molecules' energies.

    Raises:
        ConfigError: No checkpoint given, a missing or incompatible file, or the eSEN plugin /
            fairchem-core not installed (names the field, the path and what to install).
    """
    if checkpoint is None:
        raise ConfigError(f"{field}: missing: kind 'esen' needs a local fairchem eSEN checkpoint "
                          f"file (esen_checkpoint: PATH; nothing is downloaded)")
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"{field}: {str(checkpoint)!r}: file not found (relative paths are read "
                          f"from the working directory {Path.cwd()}; nothing is downloaded)")
    try:
        from adjoint_core_esen.checkpoint import ESENCheckpointError
        from adjoint_core_esen.energy import ESENPotential
    except ImportError as exc:
        raise ConfigError(f"problem.kind: 'esen': needs the eSEN plugin adjoint-core-esen "
                          f"(install it with `pip install adjoint-core[esen]`; import error: "
                          f"{exc})") from exc
    try:
        return ESENPotential(path)
    except ImportError as exc:  # fairchem-core missing or broken
        raise ConfigError(f"problem.kind: 'esen' ({field}: {str(checkpoint)!r}): {exc}") from exc
    except ESENCheckpointError as exc:
        raise ConfigError(f"{field}: {str(checkpoint)!r}: {exc}") from exc


def molecule_target(molecule: Molecule | str, buffer: Buffer, kind: str = "mmff",
                    temperature: float = KT_300K, regularize: bool = True,
                    alpha: float = 100.0, *, workers: EnergyWorkerPool | None = None,
                    esen_potential=None) -> Target:
    """The Cartesian target of one molecule (see the module docstring).

    ``workers`` and ``esen_potential`` are passed to
    :func:`~adjoint_core_chem.energy.make_energy` (a shared worker pool for ``mmff`` / ``xtb``;
    the shared eSEN model for ``esen``).

    Raises:
        MoleculeError: Unparsable SMILES, or an energy that cannot type the molecule.
    """
    mol = mol_from_smiles(molecule) if isinstance(molecule, str) else molecule
    return Target(
        energy=make_energy(mol, kind, temperature, regularize, alpha, workers=workers,
                           esen_potential=esen_potential),
        space=EuclideanSpace(mol.n_atoms, 3, mean_free=True), buffer=buffer,
        context=mol.context(), name=mol.name,
        data=lambda n, seed: mol.embed(n, seed=etkdg_seed(seed)),
        info={"smiles": mol.smiles, "molecule": mol})


def molecules(
    smiles_file: str | None = None, smiles: list[str] | None = None,
    max_molecules: int = 256, max_atoms: int = 60, offset: int = 0,
    shuffle_seed: int | None = None, min_rotatable_bonds: int = 0,
    kind: Literal["mmff", "xtb", "esen"] = "mmff", temperature: float = KT_300K,
    regularize: bool = True, alpha: float = 100.0,
    make_buffer: Callable[[], Buffer] | None = None,
    energy_workers: int | Literal["auto"] = 0, esen_checkpoint: str | None = None,
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
        kind: Energy, ``"mmff"`` (MMFF94), ``"xtb"`` (GFN2-xTB) or ``"esen"`` (eSEN from
            ``esen_checkpoint``; needs adjoint-core-esen).
        temperature: ``τ`` in kcal/mol (default ``k_B · 300 K``).
        regularize: Add the bond-structure regulariser.
        alpha: Regulariser weight.
        make_buffer: Builds one replay buffer (the config's ``buffer:`` section; injected by
            the core). Default: a 10,000-row FIFO.
        energy_workers: Worker processes that evaluate ``mmff`` / ``xtb`` conformer batches
            in parallel (one pool for all targets, started at the first evaluation): ``0`` or
            ``1`` in-process (default), ``"auto"`` ``min(cores - 1, 8)``. ``esen`` is always
            evaluated in-process (``"auto"`` is accepted and means in-process there).
        esen_checkpoint: Local fairchem eSEN checkpoint of ``kind: esen`` (loaded once and
            shared by all targets).

    Returns:
        The :class:`~adjoint_core.problem.target.Problem`; its ``make_target(smiles or
        Molecule)`` builds a target for a new molecule with the same energy settings.

    Raises:
        ConfigError: Bad settings (names the field), e.g. a missing ``esen_checkpoint`` file.
    """
    if kind not in ENERGY_KINDS:
        raise ConfigError(f"problem.kind: {kind!r}: unknown energy; one of "
                          f"{', '.join(ENERGY_KINDS)}")
    try:
        n_workers = resolve_workers(energy_workers)
    except ValueError as exc:
        raise ConfigError(f"problem.{exc}") from None
    if esen_checkpoint is not None and kind != "esen":
        raise ConfigError(f"problem.esen_checkpoint: {esen_checkpoint!r}: only used with "
                          f"kind: esen (kind is {kind!r})")
    esen_potential = None
    if kind == "esen":
        if energy_workers != "auto" and n_workers > 1:
            raise ConfigError(f"problem.energy_workers: {energy_workers!r}: eSEN is a torch "
                              f"model evaluated in-process; worker processes are for kind mmff "
                              f"and xtb (set energy_workers: 0)")
        n_workers = 0
        esen_potential = load_esen_potential(esen_checkpoint)
    mols, skipped = select_molecules(smiles_file, smiles, max_molecules, max_atoms, offset,
                                     shuffle_seed, min_rotatable_bonds, kind == "mmff")
    workers = EnergyWorkerPool(n_workers) if n_workers > 1 else None
    new_buffer = make_buffer or (lambda: ReplayBuffer(10_000))

    def make_target(molecule: Molecule | str, buffer: Buffer | None = None) -> Target:
        return molecule_target(molecule, buffer if buffer is not None else new_buffer(), kind,
                               temperature, regularize, alpha, workers=workers,
                               esen_potential=esen_potential)

    try:
        targets = [make_target(m) for m in mols]
    except BaseException:
        if workers is not None:
            workers.close()
        raise
    info = {"n_molecules": len(mols),
            "molecule_atoms": {m.name: m.n_atoms for m in mols},
            "skipped": skipped,
            "energy_workers": max(n_workers, 1)}
    if esen_potential is not None:
        info["esen_checkpoint"] = str(esen_checkpoint)
    return Problem(targets, make_target=make_target, info=info)
