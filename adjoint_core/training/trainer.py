r"""The generic Adjoint Sampling loop (:class:`AdjointSampler`).

One **epoch** is

1. *simulate*: ``samples_per_epoch`` paths of the controlled SDE
   ``dX = g² u_θ dt + g dW`` from the source, by Euler–Maruyama without gradients
   (:func:`adjoint_core.sde.simulate`);
2. *energy*: one energy-and-gradient evaluation per terminal sample ``x_1``, giving the
   terminal adjoint ``a(x_1) = clip(∇E/τ) + ∇log p^base_1`` (:mod:`adjoint_core.adjoint`);
   the pairs ``(x_1, a)`` go into the replay buffer;
3. *train*: ``grad_steps_per_epoch`` Adam steps, each on ``train_batch_size`` buffer rows with
   ``t ~ U(0, 1)`` and ``x_t`` drawn from the base bridge between the source and ``x_1``,
   minimising ``mean (u_θ(t, x_t) + a(x_1))²``.

The ratio of gradient steps to energy evaluations is reported (:attr:`AdjointSampler.counters`),
as is the wall time of each phase (:attr:`AdjointSampler.timers`). All randomness of the loop
(Brownian increments, times, bridge noise, buffer draws) comes from one ``torch.Generator``
seeded by ``seed``, saved in :meth:`AdjointSampler.state_dict`; network initialisation uses
the global torch seed, which the CLI sets from the same seed.

**Data parallel** (``distributed=True``, inside an initialised ``torch.distributed`` process
group, e.g. under ``torchrun``; see :mod:`adjoint_core.distributed` and ``docs/scaling.md``):
``samples_per_epoch``, ``init_samples`` and ``train_batch_size`` are global budgets split over
the ranks, each rank keeps its own shard of the replay buffer, the gradients are averaged over
the ranks before every optimizer step and rank ``r`` seeds its generator with ``seed + r``.
Counters are summed over ranks after every epoch. With a single process nothing of this runs
and the loop is exactly the one described above.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .adjoint import adjoint_matching_loss, terminal_adjoint
from .buffer import Buffer, ReplayBuffer
from .distributed import average_gradients, broadcast_module
from .energy import Energy
from .models import Model
from .schedules import NoiseSchedule
from .sde import simulate
from .spaces import StateSpace

__all__ = ["AdjointSampler", "TrainSettings", "NonFiniteEnergyError"]


class NonFiniteEnergyError(RuntimeError):
    """Raised under ``nonfinite="raise"`` when an energy or gradient is NaN or infinite."""


class TrainSettings(BaseModel):
    """Budgets and optimisation settings of an Adjoint Sampling run (validated).

    Budgets are global: in a data-parallel run of ``W`` processes each rank takes
    ``split_evenly(n, rank, W)`` of ``samples_per_epoch``, ``init_samples`` and
    ``train_batch_size`` (see :mod:`adjoint_core.distributed`), so the number of energy
    evaluations and the rows per optimizer step equal those of a single process.

    Attributes:
        n_epochs: Number of epochs (simulate → energy → train).
        samples_per_epoch: New terminal samples (= energy evaluations) per epoch, summed over
            ranks.
        sim_batch_size: Paths simulated at once (per process: a memory knob).
        grad_steps_per_epoch: Regression steps (optimizer steps of the shared model) per epoch.
        train_batch_size: Buffer rows per regression step, summed over ranks (the global
            batch).
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
            collection, :meth:`AdjointSampler.sample`, evaluation) uses the averaged network
            and the regression trains the raw one.
        reweight: Importance-weighted regression: store the path log-weight
            ``log w = log dP*/dP^u`` of every simulated sample (see :mod:`adjoint_core.sde`;
            free: the terminal energy is evaluated anyway) and draw each regression batch from
            the buffer with probability ``∝ w`` instead of uniformly. The regression pairs
            ``(x_t, x_1)`` then follow the optimal path measure's joint (its bridge is the base
            bridge), so the minimiser of the loss is the optimal control itself rather than one
            step of the fixed-point iteration. ``False`` (default): the papers' uniform draws.
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
    """

    model_config = ConfigDict(extra="forbid")

    n_epochs: int = Field(50, ge=0)
    samples_per_epoch: int = Field(512, ge=1)
    sim_batch_size: int = Field(512, ge=1)
    grad_steps_per_epoch: int = Field(100, ge=0)
    train_batch_size: int = Field(512, ge=1)
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

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        if self.sim_batch_size > self.samples_per_epoch:
            self.sim_batch_size = self.samples_per_epoch
        if not self.reweight:
            unused = [k for k, off in (("reweight_max", None), ("reweight_power", 1.0),
                                       ("reweight_uniform", 0.0)) if getattr(self, k) != off]
            if unused:
                raise ValueError(f"{', '.join(unused)} set, but they only act with reweight: true")
        return self


class AdjointSampler:
    """Compose an energy, a state space, a schedule, a model and a buffer into a sampler.

    Args:
        energy: Target energy; its ``event_shape`` must equal the space's.
        space: State space.
        schedule: Base noise schedule.
        model: Control network ``u_θ``.
        buffer: Replay buffer (default :class:`ReplayBuffer` of 10,000 rows).
        settings: :class:`TrainSettings` (or a dict of its fields).
        seed: Seed of the loop's random generator.
        device: Torch device for simulation and training.
        optimizer: Optional optimizer over ``model.parameters()`` (default Adam(lr)).
        distributed: Train data-parallel over the ranks of the initialised default
            ``torch.distributed`` process group (all ranks must construct the sampler with the
            same settings; the constructor is a collective: it broadcasts rank 0's
            parameters). ``False`` (default): a single process, no ``torch.distributed``.

    Attributes:
        rank: This process's rank (0 without ``distributed``).
        world_size: Number of processes (1 without ``distributed``).

    Raises:
        ValueError: If the components do not fit together (shapes, model/space capability),
            or a global budget is smaller than the number of ranks.
        RuntimeError: ``distributed=True`` without an initialised process group.
    """

    def __init__(
        self,
        energy: Energy,
        space: StateSpace,
        schedule: NoiseSchedule,
        model: Model,
        buffer: Buffer | None = None,
        settings: TrainSettings | dict | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
        distributed: bool = False,
    ) -> None:
        if tuple(energy.event_shape) != tuple(space.event_shape):
            raise ValueError(
                f"energy {energy!r} has event shape {energy.event_shape} but the state space "
                f"{space!r} has {space.event_shape} (wrong particle count or dimension?)"
            )
        model.check_space(space)
        self.energy = energy
        self.space = space
        self.schedule = schedule
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.buffer = buffer if buffer is not None else ReplayBuffer(10_000)
        if isinstance(settings, dict):
            settings = TrainSettings(**settings)
        self.settings = settings or TrainSettings()
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)
        self.distributed = bool(distributed)
        self.rank, self.world_size = 0, 1
        #: Parameter average used for simulation when ``settings.ema_decay`` is set.
        self.ema_model: torch.optim.swa_utils.AveragedModel | None = None
        if self.settings.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema_model = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(self.settings.ema_decay),
                use_buffers=True)
        if self.distributed:
            self._setup_distributed()
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed + self.rank)
        self.counters = {"epoch": 0, "energy_evals": 0, "model_evals": 0, "grad_steps": 0,
                         "nonfinite_dropped": 0}
        self.timers = {"simulate": 0.0, "energy": 0.0, "train": 0.0}
        self.history: list[dict] = []
        #: Training energy evaluations made by this process since construction (not summed
        #: over ranks, not checkpointed; ``counters["energy_evals"]`` is the global total).
        self.launch_energy_evals = 0

    def _setup_distributed(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("AdjointSampler(distributed=True) needs an initialised "
                               "torch.distributed process group (launch with torchrun)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        s, w = self.settings, self.world_size
        for name in ("samples_per_epoch", "train_batch_size"):
            if getattr(s, name) < w:
                raise ValueError(f"train.{name}={getattr(s, name)} is a global budget and must "
                                 f"be at least the number of processes ({w})")
        if 0 < s.init_samples < w:
            raise ValueError(f"train.init_samples={s.init_samples} is a global budget and must "
                             f"be 0 or at least the number of processes ({w})")
        broadcast_module(self.model)

    def _share(self, n: int) -> int:
        """This rank's part of a global count ``n`` (``n`` itself in a single process)."""
        if self.world_size == 1:
            return n
        from .distributed import split_evenly

        return split_evenly(n, self.rank, self.world_size)

    # ------------------------------------------------------------------ sampling
    @property
    def sampling_model(self) -> torch.nn.Module:
        """Network that drives simulation (the EMA average if enabled, else the trained model)."""
        return self.ema_model.module if self.ema_model is not None else self.model

    def _control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.sampling_model(t, x)

    @torch.no_grad()
    def sample(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples by simulating the learned SDE.

        Args:
            n: Number of samples.
            n_steps: Euler–Maruyama steps (default: the training value).
            batch_size: Paths simulated at once (default: ``sim_batch_size``).
            path_weights: Also return the running part of the path log-weights.
            generator: Random generator (default: the sampler's own).
            progress: Show a tqdm progress bar over the simulated paths.

        Returns:
            Samples ``(n, *event_shape)``; with ``path_weights`` also ``log w`` without the
            terminal cost, shape ``(n,)`` (see :mod:`adjoint_core.sde`).
        """
        _, x, lw = self.simulate_paths(n, n_steps, batch_size, path_weights, generator,
                                       progress=progress)
        return (x, lw) if path_weights else x

    @torch.no_grad()
    def simulate_paths(
        self, n: int, n_steps: int | None = None, batch_size: int | None = None,
        path_weights: bool = False, generator: torch.Generator | None = None,
        source: Callable[[int, torch.Generator], torch.Tensor] | None = None,
        controlled: bool = True, progress: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Simulate ``n`` paths in batches with the sampling network in eval mode.

        Shared by :meth:`sample` and the samplers that start from a distribution
        (:class:`~adjoint_core.asbs.SchrodingerBridgeSampler`,
        :class:`~adjoint_core.idem.IDEMSampler`).

        Args:
            n: Number of paths.
            n_steps: Euler–Maruyama steps (default: the training value).
            batch_size: Paths simulated at once (default: ``sim_batch_size``).
            path_weights: Accumulate the running terms of the log-weights (else zeros).
            generator: Random generator (default: the sampler's own).
            source: ``source(b, generator)`` draws the ``(b, *event_shape)`` start states of a
                batch before its Brownian increments; ``None``: the space's origin.
            controlled: ``False`` simulates the base process (zero control, no model
                evaluations counted).
            progress: Show a tqdm progress bar over the simulated paths.

        Returns:
            ``(x0, x1, log_w)``: start states (``None`` without ``source``), terminal states
            ``(n, *event_shape)`` and ``−(control + noise cost)`` of shape ``(n,)``.
        """
        from tqdm.auto import tqdm

        n_steps = n_steps or self.settings.n_sde_steps
        batch_size = batch_size or self.settings.sim_batch_size
        gen = generator or self.generator
        net = self.sampling_model
        was_training = net.training
        net.eval()
        control = self._control if controlled else (lambda t, x: torch.zeros_like(x))
        x0s, x1s, lws = [], [], []
        with tqdm(total=n, desc="simulating", unit="path", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x0 = None if source is None else source(b, gen)
                res = simulate(control, self.space, self.schedule, b, n_steps, gen,
                               self.device, x0=x0, path_weights=path_weights)
                if controlled:
                    self.counters["model_evals"] += res.n_model_evals * b
                x0s.append(x0)
                x1s.append(res.x1)
                lws.append(-res.control_cost - res.noise_cost)
                bar.update(b)
        net.train(was_training)
        if not x1s:
            empty = self.space.origin(0, self.device)
            return (None if source is None else empty), empty, torch.zeros(0, dtype=torch.float64)
        x0 = None if source is None else torch.cat(x0s)
        return x0, torch.cat(x1s), torch.cat(lws)

    def path_log_weights(self, n: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their full path log-weights ``log w`` (including ``-Φ(x_1)``).

        Costs ``n`` energy evaluations (counted by the energy, not as training evaluations).
        Returns ``(x1, log_w)`` of shapes ``(n, *event_shape)`` and ``(n,)``.
        """
        x, lw = self.sample(n, path_weights=True, **kw)
        e = self.energy.energy(x).double()
        phi = e / self.energy.temperature + self.space.base_log_prob(x, self.schedule).double()
        return x, lw - phi

    # ------------------------------------------------------------------ training
    def collect(self, n: int) -> int:
        """Simulate ``n`` terminal samples, evaluate their adjoints once, fill the buffer.

        Returns:
            Number of rows added (fewer than ``n`` if non-finite ones were dropped).

        Raises:
            NonFiniteEnergyError: Under ``nonfinite="raise"``.
        """
        t0 = time.perf_counter()
        reweight = self.settings.reweight
        if reweight:
            x1, log_w = self.sample(n, path_weights=True)
        else:
            x1 = self.sample(n)
        self.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        a, e = terminal_adjoint(self.energy, self.space, self.schedule, x1,
                                self.settings.max_grad_norm)
        extras = {"energy": e}
        if reweight:
            phi = (e.double() / self.energy.temperature
                   + self.space.base_log_prob(x1, self.schedule).double())
            extras["log_weight"] = log_w - phi
        self.counters["energy_evals"] += n
        self.launch_energy_evals += n
        ok = self._finite_rows(e, a)
        if not bool(ok.all()):
            x1, a = x1[ok], a[ok]
            extras = {k: v[ok] for k, v in extras.items()}
        if x1.shape[0]:
            self.buffer.add(x1, a, **extras)
        self.timers["energy"] += time.perf_counter() - t0
        return int(x1.shape[0])

    def _finite_rows(self, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
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

    def buffer_probabilities(self) -> torch.Tensor | None:
        """Draw probabilities of the buffer rows under ``reweight`` (else ``None``).

        ``p_i ∝ min(w_i, c · mean(w))`` with ``w_i = exp(β·(log w_i − max log w))``,
        ``β = reweight_power`` and ``c = reweight_max`` (default ``√n``), mixed with a
        fraction ``λ = reweight_uniform`` of uniform draws; uniform if no weight is positive
        and finite.
        Returns a ``(len(buffer),)`` float64 tensor summing to one.
        """
        if not self.settings.reweight:
            return None
        lw = self.buffer.tensors()["log_weight"].double()
        lw = torch.nan_to_num(lw, nan=-math.inf)
        n = lw.shape[0]
        if not torch.isfinite(lw).any():
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        w = (self.settings.reweight_power * (lw - lw[torch.isfinite(lw)].max())).exp()
        cap = (self.settings.reweight_max or math.sqrt(n)) * float(w.mean())
        w = w.clamp(max=cap)
        lam = self.settings.reweight_uniform
        return lam / n + (1.0 - lam) * w / w.sum()

    def loss(self, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Adjoint-matching loss on a buffer batch (fresh ``t`` and bridge noise).

        Args:
            batch: Buffer rows ``{"x1": (b, *event_shape), "adjoint": (b, *event_shape)}``.
            model: Network to evaluate (default: ``self.model``).

        Returns:
            The scalar loss (mean over the ``b`` rows and all coordinates).
        """
        x1 = batch["x1"].to(self.device)
        a = batch["adjoint"].to(self.device)
        t = self.regression_times(x1.shape[0], x1.dtype)
        xt = self.space.bridge_sample(x1, t, self.schedule, self.generator)
        net = self.model if model is None else model
        out = self.space.tangent(net(t, xt))
        return adjoint_matching_loss(out, a)

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

    def learning_rate(self, step: int | None = None) -> float:
        """Learning rate of gradient step ``step`` (default: the next one)."""
        s = self.settings
        step = self.counters["grad_steps"] if step is None else step
        if s.lr_schedule == "constant":
            return s.lr
        total = max(s.n_epochs * s.grad_steps_per_epoch, 1)
        frac = min(step / total, 1.0)
        return s.lr_min + 0.5 * (s.lr - s.lr_min) * (1.0 + math.cos(math.pi * frac))

    def _set_lr(self) -> None:
        if self.settings.lr_schedule == "constant":
            return
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self) -> float:
        """One Adam step on a fresh buffer batch; returns the loss.

        Distributed: this rank draws its share ``b_r`` of ``train_batch_size`` from its buffer
        shard and back-propagates ``loss · b_r·W/B``; the average of those gradients over the
        ranks (:func:`~adjoint_core.distributed.average_gradients`) is the gradient of the mean
        loss over the global batch. Returns this rank's unweighted loss.
        """
        b = self._share(self.settings.train_batch_size)
        batch = self.buffer.sample(b, self.generator, probs=self.buffer_probabilities())
        loss = self.loss(batch)
        objective = loss
        if self.distributed:
            objective = loss * (b * self.world_size / self.settings.train_batch_size)
        self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if self.distributed:
            average_gradients(self.model)
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)
        self.counters["grad_steps"] += 1
        self.counters["model_evals"] += batch["x1"].shape[0]
        return float(loss.detach())

    def train_epoch(self) -> dict:
        """Run one epoch (simulate → energy → train); returns its log row."""
        s = self.settings
        start = (dict(self.counters), self.energy.n_evaluations)
        if self.counters["epoch"] == 0 and s.init_samples and len(self.buffer) == 0:
            self._collect_in_batches(self._share(s.init_samples))
        self._collect_in_batches(self._share(s.samples_per_epoch))
        if len(self.buffer) == 0:
            raise NonFiniteEnergyError("replay buffer is empty: every sample had a non-finite "
                                       "energy or gradient")
        t0 = time.perf_counter()
        self.model.train()
        losses = [self.train_step() for _ in range(s.grad_steps_per_epoch)]
        self.timers["train"] += time.perf_counter() - t0
        self.counters["epoch"] += 1
        loss = float(sum(losses) / len(losses)) if losses else math.nan
        e = self.buffer.sample(min(len(self.buffer), 1024), self.generator)["energy"].double()
        buffer_energy = (float(e.mean()), float(e.median()))
        if self.distributed:
            loss, buffer_energy = self._synchronise_epoch(start, loss, buffer_energy)
        row = {"epoch": self.counters["epoch"], "loss": loss,
               "buffer_energy_mean": buffer_energy[0],
               "buffer_energy_median": buffer_energy[1],
               **({"buffer_ess": self._buffer_ess()} if s.reweight else {}),
               **{k: v for k, v in self.counters.items() if k != "epoch"}}
        self.history.append(row)
        return row

    def _buffer_ess(self) -> float:
        """Normalised ESS of the (truncated) draw probabilities over this rank's buffer."""
        p = self.buffer_probabilities()
        return float(1.0 / (p.square().sum() * p.shape[0]))

    #: Counters summed over ranks (``grad_steps`` counts steps of the shared model, ``epoch``
    #: is common).
    SUMMED_COUNTERS = ("energy_evals", "model_evals", "nonfinite_dropped")

    def _synchronise_epoch(self, start: tuple[dict, int], loss: float,
                           buffer_energy: tuple[float, float]
                           ) -> tuple[float, tuple[float, float]]:
        """Sum this epoch's counter increments over ranks; global loss and buffer energy.

        One all-reduce of a ``(len(SUMMED_COUNTERS) + 4,)`` float64 tensor. The loss becomes
        the mean over the global batch (rank losses weighted by ``b_r/B``), the buffer energy
        ``(mean, median)`` the mean over ranks of each shard's mean and median.
        """
        import torch.distributed as dist

        counters, n_energy = start
        keys = self.SUMMED_COUNTERS
        w = self._share(self.settings.train_batch_size) / self.settings.train_batch_size
        vec = [float(self.counters[k] - counters[k]) for k in keys]
        vec += [float(self.energy.n_evaluations - n_energy), w * loss,
                buffer_energy[0] / self.world_size, buffer_energy[1] / self.world_size]
        total = torch.tensor(vec, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        out = total.tolist()
        for i, k in enumerate(keys):
            self.counters[k] = counters[k] + int(round(out[i]))
        self.energy.n_evaluations = n_energy + int(round(out[len(keys)]))
        return out[-3], (out[-2], out[-1])

    def _collect_in_batches(self, n: int) -> None:
        bs = self.settings.sim_batch_size
        for start in range(0, n, bs):
            self.collect(min(bs, n - start))

    def fit(
        self, n_epochs: int | None = None,
        callback: Callable[[AdjointSampler, dict], None] | None = None,
        progress: bool = False,
    ) -> list[dict]:
        """Train for ``n_epochs`` (default: until ``settings.n_epochs`` epochs are done).

        Args:
            n_epochs: Epochs to run now; default runs the remaining ones of the budget.
            callback: Called after every epoch with ``(sampler, row)`` (checkpoints, evals).
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

            bar = tqdm(total=n_epochs, desc="adjoint sampling", unit="epoch")
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
        if bar is not None:
            bar.close()
        return rows

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Model (+ EMA), optimizer, buffer, RNG states, counters, timers, history (this rank)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "counters": dict(self.counters),
            "timers": dict(self.timers),
            "history": list(self.history),
            "seed": self.seed,
            "energy_evaluations": self.energy.n_evaluations,
        }
        if self.ema_model is not None:
            state["ema"] = self.ema_model.state_dict()
        return state

    def gather_state_dict(self) -> dict | None:
        """The state of all ranks in one dict, on rank 0 (a collective when distributed).

        Rank 0's :meth:`state_dict` (model, optimizer, its buffer shard and generator, global
        counters: exactly what a single process resumes from) plus, when distributed,
        ``state["distributed"] = {"world_size": W, "shards": [{"rank", "buffer",
        "generator"}, …]}`` with the buffer shards and generator states of ranks ``1 … W-1``
        (gathered to rank 0 as pickled objects). See :meth:`state_for_rank` for the inverse.

        Returns:
            The state on rank 0, ``None`` on the other ranks (single process:
            :meth:`state_dict`).
        """
        if not self.distributed:
            return self.state_dict()
        from .distributed import gather_objects

        shard = None if self.rank == 0 else {"rank": self.rank,
                                             "buffer": self.buffer.state_dict(),
                                             "generator": self.generator.get_state()}
        shards = gather_objects(shard)
        if self.rank != 0:
            return None
        state = self.state_dict()
        state["distributed"] = {"world_size": self.world_size, "shards": shards[1:]}
        return state

    @staticmethod
    def state_for_rank(state: dict, rank: int, world_size: int) -> dict:
        """The part of a (possibly gathered) state that rank ``rank`` of ``world_size`` loads.

        Rank 0 and every rank that existed in the saved run get their own buffer shard and
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
            out["buffer"] = shards[rank]["buffer"]
            out["generator"] = shards[rank]["generator"]
        else:
            src = rank % saved
            if src != 0:
                out["buffer"] = shards[src]["buffer"]
            key = f"{state.get('seed', 0)}:{rank}:{state['counters']['epoch']}".encode()
            out["generator"] = None
            out["generator_seed"] = int.from_bytes(hashlib.sha256(key).digest()[:8],
                                                   "little") >> 1
        return out

    def load_weights(self, state: dict) -> None:
        """Load only the network (and EMA) weights of a :meth:`state_dict` (a warm start).

        The optimizer, buffer, generator, counters and history are left as they are. A state
        without ``"ema"`` starts this sampler's average (if any) at the loaded weights; an
        ``"ema"`` entry is ignored when this sampler keeps no average.

        Raises:
            RuntimeError: The weights do not fit this sampler's network (torch's message lists
                the missing, unexpected or differently shaped parameters).
        """
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            if "ema" in state:
                self.ema_model.load_state_dict(state["ema"])
            else:  # a checkpoint written without EMA: start the average at the weights
                self.ema_model.module.load_state_dict(state["model"])

    def load_state_dict(self, state: dict) -> None:
        """Restore everything saved by :meth:`state_dict`.

        A gathered state (:meth:`gather_state_dict`) is first reduced to this rank's part with
        :meth:`state_for_rank`.
        """
        if "distributed" in state:
            state = self.state_for_rank(state, self.rank, self.world_size)
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        if state["generator"] is None:  # a rank new to this run (see state_for_rank)
            self.generator.manual_seed(int(state["generator_seed"]))
        else:
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.counters.update(state["counters"])
        self.timers.update(state["timers"])
        self.history = list(state["history"])
        self.energy.n_evaluations = int(state.get("energy_evaluations", 0))
