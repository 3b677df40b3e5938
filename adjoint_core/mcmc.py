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
(:class:`~adjoint_core.spaces.PeriodicSpace`) the wrapped proposal has the wrapped-normal density
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

**Step size.** One step size shared by all chains. During burn-in it is adapted after every step
by the Robbins–Monro update ``log ε ← log ε + γ_k (ā_k − a*)`` with ``γ_k = (k + 1)^{-0.6}``,
``ā_k`` the mean acceptance probability over chains at step ``k`` and ``a*`` the target
(default 0.574 for MALA, 0.234 for RWM, the optimal-scaling values). After burn-in ``ε`` is
frozen, so the kept part is a time-homogeneous Markov chain with ``p`` invariant.

**Counting.** ``energy_evals`` counts states whose energy (and gradient, for MALA) was computed:
``n_chains`` for the initial states plus ``n_chains`` per step, burn-in included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from .energy import Energy
from .spaces import PeriodicSpace, StateSpace

__all__ = ["MCMCResult", "run_mcmc", "default_initial_states"]

_TARGET = {"mala": 0.574, "rwm": 0.234}


@dataclass
class MCMCResult:
    """Output of :func:`run_mcmc`.

    Attributes:
        samples: Kept states, ``(n_kept · n_chains, *event_shape)``, ordered by kept step then
            chain (see :meth:`chains`); ``n_kept = n_steps // thin``.
        acceptance: Mean acceptance probability after burn-in (all chains, all kept-phase
            steps); ``nan`` if ``n_steps = 0``.
        energy_evals: Energy (and gradient, MALA) evaluations, burn-in included.
        step_size: The step size ``ε`` used after burn-in.
        energies_trace: Mean raw energy over chains after every step, ``(burn_in + n_steps,)``.
        sample_energies: Raw energies of :attr:`samples`, ``(n_kept · n_chains,)``.
        acceptance_trace: Mean acceptance probability over chains per step,
            ``(burn_in + n_steps,)``.
        step_size_trace: ``ε`` used at every step, ``(burn_in + n_steps,)``.
        n_chains: Number of chains.
        method: ``"mala"`` or ``"rwm"``.
        burn_in: Burn-in steps (discarded, step size adapted).
        thin: Thinning interval.
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

    def chains(self) -> torch.Tensor:
        """Kept states as ``(n_kept, n_chains, *event_shape)``."""
        return self.samples.reshape(-1, self.n_chains, *self.samples.shape[1:])


def default_initial_states(
    space: StateSpace, n_chains: int, generator: torch.Generator | None = None,
    dtype=torch.float32, device=None,
) -> torch.Tensor:
    """Starting states: uniform in the box for a :class:`PeriodicSpace`, else ``N(0, I)``.

    Both are projected onto the space (wrapped, or centre of mass removed).
    """
    shape = (n_chains, *space.event_shape)
    if isinstance(space, PeriodicSpace):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device) - 0.5
        return space.project(u * space.box_tensor(u))
    return space.project(torch.randn(shape, generator=generator, dtype=dtype, device=device))


def _log_q(space: StateSpace, y: torch.Tensor, mean: torch.Tensor, eps: float) -> torch.Tensor:
    """``log q(y | x)`` of a Gaussian step with unwrapped mean ``mean`` (up to a constant)."""
    step_log_prob = getattr(space, "step_log_prob", None)
    if step_log_prob is not None:
        return step_log_prob(y, mean, eps)
    d = space.tangent(y - mean)
    return -0.5 * d.flatten(1).square().sum(-1) / eps**2


def _drift(g: torch.Tensor, temperature: float, grad_clip: float | None) -> torch.Tensor:
    """``clip(∇E/τ)`` per chain; non-finite gradients become zero."""
    b = g / temperature
    ok = torch.isfinite(b.flatten(1)).all(-1)
    b = torch.where(ok.view(-1, *([1] * (b.ndim - 1))), b, torch.zeros_like(b))
    if grad_clip is not None:
        norm = b.flatten(1).norm(dim=-1).view(-1, *([1] * (b.ndim - 1)))
        b = b * torch.clamp(grad_clip / (norm + 1e-12), max=1.0)
    return b


def run_mcmc(
    energy: Energy,
    space: StateSpace,
    n_chains: int = 256,
    n_steps: int = 1000,
    burn_in: int = 500,
    thin: int = 1,
    step_size: float = 0.1,
    method: Literal["mala", "rwm"] = "mala",
    target_accept: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0: torch.Tensor | None = None,
    adapt: bool = True,
    grad_clip: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> MCMCResult:
    """Run ``n_chains`` parallel Metropolis chains on ``exp(-E/τ)`` (see the module docstring).

    Args:
        energy: Target energy (its ``temperature`` is ``τ``); evaluations are counted on it too.
        space: State space: ``project`` after every proposal; Gaussian steps in its tangent
            space; exact wrapped proposal densities on periodic spaces.
        n_chains: Number of parallel chains.
        n_steps: Steps after burn-in.
        burn_in: Initial steps that are discarded (the step size is adapted during them).
        thin: Keep every ``thin``-th step after burn-in.
        step_size: Initial step size ``ε`` (proposal standard deviation per coordinate).
        method: ``"mala"`` or ``"rwm"``.
        target_accept: Acceptance rate the adaptation aims at (default 0.574 MALA, 0.234 RWM).
        generator: Random generator for every draw (initial states, proposals, acceptances).
        progress: Show a tqdm progress bar.
        x0: Initial states ``(n_chains, *event_shape)`` (default
            :func:`default_initial_states`).
        adapt: Adapt the step size during burn-in.
        grad_clip: MALA only: largest norm of ``∇E/τ`` per chain in the drift (``None``: no
            clip). Exactness is unaffected (see the module docstring).
        dtype: Floating dtype of the chains.

    Returns:
        An :class:`MCMCResult`.

    Raises:
        ValueError: Bad arguments or an ``x0`` of the wrong shape.
    """
    if method not in _TARGET:
        raise ValueError(f"method must be 'mala' or 'rwm', got {method!r}")
    if n_chains < 1 or n_steps < 0 or burn_in < 0 or thin < 1:
        raise ValueError(f"need n_chains >= 1, n_steps >= 0, burn_in >= 0, thin >= 1, got "
                         f"{n_chains}, {n_steps}, {burn_in}, {thin}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    target = _TARGET[method] if target_accept is None else float(target_accept)
    if not 0 < target < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target}")
    if tuple(energy.event_shape) != tuple(space.event_shape):
        raise ValueError(f"energy event shape {energy.event_shape} != space event shape "
                         f"{space.event_shape}")
    tau = energy.temperature
    mala = method == "mala"
    if x0 is None:
        x = default_initial_states(space, n_chains, generator, dtype)
    else:
        if tuple(x0.shape) != (n_chains, *space.event_shape):
            raise ValueError(f"x0 must have shape {(n_chains, *space.event_shape)}, got "
                             f"{tuple(x0.shape)}")
        x = space.project(x0.to(dtype))
    device = x.device

    def evaluate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mala:
            e, g = energy.energy_and_grad(z)
            return e.to(dtype), _drift(g.to(dtype), tau, grad_clip)
        with torch.no_grad():
            return energy.energy(z).detach().to(dtype), None

    e_x, b_x = evaluate(x)
    evals = n_chains
    log_eps = math.log(step_size)
    total = burn_in + n_steps
    kept, kept_e = [], []
    e_trace = torch.empty(total, dtype=torch.float64)
    a_trace = torch.empty(total, dtype=torch.float64)
    s_trace = torch.empty(total, dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"mcmc ({method})", unit="step")
    for k in range(total):
        eps = math.exp(log_eps)
        xi = space.noise(n_chains, generator, device, dtype)
        mean_x = x - 0.5 * eps**2 * space.tangent(b_x) if mala else x
        y = space.project(mean_x + eps * xi)
        e_y, b_y = evaluate(y)
        evals += n_chains
        with torch.no_grad():
            log_alpha = -(e_y - e_x).double() / tau
            if mala:
                mean_y = y - 0.5 * eps**2 * space.tangent(b_y)
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
            u = torch.rand(n_chains, generator=generator, device=device, dtype=torch.float64)
            acc = u < alpha
            mask = acc.view(-1, *([1] * len(space.event_shape)))
            x = torch.where(mask, y, x)
            e_x = torch.where(acc, e_y, e_x)
            if mala:
                b_x = torch.where(mask, b_y, b_x)
        a_mean = float(alpha.mean())
        e_trace[k] = float(e_x.double().mean())
        a_trace[k] = a_mean
        s_trace[k] = eps
        if k < burn_in:
            if adapt:
                log_eps += (k + 1) ** -0.6 * (a_mean - target)
        elif (k - burn_in + 1) % thin == 0:
            kept.append(x.detach().cpu().clone())
            kept_e.append(e_x.detach().cpu().clone())
        if bar is not None:
            bar.set_postfix(acc=f"{a_mean:.2f}", eps=f"{eps:.3g}", E=f"{e_trace[k]:.3g}")
            bar.update(1)
    if bar is not None:
        bar.close()
    samples = torch.cat(kept) if kept else torch.empty((0, *space.event_shape), dtype=dtype)
    sample_e = torch.cat(kept_e) if kept_e else torch.empty(0, dtype=dtype)
    acceptance = float(a_trace[burn_in:].mean()) if n_steps else math.nan
    final_eps = math.exp(log_eps)
    return MCMCResult(samples=samples, acceptance=acceptance, energy_evals=evals,
                      step_size=final_eps, energies_trace=e_trace, sample_energies=sample_e,
                      acceptance_trace=a_trace, step_size_trace=s_trace, n_chains=n_chains,
                      method=method, burn_in=burn_in, thin=thin)
