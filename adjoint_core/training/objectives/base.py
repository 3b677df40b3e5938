r"""What an algorithm supplies to the trainer: the :class:`Objective` interface.

The trainer (:class:`~adjoint_core.training.trainer.Trainer`) owns the loop — epochs, budgets,
counters and timers, the learning-rate schedule, EMA, gradient clipping, the non-finite policy,
data parallelism and persistence. An objective supplies only what differs between algorithms,
as torchsde's solvers override only ``step``:

* where paths start (:meth:`Objective.source`) and the matching log-weight terms
  (:meth:`Objective.source_log_weight`, :meth:`Objective.terminal_cost`);
* how an epoch fills the buffers (:meth:`Objective.collect`, :meth:`Objective.initial_fill`)
  and whether it does so before or after its regression steps (:attr:`Objective.collect_first`);
* the regression loss on a batch (:meth:`Objective.loss`), and for algorithms with several
  networks which one a phase trains (:meth:`Objective.phase`, :meth:`Objective.trained`);
* its own state beyond the trainer's (:meth:`Objective.state_dict`).

Each objective declares what it supports (:class:`Capabilities`); the trainer checks that once
at construction and refuses an unsupported combination with a clear error. A new algorithm is
one subclass registered by name through the ``register_objectives`` hook
(:mod:`adjoint_core.plugins.hookspecs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from adjoint_core.problem.target import Target

if TYPE_CHECKING:
    from adjoint_core.training.trainer import Trainer

__all__ = ["Capabilities", "Objective"]


@dataclass(frozen=True)
class Capabilities:
    """What an objective supports; the trainer refuses the rest at construction.

    Attributes:
        reweight: Importance-weighted regression (``train.reweight``): the objective stores
            path log-weights of the optimal path measure in its buffer rows.
        variance_time: Regression times drawn in the base variance
            (``train.variance_time_fraction``).
        distributed: Data-parallel training (``torchrun``).
        amortized: Problems of more than one target (one network over many energies).
        space_types: State-space classes the objective accepts (``None``: any).
    """

    reweight: bool = False
    variance_time: bool = False
    distributed: bool = False
    amortized: bool = False
    space_types: tuple[type, ...] | None = None


class Objective:
    """Base class of training objectives (module docstring).

    The defaults describe the simplest algorithm: paths start at the space's origin, the
    buffers are filled before the regression steps, one phase trains the trainer's model with
    its optimizer, and there is no state of its own.

    Attributes:
        name: Registry name (also stored in checkpoints: a run resumes only with the same
            objective).
        capabilities: What the trainer may combine it with.
        collect_first: Fill the buffers before the epoch's regression steps (``False``: after,
            as iDEM's outer loop does).
        energy_statistics: What the epoch's ``buffer_energy_*`` log entries summarise:
            ``"buffer"`` (a draw of up to 1,024 buffer rows) or ``"new"`` (this epoch's new
            samples).
    """

    name: ClassVar[str] = "objective"
    capabilities: ClassVar[Capabilities] = Capabilities()
    collect_first: ClassVar[bool] = True
    energy_statistics: ClassVar[str] = "buffer"

    trainer: Trainer

    # ------------------------------------------------------------------ set-up
    def bind(self, trainer: Trainer) -> None:
        """Attach to ``trainer`` (called once by its constructor, after its model is built).

        Objectives with networks of their own move them to ``trainer.device`` and build their
        optimizers here.
        """
        self.trainer = trainer

    def check(self, trainer: Trainer) -> None:
        """Refuse components or settings this objective cannot use (beyond capabilities).

        Raises:
            ValueError: Naming the setting or component and what is allowed.
        """

    # ------------------------------------------------------------------ paths
    def source(self, target: Target):
        """Start states ``source(b, generator) -> (b, *event_shape)``; ``None``: the origin."""
        return None

    def source_log_weight(self, target: Target, x0: torch.Tensor | None) -> torch.Tensor | float:
        """Term of the path log-weight that depends on the start state (default 0)."""
        return 0.0

    def terminal_cost(self, target: Target, x1: torch.Tensor, energy: torch.Tensor
                      ) -> torch.Tensor:
        """``Φ(x_1)`` with ``log w = running terms − Φ(x_1)``, float64 ``(batch,)``.

        Default (memoryless Adjoint Sampling): ``E/τ + log p^base_1(x_1)``.
        """
        return (energy.double() / target.energy.temperature
                + target.space.base_log_prob(x1, self.trainer.schedule).double())

    # ------------------------------------------------------------------ phases
    def phase(self, epoch: int) -> str:
        """Label of epoch ``epoch``'s phase (one phase: ``"main"``)."""
        return "main"

    def row_extras(self, epoch: int) -> dict:
        """Extra entries of epoch ``epoch``'s log row (e.g. the ASBS stage)."""
        return {}

    def trained(self, phase: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The network and optimizer a phase's regression steps update (default: the model)."""
        return self.trainer.model, self.trainer.optimizer

    def training_buffer(self, target: Target, phase: str):
        """The buffer a phase's regression draws from (default: the target's)."""
        return target.buffer

    # ------------------------------------------------------------------ data
    def initial_fill(self, target: Target, phase: str) -> None:
        """Fill an empty buffer before the first epoch (default: ``init_samples`` paths)."""
        n = self.trainer.parallel.share(self.trainer.settings.init_samples)
        if n:
            self.trainer.collect_in_batches(target, n, phase)

    def collect(self, target: Target, n: int, phase: str) -> torch.Tensor:
        """Simulate ``n`` samples of ``target`` and store training rows in its buffer.

        Returns:
            The raw energies of the new samples, ``(n,)`` (non-finite where dropped; empty
            when the phase evaluates no energy).
        """
        raise NotImplementedError

    def loss(self, target: Target, batch: dict, model: torch.nn.Module, phase: str
             ) -> torch.Tensor:
        """Scalar regression loss of ``model`` on a batch of ``target``'s buffer rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def evaluate_and_store(self, target: Target, x1: torch.Tensor, adjoint: torch.Tensor,
                           energy: torch.Tensor, t0: float, **extras: torch.Tensor
                           ) -> torch.Tensor:
        """Count ``len(x1)`` energy evaluations, drop non-finite rows, add the rest.

        Args:
            target: Whose buffer receives the rows.
            x1: Terminal samples ``(n, *event_shape)``.
            adjoint: Regression targets, same shape.
            energy: Raw energies ``(n,)``.
            t0: ``time.perf_counter()`` when the energy phase began (for the timers).
            extras: Further per-row tensors stored with the rows.

        Returns:
            ``energy`` (unchanged).
        """
        tr = self.trainer
        n = x1.shape[0]
        tr.counters["energy_evals"] += n
        tr.launch_energy_evals += n
        ok = tr.finite_rows(energy, adjoint)
        if not bool(ok.all()):
            x1, adjoint = x1[ok], adjoint[ok]
            extras = {k: v[ok] for k, v in extras.items()}
        if x1.shape[0]:
            target.buffer.add(x1, adjoint, energy=energy[ok], **extras)
        tr.timers["energy"] += time.perf_counter() - t0
        return energy

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """State of the objective's own networks, optimizers and buffers (default none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def load_weights(self, state: dict) -> None:
        """Load only network weights from a trainer state (a warm start); default none."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
