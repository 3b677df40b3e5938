"""Worker processes that evaluate per-conformer molecular energies (MMFF94, GFN2-xTB) in parallel.

MMFF94 (RDKit) and GFN2-xTB (tblite) are CPU codes called once per conformer. An
:class:`EnergyWorkerPool` splits a molecule's conformer batch into contiguous chunks, one per
worker process, evaluates them at the same time and concatenates the results in order. Each
conformer is evaluated by the same code as in-process (:meth:`MMFFEnergy._compute
<adjoint_core_chem.energy.MMFFEnergy>` / ``XTBEnergy._compute`` on float64 positions), so the
result equals the serial path to float64 round-off (bit for bit for MMFF94).

Used through the ``molecules`` problem (``problem: {name: molecules, energy_workers: N}``) or
directly::

    from adjoint_core_chem.energy import make_energy
    from adjoint_core_chem.workers import EnergyWorkerPool

    with EnergyWorkerPool(4) as pool:
        energy = make_energy(molecule, "xtb", workers=pool)
        e, g = energy.energy_and_grad(x)      # x: (batch, N, 3), split over 4 processes

Design:

* processes are started with the ``spawn`` method (safe with threads, CUDA and OpenMP in the
  parent), lazily at the first evaluation, and live until :meth:`EnergyWorkerPool.close`, the
  end of a ``with`` block, garbage collection of the pool or interpreter exit;
* each worker caches the energies it has built (force-field typing, xTB set-up) keyed by
  :class:`WorkerSpec` (kind, molecule as RDKit binary, options), at most
  :data:`WORKER_CACHE_SIZE` molecules, so the per-molecule set-up is not repeated per call;
* each worker runs its numerical libraries single-threaded by default
  (``threads_per_worker``): ``OMP_NUM_THREADS`` and friends are set before tblite is loaded and
  ``torch.set_num_threads`` is called, so ``N`` workers use ``N`` cores;
* an exception in a worker (or a worker that dies) is raised in the parent as
  :class:`EnergyWorkerError`, whose message names the molecule, the energy and the cause; a
  pool whose process died is restarted on the next call.

Batches of one conformer, and pools of fewer than two workers, are evaluated in-process.

As with any ``spawn`` / ``forkserver`` pool, a Python script that evaluates energies with
workers must run its work under ``if __name__ == "__main__":`` (the workers import the main
script again); the ``adjoint-core`` command and pytest do.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

__all__ = ["EnergyWorkerError", "EnergyWorkerPool", "WorkerSpec", "available_cores",
           "resolve_workers", "MAX_AUTO_WORKERS", "WORKER_CACHE_SIZE"]

#: ``energy_workers: auto`` uses ``min(cores - 1, MAX_AUTO_WORKERS)`` workers.
MAX_AUTO_WORKERS = 8
#: Molecules whose energy set-up each worker keeps (least recently used dropped first).
WORKER_CACHE_SIZE = 1024
#: Readable names of the energy kinds, for messages.
_KIND_LABEL = {"mmff": "MMFF94", "xtb": "GFN2-xTB"}
#: Environment variables that set the thread count of OpenMP / BLAS libraries.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class EnergyWorkerError(RuntimeError):
    """An energy evaluation failed in a worker process; the message names the molecule."""


class WorkerSpec(NamedTuple):
    """Everything a worker needs to rebuild one molecule's energy (hashable, picklable)."""

    #: ``"mmff"`` or ``"xtb"``.
    kind: str
    #: The molecule's name (for messages).
    name: str
    #: The RDKit molecule with explicit hydrogens (``Chem.Mol.ToBinary()``), which keeps the
    #: atom order, aromaticity and charges.
    mol_binary: bytes
    #: The energy's keyword options as sorted ``(name, value)`` pairs (e.g.
    #: ``(("variant", "MMFF94"),)``).
    options: tuple[tuple[str, Any], ...]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(value: int | str, field: str = "energy_workers") -> int:
    """The number of worker processes for a setting.

    Args:
        value: An integer ``>= 0`` (``0`` or ``1``: evaluate in-process) or ``"auto"``
            (``min(cores - 1, MAX_AUTO_WORKERS)``, at least 1).
        field: The setting's name, for the error message.

    Returns:
        The worker count (``0`` or ``1`` mean in-process).

    Raises:
        ValueError: Anything else (the message names ``field`` and the value).
    """
    if value == "auto":
        return max(1, min(available_cores() - 1, MAX_AUTO_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: {value!r}: give a number of worker processes >= 0 "
                         f"(0 or 1: in-process) or 'auto'")
    return int(value)


# --------------------------------------------------------------------------- worker side
_CACHE: OrderedDict[WorkerSpec, Any] = OrderedDict()


def _worker_init(threads: int) -> None:
    """Worker start-up: limit numerical libraries to ``threads`` threads."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


def _build_energy(spec: WorkerSpec) -> Any:
    """The base energy (no regulariser) described by ``spec``."""
    from rdkit import Chem

    from .energy import MMFFEnergy, XTBEnergy
    from .molecule import mol_from_rdkit

    molecule = mol_from_rdkit(Chem.Mol(spec.mol_binary), spec.name)
    options = dict(spec.options)
    if spec.kind == "mmff":
        return MMFFEnergy(molecule, **options)
    if spec.kind == "xtb":
        return XTBEnergy(molecule, **options)
    raise ValueError(f"molecule {spec.name!r}: no worker energy of kind {spec.kind!r}")


def _cached_energy(spec: WorkerSpec) -> Any:
    energy = _CACHE.get(spec)
    if energy is None:
        energy = _build_energy(spec)
        if len(_CACHE) >= WORKER_CACHE_SIZE:
            _CACHE.popitem(last=False)
        _CACHE[spec] = energy
    else:
        _CACHE.move_to_end(spec)
    return energy


def _worker_evaluate(spec: WorkerSpec, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies ``(b,)`` and gradients ``(b, N, 3)`` (float64 numpy) of one chunk."""
    energy = _cached_energy(spec)
    e, g = energy._compute(torch.from_numpy(positions))
    return e.numpy(), g.reshape(positions.shape).numpy()


# --------------------------------------------------------------------------- parent side
class _PoolState:
    """The executor of a pool (separate object so that the pool's finaliser can hold it)."""

    def __init__(self, n_workers: int, start_method: str, threads: int) -> None:
        self.n_workers, self.start_method, self.threads = n_workers, start_method, threads
        self.executor: ProcessPoolExecutor | None = None
        self.closed = False
        self.lock = threading.Lock()

    def get(self) -> ProcessPoolExecutor:
        with self.lock:
            if self.closed:
                raise RuntimeError("the energy worker pool is closed")
            if self.executor is None:
                self.executor = ProcessPoolExecutor(
                    max_workers=self.n_workers, mp_context=mp.get_context(self.start_method),
                    initializer=_worker_init, initargs=(self.threads,))
            return self.executor

    def discard(self) -> None:
        """Drop a broken executor (a worker died); the next call starts a new one."""
        with self.lock:
            executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        with self.lock:
            executor, self.executor, self.closed = self.executor, None, True
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


class EnergyWorkerPool:
    """A pool of worker processes that evaluate conformer batches of MMFF94 / GFN2-xTB energies.

    Processes start at the first :meth:`evaluate_many` call. Close the pool with
    :meth:`close` or a ``with`` block; it is also closed when it is garbage-collected and at
    interpreter exit. Pickling a pool (e.g. ``copy.deepcopy`` of a target) gives a new,
    unstarted pool with the same settings.

    Args:
        n_workers: Number of worker processes (``>= 1``).
        start_method: ``"spawn"`` (default) or ``"forkserver"``.
        threads_per_worker: OpenMP / BLAS / torch threads of each worker (default 1).

    Raises:
        ValueError: Bad ``n_workers``, ``start_method`` or ``threads_per_worker``.
    """

    def __init__(self, n_workers: int, start_method: Literal["spawn", "forkserver"] = "spawn",
                 threads_per_worker: int = 1) -> None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        if start_method not in ("spawn", "forkserver") or \
                start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (available here: "
                             f"{mp.get_all_start_methods()}), got {start_method!r}")
        if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) \
                or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be an integer >= 1, got "
                             f"{threads_per_worker!r}")
        self._state = _PoolState(int(n_workers), start_method, int(threads_per_worker))
        self._finalizer = weakref.finalize(self, _PoolState.shutdown, self._state)

    @property
    def n_workers(self) -> int:
        """Number of worker processes."""
        return self._state.n_workers

    @property
    def started(self) -> bool:
        """Whether the worker processes are running."""
        return self._state.executor is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state.closed

    def evaluate(self, spec: WorkerSpec, positions: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Evaluate one molecule's conformers, split over the workers.

        Args:
            spec: The molecule's energy (``energy.worker_spec()``).
            positions: ``(b, N, 3)`` float64 positions in Å.

        Returns:
            Energies ``(b,)`` and gradients ``(b, N, 3)``, float64, in the energy's units.

        Raises:
            EnergyWorkerError: The evaluation failed in a worker (names the molecule).
        """
        return self.evaluate_many([(spec, positions)])[0]

    def evaluate_many(self, jobs: list[tuple[WorkerSpec, np.ndarray]]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Evaluate several molecules' conformers at once (all chunks queued together).

        The conformers of all jobs are cut into about ``n_workers`` chunks of equal size
        (a chunk never mixes molecules), so small batches of many molecules also keep every
        worker busy.

        Args:
            jobs: ``[(spec, positions (b_i, N_i, 3) float64), …]``.

        Returns:
            ``[(E_i (b_i,), ∇E_i (b_i, N_i, 3)), …]`` float64, in the order of ``jobs``.

        Raises:
            EnergyWorkerError: An evaluation failed in a worker, or a worker died (names the
                molecule, the energy and the cause).
        """
        total = sum(int(p.shape[0]) for _, p in jobs)
        chunk = max(1, math.ceil(total / self.n_workers))
        plan: list[tuple[int, WorkerSpec, np.ndarray]] = []
        for j, (spec, pos) in enumerate(jobs):
            pos = np.asarray(pos, dtype=np.float64)
            if pos.ndim != 3 or pos.shape[2] != 3:
                raise ValueError(f"molecule {spec.name!r}: positions must have shape (batch, N, "
                                 f"3), got {pos.shape}")
            b = pos.shape[0]
            n_chunks = max(1, min(b, math.ceil(b / chunk)))
            for part in np.array_split(np.arange(b), n_chunks):
                if part.size:
                    plan.append((j, spec, np.ascontiguousarray(pos[part[0]:part[-1] + 1])))
        executor = self._state.get()
        futures: list[tuple[int, WorkerSpec, Future]] = []
        current: WorkerSpec | None = None
        try:
            for j, spec, pos in plan:
                current = spec
                futures.append((j, spec, executor.submit(_worker_evaluate, spec, pos)))
            parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in jobs]
            for j, spec, fut in futures:
                current = spec
                parts[j].append(fut.result())
        except BrokenProcessPool as exc:
            self._state.discard()
            name = current.name if current is not None else "?"
            label = _KIND_LABEL.get(current.kind, current.kind) if current is not None else ""
            raise EnergyWorkerError(
                f"molecule {name!r}: a {label} energy worker process died ({exc}); the pool "
                f"is restarted on the next call. A script that uses energy workers must start "
                f"its work under `if __name__ == \"__main__\":` (worker processes are "
                f"started with {self._state.start_method!r}, which imports the main script "
                f"again)") from exc
        except Exception as exc:
            self._cancel(futures)
            raise self._error(current, exc) from exc
        out = []
        for j, (_, pos) in enumerate(jobs):
            if not parts[j]:
                n = pos.shape[1] if np.ndim(pos) == 3 else 0
                out.append((np.empty(0), np.empty((0, n, 3))))
                continue
            out.append((np.concatenate([p[0] for p in parts[j]]),
                        np.concatenate([p[1] for p in parts[j]])))
        return out

    @staticmethod
    def _cancel(futures: list[tuple[int, WorkerSpec, Future]]) -> None:
        for _, _, fut in futures:
            fut.cancel()

    @staticmethod
    def _error(spec: WorkerSpec | None, exc: BaseException) -> EnergyWorkerError:
        if spec is None:
            return EnergyWorkerError(f"energy worker pool: {type(exc).__name__}: {exc}")
        label = _KIND_LABEL.get(spec.kind, spec.kind)
        return EnergyWorkerError(f"molecule {spec.name!r}: the {label} energy failed in a worker "
                                 f"process: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop the worker processes (waits for running evaluations); idempotent."""
        self._finalizer()

    def __enter__(self) -> EnergyWorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        s = self._state
        return {"n_workers": s.n_workers, "start_method": s.start_method,
                "threads_per_worker": s.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["n_workers"], state["start_method"], state["threads_per_worker"])

    def __repr__(self) -> str:
        s = self._state
        status = "closed" if s.closed else ("running" if s.executor is not None else "idle")
        return (f"EnergyWorkerPool(n_workers={s.n_workers}, start_method={s.start_method!r}, "
                f"threads_per_worker={s.threads}, {status})")
