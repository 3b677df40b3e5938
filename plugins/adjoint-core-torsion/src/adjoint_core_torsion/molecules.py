"""Amortized torsional conformer training as a core problem (``torsional_molecules``).

The torsional variant of the paper's conformer method (Havens et al., ICML 2025) is a configuration
of the core trainer (:class:`adjoint_core.training.trainer.Trainer`): each molecule with at
least one rotatable bond is a :class:`~adjoint_core.problem.target.Target` with

* its torsional coordinates (:class:`adjoint_core_chem.torsion.MoleculeTorsions`: rotatable
  bonds, one ETKDG reference geometry, MMFF-relaxed by default) and their
  :class:`~adjoint_core.problem.torsional.TorsionalSpace` ``T^K``;
* its energy: the chemistry plugin's Cartesian energy at ``x(τ)``
  (:class:`~adjoint_core_chem.torsion.TorsionalEnergy`, unregularised by default as in AS-mol:
  bond lengths and angles are fixed);
* the torsional context of :class:`~adjoint_core_torsion.model.TorsionNet` (atom and pair
  features, torsion quadruples, the map ``τ → x``), its own replay buffer, and the torsions of
  RDKit ETKDG conformers as reference states (``Target.data``, for ``train.warmup_epochs``);
* ``info["to_positions"]`` (``τ (k, K) → x (k, N, 3)`` in Å) and
  ``info["state_property"] = "torsions_rad"``, which the chemistry plugin's ``conformers``
  command uses to write SDF files from any run directory.

Molecules without a rotatable bond have nothing to learn: they are not training targets (listed
in ``Problem.info["no_rotatable_bond"]``), and ``Problem.make_target`` returns for them a target
with ``info["fixed_positions"]``, the reference geometry that generation returns.

Also the model factory ``molecular_torsion_net``: a :class:`TorsionNet` sized for the chemistry
plugin's features, bound to the torsional context of ``smiles`` when given (single-molecule
runs), else bare (amortized runs).

This plugin depends on the chemistry plugin; the chemistry plugin does not import this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.spaces import EuclideanSpace
from adjoint_core.problem.target import Problem, Target

from .model import TorsionNet

try:
    from adjoint_core_chem.energy import KT_300K, make_energy
    from adjoint_core_chem.molecule import (
        N_ATOM_FEATURES,
        N_PAIR_FEATURES,
        Molecule,
        mol_from_smiles,
    )
    from adjoint_core_chem.plugin import BoundContextModel
    from adjoint_core_chem.problem import etkdg_seed, select_molecules
    from adjoint_core_chem.torsion import MoleculeTorsions, _check_space, cached_torsions
except ImportError as exc:  # pragma: no cover - the plugin is installed in this repo
    raise ImportError("torsional conformer training needs the chemistry plugin: "
                      "pip install adjoint-core-torsion[chem]") from exc

__all__ = ["torsional_molecules", "torsional_target", "molecular_torsion_net"]


def torsional_target(molecule: Molecule | str, buffer: Buffer, kind: str = "mmff",
                     temperature: float = KT_300K, regularize: bool = False,
                     alpha: float = 100.0, reference_seed: int = 0, relax: bool = True,
                     n_images: int | None = None) -> Target:
    """The torsional target of one molecule (module docstring).

    A molecule without a rotatable bond gets a Cartesian target with
    ``info["fixed_positions"]`` (its reference geometry) instead: there is nothing to sample.

    Raises:
        MoleculeError: Unparsable SMILES, failed embedding or an energy that cannot type it.
    """
    mol = mol_from_smiles(molecule) if isinstance(molecule, str) else molecule
    tors = MoleculeTorsions.from_molecule(mol, seed=reference_seed, relax=relax)
    cart = make_energy(mol, kind, temperature, regularize, alpha)
    if tors.n_torsions == 0:
        return Target(cart, EuclideanSpace(mol.n_atoms, 3, mean_free=True), buffer,
                      name=mol.name, info={"smiles": mol.smiles, "molecule": mol,
                                           "fixed_positions": tors.reference.float()})

    def data(n: int, seed: int):
        return tors.torsions_of(mol.embed(n, seed=etkdg_seed(seed)).double()).float()

    return Target(tors.energy(cart), tors.space(n_images), buffer, context=tors.context(),
                  name=mol.name, data=data,
                  info={"smiles": mol.smiles, "molecule": mol, "n_torsions": tors.n_torsions,
                        "to_positions": tors.positions, "state_property": "torsions_rad"})


def torsional_molecules(
    smiles_file: str | None = None, smiles: list[str] | None = None,
    max_molecules: int = 256, max_atoms: int = 60, offset: int = 0,
    shuffle_seed: int | None = None, min_rotatable_bonds: int = 0,
    kind: Literal["mmff", "xtb"] = "mmff", temperature: float = KT_300K,
    regularize: bool = False, alpha: float = 100.0, reference_seed: int = 0,
    relax: bool = True, n_images: int | None = None,
    make_buffer: Callable[[], Buffer] | None = None,
) -> Problem:
    """Registry factory of the problem ``torsional_molecules``: one torsional target per molecule.

    Args:
        smiles_file: SMILES file (:func:`adjoint_core_chem.problem.select_molecules`; relative
            to the working directory).
        smiles: SMILES strings instead of a file.
        max_molecules: At most this many molecules (before dropping those without a
            rotatable bond).
        max_atoms: Skip molecules with more atoms (hydrogens included).
        offset: Skip this many rows of the file first.
        shuffle_seed: Shuffle the rows with this seed first.
        min_rotatable_bonds: Skip molecules with fewer rotatable bonds (RDKit's strict count).
        kind: Cartesian energy, ``"mmff"`` or ``"xtb"``.
        temperature: ``τ`` in kcal/mol (default ``k_B · 300 K``).
        regularize: Add the bond-structure regulariser (off, as AS-mol's torsional runs).
        alpha: Regulariser weight.
        reference_seed: ETKDG seed of each reference geometry.
        relax: MMFF-relax the reference geometries.
        n_images: Images per side in the wrapped-normal sums (``None``: automatic).
        make_buffer: Builds one replay buffer (injected by the core; default 10,000-row FIFO).

    Raises:
        ConfigError: No molecule with a rotatable bond.
    """
    mols, skipped = select_molecules(smiles_file, smiles, max_molecules, max_atoms, offset,
                                     shuffle_seed, min_rotatable_bonds, kind == "mmff")
    new_buffer = make_buffer or (lambda: ReplayBuffer(10_000))

    def make_target(molecule: Molecule | str, buffer: Buffer | None = None) -> Target:
        return torsional_target(molecule, buffer if buffer is not None else new_buffer(), kind,
                                temperature, regularize, alpha, reference_seed, relax, n_images)

    targets, rigid, n_torsions = [], [], {}
    for m in mols:
        tg = make_target(m)
        if "fixed_positions" in tg.info:
            rigid.append(m.name)
            n_torsions[m.name] = 0
            continue
        targets.append(tg)
        n_torsions[m.name] = tg.info["n_torsions"]
    if not targets:
        raise ConfigError(f"problem: 'torsional_molecules': none of the {len(mols)} molecules "
                          "has a rotatable bond; give molecules with at least one")
    info = {"n_molecules": len(targets),
            "molecule_atoms": {m.name: m.n_atoms for m in mols},
            "molecule_torsions": n_torsions, "no_rotatable_bond": rigid, "skipped": skipped}
    return Problem(targets, make_target=make_target, info=info)


def molecular_torsion_net(smiles: str | None = None, reference_seed: int = 0,
                          relax: bool = True, hidden: int = 32, n_layers: int = 3,
                          time_dim: int = 16, cutoff: float = 5.0, n_rbf: int = 16,
                          aggregation_scale: float = 10.0, output_scale: float = 10.0,
                          space=None) -> TorsionNet | BoundContextModel:
    """Registry factory ``molecular_torsion_net``: a :class:`TorsionNet` for molecules.

    Sized for the chemistry plugin's atom and pair features. With ``smiles`` the torsional
    context of that molecule (reference geometry ``reference_seed``, ``relax``) is bound
    (single-molecule runs, checked against ``space``); without, the bare network takes each
    target's context (the ``torsional_molecules`` problem).
    """
    net = TorsionNet(N_ATOM_FEATURES, N_PAIR_FEATURES, hidden, n_layers, time_dim, cutoff,
                     n_rbf, aggregation_scale, output_scale)
    if smiles is None:
        if space is not None:
            net.check_space(space)
        return net
    tors = cached_torsions(smiles, reference_seed, relax)
    _check_space(tors, space)
    return BoundContextModel(net, tors.context())
