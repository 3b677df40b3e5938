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

**Stages** (AS-lib's IPF-style alternation; AS-lib is named in docs/conventions.md): epochs
alternate between
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

the running terms of :mod:`adjoint_core.training.sde`. These weights are valid importance weights
for
any control (resampling by them targets ``ν``), but ``Q`` is not the Schrödinger bridge (whose
path measure also carries a factor ``φ̂_0(X_0)``), so even the optimal ASBS control has a path
ESS below one: compare it between ASBS runs, not with Adjoint Sampling's.

Scope: Euclidean spaces (optionally mean-free), one target. Single process (no ``torchrun``);
no ``train.reweight``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.models import Model
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import EuclideanSpace, StateSpace
from adjoint_core.problem.target import Target
from adjoint_core.training.adjoint import adjoint_matching_loss, energy_gradient_term
from adjoint_core.training.objectives.base import Capabilities, Objective
from adjoint_core.training.trainer import Trainer, TrainSettings

__all__ = ["ASBSSettings", "SchrodingerBridge", "SchrodingerBridgeSampler",
           "source_bridge_sample", "corrector_target", "asbs_objective"]


class ASBSSettings(BaseModel):
    """The ``asbs:`` section of a config (ASBS-only settings; budgets are in ``train:``).

    Attributes:
        source_std: Per-coordinate standard deviation ``s`` of the Gaussian source
            ``μ_0 = N(0, s² I)`` on the tangent space (mean-free for particle systems).
            AS-lib's "harmonic" source of scale ``c`` on a fully connected graph is this with
            ``s = c·sqrt(2/3)`` (docs/conventions.md): 1.633 for DW-4 and LJ-13 (``c = 2``).
        am_epochs_per_stage: Adjoint-matching epochs per stage (AS-lib LJ-13: 300).
        cm_epochs_per_stage: Corrector-matching epochs per stage (AS-lib: 20).
        init_stage: Stage the run starts with (AS-lib's DW-4/LJ configs: ``"adjoint"``).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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


class SchrodingerBridge(Objective):
    """ASBS: adjoint matching with a learned corrector from a Gaussian source.

    The controller is the trainer's model (sampling, EMA, persistence and counters are the
    trainer's); the corrector is a second network of the same interface, trained on its own
    buffer with its own Adam. The learning-rate schedule is shared: it follows the
    gradient-step counter, which counts the steps of both networks.

    Args:
        corrector: The corrector network ``h_φ`` (evaluated at ``t = 1``), a second instance
            of a model class (e.g. the controller's architecture with its own weights).
        settings: :class:`ASBSSettings` (or a dict of its fields).
        corrector_buffer: Buffer of corrector pairs (default: a FIFO of the controller
            buffer's capacity, or 10,000).
    """

    name = "asbs"
    capabilities = Capabilities(variance_time=True, space_types=(EuclideanSpace,))

    def __init__(self, corrector: Model, settings: ASBSSettings | dict | None = None,
                 corrector_buffer: Buffer | None = None) -> None:
        if isinstance(settings, dict):
            settings = ASBSSettings(**settings)
        self.asbs = settings or ASBSSettings()
        self.corrector = corrector
        self.corrector_buffer = corrector_buffer

    def check(self, trainer: Trainer) -> None:
        """The corrector must be a second network fitting the space."""
        if self.corrector is trainer.model:
            raise ValueError("the corrector must be a second network, not the controller")
        self.corrector.check_space(trainer.space)

    def bind(self, trainer: Trainer) -> None:
        """Move the corrector to the trainer's device; its Adam and buffer."""
        super().bind(trainer)
        self.corrector = self.corrector.to(trainer.device)
        self.corrector_optimizer = torch.optim.Adam(self.corrector.parameters(),
                                                    lr=trainer.settings.lr)
        if self.corrector_buffer is None:
            self.corrector_buffer = ReplayBuffer(getattr(trainer.buffer, "capacity", 10_000))

    # ------------------------------------------------------------------ stages
    def stage(self, epoch: int | None = None) -> tuple[Literal["adjoint", "corrector"], int]:
        """Stage of epoch ``epoch`` (default: the next one) and its index (0: the first stage).

        Returns:
            ``("adjoint" | "corrector", k)``: epochs ``[0, n_1)`` form stage 0 (of the
            ``init_stage`` kind), the next ``n_2`` epochs stage 1 (the other kind), and so on.
        """
        e = self.trainer.counters["epoch"] if epoch is None else int(epoch)
        a, c = self.asbs.am_epochs_per_stage, self.asbs.cm_epochs_per_stage
        first, second = (a, c) if self.asbs.init_stage == "adjoint" else (c, a)
        cycle, pos = divmod(e, first + second)
        in_first = pos < first
        kind = self.asbs.init_stage if in_first else \
            ("corrector" if self.asbs.init_stage == "adjoint" else "adjoint")
        return kind, 2 * cycle + (0 if in_first else 1)

    def phase(self, epoch: int) -> str:
        """``"adjoint"`` or ``"corrector"`` (:meth:`stage`)."""
        return self.stage(epoch)[0]

    def row_extras(self, epoch: int) -> dict:
        """The stage and its index."""
        kind, k = self.stage(epoch)
        return {"stage": kind, "stage_index": k}

    def trained(self, phase: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The controller in adjoint stages, the corrector in corrector stages."""
        if phase == "corrector":
            return self.corrector, self.corrector_optimizer
        return self.trainer.model, self.trainer.optimizer

    def training_buffer(self, target: Target, phase: str) -> Buffer:
        """The controller's buffer, or the corrector pairs in corrector stages."""
        return self.corrector_buffer if phase == "corrector" else target.buffer

    # ------------------------------------------------------------------ source and weights
    def sample_source(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of the source ``N(0, s² I)`` on the tangent space, ``(n, *event_shape)``."""
        tr = self.trainer
        return self.asbs.source_std * tr.space.noise(n, generator or tr.generator, tr.device)

    def source(self, target: Target) -> Callable[[int, torch.Generator], torch.Tensor]:
        """The Gaussian source."""
        return self.sample_source

    @property
    def marginal_variance(self) -> float:
        """Per-coordinate variance ``s² + h(1)²`` of the base process' terminal marginal."""
        return self.asbs.source_std**2 + self.trainer.schedule.h1_squared

    def base_marginal_log_prob(self, x1: torch.Tensor) -> torch.Tensor:
        """``log N(x1; 0, (s² + h(1)²) I)`` on the tangent space, shape ``(batch,)``."""
        v = self.marginal_variance
        space = self.trainer.space
        sq = space.project(x1).double().pow(2).flatten(1).sum(-1)
        return -0.5 * sq / v - 0.5 * space.dim * math.log(2 * math.pi * v)

    def terminal_cost(self, target: Target, x1: torch.Tensor, energy: torch.Tensor
                      ) -> torch.Tensor:
        """``E/τ + log N(x_1; 0, (s² + h(1)²) I)`` (module docstring)."""
        return energy.double() / target.energy.temperature + self.base_marginal_log_prob(x1)

    # ------------------------------------------------------------------ data
    def initial_fill(self, target: Target, phase: str) -> None:
        """``init_samples`` paths, only when the run starts with an adjoint stage."""
        if phase == "adjoint":
            super().initial_fill(target, phase)

    def terminal_adjoint(self, x1: torch.Tensor, use_corrector: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One energy evaluation per row: ``(a(x1), E(x1))`` with ``a = clip(∇E/τ) + h_φ``.

        Args:
            x1: Terminal samples, ``(batch, *event_shape)``.
            use_corrector: Add the corrector ``h_φ(1, x1)`` (``False`` in the first stage).

        Returns:
            Adjoints of the shape of ``x1`` and raw energies ``(batch,)``.
        """
        tr = self.trainer
        a, e = energy_gradient_term(tr.energy, tr.space, x1, tr.settings.max_grad_norm)
        if use_corrector:
            with torch.no_grad():
                ones = torch.ones(x1.shape[0], device=x1.device, dtype=x1.dtype)
                self.corrector.eval()
                a = a + tr.space.tangent(self.corrector(ones, x1))
                self.corrector.train()
            tr.counters["model_evals"] += x1.shape[0]
        return a, e

    def collect(self, target: Target, n: int, phase: str) -> torch.Tensor:
        """Fill the buffer of the phase with ``n`` new rows.

        Adjoint stage: ``(x0, x1, a)`` rows (``n`` energy evaluations); corrector stage:
        ``(x1, (x0 − x1)/h(1)²)`` pairs (no energy; base paths in a first corrector stage).
        """
        tr = self.trainer
        t0 = time.perf_counter()
        k = self.stage()[1]
        if phase == "corrector":
            x0, x1, _ = tr.simulate_paths(n, source=self.sample_source, controlled=k > 0)
            self.corrector_buffer.add(x1, corrector_target(tr.space, tr.schedule, x0, x1))
            tr.timers["simulate"] += time.perf_counter() - t0
            return torch.zeros(0)
        x0, x1, _ = tr.simulate_paths(n, source=self.sample_source)
        tr.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        a, e = self.terminal_adjoint(x1, use_corrector=k > 0)
        return self.evaluate_and_store(target, x1, a, e, t0, x0=x0)

    def loss(self, target: Target, batch: dict, model: torch.nn.Module, phase: str
             ) -> torch.Tensor:
        """The phase's regression loss on a batch.

        Adjoint stage: ``mean (u_θ(t, x_t) + a)²`` with the bridge from the stored ``x0``;
        corrector stage: ``mean (h_φ(1, x1) − (x0 − x1)/h(1)²)²``.
        """
        tr = self.trainer
        x1 = batch["x1"].to(tr.device)
        if phase == "corrector":
            target_score = batch["adjoint"].to(tr.device)
            ones = torch.ones(x1.shape[0], device=tr.device, dtype=x1.dtype)
            return (tr.space.tangent(model(ones, x1)) - target_score).pow(2).mean()
        x0 = batch["x0"].to(tr.device)
        a = batch["adjoint"].to(tr.device)
        t = tr.regression_times(x1.shape[0], x1.dtype)
        xt = source_bridge_sample(tr.space, tr.schedule, x0, x1, t, tr.generator)
        return adjoint_matching_loss(tr.space.tangent(model(t, xt)), a)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """The corrector, its optimizer and its buffer."""
        return {"corrector": self.corrector.state_dict(),
                "corrector_optimizer": self.corrector_optimizer.state_dict(),
                "corrector_buffer": self.corrector_buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.corrector.load_state_dict(state["corrector"])
        self.corrector_optimizer.load_state_dict(state["corrector_optimizer"])
        self.corrector_buffer.load_state_dict(state["corrector_buffer"])

    def load_weights(self, state: dict) -> None:
        """The corrector's weights when the state has them (an AS state has none)."""
        corrector = state.get("objective", {}).get("corrector")
        if corrector is not None:
            self.corrector.load_state_dict(corrector)


def asbs_objective(make_model: Callable[[], Model], source_std: float = 1.0,
                   am_epochs_per_stage: int = 300, cm_epochs_per_stage: int = 20,
                   init_stage: Literal["adjoint", "corrector"] = "adjoint") -> SchrodingerBridge:
    """Registry factory of the ``"asbs"`` objective.

    The corrector is a second network of the
    config's ``model:`` section (``make_model()``); the other parameters are
    :class:`ASBSSettings`.
    """
    return SchrodingerBridge(make_model(), ASBSSettings(
        source_std=source_std, am_epochs_per_stage=am_epochs_per_stage,
        cm_epochs_per_stage=cm_epochs_per_stage, init_stage=init_stage))


class SchrodingerBridgeSampler(Trainer):
    """ASBS on one energy.

    A :class:`~adjoint_core.training.trainer.Trainer` with the
    :class:`SchrodingerBridge` objective.

    Args:
        energy, space, schedule, model, buffer, settings, seed, device, optimizer: As for
            :class:`~adjoint_core.training.trainer.AdjointSampler`; ``space`` must be a
            :class:`~adjoint_core.problem.spaces.EuclideanSpace`.
        corrector: The corrector network ``h_φ``.
        asbs: :class:`ASBSSettings` (or a dict of its fields).
        corrector_buffer: Buffer of corrector pairs.

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
        target = Target(energy, space, buffer if buffer is not None else ReplayBuffer(10_000))
        super().__init__(target, schedule, model, SchrodingerBridge(corrector, asbs,
                                                                    corrector_buffer),
                         settings, seed, device, optimizer)
