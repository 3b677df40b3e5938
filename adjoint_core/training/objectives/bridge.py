r"""Bridge matching on reference states: the warm-up before Adjoint Sampling.

The Adjoint Sampling paper's "RDKit warm-up" for conformers: before the energy is used, the
control is regressed onto the base bridge towards reference states of each target
(:attr:`~adjoint_core.problem.target.Target.data`, e.g. RDKit ETKDG conformers), so the
sampler starts from a distribution close to the data instead of from noise. With
``r(t) = h(1)² − h(t)²`` the control of the base bridge pinned at ``x_1`` is
``(x_1 − x_t)/r(t)``; the loss is the scaled regression

.. math:: \mathrm{mean}\,\big(r(t)\,u_θ(t, x_t) − (x_1 − x_t)\big)^2 ,
          \qquad x_t \sim \text{base bridge}(0 \to x_1),\; t \sim U(0, 1),

which costs no energy evaluations. When the trained network is a
:class:`~adjoint_core.problem.models.PreconditionedControl`, each row is weighted by
``1/c(t)²`` (:func:`~adjoint_core.problem.models.bridge_loss_weight`), which makes the loss
uniform in the inner network's output so that late times are trained too. The trainer runs it
for ``train.warmup_epochs`` epochs (:class:`~adjoint_core.training.trainer.TrainSettings`),
then its objective continues from those weights. Each target keeps its reference rows in a
buffer of its own, apart from the objective's.
"""

from __future__ import annotations

import time

import torch

from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.models import bridge_loss_weight
from adjoint_core.problem.target import Target
from adjoint_core.training.objectives.base import Capabilities, Objective

__all__ = ["BridgeMatching"]


class BridgeMatching(Objective):
    """Scaled bridge matching on each target's reference states (module docstring)."""

    name = "bridge_matching"
    capabilities = Capabilities(distributed=True, amortized=True)

    def __init__(self) -> None:
        self.buffers: dict[int, ReplayBuffer] = {}
        #: Reference states drawn so far (no energy evaluations).
        self.n_reference = 0
        #: Visits whose reference generation raised a ``ValueError`` (no rows added).
        self.n_failed = 0

    def bind(self, trainer) -> None:
        """Attach to the trainer and index its targets (one lookup per buffer access)."""
        super().bind(trainer)
        self._indices = {id(t): i for i, t in enumerate(trainer.targets)}

    def _index(self, target: Target) -> int:
        return self._indices[id(target)]

    def training_buffer(self, target: Target, phase: str) -> Buffer:
        """This target's reference rows (an empty buffer before its first visit)."""
        i = self._index(target)
        if i not in self.buffers:
            self.buffers[i] = ReplayBuffer(getattr(target.buffer, "capacity", 10_000))
        return self.buffers[i]

    def initial_fill(self, target: Target, phase: str) -> None:
        """Nothing: the reference rows come with each visit."""

    def collect(self, target: Target, n: int, phase: str) -> torch.Tensor:
        """Add ``n`` projected reference states of ``target`` (seeded from the loop)."""
        tr = self.trainer
        t0 = time.perf_counter()
        seed = int(torch.randint(2**31 - 1, (1,), generator=tr.generator, device=tr.device))
        try:
            x = target.space.project(target.data(n, seed).to(tr.device))
        except ValueError:  # e.g. an embedding that failed: this visit adds no rows
            self.n_failed += 1
            return torch.zeros(0)
        self.training_buffer(target, phase).add(x, torch.zeros_like(x))
        self.n_reference += int(x.shape[0])
        tr.timers["simulate"] += time.perf_counter() - t0
        return torch.zeros(0)

    def loss(self, target: Target, batch: dict, model: torch.nn.Module, phase: str
             ) -> torch.Tensor:
        """``mean (r(t)·u_θ(t, x_t) − (x_1 − x_t))²`` at fresh ``t`` and bridge noise.

        Weighted per row by :func:`~adjoint_core.problem.models.bridge_loss_weight` for a
        preconditioned network (module docstring).
        """
        tr = self.trainer
        x1 = batch["x1"].to(tr.device)
        t = torch.rand(x1.shape[0], generator=tr.generator, device=tr.device)
        xt = target.space.bridge_sample(x1, t, tr.schedule, tr.generator)
        rem = (tr.schedule.h1_squared - tr.schedule.h2(t.double())).to(x1.dtype)
        rem = rem.view(-1, *([1] * (x1.ndim - 1)))
        out = target.space.tangent(target.call(model, t, xt))
        weight = bridge_loss_weight(model, t)
        if weight is None:
            return (rem * out - (x1 - xt)).pow(2).mean()
        sq = (rem * out - (x1 - xt)).pow(2).flatten(1).mean(1)
        return (weight.to(sq.dtype) * sq).mean()

    def row_extras(self, epoch: int) -> dict:
        """Marks warm-up epochs in the log."""
        return {"stage": "warm-up"}

    def state_dict(self) -> dict:
        """The reference buffers by target index and the reference count."""
        return {"buffers": {str(i): b.state_dict() for i, b in self.buffers.items()},
                "n_reference": self.n_reference, "n_failed": self.n_failed}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.buffers = {}
        for i, b in state["buffers"].items():
            buf = self.training_buffer(self.trainer.targets[int(i)], "main")
            buf.load_state_dict(b)
        self.n_reference = int(state["n_reference"])
        self.n_failed = int(state["n_failed"])
