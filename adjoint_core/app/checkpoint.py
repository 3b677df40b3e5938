"""Checkpoints: atomic writes, safe loads, and provenance.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(..., weights_only=True)``, which executes no pickled code) holding the
trainer's full state (:meth:`~adjoint_core.Trainer.state_dict`: model, optimizer, replay
buffers, RNG states, counters), the resolved run config and the versions of torch, the core
and every plugin distribution. It is written to a temporary file in the same folder and
renamed over the target, so a crash during a write never leaves a corrupt checkpoint behind.
"""

from __future__ import annotations

import errno
import importlib.metadata as im
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "COMPONENT_SECTIONS", "save_checkpoint", "load_checkpoint", "environment_versions",
    "CheckpointError", "CheckpointWriteError", "atomic_write", "atomic_write_text",
    "RUNTIME_KEYS", "config_mismatch",
]

FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint (or another run file) failed; the previous version is unchanged.

    Attributes:
        path: The file that could not be written.
        errno: The operating system's error number (``errno.ENOSPC``: disk full, ...).
    """

    def __init__(self, path: str | Path, exc: OSError) -> None:
        self.path = Path(path)
        self.errno = exc.errno
        name = errno.errorcode.get(exc.errno, "?") if exc.errno is not None else "?"
        reason = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(f"{path}: cannot be written ({name}: {reason}); the previous version of "
                         "the file is unchanged")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically: ``write(fh)`` into a temporary file beside it, then rename.

    The data is flushed to disk before the rename, so after a crash, a full disk or a failed
    write the path holds either its previous content or the complete new one, never a torn
    file; the temporary file is removed on failure. Missing folders are created.

    Args:
        path: Target file.
        write: Writes the content to the binary file object it is given.

    Returns:
        The path written.

    Raises:
        CheckpointWriteError: The folder or the file cannot be written (naming the path and
            the error number).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would make results private
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointWriteError(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _file_mode(path: Path) -> int:
    """The permissions of the file at ``path``, or those a new file gets (``0666 & ~umask``)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


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

    Raises:
        CheckpointWriteError: The write failed (disk full, permission, ...); the previous
            checkpoint at ``path`` is unchanged.
    """
    payload = {"format": FORMAT_VERSION, "state": state, "config": config or {},
               "versions": environment_versions()}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


#: The config sections a checkpoint's state depends on (a resumed run must match all of them).
COMPONENT_SECTIONS = ("energy", "space", "problem", "schedule", "model", "buffer")
#: Keys of those sections that change speed, not results (e.g. the chemistry plugin's count of
#: energy worker processes): a resumed launch may set them differently.
RUNTIME_KEYS = ("energy_workers",)


def _without_runtime_keys(section: Any) -> Any:
    if isinstance(section, dict):
        return {k: v for k, v in section.items() if k not in RUNTIME_KEYS}
    return section


def config_mismatch(stored: dict, expected: dict, sections: Sequence[str]) -> str:
    """The ``sections`` in which two configs differ (apart from :data:`RUNTIME_KEYS`).

    Returns:
        ``"<section>: checkpoint <stored> vs config <expected>; …"``, or ``""`` if they agree.
    """
    return "; ".join(f"{k}: checkpoint {stored.get(k)} vs config {expected.get(k)}"
                     for k in sections
                     if _without_runtime_keys(stored.get(k))
                     != _without_runtime_keys(expected.get(k)))


def load_checkpoint(path: str | Path, expected_config: dict | None = None,
                    map_location: Any = "cpu",
                    sections: tuple[str, ...] = COMPONENT_SECTIONS) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check it fits ``expected_config``.

    Args:
        path: Checkpoint file.
        expected_config: If given, the stored config's ``sections`` must match (apart from
            ``RUNTIME_KEYS``).
        map_location: Passed to :func:`torch.load`.
        sections: The config sections compared with ``expected_config``.

    Raises:
        CheckpointError: Missing file, unreadable content, unknown format, or a config mismatch
            (naming the differing sections).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path}: checkpoint not found (a run writes it at the "
                              "end of its first epoch)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint: {path}: cannot read checkpoint ({detail})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: {path}: not an adjoint-core checkpoint of format {FORMAT_VERSION} "
            f"(found format {payload.get('format') if isinstance(payload, dict) else '?'})"
        )
    if expected_config is not None:
        details = config_mismatch(payload.get("config", {}), expected_config, sections)
        if details:
            raise CheckpointError(f"checkpoint: {path}: was made with another configuration "
                                  f"({details}); use another run directory")
    return payload
