"""Config-driven MCMC runs: ``adjoint-core mcmc CONFIG --out FILE.npy``.

A config names the energy and state space exactly like a training config and adds an ``mcmc:``
section (:class:`~adjoint_core.mcmc.samplers.MCMCSettings`)::

    seed: 0
    energy: {name: lj13}
    space:  {name: euclidean, n_particles: 13, spatial_dim: 3, mean_free: true}
    mcmc:   {method: mala, n_chains: 1000, burn_in: 2000, n_steps: 2000, thin: 100}
    eval:   {reference: lj13_val, n_samples: 2000}   # a registered reference set, or a file

A training config (with ``model``, ``train``, … sections) is accepted too: those sections are
ignored here, and ``mcmc:`` defaults apply when it has none.

Outputs: ``FILE.npy``, the kept samples of the target temperature flattened to
``(N, prod(event_shape))`` (the reference-data layout), and ``FILE.json``, the report: the
resolved config, the convergence diagnostics
(:meth:`~adjoint_core.mcmc.samplers.MCMCResult.diagnostics`),
the wall time and, when ``eval.reference`` is given, the metrics of a seeded random subset of the
samples against it (:func:`~adjoint_core.app.run.evaluate_samples`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adjoint_core.app.config import (
    ComponentSpec,
    EvalSettings,
    RunConfig,
    check_device_name,
    validate_config,
)
from adjoint_core.mcmc.samplers import MCMCSettings, run_mcmc
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry

__all__ = ["MCMCRunConfig", "load_mcmc_config", "run_mcmc_config"]


class MCMCRunConfig(BaseModel):
    """An MCMC run: energy, space, ``mcmc:`` settings and optional evaluation.

    Every other section of a training config (:class:`~adjoint_core.app.config.RunConfig`:
    ``schedule``, ``model``, ``buffer``, ``train``, ``algorithm``, ``init_from``, ...) is
    accepted and ignored, so one file can describe both; any other key is rejected.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = Field(0, ge=0, lt=2**63)
    device: str = "cpu"
    energy: ComponentSpec
    space: ComponentSpec
    mcmc: MCMCSettings = MCMCSettings()
    eval: EvalSettings = EvalSettings()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="before")
    @classmethod
    def _drop_training_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        training_only = set(RunConfig.model_fields) - set(cls.model_fields)
        return {k: v for k, v in data.items() if k not in training_only}


def load_mcmc_config(path: str | Path | dict) -> MCMCRunConfig:
    """Read and validate an MCMC config (YAML file or dict).

    Raises:
        ConfigError: Missing file, bad YAML, or every bad field with its value and reason.
    """
    return validate_config(MCMCRunConfig, path)


def run_mcmc_config(
    config: str | Path | dict | MCMCRunConfig, out: str | Path,
    registry: Registry | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Run the MCMC a config describes; write ``out`` (``.npy``) and ``out`` with ``.json``.

    Args:
        config: Path of the YAML config, a dict, or a validated :class:`MCMCRunConfig`.
        out: Output ``.npy`` path (folders are created).
        registry: Component registry (default: the installed plugins).
        progress: Show a progress bar.

    Returns:
        The report written to the JSON file.

    Raises:
        ConfigError: Bad components, a device this machine lacks, a reference that cannot be
            used, or settings that keep no sample.
    """
    from adjoint_core.app.checkpoint import atomic_write, atomic_write_text
    from adjoint_core.app.run import evaluate_samples, load_reference, resolve_path
    from adjoint_core.training.distributed import resolve_device

    config_dir = None
    if isinstance(config, MCMCRunConfig):
        cfg = config
    else:
        if not isinstance(config, dict):
            config_dir = Path(config).resolve().parent
        cfg = load_mcmc_config(config)
    reg = registry or default_registry()
    space = reg.build("space", cfg.space.name, cfg.space.params)
    energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=space)
    if tuple(energy.event_shape) != tuple(space.event_shape):
        raise ConfigError(f"space: {cfg.space.name!r}: energy {cfg.energy.name!r} has event shape "
                          f"{energy.event_shape} but space {cfg.space.name!r} has "
                          f"{space.event_shape}")
    if cfg.mcmc.n_steps < cfg.mcmc.thin:
        raise ConfigError(f"mcmc.n_steps: {cfg.mcmc.n_steps}: keeps no sample with thin: "
                          f"{cfg.mcmc.thin}; give n_steps >= thin")
    reference = None
    if cfg.eval.reference:
        reference = load_reference(resolve_path(cfg.eval.reference, config_dir), space)
    device = resolve_device(cfg.device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    s = cfg.mcmc
    t0 = time.perf_counter()
    res = run_mcmc(energy, space, n_chains=s.n_chains, n_steps=s.n_steps, burn_in=s.burn_in,
                   thin=s.thin, step_size=s.step_size, method=s.method,
                   target_accept=s.target_accept, generator=gen, progress=progress,
                   grad_clip=s.grad_clip, temperatures=s.temperatures,
                   swap_every=s.swap_every, batch_size=s.batch_size, device=device,
                   n_leapfrog=s.n_leapfrog, jitter=s.jitter, relax_steps=s.relax_steps,
                   lattice_spacing=s.lattice_spacing,
                   min_distance=s.min_distance,
                   step_size_per_chain=s.step_size_per_chain)
    wall = time.perf_counter() - t0
    out = Path(out)
    flat = space.flatten(res.samples).cpu().numpy().astype(np.float32)
    atomic_write(out, lambda fh: np.save(fh, flat))
    report: dict[str, Any] = {
        "samples": str(out),
        "shape": list(flat.shape),
        "config": json.loads(cfg.model_dump_json(exclude_none=True)),
        "diagnostics": res.diagnostics(),
        "wall_time_s": wall,
        "torch_threads": torch.get_num_threads(),
    }
    if reference is not None:
        perm = torch.randperm(res.samples.shape[0], generator=torch.Generator().manual_seed(0))
        report["evaluation"] = evaluate_samples(
            res.samples[perm].cpu(), reference, energy, space, cfg.eval.n_samples,
            cfg.eval.geometric_samples, tuple(cfg.eval.protocols), seed=cfg.seed)
        report["evaluation"]["reference"] = str(cfg.eval.reference)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    return report
