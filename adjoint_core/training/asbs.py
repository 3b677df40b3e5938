r"""Adjoint Schrödinger Bridge Sampler (ASBS, Liu et al. 2025) on the core interfaces.

Adjoint Sampling needs a *memoryless* base process started from a Dirac, so that the terminal
adjoint is ``∇E/τ + ∇ log p^base_1``. ASBS lifts that restriction: the source ``μ_0`` may be any
distribution (here a Gaussian on the tangent space) and the problem becomes a Schrödinger
bridge from ``μ_0`` to the target ``ν ∝ exp(−E/τ)`` with the base process ``dX = g dW``
(no drift, the library's convention). Its optimal control is ``u*_t = ∇ log φ_t`` with
``φ_1 φ̂_1 = ν``, so the adjoint-matching target at ``t = 1`` is

.. math:: -a(x_1), \qquad a(x_1) = \mathrm{clip}\big(\nabla E(x_1)/\tau\big)
          + h_\phi(x_1), \qquad h_\phi \approx \nabla \log \hat\varphi_1 ,

where the **corrector** ``h_φ`` (a second network, evaluated at ``t = 1`` only) is learned by
**corrector matching**, the regression of ``h_φ(1, X_1)`` onto the conditional base score

.. math:: \nabla_{x_1} \log p^{base}(x_1 \mid x_0) = (x_0 - x_1)/h(1)^2

over pairs ``(X_0, X_1)`` of the current controlled process. With a Dirac source at the origin
the corrector is exactly ``−x_1/h(1)²`` and ASBS is Adjoint Sampling.

**Stages** (AS-lib's IPF-style alternation, ALGORITHM_NOTES §1.13): epochs alternate between
``am_epochs_per_stage`` adjoint-matching epochs and ``cm_epochs_per_stage`` corrector-matching
epochs, starting with ``init_stage``. During the very first stage the corrector is not yet
trained: a first adjoint stage uses ``a = clip(∇E/τ)`` (the corrector taken as zero), a first
corrector stage draws its pairs from the uncontrolled base process.

**Training pairs.** An adjoint epoch simulates ``samples_per_epoch`` paths from
``x_0 ∼ μ_0``, evaluates the energy once per ``x_1`` and stores ``(x_0, x_1, a)``; each
regression step draws ``t ∼ U(0, 1)`` and the base bridge between the stored ``x_0`` and
``x_1``,

.. math:: X_t = x_0 + \lambda(t)(x_1 - x_0) + \sqrt{h(1)^2\lambda(1-\lambda)}\,\varepsilon,
          \qquad \lambda = h(t)^2/h(1)^2 ,

minimising ``mean (u_θ(t, X_t) + a)²``. A corrector epoch simulates the same number of paths
(no energy evaluations) into a second FIFO buffer of the same capacity and minimises
``mean (h_φ(1, x_1) − (x_0 − x_1)/h(1)²)²``. Both buffers persist across stages (as in
AS-lib), so adjoint rows written before a corrector update keep the corrector of their time.

**Path weights** (used for the path ESS and importance resampling). With the Gaussian source
``N(0, s² I)`` the base process' terminal marginal is ``N(0, (s² + h(1)²) I)`` (on the
tangent space), so ``Q = P^{base} · ν(X_1)/p^{base}_1(X_1)`` is a path measure with terminal
law ``ν`` and

.. math:: \log \frac{dQ}{dP^u} = -\sum_k \tfrac12\|v_k\|^2\Delta t_k - \sum_k v_k\cdot\Delta W_k
          - E(X_1)/\tau - \log \mathcal N\big(X_1; 0, (s^2 + h(1)^2) I\big) + \text{const},

the running terms of :mod:`adjoint_core.sde`. These weights are valid importance weights for
any control (resampling by them targets ``ν``), but ``Q`` is not the Schrödinger bridge (whose
path measure also carries a factor ``φ̂_0(X_0)``), so even the optimal ASBS control has a path
ESS below one: compare it between ASBS runs, not with Adjoint Sampling's.

Scope: Euclidean spaces (optionally mean-free). Single process (no ``torchrun``); no
``train.reweight``.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .adjoint import adjoint_matching_loss, energy_gradient_term
from .buffer import Buffer, ReplayBuffer
from .energy import Energy
from .models import Model
from .sampler import AdjointSampler, NonFiniteEnergyError, TrainSettings
from .schedules import NoiseSchedule
from .spaces import EuclideanSpace, StateSpace

__all__ = ["ASBSSettings", "SchrodingerBridgeSampler", "source_bridge_sample",
           "corrector_target"]


class ASBSSettings(BaseModel):
    """The ``asbs:`` section of a config (ASBS-only settings; budgets are in ``train:``).

    Attributes:
        source_std: Per-coordinate standard deviation ``s`` of the Gaussian source
            ``μ_0 = N(0, s² I)`` on the tangent space (mean-free for particle systems).
            AS-lib's "harmonic" source of scale ``c`` on a fully connected graph is this with
            ``s = c·sqrt(2/3)`` (ALGORITHM_NOTES §1.13): 1.633 for DW-4 and LJ-13 (``c = 2``).
        am_epochs_per_stage: Adjoint-matching epochs per stage (AS-lib LJ-13: 300).
        cm_epochs_per_stage: Corrector-matching epochs per stage (AS-lib: 20).
        init_stage: Stage the run starts with (AS-lib's DW-4/LJ configs: ``"adjoint"``).
    """

    model_config = ConfigDict(extra="forbid")

    source_std: float = Field(1.0, gt=0)
    am_epochs_per_stage: int = Field(300, ge=1)
    cm_epochs_per_stage: int = Field(20, ge=1)
    init_stage: Literal["adjoint", "corrector"] = "adjoint"


def source_bridge_sample(
    space: StateSpace, schedule: NoiseSchedule, x0: torch.Tensor, x1: torch.Tensor,
    t: torch.Tensor, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``X_t | X_0 = x0, X_1 = x1`` of the base process ``dX = g dW``.

    Args:
        space: A Euclidean state space (noise and projection).
        schedule: The base schedule (``λ(t) = h(t)²/h(1)²`` and the bridge std).
        x0: Start states, ``(batch, *event_shape)``.
        x1: Terminal states, same shape.
        t: Times, ``(batch,)``.
        generator: Random generator.

    Returns:
        ``x0 + λ(t)(x1 − x0) + sqrt(h(1)² λ(1 − λ)) ε``, projected; shape of ``x1``.
    """
    lam, std = schedule.bridge_coefficients(t)
    shape = (-1,) + (1,) * len(space.event_shape)
    eps = space.noise(x1.shape[0], generator, x1.device, x1.dtype)
    return space.project(x0 + lam.view(shape) * (x1 - x0) + std.view(shape) * eps)


def corrector_target(space: StateSpace, schedule: NoiseSchedule, x0: torch.Tensor,
                     x1: torch.Tensor) -> torch.Tensor:
    """Conditional base score ``∇_{x1} log p^base(x1 | x0) = (x0 − x1)/h(1)²`` (tangent)."""
    return space.tangent(x0 - x1) / schedule.h1_squared


class SchrodingerBridgeSampler(AdjointSampler):
    """ASBS: adjoint matching with a learned corrector from a Gaussian source.

    The controller ``model`` and its replay ``buffer`` are those of :class:`AdjointSampler`
    (sampling, EMA, persistence, counters and ``fit`` are inherited); the corrector is a
    second network of the same interface, trained on its own buffer with its own Adam. The
    learning-rate schedule is shared: it follows the gradient-step counter, which counts the
    steps of both networks.

    Args:
        energy, space, schedule, model, buffer, settings, seed, device, optimizer: As for
            :class:`AdjointSampler`; ``space`` must be a :class:`EuclideanSpace`.
        corrector: The corrector network ``h_φ`` (evaluated at ``t = 1``), a second instance
            of a model class (e.g. the controller's architecture with its own weights).
        asbs: :class:`ASBSSettings` (or a dict of its fields).
        corrector_buffer: Buffer of corrector pairs (default: a FIFO of the controller
            buffer's capacity, or 10,000).

    Raises:
        ValueError: A non-Euclidean space, ``train.reweight``, or components that do not fit.
    """

    def __init__(
        self, energy: Energy, space: StateSpace, schedule: NoiseSchedule, model: Model,
        corrector: Model, buffer: Buffer | None = None,
        settings: TrainSettings | dict | None = None, asbs: ASBSSettings | dict | None = None,
        seed: int = 0, device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
        corrector_buffer: Buffer | None = None,
    ) -> None:
        if not isinstance(space, EuclideanSpace):
            raise ValueError(f"ASBS needs a Euclidean state space (Gaussian source, base "
                             f"bridge in R^D); got {space!r}")
        super().__init__(energy, space, schedule, model, buffer, settings, seed, device,
                         optimizer)
        if self.settings.reweight:
            raise ValueError("train.reweight is not supported by algorithm: asbs (its path "
                             "weights are not those of the Schrödinger bridge)")
        if isinstance(asbs, dict):
            asbs = ASBSSettings(**asbs)
        self.asbs = asbs or ASBSSettings()
        if corrector is model:
            raise ValueError("the corrector must be a second network, not the controller")
        corrector.check_space(space)
        self.corrector = corrector.to(self.device)
        self.corrector_optimizer = torch.optim.Adam(self.corrector.parameters(),
                                                    lr=self.settings.lr)
        if corrector_buffer is None:
            corrector_buffer = ReplayBuffer(getattr(self.buffer, "capacity", 10_000))
        self.corrector_buffer = corrector_buffer

    # ------------------------------------------------------------------ stages
    def stage(self, epoch: int | None = None) -> tuple[Literal["adjoint", "corrector"], int]:
        """Stage of epoch ``epoch`` (default: the next one) and its index (0: the first stage).

        Returns:
            ``("adjoint" | "corrector", k)``: epochs ``[0, n_1)`` form stage 0 (of the
            ``init_stage`` kind), the next ``n_2`` epochs stage 1 (the other kind), and so on.
        """
        e = self.counters["epoch"] if epoch is None else int(epoch)
        a, c = self.asbs.am_epochs_per_stage, self.asbs.cm_epochs_per_stage
        first, second = (a, c) if self.asbs.init_stage == "adjoint" else (c, a)
        cycle, pos = divmod(e, first + second)
        in_first = pos < first
        kind = self.asbs.init_stage if in_first else \
            ("corrector" if self.asbs.init_stage == "adjoint" else "adjoint")
        return kind, 2 * cycle + (0 if in_first else 1)

    # ------------------------------------------------------------------ source and sampling
    def sample_source(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of the source ``N(0, s² I)`` on the tangent space, ``(n, *event_shape)``."""
        return self.asbs.source_std * self.space.noise(n, generator or self.generator,
                                                       self.device)

    @property
    def marginal_variance(self) -> float:
        """Per-coordinate variance ``s² + h(1)²`` of the base process' terminal marginal."""
        return self.asbs.source_std**2 + self.schedule.h1_squared

    def base_marginal_log_prob(self, x1: torch.Tensor) -> torch.Tensor:
        """``log N(x1; 0, (s² + h(1)²) I)`` on the tangent space, shape ``(batch,)``."""
        v = self.marginal_variance
        sq = self.space.project(x1).double().pow(2).flatten(1).sum(-1)
        return -0.5 * sq / v - 0.5 * self.space.dim * math.log(2 * math.pi * v)

    @torch.no_grad()
    def sample(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples by simulating the learned SDE from the Gaussian source.

        Arguments and returns as :meth:`AdjointSampler.sample`; with ``path_weights`` the
        log-weights include ``−log p^base_1(x_1)`` of the source-convolved base marginal
        (the terminal ``−E/τ`` is left out).
        """
        _, x1, lw = self.simulate_paths(n, n_steps, batch_size, path_weights, generator,
                                        source=self.sample_source, progress=progress)
        if not path_weights:
            return x1
        return x1, lw

    def path_log_weights(self, n: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their full path log-weights ``log dQ/dP^u`` (module docstring).

        Costs ``n`` energy evaluations (counted by the energy, not as training evaluations).
        Returns ``(x1, log_w)`` of shapes ``(n, *event_shape)`` and ``(n,)``.
        """
        x, lw = self.sample(n, path_weights=True, **kw)
        e = self.energy.energy(x).double()
        return x, lw - e / self.energy.temperature - self.base_marginal_log_prob(x)

    # ------------------------------------------------------------------ training
    def terminal_adjoint(self, x1: torch.Tensor, use_corrector: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One energy evaluation per row: ``(a(x1), E(x1))`` with ``a = clip(∇E/τ) + h_φ``.

        Args:
            x1: Terminal samples, ``(batch, *event_shape)``.
            use_corrector: Add the corrector ``h_φ(1, x1)`` (``False`` in the first stage).

        Returns:
            Adjoints of the shape of ``x1`` and raw energies ``(batch,)``.
        """
        a, e = energy_gradient_term(self.energy, self.space, x1, self.settings.max_grad_norm)
        if use_corrector:
            with torch.no_grad():
                ones = torch.ones(x1.shape[0], device=x1.device, dtype=x1.dtype)
                self.corrector.eval()
                a = a + self.space.tangent(self.corrector(ones, x1))
                self.corrector.train()
            self.counters["model_evals"] += x1.shape[0]
        return a, e

    def collect(self, n: int) -> int:
        """Simulate ``n`` paths, evaluate their adjoints once, fill the controller buffer.

        Returns:
            Number of rows added (fewer than ``n`` if non-finite ones were dropped).

        Raises:
            NonFiniteEnergyError: Under ``nonfinite="raise"``.
        """
        t0 = time.perf_counter()
        x0, x1, _ = self.simulate_paths(n, source=self.sample_source)
        self.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        _, k = self.stage()
        a, e = self.terminal_adjoint(x1, use_corrector=k > 0)
        self.counters["energy_evals"] += n
        self.launch_energy_evals += n
        ok = self._finite_rows(e, a)
        if bool(ok.any()):
            self.buffer.add(x1[ok], a[ok], energy=e[ok], x0=x0[ok])
        self.timers["energy"] += time.perf_counter() - t0
        return int(ok.sum())

    def collect_corrector_pairs(self, n: int) -> None:
        """Fill the corrector buffer with ``n`` pairs ``(x1, (x0 − x1)/h(1)²)``.

        The paths follow the controller, or the base process in a first corrector stage; no
        energy evaluations.
        """
        t0 = time.perf_counter()
        x0, x1, _ = self.simulate_paths(n, source=self.sample_source,
                                        controlled=self.stage()[1] > 0)
        self.corrector_buffer.add(x1, corrector_target(self.space, self.schedule, x0, x1))
        self.timers["simulate"] += time.perf_counter() - t0

    def loss(self, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Adjoint-matching loss on a buffer batch with the bridge from the stored ``x0``.

        Args:
            batch: Rows ``{"x1", "x0", "adjoint"}``, each ``(b, *event_shape)``.
            model: Network to evaluate (default: the controller).

        Returns:
            Scalar ``mean (u_θ(t, x_t) + a)²``.
        """
        x1 = batch["x1"].to(self.device)
        x0 = batch["x0"].to(self.device)
        a = batch["adjoint"].to(self.device)
        t = self.regression_times(x1.shape[0], x1.dtype)
        xt = source_bridge_sample(self.space, self.schedule, x0, x1, t, self.generator)
        net = self.model if model is None else model
        return adjoint_matching_loss(self.space.tangent(net(t, xt)), a)

    def corrector_loss(self, batch: dict) -> torch.Tensor:
        """Corrector-matching loss ``mean (h_φ(1, x1) − (x0 − x1)/h(1)²)²`` on a batch."""
        x1 = batch["x1"].to(self.device)
        target = batch["adjoint"].to(self.device)
        ones = torch.ones(x1.shape[0], device=self.device, dtype=x1.dtype)
        return (self.space.tangent(self.corrector(ones, x1)) - target).pow(2).mean()

    def corrector_step(self) -> float:
        """One Adam step of the corrector on a fresh corrector-buffer batch; returns the loss."""
        batch = self.corrector_buffer.sample(self.settings.train_batch_size, self.generator)
        loss = self.corrector_loss(batch)
        lr = self.learning_rate()
        for group in self.corrector_optimizer.param_groups:
            group["lr"] = lr
        self.corrector_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.corrector.parameters(), self.settings.grad_clip)
        self.corrector_optimizer.step()
        self.counters["grad_steps"] += 1
        self.counters["model_evals"] += batch["x1"].shape[0]
        return float(loss.detach())

    def train_epoch(self) -> dict:
        """One adjoint-matching or corrector-matching epoch (:meth:`stage`); its log row."""
        s = self.settings
        kind, k = self.stage()
        if kind == "adjoint":
            if self.counters["epoch"] == 0 and s.init_samples and len(self.buffer) == 0:
                self._collect_in_batches(s.init_samples)
            self._collect_in_batches(s.samples_per_epoch)
            if len(self.buffer) == 0:
                raise NonFiniteEnergyError("replay buffer is empty: every sample had a "
                                           "non-finite energy or gradient")
            t0 = time.perf_counter()
            self.model.train()
            losses = [self.train_step() for _ in range(s.grad_steps_per_epoch)]
            self.timers["train"] += time.perf_counter() - t0
        else:
            self.collect_corrector_pairs(s.samples_per_epoch)
            t0 = time.perf_counter()
            self.corrector.train()
            losses = [self.corrector_step() for _ in range(s.grad_steps_per_epoch)]
            self.timers["train"] += time.perf_counter() - t0
        self.counters["epoch"] += 1
        if len(self.buffer):
            e = self.buffer.sample(min(len(self.buffer), 1024), self.generator)["energy"]
            buffer_energy = (float(e.double().mean()), float(e.double().median()))
        else:
            buffer_energy = (math.nan, math.nan)
        row = {"epoch": self.counters["epoch"], "stage": kind, "stage_index": k,
               "loss": float(sum(losses) / len(losses)) if losses else math.nan,
               "buffer_energy_mean": buffer_energy[0],
               "buffer_energy_median": buffer_energy[1],
               **{key: v for key, v in self.counters.items() if key != "epoch"}}
        self.history.append(row)
        return row

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """As :meth:`AdjointSampler.state_dict`, plus the corrector, its optimizer and buffer."""
        return {**super().state_dict(), "algorithm": "asbs",
                "corrector": self.corrector.state_dict(),
                "corrector_optimizer": self.corrector_optimizer.state_dict(),
                "corrector_buffer": self.corrector_buffer.state_dict()}

    def load_weights(self, state: dict) -> None:
        """Load the controller (and EMA) weights, and the corrector's when the state has one.

        A warm start from an Adjoint Sampling run (no corrector) keeps this sampler's corrector.
        """
        super().load_weights(state)
        if "corrector" in state:
            self.corrector.load_state_dict(state["corrector"])

    def load_state_dict(self, state: dict) -> None:
        """Restore an ASBS state; refuses one of another algorithm (a different objective)."""
        if state.get("algorithm", "adjoint") != "asbs":
            raise ValueError(f"checkpoint was trained with algorithm "
                             f"{state.get('algorithm', 'adjoint')!r}, not 'asbs'")
        super().load_state_dict(state)
        self.corrector_optimizer.load_state_dict(state["corrector_optimizer"])
        self.corrector_buffer.load_state_dict(state["corrector_buffer"])
