r"""Iterated Denoising Energy Matching (iDEM, Akhound-Sadegh et al. 2024) on the core interfaces.

iDEM learns the score of the target **convolved with Gaussian noise** and samples by the reverse
SDE of that score. It reuses the library's :class:`~adjoint_core.Energy`,
:class:`~adjoint_core.StateSpace`, :class:`~adjoint_core.NoiseSchedule`,
:class:`~adjoint_core.Model` and :class:`~adjoint_core.Buffer`; only the objective differs from
Adjoint Sampling: :class:`IDEM` is an
:class:`~adjoint_core.training.objectives.base.Objective` of the common trainer, which keeps
persistence, counters and ``fit``.

**Time and noise convention.** The library's time runs from the source (``t = 0``) to the sample
(``t = 1``) with accumulated base variance ``h(t)²`` (:mod:`adjoint_core.problem.schedules`). iDEM's
variance-exploding noising of a target sample ``x`` to "noise level ``t``" is

.. math:: x_t = x + \alpha(t)\,\varepsilon, \qquad \alpha(t)^2 = h(1)^2 - h(t)^2,
          \qquad \varepsilon \sim \mathcal N(0, I) \text{ (tangent space)},

so ``t = 1`` is the clean target and ``t = 0`` carries variance ``h(1)²`` (for the geometric
schedule ``α(t) = σ_max·sqrt(r^{-2t} − r^{-2})``, i.e. DEM's ``σ(s) = σ_min r^s`` with
``s = 1 − t``). Because ``d α²/dt = −g(t)²``, the reverse-time SDE of this noising is exactly the
library's controlled SDE

.. math:: dX_t = g(t)^2\, s_\theta(t, X_t)\,dt + g(t)\,dW_t,
          \qquad X_0 \sim \mathcal N(0, h(1)^2 I),

with the network ``s_θ(t, x) ≈ ∇ log p_t(x)`` as the control, ``p_t = p * N(0, α(t)² I)``. It
is simulated by :func:`adjoint_core.training.sde.simulate` started from the prior
(:meth:`~adjoint_core.StateSpace.sample_base`) instead of the origin.

**Score estimator** (:func:`estimate_noised_score`). With ``p ∝ exp(−E/τ)``,

.. math:: \nabla \log p_t(x) = \nabla_x \log \mathbb E_{\varepsilon}
          \big[e^{-E(x + \alpha\varepsilon)/\tau}\big]
          \approx \sum_{k=1}^{K} w_k \Big(-\frac{\nabla E(y_k)}{\tau}\Big), \quad
          y_k = x + \alpha\varepsilon_k, \quad w = \mathrm{softmax}_k\big(-E(y_k)/\tau\big),

the self-normalised (log-sum-exp weighted) Monte Carlo estimator with ``K`` samples per point
(consistent as ``K → ∞``, biased at finite ``K``). Each point costs ``K`` energy-and-gradient
evaluations, all counted. Non-finite energies get weight 0. The estimate is projected onto the
tangent space and its norm per point is clipped at ``max_score_norm`` (the papers' 20 for DW-4
and LJ).

**Loop** (one epoch): ``grad_steps_per_epoch`` regression steps, each on ``train_batch_size``
buffer points with fresh ``t ~ U(0, 1)`` and fresh noise, minimising
``mean λ(t)·(s_θ(t, x_t) − Ŝ_K(t, x_t))²``; then ``samples_per_epoch`` new samples by the reverse
SDE go into the replay buffer (the outer "sample" step). Before the first epoch the buffer is
filled with ``max(init_samples, samples_per_epoch)`` draws of the prior ``N(0, h(1)² I)``. The
``train:`` settings are shared with Adjoint Sampling (``max_grad_norm`` is not used; see
:class:`IDEMSettings` for the iDEM-only ones). Data-parallel training is not supported.

**Path weights** (:meth:`IDEMSampler.path_log_weights`, used for the path ESS). With the
noising kernel ``N(x_k; x_{k+1}, Δh²_k I)`` as the backward transition of the target path
measure, the log importance weight of a simulated path is ``−E(x_1)/τ − log N(x_0; 0, h(1)² I)``
plus the same running terms as Adjoint Sampling (:mod:`adjoint_core.training.sde`); exact on
Euclidean
and mean-free spaces (wrapping is ignored on periodic ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.models import Model
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import StateSpace
from adjoint_core.problem.target import Target
from adjoint_core.training.objectives.base import Capabilities, Objective
from adjoint_core.training.trainer import Trainer, TrainSettings

__all__ = ["IDEMSettings", "IDEM", "IDEMSampler", "estimate_noised_score", "noise_std",
           "idem_objective"]


class IDEMSettings(BaseModel):
    """The ``idem:`` section of a config (iDEM-only settings; budgets are in ``train:``).

    Attributes:
        n_mc_samples: ``K``, Monte Carlo samples per point in the score estimator.
        max_score_norm: Clip of the estimated score's norm per point (``None``: off).
        loss_weighting: ``"none"`` (``λ = 1``, the papers' DW-4/LJ setting) or
            ``"noise_variance"`` (``λ(t) = α(t)²``).
        mc_batch_size: Energy evaluations per call in the estimator (memory knob; ``None``:
            all ``batch · K`` at once).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_mc_samples: int = Field(100, ge=1)
    max_score_norm: float | None = Field(20.0, gt=0)
    loss_weighting: Literal["none", "noise_variance"] = "none"
    mc_batch_size: int | None = Field(None, ge=1)


def noise_std(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Noise level of iDEM, ``α(t) = sqrt(h(1)² − h(t)²)``, same shape as ``t``."""
    return (schedule.h1_squared - schedule.h2(t)).clamp_min(0.0).sqrt()


def estimate_noised_score(
    energy: Energy, space: StateSpace, x: torch.Tensor, std: torch.Tensor, n_mc: int,
    generator: torch.Generator | None = None, max_score_norm: float | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of ``∇ log (p * N(0, std² I))(x)`` (see the module docstring).

    Args:
        energy: Target energy; ``p ∝ exp(−E/τ)``. Costs ``batch · n_mc`` evaluations.
        space: State space (noise in the tangent space, proposals projected/wrapped).
        x: Noised points, ``(batch, *event_shape)``.
        std: Noise standard deviation per point, ``(batch,)``.
        n_mc: ``K``, samples per point.
        generator: Random generator.
        max_score_norm: Clip the estimate's norm per point (``None``: no clip).
        chunk: Energy evaluations per call (``None``: all at once).

    Returns:
        Estimated scores, ``(batch, *event_shape)`` (tangent).
    """
    b = x.shape[0]
    ev = x.shape[1:]
    eps = space.noise(b * n_mc, generator, x.device, x.dtype).view(b, n_mc, *ev)
    view = (b, 1, *([1] * len(ev)))
    y = space.project((x.unsqueeze(1) + std.to(x.dtype).view(view) * eps).reshape(-1, *ev))
    es, gs = [], []
    step = chunk or y.shape[0]
    for s in range(0, y.shape[0], step):
        e, g = energy.energy_and_grad(y[s:s + step])
        es.append(e)
        gs.append(g)
    e = torch.cat(es).to(torch.float64).view(b, n_mc)
    g = torch.cat(gs).to(x.dtype).view(b, n_mc, *ev)
    ok = torch.isfinite(e) & torch.isfinite(g.flatten(2)).all(-1)
    logits = torch.where(ok, -e / energy.temperature, torch.full_like(e, -torch.inf))
    w = torch.softmax(logits, dim=1)
    w = torch.nan_to_num(w, nan=0.0).to(x.dtype)  # no finite sample: score 0
    g = torch.where(ok.view(b, n_mc, *([1] * len(ev))), g, torch.zeros_like(g))
    score = space.tangent(-(w.view(b, n_mc, *([1] * len(ev))) * g).sum(1) / energy.temperature)
    if max_score_norm is not None:
        norm = score.flatten(1).norm(dim=-1).view(-1, *([1] * len(ev)))
        score = score * torch.clamp(max_score_norm / (norm + 1e-12), max=1.0)
    return score


class IDEM(Objective):
    """iDEM's objective: regress a Monte Carlo noised score, sample by the reverse SDE.

    Args:
        settings: :class:`IDEMSettings` (or a dict of its fields).
    """

    name = "idem"
    capabilities = Capabilities()
    collect_first = False
    energy_statistics = "new"

    def __init__(self, settings: IDEMSettings | dict | None = None) -> None:
        if isinstance(settings, dict):
            settings = IDEMSettings(**settings)
        self.idem = settings or IDEMSettings()

    # ------------------------------------------------------------------ paths
    def _prior(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """``b`` draws of the prior ``N(0, h(1)² I)``, where the reverse SDE starts."""
        tr = self.trainer
        return tr.space.sample_base(b, tr.schedule, generator, tr.device)

    def source(self, target: Target) -> Callable[[int, torch.Generator], torch.Tensor]:
        """The prior ``N(0, h(1)² I)``."""
        return self._prior

    def source_log_weight(self, target: Target, x0: torch.Tensor | None) -> torch.Tensor:
        """``−log N(x_0; 0, h(1)² I)``."""
        return -target.space.base_log_prob(x0, self.trainer.schedule).double()

    def terminal_cost(self, target: Target, x1: torch.Tensor, energy: torch.Tensor
                      ) -> torch.Tensor:
        """``E(x_1)/τ``."""
        return energy.double() / target.energy.temperature

    # ------------------------------------------------------------------ data
    def _add_to_buffer(self, target: Target, x: torch.Tensor) -> torch.Tensor:
        """Store samples (and their energies, counted) in the buffer; returns the energies."""
        t0 = time.perf_counter()
        with torch.no_grad():
            e = target.energy.energy(x).detach()
        return self.evaluate_and_store(target, x, torch.zeros_like(x), e, t0)

    def initial_fill(self, target: Target, phase: str) -> None:
        """``max(init_samples, samples_per_epoch)`` draws of the prior."""
        s = self.trainer.settings
        n0 = max(s.init_samples, s.samples_per_epoch)
        self._add_to_buffer(target, self._prior(n0, self.trainer.generator))

    def collect(self, target: Target, n: int, phase: str) -> torch.Tensor:
        """Simulate ``n`` reverse-SDE samples into the buffer; returns their energies."""
        tr = self.trainer
        t0 = time.perf_counter()
        x = tr.sample(n, target=target)
        tr.timers["simulate"] += time.perf_counter() - t0
        return self._add_to_buffer(target, x)

    def loss(self, target: Target, batch: dict, model: torch.nn.Module, phase: str
             ) -> torch.Tensor:
        """DEM regression loss on buffer points noised at fresh ``t ~ U(0, 1)``.

        Costs ``batch · K`` energy-and-gradient evaluations (counted).

        Returns:
            Scalar ``mean λ(t)·(s_θ(t, x_t) − Ŝ_K(t, x_t))²``.
        """
        tr = self.trainer
        space = target.space
        x = batch["x1"].to(tr.device)
        b = x.shape[0]
        t = torch.rand(b, generator=tr.generator, device=tr.device, dtype=x.dtype)
        std = noise_std(tr.schedule, t)
        view = (-1, *([1] * (x.ndim - 1)))
        xt = space.project(x + std.view(view) * space.noise(b, tr.generator, tr.device, x.dtype))
        t0 = time.perf_counter()
        with torch.no_grad():
            target_score = estimate_noised_score(
                target.energy, space, xt, std, self.idem.n_mc_samples, tr.generator,
                self.idem.max_score_norm, self.idem.mc_batch_size)
        tr.timers["energy"] += time.perf_counter() - t0
        n_e = b * self.idem.n_mc_samples
        tr.counters["energy_evals"] += n_e
        tr.launch_energy_evals += n_e
        out = space.tangent(target.call(model, t, xt))
        sq = (out - target_score).pow(2).flatten(1).mean(-1)
        if self.idem.loss_weighting == "noise_variance":
            sq = sq * std.pow(2)
        return sq.mean()


def idem_objective(n_mc_samples: int = 100, max_score_norm: float | None = 20.0,
                   loss_weighting: Literal["none", "noise_variance"] = "none",
                   mc_batch_size: int | None = None) -> IDEM:
    """Registry factory of the ``"idem"`` objective (parameters: :class:`IDEMSettings`)."""
    return IDEM(IDEMSettings(n_mc_samples=n_mc_samples, max_score_norm=max_score_norm,
                             loss_weighting=loss_weighting, mc_batch_size=mc_batch_size))


class IDEMSampler(Trainer):
    """iDEM on one energy: a :class:`~adjoint_core.training.trainer.Trainer` with :class:`IDEM`.

    Args:
        energy: Target energy.
        space: State space.
        schedule: Noise schedule (defines ``α(t)`` and the reverse SDE).
        model: Score network ``s_θ(t, x)``.
        buffer: Replay buffer of model samples (default 10,000 rows).
        settings: Shared :class:`~adjoint_core.training.trainer.TrainSettings`.
        idem: :class:`IDEMSettings` (or a dict of its fields).
        seed: Seed of the loop's random generator.
        device: Torch device.
        optimizer: Optional optimizer (default Adam(lr)).

    Raises:
        ValueError: Components or settings that iDEM does not use (``train.reweight``,
            ``train.variance_time_fraction``).
    """

    def __init__(
        self, energy: Energy, space: StateSpace, schedule: NoiseSchedule, model: Model,
        buffer: Buffer | None = None, settings: TrainSettings | dict | None = None,
        idem: IDEMSettings | dict | None = None, seed: int = 0,
        device: str | torch.device = "cpu", optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        target = Target(energy, space, buffer if buffer is not None else ReplayBuffer(10_000))
        super().__init__(target, schedule, model, IDEM(idem), settings, seed, device, optimizer)
