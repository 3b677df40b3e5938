"""The ``particles`` plugin of adjoint-core: registers this distribution's energies by name.

Entry point (``pyproject.toml``)::

    [project.entry-points.adjoint_core]
    particles = "adjoint_core_particles.plugin"

Registered energies: ``dw4``, ``lj13``, ``lj55``, ``gmm40`` (benchmark presets, see
:mod:`adjoint_core_particles.presets`), the general ``double_well``, ``lennard_jones``,
``gaussian_mixture``, and the periodic Lennard-Jones fluid ``lj_periodic``
(:mod:`adjoint_core_particles.periodic_lj`).

Registered reference sets (package data, :mod:`adjoint_core_particles.reference`): ``dw4_val``,
``lj13_val`` and ``lj55_mcmc``, for ``eval.reference: dw4_val`` in a config.
"""

from __future__ import annotations

from collections.abc import Callable

from adjoint_core import hookimpl

from .double_well import DoubleWellEnergy
from .gaussian_mixture import GaussianMixtureEnergy
from .lennard_jones import LennardJonesEnergy
from .periodic_lj import lj_periodic
from .presets import dw4, gmm40, lj13, lj55
from .reference import PACKAGED_REFERENCES, packaged_reference_path

__all__ = ["register_energies", "register_references", "ENERGIES"]

#: Name → factory of every energy this plugin registers.
ENERGIES: dict[str, Callable[..., object]] = {
    "dw4": dw4,
    "lj13": lj13,
    "lj55": lj55,
    "gmm40": gmm40,
    "double_well": DoubleWellEnergy,
    "lennard_jones": LennardJonesEnergy,
    "gaussian_mixture": GaussianMixtureEnergy,
    "lj_periodic": lj_periodic,
}


@hookimpl
def register_energies() -> dict:
    """Return ``{name: factory}`` of the particle and toy energies."""
    return dict(ENERGIES)


@hookimpl
def register_references() -> dict:
    """Return ``{name: path}`` of the reference sets shipped as package data."""
    return {name: packaged_reference_path(name) for name in PACKAGED_REFERENCES}
