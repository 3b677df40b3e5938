r"""Metropolis-type MCMC on any :class:`~adjoint_core.Energy` and :class:`~adjoint_core.StateSpace`.

:func:`run_mcmc` runs many parallel chains targeting ``p(x) ∝ exp(-E(x)/τ)`` with one of two
kernels, counts every energy evaluation, adapts the step size during burn-in and thins.

**MALA** (Metropolis-adjusted Langevin, ``method="mala"``). With step size ``ε`` and the drift
``b(x) = clip(∇E(x)/τ)``,

.. math:: y = \mathrm{project}\big(x - \tfrac{\varepsilon^2}{2} b(x) + \varepsilon\,\xi\big),
          \qquad \xi \sim \mathcal N(0, I) \text{ in the tangent space},

accepted with probability ``min(1, exp(-E(y)/τ + E(x)/τ + log q(x|y) − log q(y|x)))``.
``clip`` scales the gradient of a chain to norm at most ``grad_clip`` and replaces a non-finite
gradient by zero. Both are deterministic functions of the current state, so the kernel is just a
different proposal and the Metropolis–Hastings correction keeps ``p`` exactly invariant; the
clip only matters far from typical states (overlapping particles), where it keeps proposals
finite.

*Proposal density.* On a Euclidean (or mean-free) space ``q(y|x) = N(y; m(x), ε² I)`` on the
tangent space, ``m(x) = x − ε²/2 b(x)`` (normalising constants cancel). On a periodic space
(:class:`~adjoint_core.problem.spaces.PeriodicSpace`) the wrapped proposal has the wrapped-normal
density
``q(y|x) = Π_c Σ_k N(y_c + kL_c; m_c(x), ε²)``, and the space's ``step_log_prob`` evaluates
exactly that (a log-sum-exp over images). MALA with wrapping is therefore exactly correct. Using
only the minimum-image term ``N(minimage(y − m(x)); 0, ε²)`` would be an approximation whose
error is of the order of ``exp(-(L/2)²/(2ε²))`` — negligible for ``ε ≪ L`` but not zero — and
that is why the image sum is used. The drift must be evaluated at the wrapped state (it is: the
energy is periodic, so ``b(x)`` does not depend on the representative).

**RWM** (random-walk Metropolis, ``method="rwm"``): ``y = project(x + ε ξ)``. The proposal is
symmetric on Euclidean, mean-free and periodic spaces (the wrapped normal is an even function of
the minimum-image displacement), so the acceptance ratio is ``exp(-(E(y) − E(x))/τ)``: exactly
correct under wrapping with no image sums; the fallback when gradients are unavailable or
unreliable.

**HMC** (Hamiltonian Monte Carlo, ``method="hmc"``): momentum ``p ~ N(0, I)`` in the tangent
space, ``n_leapfrog`` leapfrog steps of ``H(x, p) = E(x)/τ + ½‖p‖²`` with the clipped force
``clip(∇E/τ)`` and step ``ε·U(1 − jitter, 1 + jitter)``, positions projected (wrapped, or centre of
mass removed) after every drift; accepted with probability ``min(1, exp(H_0 − H_L))``. Leapfrog
with any position-dependent force is volume-preserving and reversible (under momentum flip),
also with wrapping, so the chain is exact; the clip only keeps trajectories finite. But
where the clip binds, the leapfrog energy error is large and a chain can reject every proposal
(a *frozen* chain, counted by :meth:`MCMCResult.diagnostics`; seen on LJ-13/LJ-55 in compressed
states): prefer starts without overlaps (``lattice_spacing``) and no clip. Each
proposal costs ``n_leapfrog`` evaluations. Moves are ballistic rather than diffusive, which is
what makes it the better reference generator on many-particle systems such as LJ-55.

**Step size.** By default one step size shared by all chains of a temperature. During burn-in
it is adapted after every step by the Robbins–Monro update ``log ε ← log ε + γ_k (ā_k − a*)``
with ``γ_k = (k + 1)^{-0.6}``, ``ā_k`` the mean acceptance probability over those chains at
step ``k`` and ``a*`` the target (default 0.574 for MALA, 0.65 for HMC, 0.234 for RWM, the
optimal-scaling values). With ``step_size_per_chain=True`` every chain (every replica slot)
adapts its own ``ε`` by the same update from its own acceptance probability: a chain stuck in
an atypical, stiff state (compressed particles) then shrinks its step until it moves again,
instead of being frozen at the step size that suits the others. Either way ``ε`` is frozen
after burn-in, so the kept part of every chain is a time-homogeneous Markov chain with ``p``
invariant (a per-chain constant is as valid as a shared one).

**Parallel tempering** (``temperatures=[1, T_2, …, T_m]``, replica exchange). ``n_chains``
replicas run at each temperature ``τ·T_k`` (``T_1 = 1`` is the target), each temperature with
its own adapted step size. Every ``swap_every`` steps, replica ``c`` at ``T_k`` and replica ``c``
at ``T_{k+1}`` exchange states with probability ``min(1, exp((β_k − β_{k+1})(E_k − E_{k+1})))``,
``β_k = 1/(τ T_k)``, for the even pairs ``(1,2), (3,4), …`` and the odd pairs ``(2,3), …`` in
alternation (deterministic even/odd swapping). Each exchange leaves the product of the tempered
targets invariant, so the ``T_1`` replicas sample ``p`` exactly; only they are kept.

**Counting.** ``energy_evals`` counts states whose energy (and gradient, for MALA) was computed:
``n_chains · n_temperatures`` for the initial states plus as many per step, burn-in included
(swaps reuse stored energies and cost nothing).

**Convergence report** (:meth:`MCMCResult.diagnostics`): acceptance per temperature and swap
acceptance per adjacent pair after burn-in; split-R̂ of the energy across the kept chains; the
integrated autocorrelation time of the energy of the kept (thinned) states,
:func:`integrated_autocorr_time`, in kept samples and in steps, and the effective sample size
``n_kept · n_chains / τ_int``. A ``τ_int`` close to 1 (in kept samples) means the thinning is
beyond the autocorrelation time of the energy, i.e. the kept states are essentially independent
as far as the energy can tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adjoint_core.problem import torus
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace

__all__ = ["MCMCResult", "MCMCSettings", "run_mcmc", "default_initial_states",
           "non_overlapping_states",
           "integrated_autocorr_time", "relax"]

_TARGET = {"mala": 0.574, "rwm": 0.234, "hmc": 0.65}


class MCMCSettings(BaseModel):
    """The ``mcmc:`` section of a config (arguments of :func:`run_mcmc`, validated).

    Attributes:
        method: ``"mala"``, ``"hmc"`` or ``"rwm"``.
        n_chains: Parallel chains per temperature.
        n_steps: Steps after burn-in.
        burn_in: Discarded steps (step sizes adapted).
        thin: Keep every ``thin``-th step after burn-in.
        step_size: Initial step size.
        target_accept: Acceptance the adaptation aims at (default by method).
        temperatures: Parallel-tempering ladder of multipliers of ``τ``, first 1 (``None``: off).
        swap_every: Steps between replica-exchange rounds.
        grad_clip: MALA drift clip (norm of ``∇E/τ`` per chain).
        batch_size: Evaluate the chains' energies in chunks of this many states (memory knob;
            ``None``: all at once).
        n_leapfrog: HMC: leapfrog steps per proposal.
        jitter: HMC: relative uniform jitter of the leapfrog step.
        relax_steps: Downhill steps on the initial states before the chains start.
        lattice_spacing: Start particle chains from jittered lattice clusters of this spacing.
        min_distance: Start particle chains in a periodic box from uniform positions with no
            pair (minimum image) closer than this (random sequential addition).
        step_size_per_chain: Adapt one step size per chain instead of per temperature.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Literal["mala", "hmc", "rwm"] = "mala"
    n_chains: int = Field(256, ge=1)
    n_steps: int = Field(1000, ge=0)
    burn_in: int = Field(500, ge=0)
    thin: int = Field(1, ge=1)
    step_size: float = Field(0.1, gt=0)
    target_accept: float | None = Field(None, gt=0, lt=1)
    temperatures: list[float] | None = None
    swap_every: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    n_leapfrog: int = Field(10, ge=1)
    jitter: float = Field(0.1, ge=0, lt=1)
    relax_steps: int = Field(0, ge=0)
    lattice_spacing: float | None = Field(None, gt=0)
    min_distance: float | None = Field(None, gt=0)
    step_size_per_chain: bool = False

    @field_validator("temperatures")
    @classmethod
    def _ladder(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            _check_ladder(v)
        return v


def _check_ladder(temps: list[float]) -> None:
    if not temps or abs(temps[0] - 1.0) > 1e-12:
        raise ValueError(f"temperatures must start at 1.0 (the target), got {temps}")
    if any(not (math.isfinite(t) and t > 0) for t in temps):
        raise ValueError(f"temperatures must be finite and > 0, got {temps}")
    if any(b <= a for a, b in zip(temps, temps[1:], strict=False)):
        raise ValueError(f"temperatures must be strictly increasing, got {temps}")


@dataclass
class MCMCResult:
    """Output of :func:`run_mcmc`.

    Attributes:
        samples: Kept states of the target-temperature chains, ``(n_kept · n_chains,
            *event_shape)``, ordered by kept step then chain (see :meth:`chains`);
            ``n_kept = n_steps // thin``.
        acceptance: Mean acceptance probability after burn-in at the target temperature (all
            chains, all kept-phase steps); ``nan`` if ``n_steps = 0``.
        energy_evals: Energy (and gradient, MALA) evaluations, burn-in and all temperatures
            included.
        step_size: The step size ``ε`` used after burn-in at the target temperature.
        energies_trace: Mean raw energy over target-temperature chains after every step,
            ``(burn_in + n_steps,)``.
        sample_energies: Raw energies of :attr:`samples`, ``(n_kept · n_chains,)``.
        acceptance_trace: Mean acceptance probability over target-temperature chains per step,
            ``(burn_in + n_steps,)``.
        step_size_trace: ``ε`` used at every step at the target temperature,
            ``(burn_in + n_steps,)``.
        n_chains: Number of chains per temperature.
        method: ``"mala"`` or ``"rwm"``.
        burn_in: Burn-in steps (discarded, step size adapted).
        thin: Thinning interval.
        temperatures: The ladder (``[1.0]`` without tempering).
        acceptance_per_temperature: Post-burn-in mean acceptance per temperature.
        step_sizes: Final step size per temperature (the median over chains with per-chain
            step sizes).
        chain_step_sizes: Final step size of every target-temperature chain, ``(n_chains,)``.
        swap_acceptance: Post-burn-in swap acceptance per adjacent pair ``(k, k+1)``.
        wall_time_s: Wall time of the run.
    """

    samples: torch.Tensor
    acceptance: float
    energy_evals: int
    step_size: float
    energies_trace: torch.Tensor
    sample_energies: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    acceptance_trace: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    step_size_trace: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    n_chains: int = 0
    method: str = "mala"
    burn_in: int = 0
    thin: int = 1
    temperatures: list[float] = field(default_factory=lambda: [1.0])
    acceptance_per_temperature: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    chain_step_sizes: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    swap_acceptance: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0

    def chains(self) -> torch.Tensor:
        """Kept states as ``(n_kept, n_chains, *event_shape)``."""
        return self.samples.reshape(-1, self.n_chains, *self.samples.shape[1:])

    def energy_chains(self) -> torch.Tensor:
        """Energies of the kept states as ``(n_kept, n_chains)``."""
        return self.sample_energies.reshape(-1, self.n_chains)

    def diagnostics(self) -> dict:
        """Convergence report (plain floats and lists, JSON-ready); see the module docstring.

        Returns:
            ``method, n_chains, temperatures, burn_in, n_steps, thin, n_kept, energy_evals,
            step_sizes, acceptance_per_temperature, swap_acceptance, energy_mean, energy_std,
            step_size_range ([min, max] over target-temperature chains),
            nonfinite_chains, frozen_chains (kept states never changed: every proposal
            rejected, e.g. a clipped HMC force in a compressed state), outlier_chains (chains
            whose mean kept energy lies more than 6 robust standard deviations of the chain
            means from their median: chains that never equilibrated), rhat_energy,
            rhat_energy_without_outliers, iat_energy_kept, iat_energy_steps, ess_energy,
            wall_time_s``.
        """
        ec = self.energy_chains()
        finite = torch.isfinite(ec).all(0)
        ec_ok = ec[:, finite]
        iat = integrated_autocorr_time(ec_ok) if ec_ok.shape[1] else math.nan
        n_kept = int(ec.shape[0])
        e = self.sample_energies.double()
        e = e[torch.isfinite(e)]
        outliers = _outlier_chains(ec_ok) if n_kept else torch.zeros(0, dtype=torch.bool)
        cs = self.chain_step_sizes
        return {
            "method": self.method,
            "n_chains": self.n_chains,
            "temperatures": list(self.temperatures),
            "burn_in": self.burn_in,
            "n_steps": int(self.energies_trace.shape[0]) - self.burn_in,
            "thin": self.thin,
            "n_kept": n_kept,
            "n_samples": int(self.samples.shape[0]),
            "energy_evals": self.energy_evals,
            "step_sizes": list(self.step_sizes),
            "step_size_range": ([float(cs.min()), float(cs.max())] if cs.numel()
                                else [math.nan, math.nan]),
            "acceptance_per_temperature": list(self.acceptance_per_temperature),
            "swap_acceptance": list(self.swap_acceptance),
            "energy_mean": float(e.mean()) if e.numel() else math.nan,
            "energy_std": float(e.std()) if e.numel() > 1 else math.nan,
            "nonfinite_chains": int((~finite).sum()),
            "frozen_chains": int((ec_ok.std(0) == 0).sum()) if n_kept > 1 else 0,
            "outlier_chains": int(outliers.sum()),
            "rhat_energy": _split_rhat(ec_ok) if ec_ok.shape[1] else math.nan,
            "rhat_energy_without_outliers": (_split_rhat(ec_ok[:, ~outliers])
                                             if int((~outliers).sum()) else math.nan),
            "iat_energy_kept": iat,
            "iat_energy_steps": iat * self.thin,
            "ess_energy": (n_kept * int(ec_ok.shape[1]) / iat) if iat == iat else math.nan,
            "wall_time_s": self.wall_time_s,
        }


def default_initial_states(
    space: StateSpace, n_chains: int, generator: torch.Generator | None = None,
    dtype=torch.float32, device=None, lattice_spacing: float | None = None,
    min_distance: float | None = None,
) -> torch.Tensor:
    """Starting states: uniform in the box for a :class:`PeriodicSpace`, else ``N(0, I)``.

    Both are projected onto the space (wrapped, or centre of mass removed). With
    ``lattice_spacing = a`` (particle layouts only), each chain instead starts from the ``N``
    points of the cubic lattice ``a·Z^d`` closest to a random centre, jittered by
    ``N(0, (0.05 a)²)``: a compact cluster without overlaps, for pair potentials whose random
    starts overlap particles (LJ-55). With ``min_distance`` (periodic particle boxes only),
    uniform starts without overlaps: :func:`non_overlapping_states`.

    Raises:
        ValueError: Both options, or an option the space does not support.
    """
    shape = (n_chains, *space.event_shape)
    if min_distance is not None:
        if lattice_spacing is not None:
            raise ValueError("give lattice_spacing or min_distance, not both")
        return non_overlapping_states(space, n_chains, min_distance, generator, dtype, device)
    if lattice_spacing is not None:
        if space.particle_shape is None or not lattice_spacing > 0:
            raise ValueError(f"lattice_spacing needs a particle state space and a value > 0, "
                             f"got {lattice_spacing} for {space!r}")
        n, d = space.particle_shape
        side = math.ceil(n ** (1 / d)) + 3
        axis = torch.arange(side, dtype=dtype, device=device) - (side - 1) / 2
        grid = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)
        centre = torch.rand(n_chains, 1, d, generator=generator, dtype=dtype, device=device) - 0.5
        dist = (grid.unsqueeze(0) - centre).norm(dim=-1)  # (chains, side^d)
        idx = dist.argsort(dim=-1)[:, :n]
        pts = grid[idx] * lattice_spacing
        pts = pts + 0.05 * lattice_spacing * torch.randn(pts.shape, generator=generator,
                                                         dtype=dtype, device=device)
        return space.project(pts)
    if isinstance(space, PeriodicSpace):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device) - 0.5
        return space.project(u * space.box_tensor(u))
    return space.project(torch.randn(shape, generator=generator, dtype=dtype, device=device))


def non_overlapping_states(
    space: PeriodicSpace, n_chains: int, min_distance: float,
    generator: torch.Generator | None = None, dtype=torch.float32, device=None,
    max_tries: int = 100_000,
) -> torch.Tensor:
    """Uniform particle positions in a periodic box with no pair closer than ``min_distance``.

    Random sequential addition: particles are placed one at a time, each drawn uniformly in the
    box and redrawn (per chain) until its minimum-image distance to every particle already
    placed is at least ``min_distance``. A dense liquid's uniform starts overlap particles, and
    a pair potential's ``r^-12`` wall then makes the first steps of a chain meaningless.

    Args:
        space: A :class:`PeriodicSpace` with a particle layout ``(N, d)``.
        n_chains: Number of configurations.
        min_distance: Smallest allowed pair distance (``> 0``).
        generator: Random generator.
        dtype: Floating dtype.
        device: Device.
        max_tries: Redraws per particle before giving up.

    Returns:
        States ``(n_chains, N, d)``, wrapped into the box.

    Raises:
        ValueError: Not a periodic particle space, or ``min_distance <= 0``.
        RuntimeError: A particle could not be placed in ``max_tries`` draws (the density is
            too high for ``min_distance``: random sequential addition jams near packing
            fraction 0.38 in 3-D).
    """
    if not isinstance(space, PeriodicSpace) or space.particle_shape is None:
        raise ValueError(f"non_overlapping_states needs a periodic particle space, got {space!r}")
    if not min_distance > 0:
        raise ValueError(f"min_distance must be > 0, got {min_distance}")
    n, d = space.particle_shape
    box = torch.tensor(space.box, dtype=torch.float64)
    x = torch.zeros(n_chains, n, d, dtype=torch.float64)
    for i in range(n):
        todo = torch.ones(n_chains, dtype=torch.bool)
        for _ in range(max_tries):
            cand = (torch.rand(n_chains, d, generator=generator, dtype=torch.float64) - 0.5) * box
            if i == 0:
                ok = todo
            else:
                diff = torus.minimum_image(cand[:, None] - x[:, :i], box)
                ok = todo & (diff.norm(dim=-1).min(dim=1).values >= min_distance)
            x[ok, i] = cand[ok]
            todo &= ~ok
            if not todo.any():
                break
        else:
            raise RuntimeError(
                f"could not place particle {i + 1} of {n} at min_distance {min_distance} in "
                f"box {space.box} after {max_tries} draws: the density is too high")
    return space.project(x.to(dtype=dtype, device=device))


def _log_q(space: StateSpace, y: torch.Tensor, mean: torch.Tensor,
           eps: torch.Tensor) -> torch.Tensor:
    """``log q(y | x)`` of a Gaussian step with unwrapped mean ``mean`` (up to a constant).

    ``eps`` is the per-chain step size, ``(batch,)``; the ``-D log ε`` normalisation is kept,
    since replica exchange can move a state between step sizes only through a swap (which does
    not use ``q``), the ratio ``q(x|y)/q(y|x)`` always has equal ``ε`` and the term cancels.
    """
    std = eps.view(-1, *([1] * (y.ndim - 1)))
    step_log_prob = getattr(space, "step_log_prob", None)
    if step_log_prob is not None:
        return step_log_prob(y, mean, std)
    d = space.tangent(y - mean)
    return -0.5 * d.flatten(1).square().sum(-1) / eps**2


def _drift(g: torch.Tensor, tau: torch.Tensor, grad_clip: float | None) -> torch.Tensor:
    """``clip(∇E/τ)`` per chain (``tau`` of shape ``(batch,)``); non-finite gradients become 0."""
    view = (-1, *([1] * (g.ndim - 1)))
    b = g / tau.view(view)
    ok = torch.isfinite(b.flatten(1)).all(-1)
    b = torch.where(ok.view(view), b, torch.zeros_like(b))
    if grad_clip is not None:
        norm = b.flatten(1).norm(dim=-1).view(view)
        b = b * torch.clamp(grad_clip / (norm + 1e-12), max=1.0)
    return b


def _outlier_chains(chains: torch.Tensor, k: float = 6.0) -> torch.Tensor:
    """Chains whose mean lies ``> k`` robust standard deviations from the median chain mean.

    ``chains`` is ``(n_kept, n_chains)``; the spread is ``1.4826 · MAD`` of the chain means.
    Returns a boolean mask ``(n_chains,)`` (all ``False`` with fewer than 3 chains or zero
    spread).
    """
    means = chains.double().mean(0)
    if means.numel() < 3:
        return torch.zeros(means.numel(), dtype=torch.bool)
    med = means.median()
    spread = 1.4826 * (means - med).abs().median()
    if not spread > 0:
        return torch.zeros(means.numel(), dtype=torch.bool)
    return (means - med).abs() > k * spread


def _split_rhat(chains: torch.Tensor) -> float:
    """Split-R̂ (Gelman et al.) of a ``(n, n_chains)`` trace; ``nan`` if ``n < 4``."""
    n = chains.shape[0] // 2
    if n < 2:
        return math.nan
    x = torch.cat([chains[:n], chains[n:2 * n]], dim=1).double()  # (n, 2C)
    means = x.mean(0)
    w = x.var(0, unbiased=True).mean()
    b = n * means.var(unbiased=True)
    if not torch.isfinite(w) or float(w) <= 0:
        return math.nan
    var_plus = (n - 1) / n * w + b / n
    return float((var_plus / w).sqrt())


def integrated_autocorr_time(chains: torch.Tensor, c: float = 5.0) -> float:
    r"""Integrated autocorrelation time of a ``(n, n_chains)`` trace, in units of its rows.

    The autocovariance is averaged over chains (each centred on the **pooled** mean, so a
    difference between chains shows up as long correlations) and summed with Sokal's automatic
    window: ``τ = 1 + 2 Σ_{t=1}^{W} ρ(t)`` with the smallest ``W ≥ c·τ(W)``.

    Args:
        chains: Scalar trace per chain, shape ``(n, n_chains)``.
        c: Window constant (5 is the usual choice).

    Returns:
        ``τ_int ≥ 1`` (clamped), or ``nan`` with fewer than 4 rows or a constant trace.
    """
    n = chains.shape[0]
    if n < 4:
        return math.nan
    x = chains.double() - chains.double().mean()
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(x, n=size, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=size, dim=0)[:n].mean(1) / n
    if float(acov[0]) <= 0:
        return math.nan
    rho = acov / acov[0]
    taus = 2.0 * torch.cumsum(rho, 0) - 1.0  # τ(W) = 1 + 2 Σ_{t=1}^{W} ρ(t)
    window = torch.arange(n, dtype=torch.float64) >= c * taus
    w = int(torch.nonzero(window)[0]) if bool(window.any()) else n - 1
    return max(float(taus[w]), 1.0)


def run_mcmc(
    energy: Energy,
    space: StateSpace,
    n_chains: int = 256,
    n_steps: int = 1000,
    burn_in: int = 500,
    thin: int = 1,
    step_size: float = 0.1,
    method: Literal["mala", "hmc", "rwm"] = "mala",
    target_accept: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0: torch.Tensor | None = None,
    adapt: bool = True,
    grad_clip: float | None = None,
    dtype: torch.dtype = torch.float32,
    temperatures: list[float] | None = None,
    swap_every: int = 1,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    n_leapfrog: int = 10,
    jitter: float = 0.1,
    relax_steps: int = 0,
    lattice_spacing: float | None = None,
    min_distance: float | None = None,
    step_size_per_chain: bool = False,
) -> MCMCResult:
    """Run ``n_chains`` parallel Metropolis chains on ``exp(-E/τ)`` (see the module docstring).

    Args:
        energy: Target energy (its ``temperature`` is ``τ``); evaluations are counted on it too.
        space: State space: ``project`` after every proposal; Gaussian steps in its tangent
            space; exact wrapped proposal densities on periodic spaces.
        n_chains: Number of parallel chains (per temperature).
        n_steps: Steps after burn-in.
        burn_in: Initial steps that are discarded (the step size is adapted during them).
        thin: Keep every ``thin``-th step after burn-in.
        step_size: Initial step size ``ε`` (proposal standard deviation per coordinate), the
            same for every temperature.
        method: ``"mala"``, ``"hmc"`` or ``"rwm"``.
        target_accept: Acceptance rate the adaptation aims at (default 0.574 MALA, 0.65 HMC,
            0.234 RWM).
        generator: Random generator for every draw (initial states, proposals, acceptances).
        progress: Show a tqdm progress bar.
        x0: Initial states ``(n_chains, *event_shape)`` (every temperature starts from them),
            or ``(n_chains · n_temperatures, *event_shape)`` (temperature-major); default
            :func:`default_initial_states`.
        adapt: Adapt the step size during burn-in.
        grad_clip: MALA and HMC: largest norm of ``∇E/τ`` per chain in the drift (``None``: no
            clip). Exactness is unaffected (see the module docstring).
        dtype: Floating dtype of the chains.
        temperatures: Parallel-tempering ladder, multipliers of ``τ`` starting at ``1.0`` and
            strictly increasing (``None``: no tempering).
        swap_every: Steps between replica-exchange rounds.
        batch_size: Evaluate energies in chunks of this many states (``None``: all at once).
        device: Device of the chains (default: that of ``x0``, else CPU).
        n_leapfrog: HMC only: leapfrog steps per proposal (each costs one evaluation).
        jitter: HMC only: the leapfrog step is ``ε·U(1 − jitter, 1 + jitter)`` per chain and
            step (avoids periodic trajectories; ``0``: fixed).
        relax_steps: Before the chains start, move the initial states downhill for this many
            steps (:func:`relax`; counted evaluations; part of the burn-in in spirit, not of
            the chain). Useful when random starts overlap particles.
        lattice_spacing: Start from jittered lattice clusters (see
            :func:`default_initial_states`) instead of ``N(0, I)``; ignored with ``x0``.
        min_distance: Periodic particle boxes: start from uniform positions without pairs
            closer than this (:func:`non_overlapping_states`); ignored with ``x0``.
        step_size_per_chain: Adapt one step size per chain (replica slot) from its own
            acceptance instead of one per temperature (see the module docstring).

    Returns:
        An :class:`MCMCResult`.

    Raises:
        ValueError: Bad arguments or an ``x0`` of the wrong shape.
    """
    import time

    t_start = time.perf_counter()
    if method not in _TARGET:
        raise ValueError(f"method must be one of {sorted(_TARGET)}, got {method!r}")
    if relax_steps < 0:
        raise ValueError(f"relax_steps must be >= 0, got {relax_steps}")
    if n_leapfrog < 1 or not 0 <= jitter < 1:
        raise ValueError(f"need n_leapfrog >= 1 and 0 <= jitter < 1, got {n_leapfrog}, "
                         f"{jitter}")
    if n_chains < 1 or n_steps < 0 or burn_in < 0 or thin < 1:
        raise ValueError(f"need n_chains >= 1, n_steps >= 0, burn_in >= 0, thin >= 1, got "
                         f"{n_chains}, {n_steps}, {burn_in}, {thin}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if swap_every < 1:
        raise ValueError(f"swap_every must be >= 1, got {swap_every}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    target = _TARGET[method] if target_accept is None else float(target_accept)
    if not 0 < target < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target}")
    if tuple(energy.event_shape) != tuple(space.event_shape):
        raise ValueError(f"energy event shape {energy.event_shape} != space event shape "
                         f"{space.event_shape}")
    temps = [1.0] if temperatures is None else [float(t) for t in temperatures]
    _check_ladder(temps)
    n_t = len(temps)
    m = n_chains * n_t  # all replicas, temperature-major
    tau = energy.temperature
    mala = method == "mala"
    hmc = method == "hmc"
    grads = mala or hmc
    if x0 is None:
        x = default_initial_states(space, n_chains, generator, dtype, device,
                                   lattice_spacing, min_distance)
        x = x.repeat(n_t, *([1] * len(space.event_shape)))
    else:
        shapes = [(n_chains, *space.event_shape), (m, *space.event_shape)]
        if tuple(x0.shape) not in shapes:
            raise ValueError(f"x0 must have shape {shapes[0]}"
                             + (f" or {shapes[1]}" if n_t > 1 else "")
                             + f", got {tuple(x0.shape)}")
        x = space.project(x0.to(device=device, dtype=dtype))
        if x.shape[0] != m:
            x = x.repeat(n_t, *([1] * len(space.event_shape)))
    device = x.device
    ev = (-1, *([1] * len(space.event_shape)))
    tau_vec = (tau * torch.tensor(temps, dtype=dtype, device=device)).repeat_interleave(n_chains)
    beta_t = 1.0 / (tau * torch.tensor(temps, dtype=torch.float64, device=device))

    def evaluate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        es, gs = [], []
        step = batch_size or z.shape[0]
        for s in range(0, z.shape[0], step):
            zz = z[s:s + step]
            if grads:
                e, g = energy.energy_and_grad(zz)
                gs.append(g.to(dtype))
            else:
                with torch.no_grad():
                    e = energy.energy(zz).detach()
            es.append(e.to(dtype))
        return torch.cat(es), (torch.cat(gs) if grads else None)

    evals = 0
    if relax_steps:
        x, n_rel = relax(energy, space, x, relax_steps, batch_size)
        evals += n_rel
    e_x, g_x = evaluate(x)
    b_x = _drift(g_x, tau_vec, grad_clip) if grads else None
    evals += m
    log_eps = torch.full((m if step_size_per_chain else n_t,), math.log(step_size),
                         dtype=torch.float64)
    total = burn_in + n_steps
    kept, kept_e = [], []
    e_trace = torch.empty(total, dtype=torch.float64)
    a_trace = torch.empty(total, n_t, dtype=torch.float64)
    s_trace = torch.empty(total, dtype=torch.float64)
    swap_acc = torch.zeros(max(n_t - 1, 0), dtype=torch.float64)
    swap_n = torch.zeros(max(n_t - 1, 0), dtype=torch.float64)
    swap_round = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"mcmc ({method}, {n_t} T)", unit="step")
    for k in range(total):
        eps_all = log_eps.exp()
        if step_size_per_chain:
            eps_t = eps_all.view(n_t, n_chains).median(1).values
            eps = eps_all.to(dtype=dtype, device=device)
        else:
            eps_t = eps_all
            eps = eps_all.to(dtype=dtype, device=device).repeat_interleave(n_chains)
        xi = space.noise(m, generator, device, dtype)
        if hmc:  # leapfrog with momentum xi; the jitter of ε is independent of the state
            jit = 1.0 + jitter * (2 * torch.rand(m, generator=generator, device=device,
                                                 dtype=dtype) - 1)
            y, e_y, g_y, b_y, p_end = _leapfrog(x, xi, b_x, eps * jit, n_leapfrog, space,
                                                evaluate, tau_vec, grad_clip)
            evals += m * n_leapfrog
        else:
            mean_x = x - 0.5 * eps.view(ev) ** 2 * space.tangent(b_x) if mala else x
            y = space.project(mean_x + eps.view(ev) * xi)
            e_y, g_y = evaluate(y)
            evals += m
        with torch.no_grad():
            log_alpha = -(e_y - e_x).double() / tau_vec.double()
            if hmc:
                log_alpha = log_alpha + 0.5 * (xi.flatten(1).double().square().sum(-1)
                                               - p_end.flatten(1).double().square().sum(-1))
            if mala:
                b_y = _drift(g_y, tau_vec, grad_clip)
                mean_y = y - 0.5 * eps.view(ev) ** 2 * space.tangent(b_y)
                log_alpha = log_alpha + (_log_q(space, x, mean_y, eps)
                                         - _log_q(space, y, mean_x, eps)).double()
            # A non-finite proposal is rejected; a proposal from a non-finite state is accepted
            # when finite (it can only improve: the target density of the current state is 0).
            log_alpha = torch.where(torch.isfinite(e_y), log_alpha,
                                    torch.full_like(log_alpha, -math.inf))
            log_alpha = torch.where(~torch.isfinite(e_x) & torch.isfinite(e_y),
                                    torch.zeros_like(log_alpha), log_alpha)
            log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
            alpha = log_alpha.clamp(max=0.0).exp()
            u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
            acc = u < alpha
            x = torch.where(acc.view(ev), y, x)
            e_x = torch.where(acc, e_y, e_x)
            if grads:
                b_x = torch.where(acc.view(ev), b_y, b_x)
                g_x = torch.where(acc.view(ev), g_y, g_x)
            if n_t > 1 and (k + 1) % swap_every == 0:
                x, e_x, g_x, r_acc = _swap(x, e_x, g_x, beta_t, n_chains, swap_round % 2,
                                           generator)
                swap_round += 1
                if grads:
                    b_x = _drift(g_x, tau_vec, grad_clip)
                if k >= burn_in:
                    for pair, rate in r_acc.items():
                        swap_acc[pair] += rate
                        swap_n[pair] += 1
        a_blocks = alpha.view(n_t, n_chains).mean(1).cpu()
        e_trace[k] = float(e_x[:n_chains].double().mean())
        a_trace[k] = a_blocks
        s_trace[k] = float(eps_t[0])
        if k < burn_in:
            if adapt:
                rate = alpha.double().cpu() if step_size_per_chain else a_blocks
                log_eps += (k + 1) ** -0.6 * (rate - target)
        elif (k - burn_in + 1) % thin == 0:
            kept.append(x[:n_chains].detach().cpu().clone())
            kept_e.append(e_x[:n_chains].detach().cpu().clone())
        if bar is not None:
            bar.set_postfix(acc=f"{float(a_blocks[0]):.2f}", eps=f"{float(eps_t[0]):.3g}",
                            E=f"{e_trace[k]:.3g}")
            bar.update(1)
    if bar is not None:
        bar.close()
    samples = torch.cat(kept) if kept else torch.empty((0, *space.event_shape), dtype=dtype)
    sample_e = torch.cat(kept_e) if kept_e else torch.empty(0, dtype=dtype)
    acc_t = a_trace[burn_in:].mean(0).tolist() if n_steps else [math.nan] * n_t
    eps_final = log_eps.exp()
    if step_size_per_chain:
        chain_eps = eps_final[:n_chains].clone()
        final_eps = eps_final.view(n_t, n_chains).median(1).values.tolist()
    else:
        chain_eps = torch.full((n_chains,), float(eps_final[0]), dtype=torch.float64)
        final_eps = eps_final.tolist()
    swaps = (swap_acc / swap_n.clamp_min(1)).tolist()
    swaps = [s if n else math.nan for s, n in zip(swaps, swap_n.tolist(), strict=True)]
    return MCMCResult(samples=samples, acceptance=acc_t[0], energy_evals=evals,
                      step_size=final_eps[0], energies_trace=e_trace, sample_energies=sample_e,
                      acceptance_trace=a_trace[:, 0].clone(), step_size_trace=s_trace,
                      n_chains=n_chains, method=method, burn_in=burn_in, thin=thin,
                      temperatures=temps, acceptance_per_temperature=acc_t,
                      step_sizes=final_eps, chain_step_sizes=chain_eps,
                      swap_acceptance=swaps,
                      wall_time_s=time.perf_counter() - t_start)


@torch.no_grad()
def relax(
    energy: Energy, space: StateSpace, x: torch.Tensor, n_steps: int,
    batch_size: int | None = None, max_move: float = 0.2,
) -> tuple[torch.Tensor, int]:
    """Move states downhill: per-chain adaptive steepest descent with bounded moves.

    Each step proposes ``project(x − η ∇E/‖∇E‖_∞)`` (the largest coordinate moves by ``η``),
    keeps it if the energy decreases (then ``η ← min(1.2 η, max_move)``), else keeps ``x`` and
    halves ``η``; ``η`` starts at ``max_move / 4``. Non-finite energies count as ``+∞``.

    Args:
        energy: Energy to decrease.
        space: State space (``project``, ``tangent``).
        x: States ``(batch, *event_shape)``.
        n_steps: Descent steps.
        batch_size: Energy evaluations per call (``None``: all at once).
        max_move: Largest coordinate move per step.

    Returns:
        ``(relaxed states, energy evaluations used)``.
    """
    ev = (-1, *([1] * (x.ndim - 1)))

    def eg(z):
        step = batch_size or z.shape[0]
        out = [energy.energy_and_grad(z[i:i + step]) for i in range(0, z.shape[0], step)]
        e = torch.cat([o[0] for o in out]).double()
        g = torch.cat([o[1] for o in out]).to(z.dtype)
        return torch.nan_to_num(e, nan=math.inf), space.tangent(torch.nan_to_num(g))

    e, g = eg(x)
    evals = x.shape[0]
    eta = torch.full((x.shape[0],), max_move / 4, dtype=x.dtype, device=x.device)
    for _ in range(n_steps):
        scale = g.flatten(1).abs().amax(-1).clamp_min(1e-12)
        y = space.project(x - (eta / scale).view(ev) * g)
        e_y, g_y = eg(y)
        evals += x.shape[0]
        better = e_y < e
        x = torch.where(better.view(ev), y, x)
        g = torch.where(better.view(ev), g_y, g)
        e = torch.where(better, e_y, e)
        eta = torch.where(better, (eta * 1.2).clamp(max=max_move), eta * 0.5)
    return x, evals


def _leapfrog(x, p, b_x, eps, n_leapfrog, space, evaluate, tau_vec, grad_clip):
    """HMC proposal: ``n_leapfrog`` leapfrog steps of ``H = E/τ + ½|p|²`` (mass 1).

    The force is the clipped drift ``clip(∇E/τ)`` (:func:`_drift`): any position-dependent
    force gives a volume-preserving, reversible map, so the Metropolis test with the true ``H``
    stays exact. Positions are projected (wrapped / centre of mass removed) after every drift,
    momenta live in the tangent space.

    Returns:
        ``(y, E(y), ∇E(y), drift(y), p_end)``.
    """
    ev = (-1, *([1] * (x.ndim - 1)))
    e = eps.view(ev)
    p = p - 0.5 * e * space.tangent(b_x)
    q = x
    for step in range(n_leapfrog):
        q = space.project(q + e * p)
        e_q, g_q = evaluate(q)
        b_q = _drift(g_q, tau_vec, grad_clip)
        p = p - (0.5 if step == n_leapfrog - 1 else 1.0) * e * space.tangent(b_q)
    return q, e_q, g_q, b_q, p


def _swap(
    x: torch.Tensor, e: torch.Tensor, g: torch.Tensor | None, beta: torch.Tensor,
    n_chains: int, parity: int, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[int, float]]:
    """One replica-exchange round over the pairs ``(k, k+1)`` with ``k % 2 == parity``.

    Args:
        x: States of all replicas, temperature-major ``(n_T · n_chains, *event_shape)``.
        e: Their raw energies, ``(n_T · n_chains,)``.
        g: Their raw energy gradients (MALA) or ``None``.
        beta: Inverse temperatures ``1/(τ T_k)``, ``(n_T,)``, float64.
        n_chains: Replicas per temperature.
        parity: 0 for the pairs (0,1), (2,3), …; 1 for (1,2), (3,4), ….
        generator: Random generator.

    Returns:
        ``(x, e, g, rates)`` after the exchanges; ``rates[k]`` is the mean acceptance
        probability of pair ``(k, k+1)``.
    """
    n_t = beta.shape[0]
    perm = torch.arange(x.shape[0], device=x.device)
    rates: dict[int, float] = {}
    e2 = e.double().view(n_t, n_chains)
    for k in range(parity, n_t - 1, 2):
        ea, eb = e2[k], e2[k + 1]
        log_r = (beta[k] - beta[k + 1]) * (ea - eb)
        log_r = torch.nan_to_num(log_r, nan=-math.inf)
        prob = log_r.clamp(max=0.0).exp()
        u = torch.rand(n_chains, generator=generator, device=x.device, dtype=torch.float64)
        sw = u < prob
        idx = torch.nonzero(sw).flatten()
        a, b = k * n_chains + idx, (k + 1) * n_chains + idx
        perm[a], perm[b] = b, a
        rates[k] = float(prob.mean())
    return x[perm], e[perm], (g[perm] if g is not None else None), rates
