"""Reference (ground-truth) particle samples: the packaged sets, other locations, loaders.

Three reference sets ship with this distribution as package data (``adjoint_core_particles/data``,
provenance and licences in its ``README.md`` and ``LICENSE-DEM.txt``): the DW-4 and LJ-13
validation splits of the iDEM and Adjoint Sampling papers (``dw4_val``, ``lj13_val``), and
2,000 LJ-55 states of this project's own HMC reference run (``lj55_mcmc``). They are ``.npy``
arrays of shape ``(N, n_particles * spatial_dim)`` (flattened ``x1, y1, (z1,) x2, ...``). The
DW-4 file is **not** mean-free, so :func:`load_reference` removes the centre of mass by default.

The plugin registers them by name (:data:`PACKAGED_REFERENCES`, hook ``register_references``),
so a config says ``eval.reference: dw4_val`` and ``adjoint-core evaluate`` takes
``--reference dw4_val``.

:func:`find_reference` looks for a set by system name, in order, in

1. ``$ADJOINT_CORE_DATA`` and ``$ADJOINT_CORE_DATA/particles`` (an explicit choice wins);
2. the package's own ``data/`` folder (always holds ``dw4`` and ``lj13``);
3. ``<ancestor>/data`` for every ancestor of the working directory and of this module's
   directory: the repository's own ``data/`` folder, where
   generated references go, e.g. the full 10,000-sample LJ-55 set made by
   ``adjoint-core mcmc bench/configs/lj55_mcmc.yaml --out data/lj55_mcmc.npy``;

and otherwise returns the packaged set of that system (for LJ-55 its 2,000-state subset).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "REFERENCE_FILES",
    "REFERENCE_SHAPES",
    "PACKAGED_REFERENCES",
    "SYSTEM_REFERENCES",
    "DATA_ENV_VAR",
    "packaged_reference_path",
    "find_reference",
    "load_reference",
    "load_named_reference",
]

#: Environment variable naming a directory that holds the reference files.
DATA_ENV_VAR = "ADJOINT_CORE_DATA"

#: Known reference sets by system name: name → file name.
REFERENCE_FILES: dict[str, str] = {"dw4": "dw4_val.npy", "lj13": "lj13_val.npy",
                                   "lj55": "lj55_mcmc.npy"}

#: Known reference sets by system name: name → ``(n_particles, spatial_dim)``.
REFERENCE_SHAPES: dict[str, tuple[int, int]] = {"dw4": (4, 2), "lj13": (13, 3),
                                                "lj55": (55, 3)}

#: Reference sets shipped as package data: registered name → file name in ``data/``.
PACKAGED_REFERENCES: dict[str, str] = {"dw4_val": "dw4_val.npy", "lj13_val": "lj13_val.npy",
                                       "lj55_mcmc": "lj55_mcmc_2000.npy"}

#: The packaged set of each system of :data:`REFERENCE_FILES`.
SYSTEM_REFERENCES: dict[str, str] = {"dw4": "dw4_val", "lj13": "lj13_val", "lj55": "lj55_mcmc"}


def _data_dir() -> Path:
    """The package's ``data/`` folder (an ordinary directory: the wheel is not zip-safe)."""
    return Path(str(importlib.resources.files(__package__).joinpath("data")))


def packaged_reference_path(name: str) -> Path:
    """Installed path of a reference set shipped with this package.

    Args:
        name: A key of :data:`PACKAGED_REFERENCES` (``"dw4_val"``, ``"lj13_val"`` or
            ``"lj55_mcmc"``).

    Returns:
        The ``.npy`` file inside the installed package.

    Raises:
        ValueError: If ``name`` is not a packaged set (the message lists them).
    """
    if name not in PACKAGED_REFERENCES:
        raise ValueError(f"unknown packaged reference set {name!r}; packaged: "
                         f"{', '.join(sorted(PACKAGED_REFERENCES))}")
    return _data_dir() / PACKAGED_REFERENCES[name]


def _search_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        dirs += [Path(env), Path(env) / "particles"]
    dirs.append(_data_dir())
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for ancestor in (start, *start.parents):
            dirs.append(ancestor / "data")
    return dirs


def find_reference(name: str) -> Path | None:
    """Path of a known reference file, or ``None`` if it cannot be found.

    Args:
        name: A key of :data:`REFERENCE_FILES` (``"dw4"``, ``"lj13"`` or ``"lj55"``).

    Returns:
        The first existing candidate (see the module docstring for the search order), else
        the packaged set of the system; ``None`` only if the package data is missing.

    Raises:
        ValueError: If ``name`` is not a known reference set.
    """
    if name not in REFERENCE_FILES:
        raise ValueError(
            f"unknown reference set {name!r}; known: {', '.join(sorted(REFERENCE_FILES))}"
        )
    filename = REFERENCE_FILES[name]
    for directory in _search_dirs():
        candidate = directory / filename
        if candidate.is_file():
            return candidate
    packaged = packaged_reference_path(SYSTEM_REFERENCES[name])
    return packaged if packaged.is_file() else None


def load_reference(
    path: str | os.PathLike,
    n_particles: int,
    spatial_dim: int,
    mean_free: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Load reference samples from an ``.npy`` file.

    Args:
        path: ``.npy`` file of shape ``(N, n_particles * spatial_dim)`` (or already
            ``(N, n_particles, spatial_dim)``).
        n_particles: Particles per sample.
        spatial_dim: Spatial dimension.
        mean_free: Subtract each sample's centre of mass (unweighted mean over particles).
        dtype: Floating dtype of the result.

    Returns:
        Samples of shape ``(N, n_particles, spatial_dim)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the array's shape does not match; the message names the file, the
            shape found and the shape expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {str(path)!r} does not exist")
    arr = np.load(path, allow_pickle=False)
    flat = n_particles * spatial_dim
    if arr.ndim == 2 and arr.shape[1] == flat:
        arr = arr.reshape(arr.shape[0], n_particles, spatial_dim)
    elif not (arr.ndim == 3 and arr.shape[1:] == (n_particles, spatial_dim)):
        raise ValueError(
            f"reference file {str(path)!r} has shape {tuple(arr.shape)}; expected "
            f"(N, {flat}) = (N, n_particles*spatial_dim) for n_particles={n_particles}, "
            f"spatial_dim={spatial_dim} (or (N, {n_particles}, {spatial_dim}))"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"reference file {str(path)!r} holds dtype {arr.dtype}; expected floating point"
        )
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)
    if mean_free:
        x = x - x.mean(dim=1, keepdim=True)
    return x


def load_named_reference(
    name: str, mean_free: bool = True, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Find and load a known reference set (``"dw4"``, ``"lj13"`` or ``"lj55"``).

    Args:
        name: A key of :data:`REFERENCE_FILES`.
        mean_free: Subtract each sample's centre of mass.
        dtype: Floating dtype of the result.

    Returns:
        Samples of shape ``(N, n_particles, spatial_dim)`` (see :data:`REFERENCE_SHAPES`).

    Raises:
        ValueError: If ``name`` is unknown.
        FileNotFoundError: If the file is not found in any searched directory.
    """
    path = find_reference(name)
    if path is None:
        searched = ", ".join(str(d) for d in dict.fromkeys(_search_dirs()))
        raise FileNotFoundError(
            f"reference file {REFERENCE_FILES[name]!r} for {name!r} not found; set "
            f"${DATA_ENV_VAR} to its directory (searched: {searched})"
        )
    n_particles, spatial_dim = REFERENCE_SHAPES[name]
    return load_reference(path, n_particles, spatial_dim, mean_free=mean_free, dtype=dtype)
