"""The core's own components, registered through the same entry-point path as plugins."""

from __future__ import annotations

import math

from . import metrics
from .buffer import ReplayBuffer
from .gaussian import gaussian
from .hookspecs import hookimpl
from .models import MLP
from .periodic import mlp_periodic
from .schedules import GeometricSchedule, LinearSchedule
from .spaces import EuclideanSpace, PeriodicSpace, StateSpace
from .torsional import TorsionalSpace
from .von_mises import von_mises


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
def register_metrics() -> dict:  # noqa: D103
    return {
        "energy_w2": metrics.energy_w2,
        "geometric_w2": metrics.geometric_w2,
        "euclidean_w2": metrics.euclidean_w2,
    }
