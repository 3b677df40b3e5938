"""Lazy access to fairchem-core, so that this plugin imports (and registers) without it.

fairchem-core is a heavy optional dependency (``pip install adjoint-core[esen]``). Nothing in
this package imports it at module level: :func:`require_fairchem` imports it when an eSEN
energy or checkpoint is actually built, and raises an :class:`ImportError` that says what to
install. :func:`fairchem_available` answers without importing it.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

__all__ = ["fairchem_available", "require_fairchem", "FAIRCHEM_HINT"]

#: What to install when fairchem-core is missing.
FAIRCHEM_HINT = (
    "the eSEN energy needs fairchem-core (FAIR Chemistry), which is not installed: "
    "install it with `pip install adjoint-core[esen]` (or `pip install adjoint-core-esen`; "
    "tested with fairchem-core 2.24.0 and torch 2.13)"
)


def fairchem_available() -> bool:
    """Whether ``fairchem.core`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("fairchem.core") is not None
    except (ImportError, ValueError):
        return False


def require_fairchem() -> SimpleNamespace:
    """Import the parts of fairchem-core this plugin uses.

    Sets ``HF_HUB_OFFLINE=1`` unless the caller set it: this plugin never downloads anything
    (checkpoints are local files) and the variable makes any accidental hub access fail at once.

    Returns:
        Namespace with ``HydraModel``, ``eSCNMDBackbone``, ``MLP_EFS_Head``,
        ``MLIPInferenceCheckpoint``, ``InferenceSettings``, ``MLIPPredictUnit``, ``AtomicData``,
        ``atomicdata_list_to_batch``, ``FAIRChemCalculator`` and ``version``.

    Raises:
        ImportError: fairchem-core is missing or broken (the message says what to install).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import importlib.metadata as im

        from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
        from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch
        from fairchem.core.models.base import HydraModel
        from fairchem.core.models.uma.escn_md import MLP_EFS_Head, eSCNMDBackbone
        from fairchem.core.units.mlip_unit.api.inference import (
            InferenceSettings,
            MLIPInferenceCheckpoint,
        )
        from fairchem.core.units.mlip_unit.predict import MLIPPredictUnit
    except ImportError as exc:
        raise ImportError(f"{FAIRCHEM_HINT} (import error: {exc})") from exc
    try:
        version = im.version("fairchem-core")
    except im.PackageNotFoundError:
        version = "unknown"
    return SimpleNamespace(
        HydraModel=HydraModel, eSCNMDBackbone=eSCNMDBackbone, MLP_EFS_Head=MLP_EFS_Head,
        MLIPInferenceCheckpoint=MLIPInferenceCheckpoint, InferenceSettings=InferenceSettings,
        MLIPPredictUnit=MLIPPredictUnit, AtomicData=AtomicData,
        atomicdata_list_to_batch=atomicdata_list_to_batch,
        FAIRChemCalculator=FAIRChemCalculator, version=version,
    )
