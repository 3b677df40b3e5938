"""Shipped conformer models: export a trained molecular run to a slim directory and load it.

A run directory of ``adjoint-core train`` holds everything needed to resume training (the
optimizer, the replay buffers of every training molecule, RNG states) and rebuilding it with
:func:`adjoint_core.app.run.load_run` builds the whole training problem (e.g. 1,000 molecules
with their ETKDG conformers). A *model directory* holds only what sampling needs::

    MODEL_DIR/config.yaml   the run's config without the training molecule list
    MODEL_DIR/model.pt      the weights that sampling uses (the EMA average when the run kept
                            one, else the trained network), float32, a plain state dict
                            (``torch.load(path, weights_only=True)``)
    MODEL_DIR/card.json     provenance: source run, its config and training command, epochs,
                            gradient steps, energy evaluations, wall time (and CPU-hours when
                            known), torch version, parameter count, the exporter's own notes

:func:`export_model` (command ``adjoint-core chem-export RUN_DIR --out MODEL_DIR``) writes one;
:func:`load_model` rebuilds a :class:`~adjoint_core.training.trainer.Trainer` from it in well
under a second on a CPU. Its problem has a single placeholder target (butane) instead of the
training molecules, and its ``problem.make_target(molecule)`` builds the target of any new
molecule with the run's energy settings, so the trainer serves
:func:`~adjoint_core_chem.api.generate_conformers`,
:func:`~adjoint_core_chem.commands.generate_for_molecule` and
:func:`~adjoint_core_chem.api.importance_weights` exactly like the run it came from: conformers
sampled with the same seed are identical.

The plugin's default model is the package-data directory :data:`DEFAULT_MODEL`
(``adjoint_core_chem/data/models/spice_egnn``); :func:`load_model` without a path loads it,
and says how to train and export one when it is not installed.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.resources
import io
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from adjoint_core.app.checkpoint import atomic_write, atomic_write_text
from adjoint_core.plugins.registry import ConfigError

__all__ = ["DEFAULT_MODEL", "NO_DEFAULT_MODEL", "MODEL_FILES", "PLACEHOLDER_SMILES",
           "TRAINING_SET_KEYS", "is_model_dir", "export_model", "load_model", "read_card"]

#: Files of a model directory.
MODEL_FILES = ("config.yaml", "model.pt", "card.json")
#: Problem parameters that select the training molecules; removed from an exported config.
TRAINING_SET_KEYS = ("smiles_file", "smiles", "max_molecules", "offset", "shuffle_seed",
                     "min_rotatable_bonds")
#: The one molecule of a loaded model's problem (cheap to build; has a rotatable bond, so
#: torsional problems accept it too).
PLACEHOLDER_SMILES = "CCCC"
#: Format tag written to ``card.json``.
FORMAT = "adjoint-core-chem model"
#: Version of the model-directory layout.
FORMAT_VERSION = 1


def _default_model() -> Path:
    return Path(str(importlib.resources.files(__package__).joinpath("data"))) / "models" / \
        "spice_egnn"


#: The default model directory (package data; the shipped SPICE model).
DEFAULT_MODEL: Path = _default_model()

#: How to get a model when the default one is not installed (used in error messages).
NO_DEFAULT_MODEL = (
    "the default conformer model is not installed in this copy of adjoint-core-chem (no "
    "model directory at {path}); give --run RUN_DIR, the output folder of a molecular "
    "training run (e.g. `adjoint-core train examples/chem_spice_cpu.yaml --out "
    "runs/chem_spice_cpu`, CPU budget in docs/chem.md, or the GPU config "
    "examples/chem_spice_gpu.yaml) or a model directory exported from one with `adjoint-core "
    "chem-export RUN_DIR --out MODEL_DIR`; exporting to {path} installs it as the default")


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a model directory (holds ``model.pt`` and ``card.json``)."""
    p = Path(path)
    return (p / "model.pt").is_file() and (p / "card.json").is_file()


def read_card(path: str | Path) -> dict:
    """The ``card.json`` of a model directory.

    Raises:
        ConfigError: Missing or not a JSON object.
    """
    return read_json_object(Path(path) / "card.json", "model",
                            "export the model again with adjoint-core chem-export")


def read_json_object(file: str | Path, field: str, hint: str) -> dict:
    """A JSON file holding an object.

    Raises:
        ConfigError: ``<field>: <file>: <what is wrong>; <hint>`` when the file cannot be read
            as JSON or holds something else than an object.
    """
    try:
        value = json.loads(Path(file).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field}: {file}: cannot be read as JSON ({exc}); {hint}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: {file}: holds a JSON {type(value).__name__}, not an "
                          f"object; {hint}")
    return value


def _slim_config(config: dict) -> tuple[dict, dict]:
    """The config without the training molecules, and what was removed.

    The device becomes ``auto`` (CUDA when available) and ``init_from`` and
    ``train.ema_decay`` are cleared: ``model.pt`` already holds the averaged weights.
    """
    cfg = json.loads(json.dumps(config))
    problem = cfg.get("problem")
    if not isinstance(problem, dict):
        raise ConfigError("run_dir: its config has no problem: section; export needs a "
                          "molecular run (problem: molecules or torsional_molecules)")
    removed = {k: problem.pop(k) for k in TRAINING_SET_KEYS if k in problem}
    cfg["device"] = "auto"
    cfg["init_from"] = None
    cfg.setdefault("train", {})["ema_decay"] = None
    return cfg, removed


def _cpu_hours(metrics: dict, wall_s: float | None) -> float | None:
    """CPU-hours recorded in ``metrics.json`` (``cpu_hours``, ``cpu_seconds``), else ``None``.

    The core does not record the thread count of a run, so CPU-hours are not derived from the
    wall time; give them in the card (``card={"cpu_hours": ...}``) when known.
    """
    if isinstance(metrics.get("cpu_hours"), (int, float)):
        return float(metrics["cpu_hours"])
    if isinstance(metrics.get("cpu_seconds"), (int, float)):
        return float(metrics["cpu_seconds"]) / 3600.0
    return None


def export_model(run_dir: str | Path, dest_dir: str | Path, card: dict | None = None) -> Path:
    """Write the model directory of a trained molecular run (module docstring).

    Args:
        run_dir: The ``--out`` folder of ``adjoint-core train`` (``config.yaml``,
            ``checkpoints/latest.pt``; ``metrics.json`` is read when present).
        dest_dir: The model directory to write (created; an existing model directory is
            overwritten, any other non-empty folder is refused).
        card: Notes for ``card.json`` (e.g. ``{"description": ..., "cpu_hours": ...,
            "training_command": ...}``), stored under ``"card"``; ``cpu_hours`` and
            ``training_command`` given here also replace the derived ones.

    Returns:
        ``dest_dir``.

    Raises:
        ConfigError: Not a run directory (or already a model directory), no checkpoint, a
            run whose problem cannot make targets for new molecules, or a ``dest_dir`` that is
            a file or a non-empty foreign folder.
    """
    from adjoint_core.app.run import load_run

    run_dir, dest = Path(run_dir), Path(dest_dir)
    if card is not None and not isinstance(card, dict):
        raise ConfigError(f"card: {card!r}: give a JSON object (a dict)")
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--out: {dest}: exists and is not a directory; give a new folder")
    if dest.is_dir() and any(dest.iterdir()) and not is_model_dir(dest):
        raise ConfigError(f"--out: {dest}: a non-empty folder that is not a model directory; "
                          "give a new folder")
    if is_model_dir(run_dir):
        raise ConfigError(f"run_dir: {run_dir}: already a model directory, not a run "
                          "directory; copy it, or give the --out folder of adjoint-core train")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"run_dir: {run_dir}: not a run directory (no config.yaml); give the "
                          "--out folder of adjoint-core train")
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        raise ConfigError(f"run_dir: {run_dir}: no checkpoints/latest.pt (no epoch of the "
                          "training has finished yet); export after training")
    config = yaml.safe_load(cfg_path.read_text())
    slim, removed = _slim_config(config)
    trainer = load_run(run_dir, device="cpu")
    if trainer.problem.make_target is None:
        raise ConfigError(f"run_dir: {run_dir}: its problem cannot make a target for a new "
                          "molecule; train with problem: molecules or torsional_molecules")
    net = trainer.sampling_model
    weights = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point()
                   else v.detach().cpu()).clone().contiguous()
               for k, v in net.state_dict().items()}
    metrics: dict[str, Any] = {}
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (ValueError, UnicodeDecodeError):
            metrics = {}
    timers = {k: float(v) for k, v in (metrics.get("timers") or trainer.timers).items()}
    wall_s = sum(timers.values()) if timers else None
    notes = dict(card or {})
    dist = metrics.get("distributed") or {}
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run_dir.resolve()),
        "training_command": notes.get("training_command",
                                      f"adjoint-core train {run_dir}/config.yaml --out "
                                      f"{run_dir}"),
        "config": config,
        "training_molecules": removed,
        "algorithm": trainer.objective.name,
        "epochs": int(trainer.counters["epoch"]),
        "grad_steps": int(trainer.counters["grad_steps"]),
        "energy_evals": int(trainer.counters["energy_evals"]),
        "wall_time_s": wall_s,
        "timers_s": timers,
        "cpu_hours": notes.get("cpu_hours", _cpu_hours(metrics, wall_s)),
        "training_device": dist.get("device"),
        "world_size": dist.get("world_size", 1),
        "weights": "ema" if trainer.ema_model is not None else "model",
        "dtype": "float32",
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "torch_version": str(torch.__version__),
        "card": notes,
    }
    blob = io.BytesIO()
    torch.save(weights, blob)
    data = blob.getvalue()
    info["model_sha256"] = hashlib.sha256(data).hexdigest()
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "config.yaml", yaml.safe_dump(slim, sort_keys=False))
    atomic_write(dest / "model.pt", lambda fh: fh.write(data))
    atomic_write_text(dest / "card.json", json.dumps(info, indent=2))
    return dest


def load_model(path: str | Path | None = None, device: str | None = None):
    """Load a model directory as a sampling-ready trainer (module docstring).

    Args:
        path: The model directory (default: :data:`DEFAULT_MODEL`).
        device: Torch device (default: the exported config's ``auto``: CUDA when available).

    Returns:
        A :class:`~adjoint_core.training.trainer.Trainer` with the exported weights, one
        placeholder target and the run's ``problem.make_target``; ``problem.info`` holds
        ``{"model_dir": path, "card": card}``.

    Raises:
        ConfigError: No model directory at ``path`` (for the default: how to train and export
            one), an unreadable card or config, or weights that do not fit the config's network.
    """
    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import build_trainer

    default = path is None
    p = Path(DEFAULT_MODEL if default else path)
    if not is_model_dir(p):
        if default:
            raise ConfigError("--run: " + NO_DEFAULT_MODEL.format(path=p))
        raise ConfigError(f"--run: {p}: not a model directory (needs model.pt and card.json); "
                          "export one with adjoint-core chem-export RUN_DIR --out DIR")
    card = read_card(p)
    if not (p / "config.yaml").is_file():
        raise ConfigError(f"--run: {p}: no config.yaml; export the model again with "
                          "adjoint-core chem-export")
    raw = yaml.safe_load((p / "config.yaml").read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("problem"), dict):
        raise ConfigError(f"--run: {p / 'config.yaml'}: not the config of a molecular model "
                          "(no problem: section); export the model again")
    problem = {k: v for k, v in raw["problem"].items() if k not in TRAINING_SET_KEYS}
    problem["smiles"] = [PLACEHOLDER_SMILES]
    raw = {**raw, "problem": problem, "init_from": None,
           "train": {**(raw.get("train") or {}), "ema_decay": None}}
    if device is not None:
        raw["device"] = device
    cfg = load_config(raw)
    trainer = build_trainer(cfg)
    state = torch.load(p / "model.pt", map_location=trainer.device, weights_only=True)
    try:
        trainer.model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"--run: {p / 'model.pt'}: does not fit the network of its "
                          f"config.yaml ({exc}); export the model again") from None
    trainer.model.eval()
    trainer.problem.info = {"model_dir": str(p), "card": card}
    return trainer
