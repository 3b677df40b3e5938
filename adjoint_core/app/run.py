"""Config-driven runs: build, train (with checkpoints and evaluations) and reload samplers.

A :class:`~adjoint_core.app.config.RunConfig` is trained into a run directory and reloaded from it
for sampling.

Run directory layout::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/checkpoints/latest.pt  full state after the last finished epoch (atomic writes)
    RUN_DIR/metrics.json           per-epoch log, evaluations, counters, wall time per phase
    RUN_DIR/plots/*.png            loss curve, energy histogram, 2-D sample plots

Re-running ``train`` on an existing run directory resumes from ``latest.pt``.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE > 1`` in the environment) :func:`train_run`
initialises ``torch.distributed`` and trains data-parallel
(:mod:`adjoint_core.training.distributed`);
only rank 0 reads and writes the run directory and logs. The checkpoint holds rank 0's full
state plus the other ranks' buffer shards and generators, so it resumes with any number of
processes, including a plain single-process ``train``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from adjoint_core.app.checkpoint import load_checkpoint, save_checkpoint
from adjoint_core.app.config import RunConfig, build_components, load_config
from adjoint_core.evaluation import metrics
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.periodic import pair_distances, radial_distribution
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace
from adjoint_core.training import distributed
from adjoint_core.training.objectives.base import Objective
from adjoint_core.training.parallel import DataParallel
from adjoint_core.training.trainer import Trainer

__all__ = ["build_trainer", "build_objective", "train_run", "load_run", "evaluate_samples",
           "load_reference"]


def build_objective(cfg: RunConfig, registry: Registry | None = None,
                    components: dict[str, Any] | None = None) -> Objective:
    """The config's algorithm as an objective (its parameters validated by the registry).

    Objectives that declare ``make_model`` get a function building another network of the
    ``model:`` section (ASBS's corrector), called after the main network so the model
    initialisation follows the global seed in a fixed order.
    """
    reg = registry or default_registry()
    first = (components or {}).get("targets", [None])[0]

    def make_model():
        return reg.build("model", cfg.model.name, cfg.model.params,
                         space=None if first is None else first.space,
                         energy=None if first is None else first.energy)

    return reg.build("objective", cfg.algorithm_name, cfg.algorithm_params(),
                     make_model=make_model)


def build_trainer(cfg: RunConfig, registry: Registry | None = None,
                  dist_ctx: distributed.DistContext | None = None) -> Trainer:
    """Build a :class:`~adjoint_core.training.trainer.Trainer` from a validated config.

    Seeds the global torch generator with ``cfg.seed`` first (network initialisation).

    Args:
        cfg: The run config.
        registry: Component registry (default: the installed plugins).
        dist_ctx: Under ``torchrun``, this process's context: the trainer runs on its device
            and data-parallel (a collective: every rank must call this).

    Returns:
        The trainer.

    Raises:
        ConfigError: Unknown components, bad parameters, or a combination the algorithm does
            not support (named).
    """
    torch.manual_seed(cfg.seed)
    reg = registry or default_registry()
    c = build_components(cfg, reg)
    if dist_ctx is not None:
        device: str | torch.device = dist_ctx.device
    else:
        device = distributed.resolve_device("auto") if cfg.device == "auto" else cfg.device
    objective = build_objective(cfg, reg, c)
    try:
        return Trainer(c["problem"], c["schedule"], c["model"], objective, settings=cfg.train,
                       seed=cfg.seed, device=device,
                       parallel=DataParallel(device) if dist_ctx is not None else None)
    except ValueError as exc:
        raise ConfigError(f"algorithm: {cfg.algorithm_name}: {exc}") from None


def _config_dict(cfg: RunConfig) -> dict:
    return json.loads(cfg.model_dump_json())


def resolve_path(path: str, config_dir: Path | None = None) -> Path:
    """Resolve a data path against the working directory, then the config's folder."""
    p = Path(path)
    if p.is_absolute() or p.exists() or config_dir is None:
        return p
    alt = config_dir / p
    return alt if alt.exists() else p


def load_reference(path: str | Path, space: StateSpace, registry: Registry | None = None
                   ) -> torch.Tensor:
    """Load reference samples ``(N, prod(event_shape))`` as ``(N, *event_shape)`` states.

    ``path`` is first looked up as the name of a registered reference set (hook
    ``register_references``; ``adjoint-core plugins`` lists them as kind ``reference``, e.g.
    ``dw4_val`` and ``lj13_val`` from adjoint-core-particles), then read as an ``.npy`` file.
    Particle references are projected (centre of mass removed): the DW-4 file is not mean-free.

    Args:
        path: Registered reference name or path of an ``.npy`` file.
        space: State space of the run; fixes the expected width and does the projection.
        registry: Registry to look names up in (default: the installed plugins).

    Raises:
        ConfigError: Neither a registered name nor an existing file (the message lists the
            registered names), or an array of the wrong shape (naming both shapes).
    """
    reg = registry or default_registry()
    name = str(path)
    if name in reg.names("reference"):
        source = reg.get("reference", name).factory
        label = f"reference {name!r}"
        arr = np.asarray(source() if callable(source) else np.load(source, allow_pickle=False))
    else:
        file = Path(path)
        if not file.is_file():
            registered = ", ".join(reg.names("reference")) or "(none)"
            raise ConfigError(
                f"eval.reference: {name!r} is neither a registered reference set nor an existing "
                f"file; registered reference sets: {registered}")
        label = str(file)
        arr = np.load(file, allow_pickle=False)
    width = int(np.prod(space.event_shape))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ConfigError(
            f"eval.reference: {label} has shape {arr.shape}, expected (N, {width}) for states of "
            f"shape {space.event_shape}"
        )
    return space.project(torch.as_tensor(arr, dtype=torch.float32).reshape(-1, *space.event_shape))


def evaluate_samples(
    samples: torch.Tensor, reference: torch.Tensor, energy: Energy, space: StateSpace,
    n_samples: int = 2000, geometric_samples: int = 500,
    protocols: tuple[str, ...] = ("papers", "invariant"), seed: int = 0,
) -> dict[str, float]:
    """Energy W2, a distance between the state distributions, and mean energies.

    Uses the first ``n_samples`` generated samples and a seeded random subset of the
    reference of the same size. The state distance depends on the space:

    * particles in Euclidean space: geometric W2 (``geometric_w2_<protocol>``) on the first
      ``geometric_samples`` of those;
    * particles in a periodic box: rotations are not symmetries of a box, so instead the radial
      distribution functions are compared: ``pair_distance_w2``, the 1-D W2 between the
      minimum-image distances of all particle pairs, and ``rdf_mean_abs_diff``, the mean
      ``|g_gen(r) − g_ref(r)|`` over 50 bins up to half the shortest box length (noisy in the
      first bins, where few pairs fall);
    * flat Euclidean states: ``euclidean_w2``; flat periodic states (torsions):
      ``periodic_w2``, W2 with the minimum-image ground distance.

    Returns:
        A dict of floats (see :mod:`adjoint_core.evaluation.metrics` for the exact protocols).
    """
    g = torch.Generator().manual_seed(seed)
    n = min(n_samples, samples.shape[0], reference.shape[0])
    ref = reference[torch.randperm(reference.shape[0], generator=g)[:n]]
    gen = samples[:n]
    with torch.no_grad():
        e_gen = energy.energy(gen.float()).double()
        e_ref = energy.energy(ref.float()).double()
    finite = torch.isfinite(e_gen)
    out: dict[str, float] = {
        "n_samples": float(n),
        "energy_w2": metrics.energy_w2(e_gen[finite].numpy(), e_ref.numpy()),
        "energy_mean": float(e_gen[finite].mean()),
        "reference_energy_mean": float(e_ref.mean()),
        "nonfinite_energies": float((~finite).sum()),
    }
    if space.particle_shape is not None and isinstance(space, PeriodicSpace):
        # Rotations are not symmetries of a box, so the rotation-aligned geometric W2 does not
        # apply; compare the radial distribution functions (minimum-image distances) instead.
        _, g_gen = radial_distribution(gen, space.box)
        _, g_ref = radial_distribution(ref, space.box)
        out["rdf_mean_abs_diff"] = float((g_gen - g_ref).abs().mean())
        out["pair_distance_w2"] = metrics.energy_w2(
            pair_distances(gen.double(), space.box).reshape(-1).numpy(),
            pair_distances(ref.double(), space.box).reshape(-1).numpy())
    elif space.particle_shape is not None:
        m = min(geometric_samples, n)
        if m >= 2:
            for protocol in protocols:
                out[f"geometric_w2_{protocol}"] = metrics.geometric_w2(
                    gen[:m].numpy(), ref[:m].numpy(), protocol=protocol, seed=seed)
            out["geometric_samples"] = float(m)
    else:
        # flat torus: periodic ground distance (a flat layout has one period per coordinate)
        box = space.box if isinstance(space, PeriodicSpace) else None
        key = "euclidean_w2" if box is None else "periodic_w2"
        out[key] = metrics.euclidean_w2(gen.reshape(n, -1).numpy(), ref.reshape(n, -1).numpy(),
                                        box=box)
    return out


def _reference_for(cfg: RunConfig, sampler: Trainer, config_dir: Path | None
                   ) -> torch.Tensor | None:
    if len(sampler.targets) > 1:  # amortized problems are evaluated by their own benchmarks
        if cfg.eval.reference:
            raise ConfigError("eval.reference: a problem of several targets has no single "
                              "reference set; remove it (see the plugin's benchmark)")
        return None
    if cfg.eval.reference:
        return load_reference(resolve_path(cfg.eval.reference, config_dir), sampler.space)
    exact = getattr(sampler.energy, "sample", None)
    if callable(exact):  # energies with exact samplers (Gaussian mixtures) are their own reference
        return sampler.space.project(exact(max(cfg.eval.n_samples, 2),
                                           torch.Generator().manual_seed(cfg.seed + 1)))
    return None


def train_run(
    config: str | Path | RunConfig, out: str | Path, registry: Registry | None = None,
    progress: bool = True, log=print,
) -> dict[str, Any]:
    """Train (or resume) a run described by ``config`` into the run directory ``out``.

    Launched by ``torchrun`` with ``WORLD_SIZE > 1``, this initialises the process group,
    trains data-parallel and destroys the group at the end; only rank 0 logs, shows the
    progress bar and writes files. Otherwise ``torch.distributed`` is not used.

    Returns:
        The content written to ``metrics.json`` (on every rank: rank 0 broadcasts it).
    """
    config_dir = None
    if not isinstance(config, RunConfig):
        config_dir = Path(config).resolve().parent if not isinstance(config, dict) else None
        cfg = load_config(config)
    else:
        cfg = config
    if not distributed.launched_by_torchrun():
        return _train(cfg, config_dir, Path(out), registry, progress, log, None)
    # Import the plugins before the process group exists: a library imported after it (e.g.
    # torch_geometric) can keep the group alive past destroy_process_group(), and its worker
    # threads can then abort the interpreter at exit.
    registry = registry or default_registry()
    ctx = distributed.init_from_env(cfg.device)
    try:
        return _train(cfg, config_dir, Path(out), registry, progress and ctx.is_main,
                      log if ctx.is_main else _silent, ctx)
    finally:
        distributed.shutdown(ctx)


def _init_checkpoint(cfg: RunConfig, cfg_dict: dict, config_dir: Path | None
                     ) -> tuple[Path, dict]:
    """Load the checkpoint named by ``init_from`` (a run directory or a file).

    Returns:
        The resolved checkpoint path and the sampler state stored in it.

    Raises:
        ConfigError: The path names neither a checkpoint file nor a run directory with one.
        CheckpointError: Unreadable, or made with another energy, space or model.
    """
    path = resolve_path(cfg.init_from, config_dir)
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt"
    if not path.is_file():
        raise ConfigError(f"init_from: no checkpoint at {path} (give a run directory with "
                          f"checkpoints/latest.pt or a .pt file; got {cfg.init_from!r})")
    payload = load_checkpoint(path, expected_config=cfg_dict,
                              sections=("energy", "space", "problem", "model"))
    return path, payload["state"]


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log function of ranks other than 0."""


def _train(
    cfg: RunConfig, config_dir: Path | None, out: Path, registry: Registry | None,
    progress: bool, log, ctx: distributed.DistContext | None,
) -> dict[str, Any]:
    """Body of :func:`train_run`; ``ctx`` is ``None`` for a single process."""
    main = ctx is None or ctx.is_main
    cfg_dict = _config_dict(cfg)
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    sampler = build_trainer(cfg, registry, ctx)
    # fail early (on every rank) on a bad reference file; only rank 0 keeps the reference
    reference = distributed.run_on_main(ctx, lambda: _reference_for(cfg, sampler, config_dir))
    ckpt = out / "checkpoints" / "latest.pt"
    metrics_path = out / "metrics.json"
    record: dict[str, Any] = {"config": cfg_dict, "evaluations": []}
    if sampler.problem.info:
        record["problem"] = sampler.problem.info

    def read_checkpoint() -> dict | None:
        nonlocal record
        if not ckpt.exists():
            return None
        payload = load_checkpoint(ckpt, expected_config=cfg_dict)
        if metrics_path.exists():
            record = json.loads(metrics_path.read_text())
        return payload["state"]

    state = distributed.run_on_main(ctx, read_checkpoint)
    if ctx is not None:  # rank 0 sends every rank its part of the checkpoint
        resuming = distributed.broadcast_object(state is not None)
        if resuming:
            parts = None if state is None else [
                Trainer.state_for_rank(state, r, ctx.world_size)
                for r in range(ctx.world_size)]
            state = distributed.scatter_objects(parts)
    if state is not None:
        sampler.load_state_dict(state)
        log(f"resuming {out} from epoch {sampler.counters['epoch']}")
    elif cfg.init_from:
        path, source = _init_checkpoint(cfg, cfg_dict, config_dir)
        sampler.load_weights(source)
        record["init_from"] = {"path": str(path), "counters": dict(source["counters"]),
                               "timers": dict(source["timers"])}
        log(f"initialised the network from {path} (epoch {source['counters']['epoch']} of "
            "that run)")
    if main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    eval_time = record.get("timers", {}).get("evaluate", 0.0)

    def evaluate(tag: str) -> None:
        nonlocal eval_time
        if reference is None or not main:
            return
        t0 = time.perf_counter()
        gen = torch.Generator(device=sampler.device).manual_seed(cfg.seed + 12345)
        x, log_w = sampler.path_log_weights(cfg.eval.n_samples, n_steps=cfg.eval.n_sde_steps,
                                            generator=gen)
        res = evaluate_samples(x.cpu(), reference, sampler.energy, sampler.space,
                               cfg.eval.n_samples, cfg.eval.geometric_samples,
                               tuple(cfg.eval.protocols), seed=cfg.seed)
        finite = torch.isfinite(log_w)
        res["path_ess"] = metrics.path_ess(log_w[finite].cpu().numpy()) if finite.any() else 0.0
        eval_time += time.perf_counter() - t0
        res = {"tag": tag, "epoch": sampler.counters["epoch"], **res}
        record["evaluations"].append(res)
        log(f"[{tag}] epoch {res['epoch']}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float)))
        return x

    def write_record() -> None:
        record.update({"history": sampler.history, "counters": dict(sampler.counters),
                       "timers": {**sampler.timers, "evaluate": eval_time}})
        c = sampler.counters
        record["grad_steps_per_energy_eval"] = c["grad_steps"] / max(c["energy_evals"], 1)
        tmp = metrics_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(metrics_path)

    if sampler.counters["epoch"] == 0 and not record["evaluations"]:
        evaluate("warm-start" if "init_from" in record else "untrained")

    def on_epoch(s: Trainer, row: dict) -> None:
        e = s.counters["epoch"]
        if cfg.eval.every and e % cfg.eval.every == 0 and e < cfg.train.n_epochs:
            evaluate("periodic")
        if e % cfg.checkpoint_every == 0 or e == cfg.train.n_epochs:
            state = s.gather_state_dict()  # a collective when distributed
            if main:
                save_checkpoint(ckpt, state, cfg_dict)
                write_record()

    timers_at_start = dict(sampler.timers)
    sampler.fit(callback=on_epoch, progress=progress)
    record["distributed"] = _distributed_summary(sampler, ctx, timers_at_start)
    if not record["distributed"]["parameters_in_sync"]:
        log("warning: the ranks' parameters differ at the end of training "
            f"({record['distributed']['parameter_digests']})")
    x = None
    if main:
        final = [r for r in record["evaluations"] if r["tag"] == "final"]
        if not final or final[-1]["epoch"] != sampler.counters["epoch"]:
            x = evaluate("final")
    state = sampler.gather_state_dict()  # after the evaluation: it counts model evaluations
    if main:
        write_record()
        save_checkpoint(ckpt, state, cfg_dict)
        from adjoint_core.evaluation.plotting import plot_run

        if len(sampler.targets) == 1:
            plot_run(out, sampler, record, reference, samples=x, n=cfg.eval.n_samples)
        else:
            from adjoint_core.evaluation.plotting import plot_loss

            (out / "plots").mkdir(exist_ok=True)
            plot_loss(sampler.history, out / "plots" / "loss.png")
    return distributed.broadcast_object(record) if ctx is not None else record


def _distributed_summary(sampler: Trainer, ctx: distributed.DistContext | None,
                         timers_at_start: dict[str, float]) -> dict[str, Any]:
    """The ``"distributed"`` entry of ``metrics.json`` (a collective under ``torchrun``).

    ``world_size``, ``backend``, ``device``; the SHA-256 of every rank's parameters
    (``parameter_digests``, in rank order) and whether they are all equal; per rank, the
    training energy evaluations it made and its wall time per phase in this launch (the
    run's ``counters`` and ``timers`` are the global counts and rank 0's times over all
    launches).
    """
    digest = distributed.parameter_digest(sampler.model)
    mine = {"rank": sampler.rank, "parameter_digest": digest,
            "energy_evals_this_launch": sampler.launch_energy_evals,
            "timers_this_launch": {k: v - timers_at_start.get(k, 0.0)
                                   for k, v in sampler.timers.items()}}
    ranks = distributed.all_gather_objects(mine) if ctx is not None else [mine]
    digests = [r["parameter_digest"] for r in ranks]
    return {
        "world_size": 1 if ctx is None else ctx.world_size,
        "backend": None if ctx is None else ctx.backend,
        "device": str(sampler.device),
        "parameter_digests": digests,
        "parameters_in_sync": len(set(digests)) == 1,
        "per_rank": [{k: v for k, v in r.items() if k != "parameter_digest"} for r in ranks],
    }


def load_run(run_dir: str | Path, registry: Registry | None = None, device: str | None = None
             ) -> Trainer:
    """Rebuild a trained sampler from a run directory (config + latest checkpoint)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(cfg_path)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    sampler = build_trainer(cfg, registry)
    payload = load_checkpoint(run_dir / "checkpoints" / "latest.pt",
                              expected_config=_config_dict(cfg),
                              map_location=sampler.device)
    sampler.load_state_dict(payload["state"])
    return sampler
