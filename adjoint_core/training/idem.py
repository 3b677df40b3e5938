r"""Iterated Denoising Energy Matching (iDEM, Akhound-Sadegh et al. 2024) on the core interfaces.

iDEM learns the score of the target **convolved with Gaussian noise** and samples by the reverse
SDE of that score. It reuses the library's :class:`~adjoint_core.Energy`,
:class:`~adjoint_core.StateSpace`, :class:`~adjoint_core.NoiseSchedule`,
:class:`~adjoint_core.Model` and :class:`~adjoint_core.Buffer`; only the objective and the outer
loop differ from Adjoint Sampling (:class:`IDEMSampler` subclasses
:class:`~adjoint_core.AdjointSampler` and keeps its persistence, counters and ``fit``).

**Time and noise convention.** The library's time runs from the source (``t = 0``) to the sample
(``t = 1``) with accumulated base variance ``h(t)²`` (:mod:`adjoint_core.schedules`). iDEM's
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
is simulated by :func:`adjoint_core.sde.simulate` started from the prior
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
plus the same running terms as Adjoint Sampling (:mod:`adjoint_core.sde`); exact on Euclidean
and mean-free spaces (wrapping is ignored on periodic ones).
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .buffer import Buffer
from .energy import Energy
from .models import Model
from .sampler import AdjointSampler, TrainSettings
from .schedules import NoiseSchedule
from .spaces import StateSpace

__all__ = ["IDEMSettings", "IDEMSampler", "estimate_noised_score", "noise_std"]


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

    model_config = ConfigDict(extra="forbid")

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


class IDEMSampler(AdjointSampler):
    """iDEM training loop and reverse-SDE sampler (see the module docstring).

    Args:
        energy: Target energy.
        space: State space.
        schedule: Noise schedule (defines ``α(t)`` and the reverse SDE).
        model: Score network ``s_θ(t, x)``.
        buffer: Replay buffer of model samples (default 10,000 rows).
        settings: Shared :class:`~adjoint_core.TrainSettings` (budgets, optimiser).
        idem: :class:`IDEMSettings` (or a dict of its fields).
        seed: Seed of the loop's random generator.
        device: Torch device.
        optimizer: Optional optimizer (default Adam(lr)).

    Raises:
        ValueError: Components that do not fit together.
    """

    def __init__(
        self, energy: Energy, space: StateSpace, schedule: NoiseSchedule, model: Model,
        buffer: Buffer | None = None, settings: TrainSettings | dict | None = None,
        idem: IDEMSettings | dict | None = None, seed: int = 0,
        device: str | torch.device = "cpu", optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        super().__init__(energy, space, schedule, model, buffer, settings, seed, device,
                         optimizer)
        for name, what in (("reweight", "path weights of the controlled SDE"),
                           ("variance_time_fraction", "times of the adjoint-matching regression")):
            if getattr(self.settings, name):
                raise ValueError(f"train.{name} ({getattr(self.settings, name)}) is an Adjoint "
                                 f"Sampling option ({what}); iDEM regresses a Monte Carlo score "
                                 "at uniformly drawn noise levels and does not use it")
        if isinstance(idem, dict):
            idem = IDEMSettings(**idem)
        self.idem = idem or IDEMSettings()

    # ------------------------------------------------------------------ sampling
    def _prior(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """``b`` draws of the prior ``N(0, h(1)² I)``, where the reverse SDE starts."""
        return self.space.sample_base(b, self.schedule, generator, self.device)

    @torch.no_grad()
    def sample(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples by the reverse SDE of the learned score, started from the prior.

        Args:
            n: Number of samples.
            n_steps: Euler–Maruyama steps (default: the training value).
            batch_size: Paths simulated at once (default: ``sim_batch_size``).
            path_weights: Also return the running part of the path log-weights plus
                ``−log N(x_0; 0, h(1)²)`` (the terminal ``−E/τ`` is left out).
            generator: Random generator (default: the sampler's own).

        Returns:
            Samples ``(n, *event_shape)``; with ``path_weights`` also ``(n,)`` log-weights.
        """
        x0, x, lw = self.simulate_paths(n, n_steps, batch_size, path_weights, generator,
                                        source=self._prior)
        if not path_weights:
            return x
        return x, lw - self.space.base_log_prob(x0, self.schedule).double()

    def path_log_weights(self, n: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their full path log-weights (``n`` energy evaluations, not training's).

        Returns ``(x1, log_w)`` of shapes ``(n, *event_shape)`` and ``(n,)``.
        """
        x, lw = self.sample(n, path_weights=True, **kw)
        e = self.energy.energy(x).double()
        return x, lw - e / self.energy.temperature

    # ------------------------------------------------------------------ training
    def _add_to_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """Store samples (and their energies, counted) in the buffer; returns the energies."""
        t0 = time.perf_counter()
        with torch.no_grad():
            e = self.energy.energy(x).detach()
        self.counters["energy_evals"] += x.shape[0]
        self.launch_energy_evals += x.shape[0]
        ok = torch.isfinite(e) & torch.isfinite(x.flatten(1)).all(-1)
        self.counters["nonfinite_dropped"] += int((~ok).sum())
        if bool(ok.any()):
            self.buffer.add(x[ok], torch.zeros_like(x[ok]), energy=e[ok])
        self.timers["energy"] += time.perf_counter() - t0
        return e

    def collect(self, n: int) -> int:
        """Simulate ``n`` reverse-SDE samples into the buffer; returns the rows added."""
        t0 = time.perf_counter()
        x = self.sample(n)
        self.timers["simulate"] += time.perf_counter() - t0
        e = self._add_to_buffer(x)
        return int(torch.isfinite(e).sum())

    def loss(self, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        """DEM regression loss on buffer points noised at fresh ``t ~ U(0, 1)``.

        Costs ``batch · K`` energy-and-gradient evaluations (counted).

        Args:
            batch: Buffer rows ``{"x1": (b, *event_shape), ...}``.
            model: Network to evaluate (default: the model).

        Returns:
            Scalar ``mean λ(t)·(s_θ(t, x_t) − Ŝ_K(t, x_t))²``.
        """
        x = batch["x1"].to(self.device)
        b = x.shape[0]
        t = torch.rand(b, generator=self.generator, device=self.device, dtype=x.dtype)
        std = noise_std(self.schedule, t)
        view = (-1, *([1] * (x.ndim - 1)))
        xt = self.space.project(x + std.view(view) * self.space.noise(b, self.generator,
                                                                      self.device, x.dtype))
        t0 = time.perf_counter()
        with torch.no_grad():
            target = estimate_noised_score(self.energy, self.space, xt, std,
                                           self.idem.n_mc_samples, self.generator,
                                           self.idem.max_score_norm, self.idem.mc_batch_size)
        self.timers["energy"] += time.perf_counter() - t0
        n_e = b * self.idem.n_mc_samples
        self.counters["energy_evals"] += n_e
        self.launch_energy_evals += n_e
        net = self.model if model is None else model
        out = self.space.tangent(net(t, xt))
        sq = (out - target).pow(2).flatten(1).mean(-1)
        if self.idem.loss_weighting == "noise_variance":
            sq = sq * std.pow(2)
        return sq.mean()

    def train_epoch(self) -> dict:
        """One iDEM epoch (regress on the buffer, then add reverse-SDE samples); its log row."""
        s = self.settings
        if self.counters["epoch"] == 0 and len(self.buffer) == 0:
            n0 = max(s.init_samples, s.samples_per_epoch)
            prior = self.space.sample_base(n0, self.schedule, self.generator, self.device)
            self._add_to_buffer(prior)
        if len(self.buffer) == 0:
            raise RuntimeError("iDEM replay buffer is empty: every prior sample had a "
                               "non-finite energy")
        t0 = time.perf_counter()
        self.model.train()
        losses = [self.train_step() for _ in range(s.grad_steps_per_epoch)]
        self.timers["train"] += time.perf_counter() - t0
        energies = []
        for start in range(0, s.samples_per_epoch, s.sim_batch_size):
            b = min(s.sim_batch_size, s.samples_per_epoch - start)
            t1 = time.perf_counter()
            x = self.sample(b)
            self.timers["simulate"] += time.perf_counter() - t1
            energies.append(self._add_to_buffer(x))
        self.counters["epoch"] += 1
        e = torch.cat(energies).double()
        e = e[torch.isfinite(e)]
        row = {"epoch": self.counters["epoch"],
               "loss": float(sum(losses) / len(losses)) if losses else float("nan"),
               "buffer_energy_mean": float(e.mean()) if e.numel() else float("nan"),
               "buffer_energy_median": float(e.median()) if e.numel() else float("nan"),
               **{k: v for k, v in self.counters.items() if k != "epoch"}}
        self.history.append(row)
        return row

    def state_dict(self) -> dict:
        """As :meth:`AdjointSampler.state_dict`, plus ``"algorithm": "idem"``."""
        return {**super().state_dict(), "algorithm": "idem"}

    def load_state_dict(self, state: dict) -> None:
        """Restore an iDEM state; refuses an Adjoint Sampling one (a different objective)."""
        if state.get("algorithm", "adjoint") != "idem":
            raise ValueError(f"checkpoint was trained with algorithm "
                             f"{state.get('algorithm', 'adjoint')!r}, not 'idem'")
        super().load_state_dict(state)
