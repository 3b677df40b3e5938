"""adjoint-core-example-energy: a third-party energy plugin for adjoint-core.

Installing the distribution registers :class:`HarmonicRingEnergy` as ``harmonic_ring``
through the ``adjoint_core`` entry-point group (see :mod:`adjoint_core_example_energy.plugin`).
"""

from .energy import HarmonicRingEnergy

__version__ = "0.1.0"

__all__ = ["HarmonicRingEnergy", "__version__"]
