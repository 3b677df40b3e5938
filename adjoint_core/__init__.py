"""adjoint-core: Adjoint Sampling of Boltzmann densities, a minimal core plus plugins.

The core defines five interfaces (:class:`Energy`, :class:`StateSpace`,
:class:`NoiseSchedule`, :class:`Model`, :class:`Buffer`), the :class:`Target` that groups them
into a problem, and one training loop, :class:`Trainer`, for every algorithm: Adjoint Sampling
(:class:`AdjointSampler`), ASBS and iDEM are :class:`Objective` s registered by name. Concrete
energies and equivariant networks come
from plugins registered under the ``adjoint_core`` entry-point group.
"""

from adjoint_core.mcmc.samplers import MCMCResult, MCMCSettings, run_mcmc
from adjoint_core.plugins.hookspecs import hookimpl
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry
from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.gaussian import GaussianEnergy
from adjoint_core.problem.models import MLP, Model
from adjoint_core.problem.periodic import PeriodicMLP, radial_distribution
from adjoint_core.problem.schedules import GeometricSchedule, LinearSchedule, NoiseSchedule
from adjoint_core.problem.spaces import EuclideanSpace, PeriodicSpace, StateSpace
from adjoint_core.problem.target import Problem, Target
from adjoint_core.problem.torsional import TorsionalSpace
from adjoint_core.problem.von_mises import VonMisesEnergy
from adjoint_core.training.objectives.adjoint_sampling import AdjointSampling
from adjoint_core.training.objectives.asbs import (
    ASBSSettings,
    SchrodingerBridge,
    SchrodingerBridgeSampler,
)
from adjoint_core.training.objectives.base import Capabilities, Objective
from adjoint_core.training.objectives.bridge import BridgeMatching
from adjoint_core.training.objectives.idem import IDEM, IDEMSampler, IDEMSettings
from adjoint_core.training.parallel import DataParallel, SingleProcess
from adjoint_core.training.trainer import (
    AdjointSampler,
    NonFiniteEnergyError,
    Trainer,
    TrainingDiverged,
    TrainSettings,
)

__version__ = "0.1.0"

__all__ = [
    "Energy",
    "GaussianEnergy",
    "VonMisesEnergy",
    "Trainer",
    "AdjointSampler",
    "TrainSettings",
    "NonFiniteEnergyError",
    "TrainingDiverged",
    "Target",
    "Problem",
    "Objective",
    "Capabilities",
    "AdjointSampling",
    "SchrodingerBridge",
    "IDEM",
    "BridgeMatching",
    "SingleProcess",
    "DataParallel",
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
