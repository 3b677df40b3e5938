"""The ``example_energy`` plugin: registers ``harmonic_ring`` with adjoint-core.

Entry point (``pyproject.toml``)::

    [project.entry-points.adjoint_core]
    example_energy = "adjoint_core_example_energy.plugin"
"""

from __future__ import annotations

from adjoint_core import hookimpl

from .energy import HarmonicRingEnergy

__all__ = ["register_energies"]


@hookimpl
def register_energies() -> dict:
    """Return ``{name: factory}``: the config name ``harmonic_ring`` builds the energy."""
    return {"harmonic_ring": HarmonicRingEnergy}
