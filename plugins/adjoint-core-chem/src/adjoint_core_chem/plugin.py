"""Entry point ``adjoint_core: chem`` — the chemistry plugin's energies, models and commands.

Registered:

* energies ``mmff`` and ``xtb``: one molecule given by ``smiles`` (config
  ``energy: {name: mmff, smiles: "CCO", temperature: 0.596, regularize: true}``) on a
  ``euclidean`` space with ``n_particles`` = the molecule's atom count (hydrogens included),
  ``spatial_dim: 3``, ``mean_free: true``;
* energy ``torsional``: either energy at the torsion angles of ``smiles``;
* model ``molecular_egnn``: :class:`~adjoint_core_chem.model.MolecularEGNN`; bound to the
  context of ``smiles`` when given (single-molecule runs), else the bare network that takes
  each target's context (amortized runs);
* problem ``molecules``: one target per molecule of a SMILES file (amortized training with
  ``adjoint-core train``, :mod:`adjoint_core_chem.problem`);
* commands ``chem-train`` (an alias of ``adjoint-core train``) and ``conformers`` (SDF files
  from SMILES with any trained run directory), see :mod:`adjoint_core_chem.commands`.
"""

from __future__ import annotations

import argparse

import torch

from adjoint_core import hookimpl
from adjoint_core.problem.models import Model, PreconditionedControl
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import StateSpace

from .energy import KT_300K, make_energy
from .model import MolecularEGNN
from .molecule import mol_from_smiles

__all__ = ["mmff", "xtb", "molecular_egnn", "BoundContextModel"]


def _checked(smiles: str, space: StateSpace | None):
    mol = mol_from_smiles(smiles)
    if space is not None and tuple(space.event_shape) != (mol.n_atoms, 3):
        raise ValueError(f"molecule {smiles!r} has {mol.n_atoms} atoms (with H): the space needs "
                         f"n_particles={mol.n_atoms}, spatial_dim=3, got event shape "
                         f"{tuple(space.event_shape)}")
    return mol


def mmff(smiles: str, temperature: float = KT_300K, regularize: bool = True,
         alpha: float = 100.0, space: StateSpace | None = None):
    """Registry factory: MMFF94 energy (kcal/mol) of ``smiles``, optionally regularised."""
    return make_energy(_checked(smiles, space), "mmff", temperature, regularize, alpha)


def xtb(smiles: str, temperature: float = KT_300K, regularize: bool = True,
        alpha: float = 100.0, space: StateSpace | None = None):
    """Registry factory: GFN2-xTB energy (kcal/mol) of ``smiles``, optionally regularised."""
    return make_energy(_checked(smiles, space), "xtb", temperature, regularize, alpha)


class BoundContextModel(Model):
    """A context-conditioned model with one fixed context (single-molecule core runs).

    Args:
        model: The conditioned network.
        context: The context passed on every call.
    """

    def __init__(self, model: MolecularEGNN, context: dict) -> None:
        super().__init__()
        self.net = model
        self.context = context

    def check_space(self, space: StateSpace) -> None:  # noqa: D102
        self.net.check_space(space)

    def forward(self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
                ) -> torch.Tensor:
        """``u_θ(t, x; bound context)``; a given ``context`` overrides the bound one."""
        return self.net(t, x, context or self.context)


def molecular_egnn(smiles: str | None = None, hidden: int = 64, n_layers: int = 4,
                   time_dim: int = 16, precondition: bool = False, data_scale: float = 0.5,
                   noise_floor: float = 0.0, cutoff: float | None = None,
                   space: StateSpace | None = None, schedule: NoiseSchedule | None = None
                   ) -> Model:
    """Registry factory: :class:`MolecularEGNN`, bound to the molecule ``smiles`` if given.

    Without ``smiles`` the bare network is returned; it is called with each target's context
    (the ``molecules`` problem). With ``precondition`` the network is wrapped in
    :class:`~adjoint_core.problem.models.PreconditionedControl` (output scaled by
    ``c(t)/r(t)`` of the run's schedule, data scale ``data_scale`` in Å; the warm-up and
    Adjoint Sampling losses are then weighted so that late times are trained, see
    ``docs/chem.md``); ``noise_floor`` (Å) floors the output scale ``c(t)``. Off by default.
    ``cutoff`` (Å) makes the messages local (:class:`MolecularEGNN`); ``None``: all pairs.
    """
    if precondition and schedule is None:
        raise ValueError("model.precondition: true needs the run's schedule (build the model "
                         "through a run config)")
    if smiles is None:
        net: Model = MolecularEGNN(hidden, n_layers, time_dim, cutoff=cutoff)
        if space is not None:
            net.check_space(space)
    else:
        mol = _checked(smiles, space)
        net = BoundContextModel(MolecularEGNN(hidden, n_layers, time_dim, cutoff=cutoff),
                                mol.context())
    if precondition:
        return PreconditionedControl(net, schedule, data_scale, noise_floor=noise_floor)
    return net


@hookimpl
def register_energies() -> dict:
    """``mmff`` and ``xtb`` single-molecule energies; ``torsional`` (either, at torsions)."""
    from .torsion import torsional_energy

    return {"mmff": mmff, "xtb": xtb, "torsional": torsional_energy}


@hookimpl
def register_models() -> dict:
    """``molecular_egnn``: the graph-conditioned EGNN (bound to one molecule or bare)."""
    return {"molecular_egnn": molecular_egnn}


@hookimpl
def register_problems() -> dict:
    """``molecules``: one Cartesian target per molecule (:mod:`adjoint_core_chem.problem`)."""
    from .problem import molecules

    return {"molecules": molecules}


@hookimpl
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """``chem-train`` (alias of ``train``) and ``conformers``."""
    from .commands import add_commands

    add_commands(subparsers)
