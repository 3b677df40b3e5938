"""adjoint-core: Adjoint Sampling of Boltzmann densities, a minimal core plus plugins.

The core defines five interfaces (:class:`Energy`, :class:`StateSpace`,
:class:`NoiseSchedule`, :class:`Model`, :class:`Buffer`) and the generic training loop
:class:`AdjointSampler` that composes them. Concrete energies and equivariant networks come
from plugins registered under the ``adjoint_core`` entry-point group.
"""

from .asbs import ASBSSettings, SchrodingerBridgeSampler
from .buffer import Buffer, ReplayBuffer
from .energy import Energy
from .gaussian import GaussianEnergy
from .hookspecs import hookimpl
from .idem import IDEMSampler, IDEMSettings
from .mcmc import MCMCResult, MCMCSettings, run_mcmc
from .models import MLP, Model
from .periodic import PeriodicMLP, radial_distribution
from .registry import ConfigError, Registry, default_registry
from .sampler import AdjointSampler, TrainSettings
from .schedules import GeometricSchedule, LinearSchedule, NoiseSchedule
from .spaces import EuclideanSpace, PeriodicSpace, StateSpace
from .torsional import TorsionalSpace
from .von_mises import VonMisesEnergy

__version__ = "0.1.0"

__all__ = [
    "Energy",
    "GaussianEnergy",
    "VonMisesEnergy",
    "AdjointSampler",
    "TrainSettings",
    "StateSpace",
    "EuclideanSpace",
    "PeriodicSpace",
    "TorsionalSpace",
    "NoiseSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "Model",
    "MLP",
    "PeriodicMLP",
    "run_mcmc",
    "MCMCResult",
    "MCMCSettings",
    "IDEMSampler",
    "IDEMSettings",
    "SchrodingerBridgeSampler",
    "ASBSSettings",
    "radial_distribution",
    "Buffer",
    "ReplayBuffer",
    "Registry",
    "ConfigError",
    "default_registry",
    "hookimpl",
    "__version__",
]
