"""eSEN checkpoints: what the loader accepts, how it checks them, and a random-weight builder.

**Format.** The loader reads fairchem-core 2.x *inference checkpoints*: a file written with
``torch.save`` holding an ``MLIPInferenceCheckpoint`` (from
``fairchem.core.units.mlip_unit.api.inference``: ``model_config``, ``model_state_dict``,
``ema_state_dict``, ``tasks_config``), the format of FAIR Chemistry's released eSEN and UMA
models and of models trained with fairchem-core 2.x. The model must be of the eSEN family
(backbone ``fairchem.core.models.uma.escn_md.eSCNMDBackbone`` or a subclass) and
**energy-conserving** (``direct_forces=False``: forces are ``-∇E`` by autograd, which is what
the sampler needs), with an energy task for the dataset the energy uses (``task_name``,
default ``"omol"``, the molecular head). Checkpoints of fairchem-core 1.x (``OCPCalculator``, a
dict with ``config`` and ``state_dict``) cannot be read by fairchem-core 2.x and are rejected
with that explanation. Nothing is downloaded: the path is a local file.

**Trust.** Like fairchem itself, the loader unpickles the file (``torch.load(...,
weights_only=False)``): only load checkpoints from sources you trust.

**Random weights.** :func:`build_random_checkpoint` builds a small eSEN
(:class:`ESENArchitecture`: ``eSCNMDBackbone`` with ``otf_graph=True``, ``regress_forces=True``,
``direct_forces=False``, an ``MLP_EFS_Head`` in a ``HydraModel``) with random weights and saves
it in exactly this format. Tests and the CI-sized example use it; its energies mean nothing
physically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ._fairchem import require_fairchem

__all__ = [
    "ESENArchitecture", "ESENCheckpointError", "CheckpointInfo", "EXPECTED_FORMAT",
    "build_random_checkpoint", "inspect_checkpoint",
]

#: One-line description of what the loader expects (used in every checkpoint error).
EXPECTED_FORMAT = (
    "expected a fairchem-core 2.x inference checkpoint (torch.save of an "
    "MLIPInferenceCheckpoint with model_config, model_state_dict, ema_state_dict, "
    "tasks_config) of an energy-conserving eSEN-family model (backbone eSCNMDBackbone, "
    "direct_forces=False); adjoint_core_esen.build_random_checkpoint writes a small "
    "random-weight one"
)

_BACKBONE = "fairchem.core.models.uma.escn_md.eSCNMDBackbone"
_HEAD = "fairchem.core.models.uma.escn_md.MLP_EFS_Head"
_TASK = "fairchem.core.units.mlip_unit.mlip_unit.Task"
_SPEC = "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec"
_NORMALIZER = "fairchem.core.modules.normalization.normalizer.Normalizer"


class ESENCheckpointError(ValueError):
    """A missing, unreadable or incompatible eSEN checkpoint; names the path and the reason."""


class ESENArchitecture(BaseModel):
    """Hyper-parameters of a random-weight eSEN (:func:`build_random_checkpoint`).

    The defaults give a ~0.2 M-parameter model that evaluates a 20-atom molecule in tens of
    milliseconds on one CPU core. The names are those of ``eSCNMDBackbone``.

    Attributes:
        sphere_channels: Channels of the spherical node embedding.
        hidden_channels: Hidden width of the blocks and of the energy head.
        edge_channels: Width of the edge (distance and element) embedding.
        num_distance_basis: Gaussian radial basis functions.
        num_layers: Message-passing blocks.
        lmax: Maximum degree of the spherical harmonics.
        mmax: Maximum order.
        cutoff: Radius of the on-the-fly neighbour graph, Å.
        max_neighbors: Neighbours kept per atom.
        max_num_elements: Size of the element embeddings (atomic numbers ``< max_num_elements``).
        task_name: Dataset / head name of the energy and forces tasks (fairchem's ``"omol"`` for
            molecules).
        energy_mean: Mean of the energy normaliser, eV (``E = raw · rmsd + mean``).
        energy_rmsd: Scale of the energy normaliser, eV (forces are scaled by the same).
    """

    model_config = ConfigDict(extra="forbid")

    sphere_channels: int = Field(32, ge=1)
    hidden_channels: int = Field(32, ge=1)
    edge_channels: int = Field(32, ge=1)
    num_distance_basis: int = Field(32, ge=1)
    num_layers: int = Field(2, ge=1)
    lmax: int = Field(2, ge=1, le=6)
    mmax: int = Field(2, ge=0, le=6)
    cutoff: float = Field(6.0, gt=0)
    max_neighbors: int = Field(300, ge=1)
    max_num_elements: int = Field(100, ge=2)
    task_name: str = "omol"
    energy_mean: float = 0.0
    energy_rmsd: float = Field(1.0, gt=0)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found in a checkpoint.

    Attributes:
        path: The checkpoint file.
        backbone: Dotted class name of the backbone.
        backbone_config: The backbone section of ``model_config`` (plain dict).
        task_name: The dataset the energy uses.
        datasets: Every dataset with an energy task.
        energy_task: Name of the energy task of ``task_name``.
        has_forces_task: Whether a forces task exists for ``task_name`` (otherwise forces are
            requested from fairchem as an untrained derivative of the energy).
        fairchem_version: Installed fairchem-core version.
    """

    path: Path
    backbone: str
    backbone_config: dict
    task_name: str
    datasets: tuple[str, ...]
    energy_task: str
    has_forces_task: bool
    fairchem_version: str


def _plain(obj: Any) -> Any:
    """OmegaConf containers → plain Python (checkpoints store either)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with fairchem
        pass
    return obj


def _fail(path: Path, reason: str) -> ESENCheckpointError:
    return ESENCheckpointError(f"eSEN checkpoint {str(path)!r}: {reason}; {EXPECTED_FORMAT}")


def inspect_checkpoint(path: str | Path, task_name: str = "omol") -> CheckpointInfo:
    """Check that ``path`` is a usable eSEN checkpoint, without building the model.

    Args:
        path: Local checkpoint file.
        task_name: Dataset whose energy head the energy will use.

    Returns:
        What the checkpoint holds (:class:`CheckpointInfo`).

    Raises:
        ESENCheckpointError: The file is missing, unreadable, a fairchem-1.x checkpoint, not an
            eSEN-family model, a direct-force model, or has no energy task for ``task_name``;
            the message names the path, what was found and what was expected.
        ImportError: fairchem-core is not installed.
    """
    fc = require_fairchem()
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(p, "no such file (checkpoints are never downloaded: give a local path)")
    if not p.is_file():
        raise _fail(p, "is not a file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling / zip error means "not a torch checkpoint"
        raise _fail(p, f"cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})"
                    ) from None
    fields = ("model_config", "model_state_dict", "ema_state_dict", "tasks_config")
    if isinstance(ckpt, dict):
        if "config" in ckpt and "state_dict" in ckpt:
            raise _fail(p, "this is a fairchem-core 1.x (OCP) checkpoint (a dict with 'config' "
                        "and 'state_dict'), which fairchem-core 2.x cannot load")
        raise _fail(p, f"holds a dict with keys {sorted(map(str, ckpt))[:8]}, not an "
                    f"MLIPInferenceCheckpoint")
    missing = [f for f in fields if not hasattr(ckpt, f)]
    if missing:
        raise _fail(p, f"holds a {type(ckpt).__name__} without {', '.join(missing)}")
    model_config = _plain(ckpt.model_config)
    backbone_cfg = dict(_plain(model_config.get("backbone") or {}))
    name = backbone_cfg.get("model")
    if name is None:
        raise _fail(p, "its model_config has no backbone.model")
    from fairchem.core.common.registry import registry

    try:
        cls = registry.get_model_class(name)
    except Exception as exc:
        raise _fail(p, f"its backbone {name!r} cannot be resolved by fairchem-core "
                    f"{fc.version} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, fc.eSCNMDBackbone)):
        raise _fail(p, f"its backbone {name!r} is not of the eSEN family (eSCNMDBackbone)")
    if backbone_cfg.get("direct_forces", True):
        raise _fail(p, "it is a direct-force model (backbone.direct_forces is true or unset): "
                    "its forces are not the gradient of its energy, which the sampler needs")
    tasks = [_plain(t) for t in _plain(ckpt.tasks_config)]
    energy = {d: t for t in tasks if t.get("property") == "energy" for d in t.get("datasets", [])}
    if task_name not in energy:
        raise _fail(p, f"it has no energy task for task_name {task_name!r}; its energy tasks "
                    f"cover {sorted(energy) or 'nothing'}")
    forces = any(t.get("property") == "forces" and task_name in t.get("datasets", [])
                 for t in tasks)
    return CheckpointInfo(
        path=p, backbone=f"{cls.__module__}.{cls.__qualname__}", backbone_config=backbone_cfg,
        task_name=task_name, datasets=tuple(sorted(energy)),
        energy_task=str(energy[task_name].get("name")), has_forces_task=forces,
        fairchem_version=fc.version,
    )


def _task(name: str, level: str, prop: str, dim: list[int], dataset: str, mean: float,
          rmsd: float) -> dict:
    return {
        "_target_": _TASK, "name": name, "level": level, "property": prop,
        "out_spec": {"_target_": _SPEC, "dim": dim, "dtype": "float32"},
        "normalizer": {"_target_": _NORMALIZER, "mean": float(mean), "rmsd": float(rmsd)},
        "datasets": [dataset],
    }


def build_random_checkpoint(
    path: str | Path, architecture: ESENArchitecture | dict | None = None, seed: int = 0,
) -> Path:
    """Build a random-weight eSEN and save it as an inference checkpoint the loader accepts.

    The model is ``HydraModel(backbone=eSCNMDBackbone(otf_graph=True, regress_forces=True,
    direct_forces=False, always_use_pbc=False, ...), heads={"energyandforcehead":
    MLP_EFS_Head(prefix=task_name)})`` with tasks ``<task_name>_energy`` (system level) and
    ``<task_name>_forces`` (atom level). Weights are drawn from fairchem's initialisation under
    ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards).

    Args:
        path: Output file (parent folders are created).
        architecture: Sizes (:class:`ESENArchitecture` or a dict of its fields).
        seed: Seed of the random weights.

    Returns:
        The path written.

    Raises:
        ImportError: fairchem-core is not installed.
        pydantic.ValidationError: A bad architecture field (named).
    """
    fc = require_fairchem()
    arch = (architecture if isinstance(architecture, ESENArchitecture)
            else ESENArchitecture.model_validate(architecture or {}))
    task = arch.task_name
    backbone = {
        "model": _BACKBONE, "max_num_elements": arch.max_num_elements,
        "sphere_channels": arch.sphere_channels, "lmax": arch.lmax, "mmax": arch.mmax,
        "otf_graph": True, "max_neighbors": arch.max_neighbors, "cutoff": arch.cutoff,
        "edge_channels": arch.edge_channels, "num_distance_basis": arch.num_distance_basis,
        "direct_forces": False, "regress_forces": True, "num_layers": arch.num_layers,
        "hidden_channels": arch.hidden_channels, "always_use_pbc": False,
        "dataset_mapping": {task: task},
    }
    heads = {"energyandforcehead": {"module": _HEAD, "prefix": task}}
    model_config = {"_target_": "fairchem.core.models.base.HydraModel", "backbone": backbone,
                    "heads": heads, "otf_graph": True, "pass_through_head_outputs": True}
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = fc.HydraModel(backbone=backbone, heads=heads, pass_through_head_outputs=True)
    finally:
        torch.random.set_rng_state(state)
    ema = torch.optim.swa_utils.AveragedModel(model)
    tasks = [
        _task(f"{task}_energy", "system", "energy", [1], task, arch.energy_mean, arch.energy_rmsd),
        _task(f"{task}_forces", "atom", "forces", [3], task, 0.0, arch.energy_rmsd),
    ]
    ckpt = fc.MLIPInferenceCheckpoint(
        model_config=model_config, model_state_dict=model.state_dict(),
        ema_state_dict=ema.state_dict(), tasks_config=tasks,
    )
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    return out
