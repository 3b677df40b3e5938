"""Data-parallel training on ``torch.distributed`` (processes launched by ``torchrun``).

``adjoint-core train CONFIG --out RUN_DIR`` runs unchanged under
``torchrun --nproc-per-node N``: :func:`init_from_env` sees ``WORLD_SIZE > 1`` in the
environment, picks the device and backend and initialises the process group; a plain
``adjoint-core train`` never touches ``torch.distributed``. See ``docs/scaling.md`` for the
launch recipes (one node, several nodes, SLURM) and a measured scaling figure.

Semantics (implemented by the trainer's strategy
:class:`~adjoint_core.training.parallel.DataParallel`, e.g. ``AdjointSampler(...,
distributed=True)``):

* **Work split.** ``samples_per_epoch``, ``init_samples`` and ``train_batch_size`` are
  *global*: rank ``r`` of ``W`` simulates and evaluates :func:`split_evenly` ``(n, r, W)`` of
  them (the first ``n mod W`` ranks take one more). The number of energy evaluations of a run
  is therefore that of the single-process run with the same config.
* **Model.** Every rank builds the model from the same global torch seed and the sampler
  broadcasts rank 0's parameters and buffers (:func:`broadcast_module`), so the ranks start
  identical; after each ``backward()`` :func:`average_gradients` all-reduces the gradients
  (what ``DistributedDataParallel`` computes), so every rank applies the same optimizer step
  and the ranks stay identical. Simulation uses the model with no communication. Each
  rank's loss is weighted by ``b_r·W/B`` (``b_r`` its batch, ``B`` the global batch), so the
  averaged gradient is exactly the gradient of the mean loss over the ``B`` rows of the
  global batch, also when ``B`` is not a multiple of ``W``.
* **Replay buffer.** Sharded per rank: each rank keeps the rows it simulated in its own buffer
  of the configured ``capacity`` and draws its part of every batch from it; no buffer row is
  ever communicated during training.
* **Randomness.** Rank ``r``'s loop generator is seeded with ``seed + r`` (distinct Brownian
  increments, times and buffer draws per rank); the global torch seed (network
  initialisation) is ``seed`` on every rank.
* **Counters.** ``energy_evals``, ``model_evals``, ``nonfinite_dropped`` and the energy's
  ``n_evaluations`` are summed over ranks once per epoch (one small all-reduce), so the values
  in logs, checkpoints and ``metrics.json`` are global; ``grad_steps`` counts optimizer steps
  of the shared model (not multiplied by ``W``). Wall-time ``timers`` are rank 0's.
* **Files.** Only rank 0 reads and writes the run directory (logs, progress bar, checkpoints,
  ``metrics.json``, plots, evaluations); the other ranks get what they need by collectives, so
  the run directory need not be on a shared file system.

Device and backend: under ``torchrun``, ``device: cpu`` uses the CPU with ``gloo``;
``device: cuda`` (any index) or ``auto`` with CUDA available uses ``cuda:LOCAL_RANK`` with
``nccl``; ``auto`` without CUDA falls back to the CPU with ``gloo``. ``cuda`` requested on a
machine without CUDA is an error (as it is for a single process).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from adjoint_core.plugins.registry import ConfigError

__all__ = [
    "DistContext",
    "launched_by_torchrun",
    "resolve_device",
    "init_from_env",
    "shutdown",
    "split_evenly",
    "run_on_main",
    "broadcast_object",
    "gather_objects",
    "scatter_objects",
    "all_gather_objects",
    "parameter_digest",
    "object_group",
    "broadcast_module",
    "average_gradients",
]

T = TypeVar("T")

#: Environment variable with the collective timeout in seconds (default 3600). Rank 0 alone
#: runs the evaluations; the other ranks wait for it in the next collective, so the timeout
#: must exceed the longest evaluation.
TIMEOUT_ENV = "ADJOINT_CORE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0

_OBJECT_GROUP: Any = None  # a gloo group for pickled-object collectives when the backend is nccl


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a ``torchrun`` launch.

    Attributes:
        rank: Global rank ``0 … world_size - 1``.
        world_size: Number of processes.
        local_rank: Rank on this node (selects ``cuda:local_rank``).
        backend: ``"gloo"`` or ``"nccl"``.
        device: The device this rank trains on.
        initialized_here: Whether :func:`init_from_env` created the process group (and
            :func:`shutdown` destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the only rank that logs and writes files)."""
        return self.rank == 0


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process launch (``WORLD_SIZE > 1``).

    Args:
        env: Environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def resolve_device(requested: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The device of a run from the config's ``device`` and, under ``torchrun``, ``LOCAL_RANK``.

    Args:
        requested: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA if available, else
            CPU) or any other torch device string.
        local_rank: Rank on this node; if given, a CUDA device becomes ``cuda:local_rank``
            (the index in the config is ignored: one GPU per process).

    Returns:
        The device.

    Raises:
        ConfigError: Not a device type the trainer runs on (cpu, cuda, mps, xpu), or one this
            machine lacks (naming the value and what is allowed).
    """
    text = str(requested)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"device: {str(requested)!r}: not a device; use cpu, cuda, cuda:N, mps "
                          "or auto")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"device: {str(requested)!r}: XPU is not available on this machine; "
                          "use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {str(requested)!r}: MPS is not available on this machine; "
                          "use cpu or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {str(requested)!r}: CUDA is not available on this "
                              f"machine; use cpu or auto")
        n = torch.cuda.device_count()
        if local_rank is None and device.index is not None and device.index >= n:
            raise ConfigError(f"device: {str(requested)!r}: only {n} CUDA device(s) are "
                              f"visible; use cuda:0 to cuda:{n - 1}, cuda or auto")
        if local_rank is not None:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK={local_rank} but only "
                                  f"{torch.cuda.device_count()} CUDA devices are visible")
            device = torch.device("cuda", local_rank)
    return device


def _timeout(env: Mapping[str, str]) -> datetime.timedelta:
    try:
        seconds = float(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got "
                          f"{env.get(TIMEOUT_ENV)!r}") from None
    return datetime.timedelta(seconds=seconds)


def init_from_env(requested_device: str | torch.device = "cpu",
                  env: Mapping[str, str] | None = None) -> DistContext:
    """Initialise the default process group from the variables ``torchrun`` sets.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, inside ``init_process_group``,
    ``MASTER_ADDR``/``MASTER_PORT``). Uses ``nccl`` on CUDA (after
    ``torch.cuda.set_device``) and ``gloo`` otherwise; with ``nccl`` it also creates a
    ``gloo`` group for the few pickled-object collectives (checkpoint shards, records). An
    already initialised default group is reused (not destroyed by :func:`shutdown`).

    Args:
        requested_device: The config's ``device`` (see :func:`resolve_device`).
        env: Environment to read (default ``os.environ``).

    Returns:
        The :class:`DistContext` of this process.

    Raises:
        RuntimeError: Not launched with ``WORLD_SIZE > 1`` or ``torch.distributed``
            unavailable.
        ConfigError: An unusable device request.
    """
    global _OBJECT_GROUP
    import torch.distributed as dist

    env = os.environ if env is None else env
    if not launched_by_torchrun(env):
        raise RuntimeError("init_from_env needs WORLD_SIZE > 1 (launch with torchrun)")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    rank = int(env.get("RANK", "0"))
    world_size = int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=_timeout(env))
        created = True
    else:
        backend = str(dist.get_backend())
        rank, world_size = dist.get_rank(), dist.get_world_size()
    _OBJECT_GROUP = (dist.new_group(backend="gloo", timeout=_timeout(env))
                     if backend == "nccl" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend,
                       device=device, initialized_here=created)


def shutdown(ctx: DistContext | None) -> None:
    """Destroy the process group if :func:`init_from_env` created it (``None``: nothing)."""
    global _OBJECT_GROUP
    if ctx is None or not ctx.initialized_here:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _OBJECT_GROUP = None


def object_group() -> Any:
    """Process group for pickled-object collectives: ``gloo`` under ``nccl``, else default."""
    return _OBJECT_GROUP


def split_evenly(n: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s share of ``n`` items split over ``world_size`` ranks.

    The first ``n mod world_size`` ranks get ``n // world_size + 1``, the others
    ``n // world_size``; the shares sum to ``n``.

    Args:
        n: Items to split (``>= 0``).
        rank: ``0 … world_size - 1``.
        world_size: Number of ranks (``>= 1``).

    Returns:
        The share of ``rank``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return n // world_size + (1 if rank < n % world_size else 0)


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flat_collective(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], Any]
                     ) -> None:
    """Run ``collective`` in place on one flat buffer per (dtype, device) group of ``tensors``.

    The result is copied back into ``tensors`` (same shapes), so one message carries each group.
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            collective(flat)
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank, in place.

    One ``broadcast`` of a flat buffer per (dtype, device) group (a no-op without a process
    group of more than one rank). Every rank must call it with a module of the same structure.
    """
    if not _active():
        return
    import torch.distributed as dist

    _flat_collective([t.data for t in (*module.parameters(), *module.buffers())],
                     lambda flat: dist.broadcast(flat, src=src))


def average_gradients(module: torch.nn.Module) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in place.

    Called between ``backward()`` and the optimizer step, it makes every rank apply the same
    update. One ``all_reduce`` (sum, then division by the world size) of a flat buffer per
    (dtype, device) group. A parameter that requires a gradient but has none on this rank
    contributes zeros and receives the mean, so the ranks stay in step when a parameter is
    unused on some of them. A no-op without a process group of more than one rank.

    This is what ``DistributedDataParallel`` computes, without its bucketed overlap of
    communication and backward; it is used instead because a DDP wrapper keeps the ``gloo``
    process group alive after ``destroy_process_group()`` in torch 2.13, whose worker threads
    can then abort the interpreter at exit (``terminate called without an active
    exception``).
    """
    if not _active():
        return
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = dist.get_world_size()

    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(world)

    _flat_collective([p.grad for p in params], mean)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled; identity without a process group)."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, group=object_group())
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list | None:
    """Gather one picklable object per rank on rank ``dst``.

    Returns:
        On ``dst`` the list of the ``world_size`` objects in rank order, elsewhere ``None``
        (``[obj]`` without a process group).
    """
    if not _active():
        return [obj]
    import torch.distributed as dist

    rank = dist.get_rank()
    out = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(obj, out, dst=dst, group=object_group())
    return out


def all_gather_objects(obj: Any) -> list:
    """One picklable object per rank, in rank order, on every rank."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=object_group())
    return out


def scatter_objects(objs: list | None, src: int = 0) -> Any:
    """Send ``objs[r]`` from rank ``src`` to rank ``r``; returns this rank's object.

    Args:
        objs: On ``src`` a list of ``world_size`` picklable objects; ignored elsewhere.
        src: Sending rank.
    """
    if not _active():
        return objs[0]
    import torch.distributed as dist

    box = [None]
    dist.scatter_object_list(box, objs if dist.get_rank() == src else None, src=src,
                             group=object_group())
    return box[0]


def run_on_main(ctx: DistContext | None, fn: Callable[[], T], broadcast: bool = False
                ) -> T | None:
    """Run ``fn`` on rank 0 only and re-raise its exception on every rank.

    Without a context (single process) this is ``fn()``. Under ``torchrun`` the other ranks
    wait until rank 0 has finished, so a failure on rank 0 (a bad reference file, a checkpoint
    of another configuration) stops every rank with the same exception type and message
    instead of leaving them blocked in the next collective.

    Args:
        ctx: The distributed context, or ``None``.
        fn: Work for rank 0.
        broadcast: Also send rank 0's (picklable) result to the other ranks.

    Returns:
        ``fn()``'s result on rank 0; on other ranks the same with ``broadcast``, else ``None``.
    """
    if ctx is None:
        return fn()
    result, failure = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank
            failure = exc
    info = None if failure is None else (type(failure).__module__,
                                         type(failure).__qualname__, str(failure))
    info = broadcast_object(info)
    if failure is not None:
        raise failure
    if info is not None:
        raise _rebuild_exception(*info)
    return broadcast_object(result) if broadcast else result


def _rebuild_exception(module: str, qualname: str, message: str) -> Exception:
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # not importable here, or a constructor with another signature
        pass
    return RuntimeError(f"rank 0 failed with {module}.{qualname}: {message}")


def parameter_digest(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes and bytes).

    Equal digests on all ranks mean bit-identical models.

    Args:
        model: The bare module (not the DDP wrapper) or its ``state_dict()`` (e.g. the
            ``"model"`` entry of a checkpoint's state).

    Returns:
        A hex digest.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for name, value in state.items():
        v = value.detach().cpu().contiguous()
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
