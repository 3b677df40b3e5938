"""Config-driven runs: build, train (with checkpoints and evaluations) and reload samplers.

A :class:`~adjoint_core.app.config.RunConfig` is trained into a run directory and reloaded from it
for sampling.

Run directory layout::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/checkpoints/latest.pt  full state after the last finished epoch (atomic writes)
    RUN_DIR/metrics.json           per-epoch log, evaluations, counters, wall time per phase
    RUN_DIR/plots/*.png            loss curve, energy histogram, 2-D sample plots
    RUN_DIR/train.lock             held (``fcntl.flock``) by the training writing the directory

Re-running ``train`` on an existing run directory resumes from ``latest.pt``.

**Reliability.** Every file is written atomically (a temporary file, flushed, then renamed), so
a crash, a kill or a full disk leaves the previous version; a failed checkpoint write stops the
run with the path and error number and the previous checkpoint stays loadable. ``metrics.json``
is written before the checkpoint of the same epoch, and a resumed run drops the evaluations
newer than its checkpoint (they are made again). A second ``train`` on a directory that a
training is writing fails with a message naming that process (pid, host); the kernel releases
the lock when its holder dies, so a crashed run's directory is taken over. SIGTERM and SIGUSR1
make training finish its current epoch, write a checkpoint and raise :class:`Preempted` (the
CLI exits with status 143); the same command resumes bit for bit. A diverged epoch
(:class:`~adjoint_core.training.trainer.TrainingDiverged`) is not saved: the message names the
last good checkpoint, which resumes.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE > 1`` in the environment) :func:`train_run`
initialises ``torch.distributed`` and trains data-parallel
(:mod:`adjoint_core.training.distributed`);
only rank 0 reads and writes the run directory and logs. The checkpoint holds rank 0's full
state plus the other ranks' buffer shards and generators, so it resumes with any number of
processes, including a plain single-process ``train``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from adjoint_core.app.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    atomic_write_text,
    config_mismatch,
    load_checkpoint,
    save_checkpoint,
)
from adjoint_core.app.config import RunConfig, build_components, load_config
from adjoint_core.evaluation import metrics
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.periodic import pair_distances, radial_distribution
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace
from adjoint_core.training import distributed
from adjoint_core.training.objectives.base import Objective
from adjoint_core.training.parallel import DataParallel
from adjoint_core.training.trainer import NonFiniteEnergyError, Trainer, TrainingDiverged

__all__ = ["build_trainer", "build_objective", "train_run", "load_run", "evaluate_samples",
           "load_reference", "Preempted", "RunDirectoryInUse", "RunLock", "LOCK_FILE",
           "STOP_SIGNALS"]

#: Name of the lock file in a run directory.
LOCK_FILE = "train.lock"
#: Signals that stop training at the end of the current epoch, after a checkpoint.
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(RuntimeError):
    """Training stopped on SIGTERM or SIGUSR1 after writing a checkpoint (it resumes).

    Attributes:
        signal: The signal's name.
        epoch: The epoch of the checkpoint written.
        checkpoint: Its path.
    """

    def __init__(self, signal_name: str, epoch: int, checkpoint: Path) -> None:
        self.signal, self.epoch, self.checkpoint = signal_name, epoch, checkpoint
        super().__init__(f"{signal_name} received: wrote the checkpoint of epoch {epoch} to "
                         f"{checkpoint} and stopped; run the same command to resume")


class RunDirectoryInUse(ConfigError):
    """Another training holds the run directory's lock (the message names it)."""


class RunLock:
    """Exclusive lock of a run directory while a training writes into it.

    An ``fcntl.flock`` on ``RUN_DIR/train.lock``, which also holds the holder's pid, host and
    start time for the message of a second training. The kernel releases a flock when its
    process dies, so the directory of a crashed run is taken over (and said so). Where
    ``fcntl`` or file locks are unavailable (Windows, some network file systems) the run goes
    on unlocked.

    Args:
        run_dir: The run directory (it must exist).
        log: Where notes go (taking over a dead process's lock, locking unavailable).
    """

    def __init__(self, run_dir: Path, log=print) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.log = log
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock.

        Returns:
            ``self``.

        Raises:
            RunDirectoryInUse: Another live process holds it (naming its pid and host).
            CheckpointWriteError: The lock file cannot be created.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointWriteError(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
                   f"{holder.get('started', '?')}") if holder else "a process that is starting"
            raise RunDirectoryInUse(
                f"--out: {self.path.parent}: in use by another training ({who}); wait for it "
                f"to finish, stop it, or choose another run directory") from None
        except OSError as exc:  # no file locks on this file system
            os.close(fd)
            self.log(f"warning: cannot lock {self.path} ({exc.strerror}); running unlocked")
            return self
        old = self._holder(fd)
        if old:
            self.log(f"taking over {self.path} from pid {old.get('pid')} on host "
                     f"{old.get('host')}, which no longer holds it (a run that was killed)")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> dict:
        """The pid, host and start time written in the lock file (empty if none)."""
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Empty the lock file and release the lock (the file stays)."""
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class _StopRequest:
    """Handlers of :data:`STOP_SIGNALS` that ask training to stop at the next epoch boundary.

    The first signal is recorded and the signal's previous handler restored, so a second one
    acts at once (by default: terminates; the last checkpoint stays). Handlers can only be
    installed in the main thread; elsewhere nothing is installed.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        previous = self._previous.get(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def requested(self, ctx: distributed.DistContext | None) -> str | None:
        """The signal that asked to stop, on any rank (a collective under ``torchrun``)."""
        if ctx is None:
            return self.signal
        names = [n for n in distributed.all_gather_objects(self.signal) if n]
        return names[0] if names else None


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
        device = distributed.resolve_device(cfg.device)
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


def load_reference(path: str | Path, space: StateSpace, registry: Registry | None = None,
                   field: str = "eval.reference", allow_nonfinite: bool = False) -> torch.Tensor:
    """Load reference samples ``(N, prod(event_shape))`` as ``(N, *event_shape)`` states.

    ``path`` is first looked up as the name of a registered reference set (hook
    ``register_references``; ``adjoint-core plugins`` lists them as kind ``reference``, e.g.
    ``dw4_val`` and ``lj13_val`` from adjoint-core-particles), then read as an ``.npy`` file.
    Particle references are projected (centre of mass removed): the DW-4 file is not mean-free.

    Args:
        path: Registered reference name or path of an ``.npy`` file.
        space: State space of the run; fixes the expected width and does the projection.
        registry: Registry to look names up in (default: the installed plugins).
        field: The config field or argument that named ``path`` (for messages).
        allow_nonfinite: Return rows holding NaN or inf too (the caller drops them); by
            default such a set is refused.

    Raises:
        ConfigError: Neither a registered name nor an existing file (the message lists the
            registered names), a file that is not a numeric ``.npy`` array, an array of the
            wrong shape (naming both shapes), fewer than 2 rows, or rows holding NaN or inf.
    """
    reg = registry or default_registry()
    name = str(path)
    if name in reg.names("reference"):
        source = reg.get("reference", name).factory
        label = f"reference {name!r}"
        if callable(source):
            arr = np.asarray(source())
        else:
            arr = _load_npy(source, field, label)
    else:
        file = Path(path)
        if not file.is_file():
            registered = ", ".join(reg.names("reference")) or "(none)"
            raise ConfigError(
                f"{field}: {name!r} is neither a registered reference set nor an existing "
                f"file; registered reference sets: {registered}")
        label = str(file)
        arr = _load_npy(file, field, label)
    width = int(np.prod(space.event_shape))
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{field}: {label}: holds values of type {arr.dtype}; expected a float "
                          f"array of shape (N, {width})")
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ConfigError(
            f"{field}: {label} has shape {arr.shape}, expected (N, {width}) for states of "
            f"shape {space.event_shape}"
        )
    finite = np.isfinite(arr).all(axis=1)
    if not allow_nonfinite and not finite.all():
        raise ConfigError(f"{field}: {label}: {int((~finite).sum())} of {arr.shape[0]} samples "
                          "hold NaN or inf; every sample must be finite")
    if int(finite.sum()) < 2:
        what = f"{arr.shape[0]} samples" + (f", {int(finite.sum())} of them finite"
                                            if arr.shape[0] and not finite.all() else "")
        raise ConfigError(f"{field}: {label}: holds {what}; at least 2 finite samples are "
                          "needed")
    return space.project(torch.as_tensor(arr, dtype=torch.float32).reshape(-1, *space.event_shape))


def _load_npy(file: str | Path, field: str, label: str) -> np.ndarray:
    """``np.load`` of an array file (no pickles), with a one-line error for anything else."""
    try:
        return np.asarray(np.load(file, allow_pickle=False))
    except OSError as exc:
        raise ConfigError(f"{field}: {label}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())
        detail = "" if "pickle" in detail else f" ({detail[:100]})"
        raise ConfigError(f"{field}: {label}: not a .npy array file{detail}; save samples with "
                          "numpy.save") from None


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
    e_ref = e_ref[torch.isfinite(e_ref)]
    out: dict[str, float] = {
        "n_samples": float(n),
        # no finite energy among the samples (a diverged sampler): no distance to report
        "energy_w2": metrics.energy_w2(e_gen[finite].numpy(), e_ref.numpy())
        if finite.any() and e_ref.numel() else math.nan,
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
    """Load the weights named by ``init_from``.

    ``init_from`` is a run directory (its ``checkpoints/latest.pt``), a checkpoint file, or an
    exported model directory (``model.pt``, the network's state dict, beside the
    ``config.yaml`` it was trained with; e.g. what ``adjoint-core chem-export`` writes). The
    source's ``energy``, ``space`` and ``model`` sections must equal the config's and its
    problem must have the same ``name``; the problem's other fields (e.g. the molecules of an
    amortized run) may differ.

    Returns:
        The resolved path and the sampler state to warm-start from (``"model"`` weights,
        ``"counters"`` and ``"timers"`` of the source run; an exported model's counters are
        those recorded in its ``card.json``, if any).

    Raises:
        ConfigError: The path names no checkpoint file, run directory or exported model.
        CheckpointError: Unreadable, or made with another energy, space, problem or model.
    """
    path = resolve_path(cfg.init_from, config_dir)
    exported = path.is_dir() and not (path / "checkpoints" / "latest.pt").is_file() and \
        (path / "model.pt").is_file() and (path / "config.yaml").is_file()
    if exported:
        stored, state = _exported_weights(path)
        path = path / "model.pt"
    else:
        if path.is_dir():
            path = path / "checkpoints" / "latest.pt"
        if not path.is_file():
            raise ConfigError(f"init_from: {cfg.init_from!r}: no checkpoint at {path}; give a "
                              "run directory with checkpoints/latest.pt, a .pt checkpoint file "
                              "or an exported model directory (model.pt and config.yaml)")
        payload = load_checkpoint(path)
        stored, state = payload.get("config", {}), payload["state"]

    def problem_name(config: dict) -> dict:  # only the problem's kind must match
        return {**config, "problem": {"name": (config.get("problem") or {}).get("name")}}

    details = config_mismatch(problem_name(stored), problem_name(cfg_dict),
                              ("energy", "space", "problem", "model"))
    if details:
        raise CheckpointError(f"init_from: {path}: was made with another configuration "
                              f"({details}); warm-start from a run of the same energy, space, "
                              "problem and model")
    return path, state


def _exported_weights(folder: Path) -> tuple[dict, dict]:
    """``(config, state)`` of an exported model directory (see :func:`_init_checkpoint`)."""
    try:
        stored = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"init_from: {folder}: cannot read the exported model "
                              f"({detail})") from exc
    if not isinstance(stored, dict) or not isinstance(weights, dict):
        raise CheckpointError(f"init_from: {folder}: config.yaml must hold a mapping and "
                              "model.pt a state dict")
    card = {}
    if (folder / "card.json").is_file():
        try:
            card = json.loads((folder / "card.json").read_text())
        except (ValueError, UnicodeDecodeError):
            card = {}
    counters = {"epoch": int(card.get("epochs", 0)), "grad_steps": int(card.get("grad_steps", 0)),
                "energy_evals": int(card.get("energy_evals", 0))}
    timers = {k: float(v) for k, v in (card.get("timers_s") or {}).items()}
    return stored, {"model": weights, "counters": counters, "timers": timers}


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log function of ranks other than 0."""


def _train(
    cfg: RunConfig, config_dir: Path | None, out: Path, registry: Registry | None,
    progress: bool, log, ctx: distributed.DistContext | None,
) -> dict[str, Any]:
    """Body of :func:`train_run`; ``ctx`` is ``None`` for a single process.

    Rank 0 locks the run directory (:class:`RunLock`) for the whole training, and every rank
    listens for :data:`STOP_SIGNALS` (:func:`_train_locked` stops at the next epoch end).
    """
    main = ctx is None or ctx.is_main
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    lock = distributed.run_on_main(ctx, lambda: RunLock(out, log).acquire())
    try:
        with _StopRequest() as stop:
            return _train_locked(cfg, config_dir, out, registry, progress, log, ctx, stop)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(
    cfg: RunConfig, config_dir: Path | None, out: Path, registry: Registry | None,
    progress: bool, log, ctx: distributed.DistContext | None, stop: _StopRequest,
) -> dict[str, Any]:
    """Build, resume, train, evaluate and save a run (the directory is locked)."""
    main = ctx is None or ctx.is_main
    cfg_dict = _config_dict(cfg)
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
            try:
                record = json.loads(metrics_path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"metrics: {metrics_path}: not valid JSON ({exc}); move it "
                                  "away to resume without the earlier evaluations") from None
            # metrics.json is written before the checkpoint of the same epoch: evaluations
            # newer than the checkpoint are made again
            epoch = payload["state"]["counters"]["epoch"]
            record["evaluations"] = [r for r in record.get("evaluations", [])
                                     if r.get("epoch", 0) <= epoch]
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
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    eval_time = record.get("timers", {}).get("evaluate", 0.0)
    #: epoch of the checkpoint on disk (None: none yet)
    saved_epoch = sampler.counters["epoch"] if state is not None else None

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
        atomic_write_text(metrics_path, json.dumps(record, indent=2))

    def save(s: Trainer) -> None:
        """metrics.json, then the checkpoint (a collective: every rank calls it)."""
        nonlocal saved_epoch
        state = s.gather_state_dict()
        if main:
            write_record()
            save_checkpoint(ckpt, state, cfg_dict)
        saved_epoch = s.counters["epoch"]

    def stop_if_asked(s: Trainer) -> None:
        """Raise :class:`Preempted` after a checkpoint when a stop signal arrived."""
        name = stop.requested(ctx)
        if name is None:
            return
        if saved_epoch != s.counters["epoch"]:
            save(s)
        log(f"{name} received: stopped after epoch {s.counters['epoch']} (checkpoint written); "
            "the same command resumes")
        raise Preempted(name, s.counters["epoch"], ckpt)

    if sampler.counters["epoch"] == 0 and not record["evaluations"]:
        evaluate("warm-start" if "init_from" in record else "untrained")

    def on_epoch(s: Trainer, row: dict) -> None:
        e = s.counters["epoch"]
        if cfg.eval.every and e % cfg.eval.every == 0 and e < cfg.train.n_epochs:
            evaluate("periodic")
        if e % cfg.checkpoint_every == 0 or e == cfg.train.n_epochs:
            save(s)
        stop_if_asked(s)

    timers_at_start = dict(sampler.timers)
    stop_if_asked(sampler)  # a signal while the run was being set up
    try:
        sampler.fit(callback=on_epoch, progress=progress)
    except NonFiniteEnergyError as exc:  # the diverged state is not saved
        if saved_epoch is None:
            where = "no checkpoint was written (no epoch had finished)"
        else:
            where = f"the last good checkpoint {ckpt} (epoch {saved_epoch}) is kept"
        hint = (f"lower train.lr (now {cfg.train.lr:g}) or set train.grad_clip, then run the "
                "same command to resume" if isinstance(exc, TrainingDiverged) else
                "set train.nonfinite: drop to skip such samples, then run the same command to "
                "resume")
        raise type(exc)(*((exc.epoch, f"{exc.reason}; {where}; {hint}")
                          if isinstance(exc, TrainingDiverged) else (f"{exc}; {where}; {hint}",))
                        ) from exc
    stop_if_asked(sampler)  # a signal during the last epoch
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
        raise ConfigError(f"run_dir: {run_dir}: not a run directory (no config.yaml); give the "
                          "--out folder of adjoint-core train")
    cfg = load_config(cfg_path)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    sampler = build_trainer(cfg, registry)
    payload = load_checkpoint(run_dir / "checkpoints" / "latest.pt",
                              expected_config=_config_dict(cfg),
                              map_location=sampler.device)
    sampler.load_state_dict(payload["state"])
    return sampler
