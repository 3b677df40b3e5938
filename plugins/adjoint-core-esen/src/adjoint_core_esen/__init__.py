"""eSEN machine-learned potentials (FAIR Chemistry, fairchem-core) as adjoint-core energies.

Public API (each documented in its module; fairchem-core is imported only when used):

- :class:`~adjoint_core_esen.energy.ESENEnergy`: one molecule's eSEN energy on the core
  ``Energy`` interface (Å, kcal/mol by default, gradient ``-F``), batched over conformers;
- :class:`~adjoint_core_esen.energy.ESENPotential` and
  :func:`~adjoint_core_esen.energy.energy_and_grad_many`: one checkpoint evaluating many
  molecules and conformers in one fairchem batch;
- :func:`~adjoint_core_esen.checkpoint.build_random_checkpoint`,
  :func:`~adjoint_core_esen.checkpoint.inspect_checkpoint`,
  :class:`~adjoint_core_esen.checkpoint.ESENArchitecture`: checkpoints (format, checks, a
  random-weight builder for tests and CI-sized examples).

Registered in configs as the energy ``esen`` (see :mod:`adjoint_core_esen.plugin`).
"""

from __future__ import annotations

from ._fairchem import fairchem_available
from .checkpoint import (
    EXPECTED_FORMAT,
    CheckpointInfo,
    ESENArchitecture,
    ESENCheckpointError,
    build_random_checkpoint,
    inspect_checkpoint,
)
from .energy import (
    ELEMENT_TYPES,
    EV_IN_KCAL_MOL,
    KB_EV,
    UNIT_SCALE,
    ESENEnergy,
    ESENPotential,
    default_temperature,
    energy_and_grad_many,
)

__all__ = [
    "ESENEnergy", "ESENPotential", "energy_and_grad_many", "build_random_checkpoint",
    "inspect_checkpoint", "ESENArchitecture", "ESENCheckpointError", "CheckpointInfo",
    "EXPECTED_FORMAT", "EV_IN_KCAL_MOL", "KB_EV", "UNIT_SCALE", "ELEMENT_TYPES",
    "default_temperature", "fairchem_available",
]
__version__ = "0.1.0"
