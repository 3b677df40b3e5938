r"""Adjoint Sampling (Havens et al., ICML 2025): the trainer's default objective.

Memoryless base process ``dX = g dW`` from a Dirac at the space's origin. An epoch simulates
paths of the controlled SDE, evaluates the energy once per terminal sample ``x_1`` and stores
``(x_1, a(x_1))`` with the terminal adjoint

.. math:: a(x_1) = \mathrm{clip}\big(\nabla E(x_1)/\tau\big) + \nabla \log p^{base}_1(x_1)

(:func:`~adjoint_core.training.adjoint.terminal_adjoint`); each regression step draws
``t`` (:meth:`~adjoint_core.training.trainer.Trainer.regression_times`) and ``x_t`` from the
base bridge between the origin and ``x_1``, and minimises ``mean (u_θ(t, x_t) + a(x_1))²``
(:func:`~adjoint_core.training.adjoint.adjoint_matching_loss`). Under ``train.reweight`` the
rows also store the path log-weight ``log dP*/dP^u`` and are drawn in proportion to it.
A :class:`~adjoint_core.problem.models.PreconditionedControl` network gets each row weighted
by :func:`~adjoint_core.problem.models.control_loss_weight`, so that the regression is
uniform in its inner network's output.
"""

from __future__ import annotations

import time

import torch

from adjoint_core.problem.models import control_loss_weight
from adjoint_core.problem.target import Target
from adjoint_core.training.adjoint import adjoint_matching_loss, terminal_adjoint
from adjoint_core.training.objectives.base import Capabilities, Objective

__all__ = ["AdjointSampling"]


class AdjointSampling(Objective):
    """Adjoint matching with the reciprocal projection (module docstring)."""

    name = "adjoint"
    capabilities = Capabilities(reweight=True, variance_time=True, distributed=True,
                                amortized=True)

    def collect(self, target: Target, n: int, phase: str) -> torch.Tensor:
        """Simulate ``n`` paths, evaluate their adjoints once, fill the target's buffer."""
        tr = self.trainer
        t0 = time.perf_counter()
        reweight = tr.settings.reweight
        if reweight:
            x1, log_w = tr.sample(n, path_weights=True, target=target)
        else:
            x1 = tr.sample(n, target=target)
        tr.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        a, e = terminal_adjoint(target.energy, target.space, tr.schedule, x1,
                                tr.settings.max_grad_norm)
        extras = {}
        if reweight:
            extras["log_weight"] = log_w - self.terminal_cost(target, x1, e)
        return self.evaluate_and_store(target, x1, a, e, t0, **extras)

    def loss(self, target: Target, batch: dict, model: torch.nn.Module, phase: str
             ) -> torch.Tensor:
        """``mean (u_θ(t, x_t) + a(x_1))²`` with ``x_t`` from the base bridge at fresh ``t``."""
        tr = self.trainer
        x1 = batch["x1"].to(tr.device)
        a = batch["adjoint"].to(tr.device)
        t = tr.regression_times(x1.shape[0], x1.dtype)
        xt = target.space.bridge_sample(x1, t, tr.schedule, tr.generator)
        out = target.space.tangent(target.call(model, t, xt))
        weight = control_loss_weight(model, t)
        if weight is None:
            return adjoint_matching_loss(out, a)
        sq = (out + a).pow(2).flatten(1).mean(1)
        return (weight.to(sq.dtype) * sq).mean()
