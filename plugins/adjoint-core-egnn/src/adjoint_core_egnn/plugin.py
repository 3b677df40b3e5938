"""Entry point ``adjoint_core: egnn`` — registers the ``egnn`` model."""

from __future__ import annotations

from adjoint_core import hookimpl

from .model import egnn


@hookimpl
def register_models() -> dict:
    """``{"egnn": egnn}``: the E(n)-equivariant graph network, sized from the state space."""
    return {"egnn": egnn}
