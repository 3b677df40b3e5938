"""Checkpoints: atomic writes, safe loads, and provenance.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(..., weights_only=True)``, which executes no pickled code) holding the sampler's
full state (:meth:`AdjointSampler.state_dict`: model, optimizer, replay buffer, RNG states,
counters), the resolved run config and the versions of torch, the core and every plugin
distribution. It is written to a temporary file in the same folder and renamed over the
target, so a crash during a write never leaves a corrupt checkpoint behind.
"""

from __future__ import annotations

import importlib.metadata as im
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "COMPONENT_SECTIONS", "save_checkpoint", "load_checkpoint", "environment_versions",
    "CheckpointError",
]

FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


def environment_versions() -> dict[str, str]:
    """Versions of torch, adjoint-core and every installed ``adjoint_core`` plugin distribution."""
    out = {"torch": str(torch.__version__)}
    for ep in im.entry_points(group="adjoint_core"):
        if ep.dist is not None:
            out[ep.dist.name] = ep.dist.version
    return out


def save_checkpoint(path: str | Path, state: dict, config: dict | None = None) -> Path:
    """Atomically write ``{"state", "config", "versions", "format"}`` to ``path``.

    Args:
        path: Target file.
        state: Sampler state (tensors and plain values).
        config: Resolved run config as plain values.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, "state": state, "config": config or {},
               "versions": environment_versions()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: The config sections a checkpoint's state depends on (a resumed run must match all of them).
COMPONENT_SECTIONS = ("energy", "space", "problem", "schedule", "model", "buffer")


def load_checkpoint(path: str | Path, expected_config: dict | None = None,
                    map_location: Any = "cpu",
                    sections: tuple[str, ...] = COMPONENT_SECTIONS) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check it fits ``expected_config``.

    Args:
        path: Checkpoint file.
        expected_config: If given, the stored config's ``sections`` must match.
        map_location: Passed to :func:`torch.load`.
        sections: The config sections compared with ``expected_config``.

    Raises:
        CheckpointError: Missing file, unreadable content, unknown format, or a config mismatch
            (naming the differing sections).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an adjoint-core checkpoint of format {FORMAT_VERSION} "
            f"(found format {payload.get('format') if isinstance(payload, dict) else '?'})"
        )
    if expected_config is not None:
        stored = payload.get("config", {})
        diff = [k for k in sections if stored.get(k) != expected_config.get(k)]
        if diff:
            details = "; ".join(f"{k}: checkpoint {stored.get(k)} vs config "
                                f"{expected_config.get(k)}" for k in diff)
            raise CheckpointError(f"checkpoint {path} was made with another configuration "
                                  f"({details})")
    return payload
