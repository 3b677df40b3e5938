"""Entry point ``adjoint_core: torsion``: torsion networks, torsional problem, ``torsion-train``.

Registered: models ``torsion_net`` (the bare network, any features) and
``molecular_torsion_net`` (sized for molecules; needs the chemistry plugin), problem
``torsional_molecules`` (:mod:`adjoint_core_torsion.molecules`) and the command
``torsion-train`` (an alias of ``adjoint-core train``).
"""

from __future__ import annotations

from adjoint_core import hookimpl

from .model import torsion_net


def _molecular():
    """The chemistry-dependent module, or ``None`` when adjoint-core-chem is not installed."""
    try:
        from . import molecules
    except ImportError:
        return None
    return molecules


@hookimpl
def register_models() -> dict:
    """``torsion_net`` and, with the chemistry plugin, ``molecular_torsion_net``."""
    mod = _molecular()
    extra = {} if mod is None else {"molecular_torsion_net": mod.molecular_torsion_net}
    return {"torsion_net": torsion_net, **extra}


@hookimpl
def register_problems() -> dict:
    """``torsional_molecules`` (needs the chemistry plugin)."""
    mod = _molecular()
    return {} if mod is None else {"torsional_molecules": mod.torsional_molecules}


@hookimpl
def register_commands(subparsers) -> None:
    """``torsion-train`` (alias of ``train``)."""
    from .commands import add_commands

    add_commands(subparsers)
