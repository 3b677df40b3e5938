"""adjoint-core-particles: double-well, Lennard-Jones and Gaussian-mixture energies.

Energies of the synthetic Adjoint Sampling / iDEM benchmarks (DW-4, LJ-13, LJ-55, GMM-40) as
:class:`adjoint_core.Energy` subclasses, the periodic Lennard-Jones fluid
(:class:`PeriodicLennardJonesEnergy`, ``lj_periodic``), the DW-4, LJ-13 and LJ-55 reference samples
(package data, registered as ``dw4_val``, ``lj13_val`` and ``lj55_mcmc``) and their loaders.
Installing the distribution registers them with adjoint-core under the ``particles`` plugin.
"""

from .double_well import DoubleWellEnergy
from .gaussian_mixture import SOFTPLUS_ONE, GaussianMixtureEnergy
from .lennard_jones import LennardJonesEnergy
from .periodic_lj import PeriodicLennardJonesEnergy, lj_periodic
from .presets import dw4, gmm40, lj13, lj55
from .reference import (
    PACKAGED_REFERENCES,
    REFERENCE_FILES,
    REFERENCE_SHAPES,
    find_reference,
    load_named_reference,
    load_reference,
    packaged_reference_path,
)

__version__ = "0.1.0"

__all__ = [
    "DoubleWellEnergy",
    "LennardJonesEnergy",
    "PeriodicLennardJonesEnergy",
    "lj_periodic",
    "GaussianMixtureEnergy",
    "SOFTPLUS_ONE",
    "dw4",
    "lj13",
    "lj55",
    "gmm40",
    "PACKAGED_REFERENCES",
    "REFERENCE_FILES",
    "REFERENCE_SHAPES",
    "find_reference",
    "load_reference",
    "load_named_reference",
    "packaged_reference_path",
    "__version__",
]
