"""Entry point ``adjoint_core: esen``: the ``esen`` energy, the ``egnn_bound`` model, a command.

Importing this module never imports fairchem-core, so the registry and the other plugins work
where it is not installed; building an ``esen`` energy then fails with an ``ImportError`` that
says what to install (the registry reports it as a config error naming ``energy 'esen'``).

Config example (one molecule, hydrogens included, on a mean-free Euclidean space)::

    energy: {name: esen, checkpoint: runs/esen_random.pt, smiles: "CCO"}
    space:  {name: euclidean, n_particles: 9, spatial_dim: 3, mean_free: true}

Command::

    adjoint-core esen-checkpoint OUT.pt --random [--seed 0] [--arch '{"num_layers": 2}']
    adjoint-core esen-checkpoint CKPT.pt            (check a checkpoint and print what it holds)
"""

from __future__ import annotations

import argparse
import json
from typing import Literal

from adjoint_core import hookimpl
from adjoint_core.problem.spaces import StateSpace

__all__ = ["esen", "register_energies", "register_models", "register_commands"]


def esen(
    checkpoint: str, smiles: str | None = None, atomic_numbers: list[int] | None = None,
    charge: int | None = None, spin: int | None = None, temperature: float | None = None,
    units: Literal["kcal/mol", "eV"] = "kcal/mol", task_name: str = "omol",
    precision: Literal["float32", "float64"] = "float32", regularize: bool | None = None,
    alpha: float = 100.0, space: StateSpace | None = None,
):
    """Registry factory: the eSEN energy of one molecule.

    Args:
        checkpoint: Local checkpoint file (relative paths: from the working directory).
        smiles: The molecule as SMILES (needs adjoint-core-chem), or
        atomic_numbers: the molecule as atomic numbers (state particle order).
        charge: Total charge (default from the SMILES, else 0).
        spin: Spin multiplicity (default from the SMILES, else 1).
        temperature: ``τ = k_B T`` in ``units`` (default 300 K).
        units: ``"kcal/mol"`` (default) or ``"eV"``.
        task_name: fairchem dataset / head.
        precision: ``"float32"`` or ``"float64"``.
        regularize: Wrap in the chemistry plugin's bond-structure regulariser
            (``BondRegularizedEnergy``, the paper's); default: on for ``smiles``, off for
            ``atomic_numbers`` (which has no bonds, so ``true`` is rejected there).
        alpha: Regulariser weight.
        space: The run's state space (injected); its event shape must be ``(N, 3)``.

    Raises:
        ValueError: Bad molecule description or a space of the wrong shape (the registry turns
            it into a ConfigError naming ``energy 'esen'``).
    """
    from .energy import ESENEnergy

    if regularize and smiles is None:
        raise ValueError("regularize: the bond regulariser needs the bonds of a smiles; with "
                         "atomic_numbers set regularize: false")
    energy = ESENEnergy(checkpoint, smiles=smiles, atomic_numbers=atomic_numbers, charge=charge,
                        spin=spin, temperature=temperature, units=units, task_name=task_name,
                        precision=precision)
    if space is not None and tuple(space.event_shape) != tuple(energy.event_shape):
        n = energy.event_shape[0]
        raise ValueError(f"{energy.label} has {n} atoms (hydrogens included): the space needs "
                         f"n_particles={n}, spatial_dim=3, got event shape "
                         f"{tuple(space.event_shape)}")
    if regularize is None:
        regularize = smiles is not None
    if not regularize:
        return energy
    from adjoint_core_chem.energy import BondRegularizedEnergy

    wrapped = BondRegularizedEnergy(energy, alpha)
    wrapped.unit = energy.unit
    return wrapped


@hookimpl
def register_energies() -> dict:
    """``{"esen": esen}``."""
    return {"esen": esen}


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import build_random_checkpoint, inspect_checkpoint

    if args.random:
        arch = json.loads(args.arch) if args.arch else None
        build_random_checkpoint(args.path, arch, seed=args.seed)
        print(f"wrote a random-weight eSEN checkpoint to {args.path}")
    info = inspect_checkpoint(args.path, args.task_name)
    print(json.dumps({"path": str(info.path), "backbone": info.backbone,
                      "datasets": list(info.datasets), "energy_task": info.energy_task,
                      "has_forces_task": info.has_forces_task,
                      "fairchem_version": info.fairchem_version}, indent=2))
    return 0


@hookimpl
def register_models() -> dict:
    """``{"egnn_bound": egnn_bound}``: the EGNN bound to the run's molecule (see model.py)."""
    from .model import egnn_bound

    return {"egnn_bound": egnn_bound}


@hookimpl
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """``esen-checkpoint``: check an eSEN checkpoint, or write a random-weight one."""
    p = subparsers.add_parser(
        "esen-checkpoint", help="check an eSEN checkpoint (or write a random-weight one)")
    p.add_argument("path", help="checkpoint file")
    p.add_argument("--random", action="store_true",
                   help="write a small random-weight eSEN to PATH first (tests, CI examples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--arch", default=None,
                   help="JSON of ESENArchitecture fields for --random, e.g. '{\"num_layers\": 1}'")
    p.add_argument("--task-name", default="omol", help="dataset whose energy head is checked")
    p.set_defaults(func=_cmd_checkpoint)
