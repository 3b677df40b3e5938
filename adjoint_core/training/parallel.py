"""Data parallelism as a strategy the trainer calls at fixed points.

The trainer (:class:`~adjoint_core.training.trainer.Trainer`) never checks ranks itself; it
calls its strategy where the work is split or joined:

* :meth:`~SingleProcess.setup` once, after the model is built (validate the global budgets,
  make every rank start from rank 0's parameters);
* :meth:`~SingleProcess.share` to turn a global budget (samples per epoch, rows per step) into
  this rank's part;
* :meth:`~SingleProcess.reduce_gradients` between ``backward()`` and the optimizer step;
* :meth:`~SingleProcess.reduce_epoch` once per epoch (global counters, loss and buffer
  statistics);
* :meth:`~SingleProcess.gather` to collect the ranks' private state (buffer shards,
  generators) on rank 0 for a checkpoint.

:class:`SingleProcess` is the identity; :class:`DataParallel` implements the semantics of
:mod:`adjoint_core.training.distributed` (global budgets split evenly, a sharded replay buffer,
gradient averaging, counters summed over ranks).
"""

from __future__ import annotations

from typing import Any

import torch

from adjoint_core.training.distributed import (
    average_gradients,
    broadcast_module,
    gather_objects,
    split_evenly,
)

__all__ = ["SingleProcess", "DataParallel"]


class SingleProcess:
    """One process: every hook is the identity (no ``torch.distributed``)."""

    rank = 0
    world_size = 1
    distributed = False

    def setup(self, model: torch.nn.Module, settings: Any) -> None:
        """Nothing to check or broadcast."""

    def share(self, n: int) -> int:
        """This rank's part of a global count ``n``: all of it."""
        return n

    def seed_offset(self) -> int:
        """Offset of this rank's generator seed (0)."""
        return 0

    def reduce_gradients(self, module: torch.nn.Module) -> None:
        """Nothing to average."""

    def loss_scale(self, rows: int, global_rows: int) -> float:
        """Factor of this rank's loss so the averaged gradient is that of the global mean (1)."""
        return 1.0

    def reduce_epoch(self, increments: list[float], loss: float,
                     buffer_energy: tuple[float, float], rows: int, global_rows: int
                     ) -> tuple[list[float], float, tuple[float, float]]:
        """Global epoch figures: this process's own."""
        return increments, loss, buffer_energy

    def gather(self, shard: Any) -> list | None:
        """The ranks' shards on rank 0: none besides rank 0's own."""
        return []


class DataParallel(SingleProcess):
    """Data-parallel training over the initialised default ``torch.distributed`` group.

    Args:
        device: Device of this rank's collectives (its training device).

    Raises:
        RuntimeError: No initialised process group.
    """

    distributed = True

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("data-parallel training needs an initialised torch.distributed "
                               "process group (launch with torchrun)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def setup(self, model: torch.nn.Module, settings: Any) -> None:
        """Check the global budgets against the world size; broadcast rank 0's model.

        Raises:
            ValueError: A global budget smaller than the number of processes.
        """
        w = self.world_size
        for name in ("samples_per_epoch", "train_batch_size"):
            if getattr(settings, name) < w:
                raise ValueError(f"train.{name}={getattr(settings, name)} is a global budget "
                                 f"and must be at least the number of processes ({w})")
        if 0 < settings.init_samples < w:
            raise ValueError(f"train.init_samples={settings.init_samples} is a global budget "
                             f"and must be 0 or at least the number of processes ({w})")
        broadcast_module(model)

    def share(self, n: int) -> int:
        """:func:`~adjoint_core.training.distributed.split_evenly` of ``n``."""
        return split_evenly(n, self.rank, self.world_size)

    def seed_offset(self) -> int:
        """Rank ``r`` seeds its generator with ``seed + r``."""
        return self.rank

    def reduce_gradients(self, module: torch.nn.Module) -> None:
        """Average the gradients over the ranks (one flat all-reduce)."""
        average_gradients(module)

    def loss_scale(self, rows: int, global_rows: int) -> float:
        """``b_r·W/B``: the average of the scaled gradients is the global batch's mean."""
        return rows * self.world_size / global_rows

    def reduce_epoch(self, increments: list[float], loss: float,
                     buffer_energy: tuple[float, float], rows: int, global_rows: int
                     ) -> tuple[list[float], float, tuple[float, float]]:
        """Sum counter increments; the global batch's mean loss; mean buffer statistics.

        One all-reduce of a float64 vector: the increments, the loss weighted by ``b_r/B``
        and the buffer energy ``(mean, median)`` divided by the world size.
        """
        import torch.distributed as dist

        w = rows / global_rows
        vec = [*increments, w * loss, buffer_energy[0] / self.world_size,
               buffer_energy[1] / self.world_size]
        total = torch.tensor(vec, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        out = total.tolist()
        return out[:len(increments)], out[-3], (out[-2], out[-1])

    def gather(self, shard: Any) -> list | None:
        """Every rank's ``shard`` on rank 0 (``None`` elsewhere), rank 0's excluded."""
        shards = gather_objects(shard)
        return None if shards is None else shards[1:]
