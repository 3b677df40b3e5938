"""Entry point ``adjoint_core: torsion`` — the ``torsion_net`` model and ``torsion-train``."""

from __future__ import annotations

from adjoint_core import hookimpl

from .model import torsion_net


@hookimpl
def register_models() -> dict:
    """``{"torsion_net": torsion_net}``: the invariant torsion network (needs a context)."""
    return {"torsion_net": torsion_net}


@hookimpl
def register_commands(subparsers) -> None:
    """``torsion-train`` (amortized torsional training; needs the chemistry plugin)."""
    from .commands import add_commands

    add_commands(subparsers)
