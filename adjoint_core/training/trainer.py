r"""One training loop for every algorithm and every problem (:class:`Trainer`).

One **epoch** (for Adjoint Sampling, the default objective) is

1. *simulate*: ``samples_per_epoch`` paths of the controlled SDE ``dX = g² u_θ dt + g dW``
   from the source, by Euler–Maruyama without gradients
   (:func:`adjoint_core.training.sde.simulate`);
2. *energy*: one energy-and-gradient evaluation per terminal sample ``x_1``, giving the
   terminal adjoint ``a(x_1) = clip(∇E/τ) + ∇log p^base_1`` (:mod:`adjoint_core.training.adjoint`);
   the pairs ``(x_1, a)`` go into the replay buffer;
3. *train*: ``grad_steps_per_epoch`` Adam steps, each on ``train_batch_size`` buffer rows with
   ``t ~ U(0, 1)`` and ``x_t`` drawn from the base bridge between the source and ``x_1``,
   minimising ``mean (u_θ(t, x_t) + a(x_1))²``.

What differs between algorithms — where paths start, what the buffer stores, the regression
target and loss, the path log-weights — comes from an
:class:`~adjoint_core.training.objectives.base.Objective` (Adjoint Sampling, ASBS, iDEM, or a
third party's, registered by name). The trainer owns everything else: budgets, counters and
timers, the learning-rate schedule, EMA, gradient clipping, the non-finite policy, data
parallelism (:mod:`adjoint_core.training.parallel`) and persistence.

**Problems.** A problem is a sequence of :class:`~adjoint_core.problem.target.Target` (energy,
space, model context, buffer). With one target the loop is exactly the one above. With several
(amortized training, e.g. one network over many molecules), each epoch visits
``targets_per_epoch`` targets in a seeded cyclic order and collects ``samples_per_epoch``
samples of each; each regression step draws ``targets_per_step`` targets that have data and
``train_batch_size`` rows of each, and minimises the mean of their losses.

The ratio of gradient steps to energy evaluations is reported (:attr:`Trainer.counters`), as
is the wall time of each phase (:attr:`Trainer.timers`). All randomness of the loop (Brownian
increments, times, bridge noise, buffer and target draws) comes from one ``torch.Generator``
seeded by ``seed``, saved in :meth:`Trainer.state_dict`; network initialisation uses the
global torch seed, which the CLI sets from the same seed.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adjoint_core.problem.buffer import Buffer, ReplayBuffer
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.models import Model
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import StateSpace
from adjoint_core.problem.target import Problem, Target
from adjoint_core.training.objectives.base import Objective
from adjoint_core.training.parallel import DataParallel, SingleProcess
from adjoint_core.training.sde import simulate

__all__ = ["Trainer", "AdjointSampler", "TrainSettings", "NonFiniteEnergyError",
           "TrainingDiverged"]


class NonFiniteEnergyError(RuntimeError):
    """Raised under ``nonfinite="raise"`` when an energy or gradient is NaN or infinite."""


class TrainingDiverged(NonFiniteEnergyError):
    """An epoch's mean loss, or every one of its new samples, is NaN or infinite.

    More than the non-finite policy can absorb: ``"drop"`` skips some samples, but an epoch
    whose every sample is dropped or whose loss is not finite means the network has diverged.
    The trainer's state is then that of the diverged epoch: do not save it; reload the last
    checkpoint (and lower the learning rate, or clip gradients) to continue.

    Attributes:
        epoch: The epoch that diverged (1-based, as in the log rows).
        reason: What went non-finite, with the count.
    """

    def __init__(self, epoch: int, reason: str) -> None:
        self.epoch = epoch
        self.reason = reason
        super().__init__(f"training diverged in epoch {epoch}: {reason}")


class TrainSettings(BaseModel):
    """Budgets and optimisation settings of a training run (validated).

    Budgets are global: in a data-parallel run of ``W`` processes each rank takes
    ``split_evenly(n, rank, W)`` of ``samples_per_epoch``, ``init_samples`` and
    ``train_batch_size`` (see :mod:`adjoint_core.training.distributed`), so the number of
    energy evaluations and the rows per optimizer step equal those of a single process.

    Attributes:
        n_epochs: Number of epochs (simulate → energy → train).
        samples_per_epoch: New terminal samples (= energy evaluations) per epoch and visited
            target, summed over ranks.
        sim_batch_size: Paths simulated at once (per process: a memory knob).
        grad_steps_per_epoch: Regression steps (optimizer steps of the shared model) per epoch.
        train_batch_size: Buffer rows per regression step and drawn target, summed over ranks
            (the global batch).
        targets_per_epoch: Amortized problems: targets visited (simulated) per epoch, in a
            seeded cyclic order (``None``: all of them).
        targets_per_step: Amortized problems: targets drawn (with replacement, among those
            with data) per regression step; their losses are averaged.
        n_sde_steps: Euler–Maruyama steps (the grid has ``n_sde_steps + 1`` points).
        lr: Adam learning rate (the peak of the schedule).
        lr_schedule: ``"constant"``, or ``"cosine"``: decay from ``lr`` to ``lr_min`` along a
            half cosine over the run's ``n_epochs · grad_steps_per_epoch`` steps. The rate is a
            function of the gradient-step counter only, so resuming needs no scheduler state.
        lr_min: Final learning rate of the cosine schedule.
        max_grad_norm: Per-particle clipping threshold of ``∇E/τ`` (``None``: no clipping).
        grad_clip: Clip the parameters' gradient norm (``None``: off).
        init_samples: Terminal samples simulated before the first epoch (fills the buffer),
            summed over ranks.
        ema_decay: Keep an exponential moving average of the network's parameters with this
            decay per gradient step (``None``: off). When set, every simulation (buffer
            collection, :meth:`Trainer.sample`, evaluation) uses the averaged network and the
            regression trains the raw one.
        reweight: Importance-weighted regression: store the path log-weight
            ``log w = log dP*/dP^u`` of every simulated sample (see
            :mod:`adjoint_core.training.sde`; free: the terminal energy is evaluated anyway)
            and draw each regression batch from the buffer with probability ``∝ w`` instead of
            uniformly. The regression pairs ``(x_t, x_1)`` then follow the optimal path
            measure's joint (its bridge is the base bridge), so the minimiser of the loss is
            the optimal control itself rather than one step of the fixed-point iteration.
            ``False`` (default): the papers' uniform draws.
        reweight_max: Truncate the weights at this multiple of their mean over the buffer
            (truncated importance sampling); ``None``: ``√len(buffer)`` (Ionides 2008).
        reweight_power: Tempered reweighting: draw rows ``∝ w^β`` with ``β = reweight_power``
            (``1``: full importance weights). At the optimal control every ``w`` is the same
            constant, so the fixed point is unchanged for any ``β``; away from it each update
            moves the buffer's path measure only part of the way toward the optimal one
            (``∝ P^u^{1−β} P*^β``), which keeps the effective sample size usable where the full
            weights are degenerate (path ESS ~1e-3).
        reweight_uniform: Mix a fraction ``λ`` of uniform draws into the weighted ones,
            ``p = λ/n + (1 − λ) p_w``. Every row keeps some weight, so samples the weights
            discard (overlapping particles, whose energies make ``w ≈ 0``) still teach the
            control to avoid them; the fixed point is unchanged (uniform ``p_w`` there).
        variance_time_fraction: Fraction ``ρ`` of the regression times drawn uniformly in the
            accumulated variance (``h(t)² ~ U(0, h(1)²)``, density ``g(t)²/h(1)²`` in ``t``)
            instead of uniformly in ``t``; the loss stays unweighted. The minimiser of the
            regression at each ``t`` is the same conditional expectation for any time
            density, so the fixed point is unchanged; what changes is where a finite network
            and a finite number of steps spend their accuracy. A control error ``δu`` at time
            ``t`` costs ``½ g(t)² ‖δu‖² dt`` of path KL, so ``ρ = 1`` is the KL
            ("likelihood") weighting by importance sampling; under the geometric schedule it
            puts 90 % of the times below ``t ≈ 0.17`` (for ``σ_max/σ_min = 1000``), where the
            papers' uniform draws put 17 %. ``0`` (default): the papers' ``t ~ U(0, 1)``.
        nonfinite: ``"drop"`` samples with NaN/inf energy or gradient (counted), or ``"raise"``.
        warmup_epochs: Bridge-matching warm-up: the first this many epochs regress the control
            onto the base bridge towards each target's reference states (``Target.data``,
            e.g. RDKit ETKDG conformers; no energy evaluations), then the objective takes over
            from those weights (the Adjoint Sampling paper's "RDKit warm-up"). 0: none.
        time_limit_s: Stop after the epoch during which this launch's wall time exceeds the
            limit (the run stays resumable); ``None``: off.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: int = Field(50, ge=0)
    samples_per_epoch: int = Field(512, ge=1)
    sim_batch_size: int = Field(512, ge=1)
    grad_steps_per_epoch: int = Field(100, ge=0)
    train_batch_size: int = Field(512, ge=1)
    targets_per_epoch: int | None = Field(None, ge=1)
    targets_per_step: int = Field(1, ge=1)
    n_sde_steps: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(100.0, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    init_samples: int = Field(0, ge=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    reweight: bool = False
    reweight_max: float | None = Field(None, gt=1)
    reweight_power: float = Field(1.0, gt=0, le=1)
    reweight_uniform: float = Field(0.0, ge=0, lt=1)
    variance_time_fraction: float = Field(0.0, ge=0, le=1)
    nonfinite: Literal["drop", "raise"] = "drop"
    warmup_epochs: int = Field(0, ge=0)
    time_limit_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        if self.sim_batch_size > self.samples_per_epoch:
            self.sim_batch_size = self.samples_per_epoch
        if not self.reweight:
            unused = [k for k, off in (("reweight_max", None), ("reweight_power", 1.0),
                                       ("reweight_uniform", 0.0)) if getattr(self, k) != off]
            if unused:
                raise ValueError(", ".join(f"train.{k}" for k in unused) + ": "
                                 + ", ".join(str(getattr(self, k)) for k in unused)
                                 + ": only acts with reweight: true")
        return self


def _resolve_objective(objective: Objective | str | None) -> Objective:
    if isinstance(objective, Objective):
        return objective
    name = objective or "adjoint"
    from adjoint_core.training.objectives import builtin_objectives

    builtin = builtin_objectives()
    if name in builtin:
        return builtin[name]()
    from adjoint_core.plugins.registry import default_registry

    return default_registry().build("objective", name, {})


class Trainer:
    """Train a control network on a problem (one or more targets) with an objective.

    Args:
        targets: One :class:`~adjoint_core.problem.target.Target`, a sequence of them, or a
            :class:`~adjoint_core.problem.target.Problem`.
        schedule: Base noise schedule.
        model: Control network ``u_θ`` (called ``model(t, x)`` or ``model(t, x, context)``).
        objective: An :class:`~adjoint_core.training.objectives.base.Objective` or the
            registry name of one (default ``"adjoint"``: Adjoint Sampling).
        settings: :class:`TrainSettings` (or a dict of its fields).
        seed: Seed of the loop's random generator.
        device: Torch device for simulation and training.
        optimizer: Optional optimizer over ``model.parameters()`` (default Adam(lr)).
        parallel: Data-parallel strategy (:class:`~adjoint_core.training.parallel.DataParallel`
            inside an initialised process group; the constructor is then a collective: it
            broadcasts rank 0's parameters), ``True`` for a ``DataParallel`` on ``device``,
            or ``None``/``False`` for a single process.

    Attributes:
        counters: ``epoch``, ``energy_evals``, ``model_evals``, ``grad_steps``,
            ``nonfinite_dropped`` (global over ranks).
        timers: Wall seconds per phase: ``simulate``, ``energy``, ``train`` (rank 0's).
        history: One log row per epoch.

    Raises:
        ValueError: If the components do not fit together (shapes, model/space capability),
            the objective does not support the settings, the problem or data parallelism, or
            a global budget is smaller than the number of ranks.
    """

    def __init__(
        self,
        targets: Target | Sequence[Target] | Problem,
        schedule: NoiseSchedule,
        model: Model,
        objective: Objective | str | None = None,
        settings: TrainSettings | dict | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
        parallel: SingleProcess | bool | None = None,
    ) -> None:
        if isinstance(targets, Problem):
            self.problem = targets
        else:
            self.problem = Problem([targets] if isinstance(targets, Target) else list(targets))
        #: The training targets (``problem.targets``).
        self.targets: list[Target] = self.problem.targets
        if not self.targets:
            raise ValueError("a problem needs at least one target")
        self.schedule = schedule
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if isinstance(settings, dict):
            settings = TrainSettings(**settings)
        self.settings = settings or TrainSettings()
        self.objective = _resolve_objective(objective)
        if parallel is True:
            parallel = DataParallel(self.device)
        self.parallel: SingleProcess = parallel or SingleProcess()
        self._check_capabilities()
        for target in self.targets:
            model.check_space(target.space)
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)
        #: Parameter average used for simulation when ``settings.ema_decay`` is set.
        self.ema_model: torch.optim.swa_utils.AveragedModel | None = None
        if self.settings.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema_model = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(self.settings.ema_decay),
                use_buffers=True)
        self.objective.bind(self)
        self.warmup: Objective | None = None
        if self.settings.warmup_epochs:
            from adjoint_core.training.objectives.bridge import BridgeMatching

            self.warmup = BridgeMatching()
            self.warmup.bind(self)
        self.parallel.setup(self.model, self.settings)
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(
            self.seed + self.parallel.seed_offset())
        self.counters = {"epoch": 0, "energy_evals": 0, "model_evals": 0, "grad_steps": 0,
                         "nonfinite_dropped": 0}
        self.timers = {"simulate": 0.0, "energy": 0.0, "train": 0.0}
        self.history: list[dict] = []
        #: Training energy evaluations made by this process since construction (not summed
        #: over ranks, not checkpointed; ``counters["energy_evals"]`` is the global total).
        self.launch_energy_evals = 0
        # the cyclic visiting order of the targets (amortized problems only: a single target
        # consumes no random numbers here, so its stream is the papers' loop)
        self._order = list(range(len(self.targets)))
        if len(self.targets) > 1:
            self._order = torch.randperm(len(self.targets), generator=self.generator,
                                         device=self.device).tolist()
        self._cursor = 0

    # ------------------------------------------------------------------ checks
    def _check_capabilities(self) -> None:
        """Refuse, once and with the setting's name, what the objective does not support."""
        obj, caps, s = self.objective, self.objective.capabilities, self.settings
        name = f"algorithm {obj.name!r}"
        if s.reweight and not caps.reweight:
            raise ValueError(f"train.reweight is not supported by {name} (its path weights are "
                             "not those of the regression's target path measure)")
        if s.variance_time_fraction and not caps.variance_time:
            raise ValueError(f"train.variance_time_fraction ({s.variance_time_fraction}) is not "
                             f"supported by {name} (it does not draw adjoint-matching "
                             "regression times)")
        if self.parallel.distributed and not caps.distributed:
            raise ValueError(f"{name} does not support data-parallel training (launch without "
                             "torchrun)")
        if len(self.targets) > 1 and not caps.amortized:
            raise ValueError(f"{name} does not support amortized problems ({len(self.targets)} "
                             "targets); use one target")
        if caps.space_types is not None:
            for target in self.targets:
                if not isinstance(target.space, caps.space_types):
                    allowed = ", ".join(t.__name__ for t in caps.space_types)
                    raise ValueError(f"{name} needs a state space of type {allowed}; got "
                                     f"{target.space!r}")
        if s.warmup_epochs and any(t.data is None for t in self.targets):
            missing = [t.name for t in self.targets if t.data is None][:3]
            raise ValueError(f"train.warmup_epochs={s.warmup_epochs} needs reference states "
                             f"for every target (Target.data); missing for {missing}")
        obj.check(self)

    # ------------------------------------------------------------------ single-target access
    @property
    def target(self) -> Target:
        """The target of a single-target problem.

        Raises:
            AttributeError: The problem has several targets (use :attr:`targets`).
        """
        if len(self.targets) != 1:
            raise AttributeError(f"this problem has {len(self.targets)} targets; use "
                                 "trainer.targets[i]")
        return self.targets[0]

    @property
    def energy(self) -> Energy:
        """Energy of the single target."""
        return self.target.energy

    @property
    def space(self) -> StateSpace:
        """State space of the single target."""
        return self.target.space

    @property
    def buffer(self) -> Buffer:
        """Replay buffer of the single target."""
        return self.target.buffer

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.parallel.rank

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return self.parallel.world_size

    @property
    def distributed(self) -> bool:
        """Whether training is data-parallel."""
        return self.parallel.distributed

    def _target(self, target: Target | int | None) -> Target:
        if target is None:
            return self.target
        return self.targets[target] if isinstance(target, int) else target

    # ------------------------------------------------------------------ sampling
    @property
    def sampling_model(self) -> torch.nn.Module:
        """Network that drives simulation (the EMA average if enabled, else the trained model)."""
        return self.ema_model.module if self.ema_model is not None else self.model

    @torch.no_grad()
    def sample(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
        progress: bool = False, target: Target | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples by simulating the learned SDE from the objective's source.

        Args:
            n: Number of samples.
            n_steps: Euler–Maruyama steps (default: the training value).
            batch_size: Paths simulated at once (default: ``sim_batch_size``).
            path_weights: Also return the running part of the path log-weights plus the
                objective's source term (the terminal cost is left out).
            generator: Random generator (default: the trainer's own).
            progress: Show a tqdm progress bar over the simulated paths.
            target: Which target (index or object; default: the single target).

        Returns:
            Samples ``(n, *event_shape)``; with ``path_weights`` also ``log w`` of shape
            ``(n,)`` (see :mod:`adjoint_core.training.sde`).
        """
        tg = self._target(target)
        x0, x, lw = self.simulate_paths(n, n_steps, batch_size, path_weights, generator,
                                        source=self.objective.source(tg), progress=progress,
                                        target=tg)
        if not path_weights:
            return x
        return x, lw + self.objective.source_log_weight(tg, x0)

    @torch.no_grad()
    def simulate_paths(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
        source: Callable[[int, torch.Generator], torch.Tensor] | None = None,
        controlled: bool = True, progress: bool = False, target: Target | int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Simulate ``n`` paths in batches with the sampling network in eval mode.

        Args:
            n: Number of paths.
            n_steps: Euler–Maruyama steps (default: the training value).
            batch_size: Paths simulated at once (default: ``sim_batch_size``).
            path_weights: Accumulate the running terms of the log-weights (else zeros).
            generator: Random generator (default: the trainer's own).
            source: ``source(b, generator)`` draws the ``(b, *event_shape)`` start states of a
                batch before its Brownian increments; ``None``: the space's origin.
            controlled: ``False`` simulates the base process (zero control, no model
                evaluations counted).
            progress: Show a tqdm progress bar over the simulated paths.
            target: Which target (default: the single target).

        Returns:
            ``(x0, x1, log_w)``: start states (``None`` without ``source``), terminal states
            ``(n, *event_shape)`` and ``−(control + noise cost)`` of shape ``(n,)``.
        """
        from tqdm.auto import tqdm

        tg = self._target(target)
        n_steps = n_steps or self.settings.n_sde_steps
        batch_size = batch_size or self.settings.sim_batch_size
        gen = generator or self.generator
        net = self.sampling_model
        was_training = net.training
        net.eval()
        control = tg.control(net) if controlled else (lambda t, x: torch.zeros_like(x))
        x0s, x1s, lws = [], [], []
        with tqdm(total=n, desc="simulating", unit="path", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x0 = None if source is None else source(b, gen)
                res = simulate(control, tg.space, self.schedule, b, n_steps, gen,
                               self.device, x0=x0, path_weights=path_weights)
                if controlled:
                    self.counters["model_evals"] += res.n_model_evals * b
                x0s.append(x0)
                x1s.append(res.x1)
                lws.append(-res.control_cost - res.noise_cost)
                bar.update(b)
        net.train(was_training)
        if not x1s:
            empty = tg.space.origin(0, self.device)
            return (None if source is None else empty), empty, torch.zeros(0, dtype=torch.float64)
        x0 = None if source is None else torch.cat(x0s)
        return x0, torch.cat(x1s), torch.cat(lws)

    def path_log_weights(self, n: int, target: Target | int | None = None, **kw
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their full path log-weights ``log w`` (including ``−Φ(x_1)``).

        Costs ``n`` energy evaluations (counted by the energy, not as training evaluations).
        Keyword arguments go to :meth:`sample`.

        Returns:
            ``(x1, log_w)`` of shapes ``(n, *event_shape)`` and ``(n,)``.
        """
        tg = self._target(target)
        x, lw = self.sample(n, path_weights=True, target=tg, **kw)
        e = tg.energy.energy(x).double()
        return x, lw - self.objective.terminal_cost(tg, x, e)

    # ------------------------------------------------------------------ data
    def finite_rows(self, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Mask ``(batch,)`` of rows whose energy and adjoint are finite; counts the others.

        Raises:
            NonFiniteEnergyError: Under ``nonfinite="raise"`` if any row is not finite.
        """
        ok = torch.isfinite(e) & torch.isfinite(a.flatten(1)).all(-1)
        n_bad = int((~ok).sum())
        if n_bad:
            if self.settings.nonfinite == "raise":
                raise NonFiniteEnergyError(
                    f"epoch {self.counters['epoch']}: {n_bad} of {e.shape[0]} samples have a "
                    f"non-finite energy or gradient (set train.nonfinite='drop' to skip them)"
                )
            self.counters["nonfinite_dropped"] += n_bad
        return ok

    def collect_in_batches(self, target: Target, n: int, phase: str,
                           objective: Objective | None = None) -> list[torch.Tensor]:
        """Collect ``n`` samples of ``target`` in chunks of ``sim_batch_size``.

        Returns:
            The energies of each chunk (see :meth:`Objective.collect`).
        """
        obj = objective or self.objective
        bs = self.settings.sim_batch_size
        return [obj.collect(target, min(bs, n - start), phase) for start in range(0, n, bs)]

    def collect(self, n: int, target: Target | int | None = None) -> torch.Tensor:
        """Collect ``n`` new samples of a target with the current epoch's objective and phase.

        Returns:
            Their raw energies (see :meth:`Objective.collect`).
        """
        obj = self.objective_for()
        return obj.collect(self._target(target), n, obj.phase(self.counters["epoch"]))

    def buffer_probabilities(self, target: Target | int | None = None) -> torch.Tensor | None:
        """Draw probabilities of a target's buffer rows under ``reweight`` (else ``None``).

        ``p_i ∝ min(w_i, c · mean(w))`` with ``w_i = exp(β·(log w_i − max log w))``,
        ``β = reweight_power`` and ``c = reweight_max`` (default ``√n``), mixed with a
        fraction ``λ = reweight_uniform`` of uniform draws; uniform if no weight is positive
        and finite.

        Returns:
            A ``(len(buffer),)`` float64 tensor summing to one.
        """
        if not self.settings.reweight:
            return None
        buf = self._target(target).buffer
        lw = buf.tensors()["log_weight"].double()
        lw = torch.nan_to_num(lw, nan=-math.inf)
        n = lw.shape[0]
        if not torch.isfinite(lw).any():
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        w = (self.settings.reweight_power * (lw - lw[torch.isfinite(lw)].max())).exp()
        cap = (self.settings.reweight_max or math.sqrt(n)) * float(w.mean())
        w = w.clamp(max=cap)
        lam = self.settings.reweight_uniform
        return lam / n + (1.0 - lam) * w / w.sum()

    def regression_times(self, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Times ``t`` of ``n`` regression rows, shape ``(n,)``, from the loop's generator.

        Uniform in ``[0, 1]``; with ``variance_time_fraction = ρ > 0`` each row is instead,
        with probability ``ρ``, the time at which the base variance ``h(t)²`` reaches a
        uniform fraction of ``h(1)²`` (see :class:`TrainSettings`). With ``ρ = 0`` the
        random stream is exactly the papers' ``torch.rand(n)``.
        """
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=dtype)
        rho = self.settings.variance_time_fraction
        if rho == 0:
            return u
        t_var = self.schedule.time_of_h2(u * self.schedule.h1_squared)
        if rho == 1:
            return t_var
        pick = torch.rand(n, generator=self.generator, device=self.device, dtype=dtype) < rho
        return torch.where(pick, t_var, u)

    # ------------------------------------------------------------------ training
    def learning_rate(self, step: int | None = None) -> float:
        """Learning rate of gradient step ``step`` (default: the next one)."""
        s = self.settings
        step = self.counters["grad_steps"] if step is None else step
        if s.lr_schedule == "constant":
            return s.lr
        total = max(s.n_epochs * s.grad_steps_per_epoch, 1)
        frac = min(step / total, 1.0)
        return s.lr_min + 0.5 * (s.lr - s.lr_min) * (1.0 + math.cos(math.pi * frac))

    def objective_for(self, epoch: int | None = None) -> Objective:
        """The objective of epoch ``epoch`` (the warm-up's during ``warmup_epochs``)."""
        e = self.counters["epoch"] if epoch is None else epoch
        if self.warmup is not None and e < self.settings.warmup_epochs:
            return self.warmup
        return self.objective

    def loss(self, batch: dict, model: torch.nn.Module | None = None,
             target: Target | int | None = None, phase: str | None = None) -> torch.Tensor:
        """The current objective's loss on a buffer batch of a target (fresh ``t`` and noise).

        Args:
            batch: Buffer rows (``"x1"``, ``"adjoint"``, ... each ``(b, *event_shape)``).
            model: Network to evaluate (default: the trained model).
            target: Whose rows (default: the single target).
            phase: Phase label (default: the current epoch's).

        Returns:
            The scalar loss.
        """
        obj = self.objective_for()
        phase = phase or obj.phase(self.counters["epoch"])
        return obj.loss(self._target(target), batch, model or self.model, phase)

    def _step_targets(self, obj: Objective, phase: str) -> list[Target]:
        """Targets of one regression step (the single target, or a draw among those with data)."""
        if len(self.targets) == 1:
            return self.targets
        have = [t for t in self.targets if len(obj.training_buffer(t, phase))]
        k = min(self.settings.targets_per_step, len(have))
        pick = torch.randint(len(have), (k,), generator=self.generator, device=self.device)
        return [have[i] for i in pick.tolist()]

    def train_step(self) -> float:
        """One optimizer step of the current phase's network on fresh buffer batches.

        Data parallel: this rank draws its share ``b_r`` of ``train_batch_size`` from its buffer
        shard and back-propagates ``loss · b_r·W/B``; the average of those gradients over the
        ranks is the gradient of the mean loss over the global batch.

        Returns:
            This rank's unweighted loss.
        """
        obj = self.objective_for()
        phase = obj.phase(self.counters["epoch"])
        module, optimizer = obj.trained(phase)
        b = self.parallel.share(self.settings.train_batch_size)
        losses = []
        rows = 0
        for tg in self._step_targets(obj, phase):
            probs = self.buffer_probabilities(tg) if obj is self.objective and \
                obj.training_buffer(tg, phase) is tg.buffer else None
            batch = obj.training_buffer(tg, phase).sample(b, self.generator, probs=probs)
            losses.append(obj.loss(tg, batch, module, phase))
            rows += batch["x1"].shape[0]
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        objective = loss * self.parallel.loss_scale(b, self.settings.train_batch_size) \
            if self.parallel.distributed else loss
        if self.settings.lr_schedule != "constant":
            lr = self.learning_rate()
            for group in optimizer.param_groups:
                group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.parallel.reduce_gradients(module)
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.settings.grad_clip)
        optimizer.step()
        if self.ema_model is not None and module is self.model:
            self.ema_model.update_parameters(self.model)
        self.counters["grad_steps"] += 1
        self.counters["model_evals"] += rows
        return float(loss.detach())

    def _epoch_targets(self) -> list[Target]:
        """Targets visited this epoch: the next ``targets_per_epoch`` (default all) in order."""
        if len(self.targets) == 1:
            return self.targets
        k = self.settings.targets_per_epoch or len(self.targets)
        out = []
        for _ in range(k):
            out.append(self.targets[self._order[self._cursor % len(self._order)]])
            self._cursor += 1
        return out

    def _collect_epoch(self, obj: Objective, phase: str) -> list[torch.Tensor]:
        """New samples of this epoch's targets; returns their energies."""
        n = self.parallel.share(self.settings.samples_per_epoch)
        dropped = self.counters["nonfinite_dropped"]
        energies: list[torch.Tensor] = []
        for tg in self._epoch_targets():
            energies += self.collect_in_batches(tg, n, phase, obj)
        # (new samples with an energy, those dropped as non-finite) for the divergence check
        self._epoch_collected = (sum(int(e.numel()) for e in energies),
                                 self.counters["nonfinite_dropped"] - dropped)
        return energies

    def _check_data(self, obj: Objective, phase: str) -> None:
        if not any(len(obj.training_buffer(t, phase)) for t in self.targets):
            raise NonFiniteEnergyError("replay buffer is empty: every sample had a non-finite "
                                       "energy or gradient")

    def train_epoch(self) -> dict:
        """Run one epoch (collect → train, or train → collect); returns its log row."""
        s = self.settings
        obj = self.objective_for()
        epoch = self.counters["epoch"]
        phase = obj.phase(epoch)
        start = (dict(self.counters), self._energy_evaluations())
        self._epoch_collected = (0, 0)
        if epoch == (s.warmup_epochs if obj is self.objective else 0):  # its first epoch
            for tg in self.targets:
                if len(tg.buffer) == 0:
                    obj.initial_fill(tg, phase)
        energies: list[torch.Tensor] = []
        if obj.collect_first:
            energies = self._collect_epoch(obj, phase)
        self._check_data(obj, phase)
        t0 = time.perf_counter()
        obj.trained(phase)[0].train()
        losses = [self.train_step() for _ in range(s.grad_steps_per_epoch)]
        self.timers["train"] += time.perf_counter() - t0
        if not obj.collect_first:
            energies = self._collect_epoch(obj, phase)
        self.counters["epoch"] += 1
        loss = float(sum(losses) / len(losses)) if losses else math.nan
        buffer_energy = self._energy_statistics(obj, energies)
        collected = self._epoch_collected
        if self.parallel.distributed:
            loss, buffer_energy, collected = self._synchronise_epoch(start, loss, buffer_energy,
                                                                     collected)
        self._check_divergence(losses, loss, *collected)
        row = {"epoch": self.counters["epoch"], **obj.row_extras(epoch), "loss": loss,
               "buffer_energy_mean": buffer_energy[0],
               "buffer_energy_median": buffer_energy[1],
               **({"buffer_ess": self._buffer_ess()} if s.reweight else {}),
               **({"targets_with_data": sum(1 for t in self.targets
                                         if len(obj.training_buffer(t, phase)))}
                  if len(self.targets) > 1 else {}),
               **{k: v for k, v in self.counters.items() if k != "epoch"}}
        self.history.append(row)
        return row

    def _check_divergence(self, losses: list[float], loss: float, n_new: float,
                          n_dropped: float) -> None:
        """Stop on a non-finite epoch loss or an epoch whose every new sample was dropped.

        Args:
            losses: This rank's regression losses of the epoch.
            loss: The epoch's (global) mean loss.
            n_new: New samples of the epoch that had an energy evaluated (global).
            n_dropped: Of those, the ones dropped as non-finite (global).

        Raises:
            TrainingDiverged: Naming the epoch and the count.
        """
        epoch = self.counters["epoch"]
        if losses and not math.isfinite(loss):
            bad = sum(1 for v in losses if not math.isfinite(v))
            where = " on this rank" if self.parallel.distributed else ""
            raise TrainingDiverged(epoch, f"the mean loss is {loss} ({bad} of {len(losses)} "
                                          f"regression losses{where} are NaN or inf)")
        if n_new > 0 and n_dropped >= n_new:
            raise TrainingDiverged(epoch, f"all {int(n_new)} new samples have a non-finite "
                                          "energy or gradient")

    def _energy_statistics(self, obj: Objective, energies: list[torch.Tensor]
                           ) -> tuple[float, float]:
        """``(mean, median)`` energy of a buffer draw (one target) or of the new samples."""
        if obj.energy_statistics == "buffer" and len(self.targets) == 1:
            if not len(self.buffer):
                return math.nan, math.nan
            e = self.buffer.sample(min(len(self.buffer), 1024), self.generator)["energy"]
        else:
            e = torch.cat([x.reshape(-1) for x in energies]) if energies else torch.zeros(0)
        e = e.double()
        e = e[torch.isfinite(e)]
        if not e.numel():
            return math.nan, math.nan
        return float(e.mean()), float(e.median())

    def _energy_evaluations(self) -> int:
        return sum(t.energy.n_evaluations for t in self.targets)

    def _buffer_ess(self) -> float:
        """Normalised ESS of the (truncated) draw probabilities over the first target's buffer."""
        p = self.buffer_probabilities(self.targets[0])
        return float(1.0 / (p.square().sum() * p.shape[0]))

    #: Counters summed over ranks (``grad_steps`` counts steps of the shared model, ``epoch``
    #: is common).
    SUMMED_COUNTERS = ("energy_evals", "model_evals", "nonfinite_dropped")

    def _synchronise_epoch(self, start: tuple[dict, int], loss: float,
                           buffer_energy: tuple[float, float], extra: tuple[float, ...] = ()
                           ) -> tuple[float, tuple[float, float], tuple[float, ...]]:
        """Sum this epoch's counter increments over ranks; global loss and buffer energy.

        ``extra`` numbers are summed over the ranks too and returned last.
        """
        counters, n_energy = start
        keys = self.SUMMED_COUNTERS
        inc = [float(self.counters[k] - counters[k]) for k in keys]
        inc.append(float(self._energy_evaluations() - n_energy))
        inc.extend(float(v) for v in extra)
        b = self.parallel.share(self.settings.train_batch_size)
        out, loss, buffer_energy = self.parallel.reduce_epoch(
            inc, loss, buffer_energy, b, self.settings.train_batch_size)
        for i, k in enumerate(keys):
            self.counters[k] = counters[k] + int(round(out[i]))
        if len(self.targets) == 1:  # amortized problems keep per-target counts per rank
            self.energy.n_evaluations = n_energy + int(round(out[len(keys)]))
        return loss, buffer_energy, tuple(out[len(keys) + 1:])

    def fit(
        self, n_epochs: int | None = None,
        callback: Callable[[Trainer, dict], None] | None = None,
        progress: bool = False,
    ) -> list[dict]:
        """Train for ``n_epochs`` (default: until ``settings.n_epochs`` epochs are done).

        Stops early after the epoch during which ``settings.time_limit_s`` is exceeded.

        Args:
            n_epochs: Epochs to run now; default runs the remaining ones of the budget.
            callback: Called after every epoch with ``(trainer, row)`` (checkpoints, evals).
            progress: Show a tqdm progress bar.

        Returns:
            The log rows of the epochs run.
        """
        if n_epochs is None:
            n_epochs = max(self.settings.n_epochs - self.counters["epoch"], 0)
        rows = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_epochs, desc="training", unit="epoch")
        t_start = time.perf_counter()
        limit = self.settings.time_limit_s
        for _ in range(n_epochs):
            row = self.train_epoch()
            rows.append(row)
            if callback is not None:
                callback(self, row)
            if bar is not None:
                stage = {"stage": row["stage"]} if "stage" in row else {}
                bar.set_postfix(**stage, loss=f"{row['loss']:.3g}",
                                E_median=f"{row['buffer_energy_median']:.3g}")
                bar.update(1)
            if limit is not None and time.perf_counter() - t_start > limit:
                break
        if bar is not None:
            bar.close()
        return rows

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Model (+ EMA), optimizer, buffers, RNG states, counters, timers, history (this rank)."""
        state = {
            "algorithm": self.objective.name,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffers": [t.buffer.state_dict() for t in self.targets],
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "counters": dict(self.counters),
            "timers": dict(self.timers),
            "history": list(self.history),
            "seed": self.seed,
            "energy_evaluations": [t.energy.n_evaluations for t in self.targets],
            "order": list(self._order),
            "cursor": self._cursor,
            "objective": self.objective.state_dict(),
        }
        if self.warmup is not None:
            state["warmup"] = self.warmup.state_dict()
        if self.ema_model is not None:
            state["ema"] = self.ema_model.state_dict()
        return state

    def gather_state_dict(self) -> dict | None:
        """The state of all ranks in one dict, on rank 0 (a collective when distributed).

        Rank 0's :meth:`state_dict` (model, optimizer, its buffer shards and generator, global
        counters: exactly what a single process resumes from) plus, when distributed,
        ``state["distributed"] = {"world_size": W, "shards": [{"rank", "buffers",
        "generator"}, …]}`` with the buffer shards and generator states of ranks ``1 … W-1``.
        See :meth:`state_for_rank` for the inverse.

        Returns:
            The state on rank 0, ``None`` on the other ranks (single process:
            :meth:`state_dict`).
        """
        if not self.parallel.distributed:
            return self.state_dict()
        shard = None if self.rank == 0 else {
            "rank": self.rank, "buffers": [t.buffer.state_dict() for t in self.targets],
            "generator": self.generator.get_state()}
        shards = self.parallel.gather(shard)
        if self.rank != 0:
            return None
        state = self.state_dict()
        state["distributed"] = {"world_size": self.world_size, "shards": shards}
        return state

    @staticmethod
    def state_for_rank(state: dict, rank: int, world_size: int) -> dict:
        """The part of a (possibly gathered) state that rank ``rank`` of ``world_size`` loads.

        Rank 0 and every rank that existed in the saved run get their own buffer shards and
        generator state (a resume with the same number of processes continues every rank's
        random stream exactly). A rank beyond the saved world size gets a copy of shard
        ``rank mod W_saved`` and a generator seeded from ``(seed, rank, epoch)``, a stream no
        rank has used. The model, optimizer, counters and history are common.

        Args:
            state: From :meth:`gather_state_dict` (or :meth:`state_dict`).
            rank: Rank that will load the result.
            world_size: Number of processes now.

        Returns:
            A state for :meth:`load_state_dict` (without the ``"distributed"`` entry; a new
            rank's ``"generator"`` is ``None`` and ``"generator_seed"`` seeds it).
        """
        out = {k: v for k, v in state.items() if k != "distributed"}
        if rank == 0:
            return out
        info = state.get("distributed") or {"world_size": 1, "shards": []}
        saved = int(info["world_size"])
        shards = {int(s["rank"]): s for s in info["shards"]}
        if rank < saved and rank in shards:
            out["buffers"] = shards[rank]["buffers"]
            out["generator"] = shards[rank]["generator"]
        else:
            src = rank % saved
            if src != 0:
                out["buffers"] = shards[src]["buffers"]
            key = f"{state.get('seed', 0)}:{rank}:{state['counters']['epoch']}".encode()
            out["generator"] = None
            out["generator_seed"] = int.from_bytes(hashlib.sha256(key).digest()[:8],
                                                   "little") >> 1
        return out

    def load_weights(self, state: dict) -> None:
        """Load only the network (and EMA) weights of a :meth:`state_dict` (a warm start).

        The optimizer, buffers, generator, counters and history are left as they are. A state
        without ``"ema"`` starts this trainer's average (if any) at the loaded weights; an
        ``"ema"`` entry is ignored when this trainer keeps no average. The objective loads its
        own networks' weights when the state has them (e.g. the ASBS corrector).

        Raises:
            RuntimeError: The weights do not fit this trainer's network (torch's message lists
                the missing, unexpected or differently shaped parameters).
        """
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            if "ema" in state:
                self.ema_model.load_state_dict(state["ema"])
            else:  # a checkpoint written without EMA: start the average at the weights
                self.ema_model.module.load_state_dict(state["model"])
        self.objective.load_weights(state)

    def load_state_dict(self, state: dict) -> None:
        """Restore everything saved by :meth:`state_dict`.

        A gathered state (:meth:`gather_state_dict`) is first reduced to this rank's part with
        :meth:`state_for_rank`.

        Raises:
            ValueError: The state was trained with another objective or another number of
                targets.
        """
        saved = state.get("algorithm", "adjoint")
        if saved != self.objective.name:
            raise ValueError(f"checkpoint was trained with algorithm {saved!r}, not "
                             f"{self.objective.name!r}")
        if len(state["buffers"]) != len(self.targets):
            raise ValueError(f"checkpoint holds {len(state['buffers'])} targets, this problem "
                             f"has {len(self.targets)}")
        if "distributed" in state:
            state = self.state_for_rank(state, self.rank, self.world_size)
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        for tg, buf in zip(self.targets, state["buffers"], strict=True):
            tg.buffer.load_state_dict(buf)
        if state["generator"] is None:  # a rank new to this run (see state_for_rank)
            self.generator.manual_seed(int(state["generator_seed"]))
        else:
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.counters.update(state["counters"])
        self.timers.update(state["timers"])
        self.history = list(state["history"])
        for tg, n in zip(self.targets, state["energy_evaluations"], strict=True):
            tg.energy.n_evaluations = int(n)
        self._order = [int(i) for i in state["order"]]
        self._cursor = int(state["cursor"])
        self.objective.load_state_dict(state["objective"])
        if self.warmup is not None and "warmup" in state:
            self.warmup.load_state_dict(state["warmup"])


class AdjointSampler(Trainer):
    """Adjoint Sampling of one energy: a :class:`Trainer` with the ``"adjoint"`` objective.

    Args:
        energy: Target energy; its ``event_shape`` must equal the space's.
        space: State space.
        schedule: Base noise schedule.
        model: Control network ``u_θ``.
        buffer: Replay buffer (default :class:`~adjoint_core.problem.buffer.ReplayBuffer` of
            10,000 rows).
        settings: :class:`TrainSettings` (or a dict of its fields).
        seed: Seed of the loop's random generator.
        device: Torch device for simulation and training.
        optimizer: Optional optimizer over ``model.parameters()`` (default Adam(lr)).
        distributed: Train data-parallel over the ranks of the initialised default
            ``torch.distributed`` process group (all ranks must construct the sampler with the
            same settings; the constructor is a collective). ``False`` (default): one process.
        objective: Another objective for the same single-target problem (name or object).

    Raises:
        ValueError: If the components do not fit together.
        RuntimeError: ``distributed=True`` without an initialised process group.
    """

    def __init__(
        self, energy: Energy, space: StateSpace, schedule: NoiseSchedule, model: Model,
        buffer: Buffer | None = None, settings: TrainSettings | dict | None = None,
        seed: int = 0, device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None, distributed: bool = False,
        objective: Objective | str | None = None,
    ) -> None:
        target = Target(energy, space, buffer if buffer is not None else ReplayBuffer(10_000))
        super().__init__(target, schedule, model, objective, settings, seed, device, optimizer,
                         DataParallel(device) if distributed else None)
