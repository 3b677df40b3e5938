"""The core's own components, registered through the same entry-point path as plugins."""

from __future__ import annotations

import math

from adjoint_core.plugins.hookspecs import hookimpl
from adjoint_core.problem.buffer import ReplayBuffer
from adjoint_core.problem.gaussian import gaussian
from adjoint_core.problem.models import MLP
from adjoint_core.problem.periodic import mlp_periodic
from adjoint_core.problem.schedules import GeometricSchedule, LinearSchedule
from adjoint_core.problem.spaces import EuclideanSpace, PeriodicSpace, StateSpace
from adjoint_core.problem.torsional import TorsionalSpace
from adjoint_core.problem.von_mises import von_mises


def mlp(space: StateSpace, hidden: int = 128, n_layers: int = 3, time_dim: int = 64,
        input_scale: float = 1.0) -> MLP:
    """Build an :class:`~adjoint_core.MLP` sized from the state space."""
    return MLP(math.prod(space.event_shape), hidden=hidden, n_layers=n_layers, time_dim=time_dim,
               input_scale=input_scale)


@hookimpl
def register_energies() -> dict:  # noqa: D103
    return {"gaussian": gaussian, "von_mises": von_mises}


@hookimpl
def register_spaces() -> dict:  # noqa: D103
    return {"euclidean": EuclideanSpace, "periodic": PeriodicSpace, "torsional": TorsionalSpace}


@hookimpl
def register_schedules() -> dict:  # noqa: D103
    return {"geometric": GeometricSchedule, "linear": LinearSchedule}


@hookimpl
def register_models() -> dict:  # noqa: D103
    return {"mlp": mlp, "mlp_periodic": mlp_periodic}


@hookimpl
def register_buffers() -> dict:  # noqa: D103
    return {"fifo": ReplayBuffer}


@hookimpl
def register_objectives() -> dict:  # noqa: D103
    from adjoint_core.training.objectives.adjoint_sampling import AdjointSampling
    from adjoint_core.training.objectives.asbs import asbs_objective
    from adjoint_core.training.objectives.idem import idem_objective

    return {"adjoint": AdjointSampling, "asbs": asbs_objective, "idem": idem_objective}
