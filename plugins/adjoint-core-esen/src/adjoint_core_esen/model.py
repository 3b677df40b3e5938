"""The EGNN plugin's network conditioned on the atom types of the run's molecule.

The core loop passes no context to the model, so a single-molecule run binds the molecule's
node types to the network once: :func:`egnn_bound` reads them from the energy (injected by the
registry) and wraps :class:`adjoint_core_egnn.model.EGNN` built with
``n_node_types = len(ELEMENT_TYPES)`` (H C N O F P S Cl Br I, the chemistry plugin's table).
Any energy that has a ``context()`` method returning ``{"node_types": (N,) long}`` works
(:class:`~adjoint_core_esen.energy.ESENEnergy`, directly or inside the chemistry plugin's
``BondRegularizedEnergy``), as does one with a chemistry-plugin ``molecule`` attribute.
"""

from __future__ import annotations

from typing import Any

import torch

from adjoint_core.problem.models import Model
from adjoint_core.problem.spaces import StateSpace

from .energy import ELEMENT_TYPES

__all__ = ["BoundEGNN", "egnn_bound", "node_types_of"]


def node_types_of(energy: Any) -> torch.Tensor:
    """Node types ``(N,)`` long of the molecule behind ``energy``.

    Looks for ``energy.context()``, then ``energy.base.context()`` (wrappers), then
    ``energy.molecule.context()``.

    Raises:
        ValueError: No molecule context can be found on ``energy``.
    """
    for obj in (energy, getattr(energy, "base", None)):
        ctx = getattr(obj, "context", None)
        if callable(ctx):
            return torch.as_tensor(ctx()["node_types"], dtype=torch.long)
    mol = getattr(energy, "molecule", None)
    if mol is not None and callable(getattr(mol, "context", None)):
        return torch.as_tensor(mol.context()["node_types"], dtype=torch.long)
    raise ValueError(f"egnn_bound needs a molecular energy with atom types (e.g. 'esen', 'mmff'),"
                     f" got {energy!r}")


class BoundEGNN(Model):
    """An EGNN with ``n_node_types > 0`` and the node types of one molecule bound to it.

    Args:
        net: The conditioned :class:`adjoint_core_egnn.model.EGNN`.
        node_types: ``(N,)`` long, indices into :data:`ELEMENT_TYPES`.
    """

    def __init__(self, net: Model, node_types: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("node_types", node_types.long(), persistent=False)

    def check_space(self, space: StateSpace) -> None:  # noqa: D102
        self.net.check_space(space)

    def forward(self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
                ) -> torch.Tensor:
        """``u_θ(t, x; node types)``; a given ``context`` overrides the bound one.

        Shapes: ``t`` ``(batch,)``, ``x`` ``(batch, N, 3)``, output like ``x``.
        """
        return self.net(t, x, context or {"node_types": self.node_types})


def egnn_bound(
    space: StateSpace, energy: Any, hidden: int = 64, n_layers: int = 4,
    attention: bool = True, tanh: bool = True, coords_range: float = 15.0, time_dim: int = 0,
) -> BoundEGNN:
    """Registry factory: the EGNN plugin's network conditioned on the energy's atom types.

    Args:
        space: The run's particle space ``(N, 3)`` (injected).
        energy: The run's molecular energy (injected); see :func:`node_types_of`.
        hidden: Width of node features and messages.
        n_layers: Equivariant layers.
        attention: Sigmoid gate on each message.
        tanh: Bound the coordinate update.
        coords_range: Total range of the bounded coordinate update.
        time_dim: Width of a sinusoidal time embedding (0: the scalar ``t``).

    Raises:
        ValueError: No atom types on the energy, or their count differs from the space's.
    """
    from adjoint_core_egnn.model import egnn

    types = node_types_of(energy)
    shape = getattr(space, "particle_shape", None)
    if shape is not None and shape[0] != types.shape[0]:
        raise ValueError(f"egnn_bound: the energy's molecule has {types.shape[0]} atoms but the "
                         f"space has n_particles={shape[0]}")
    net = egnn(space, hidden=hidden, n_layers=n_layers, attention=attention, tanh=tanh,
               coords_range=coords_range, n_node_types=len(ELEMENT_TYPES), time_dim=time_dim)
    return BoundEGNN(net, types)
