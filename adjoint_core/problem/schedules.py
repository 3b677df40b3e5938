r"""Noise schedules of the base process ``dX_t = g(t) dW_t``, ``X_0 = 0``.

Time runs from ``t = 0`` (the source, a Dirac at the origin) to ``t = 1`` (the sample).
A schedule is defined by its diffusion coefficient ``g(t)``; everything the sampler needs
follows from the accumulated variance

.. math::  h(t)^2 = \int_0^t g(s)^2\,ds, \qquad \alpha(t)^2 = h(1)^2 - h(t)^2 .

The base marginal at ``t`` is ``N(0, h(t)^2 I)`` (on the state space's tangent space), and the
Brownian bridge ``X_t | X_0 = 0, X_1 = x_1`` is Gaussian with

.. math::  \lambda(t) = h(t)^2 / h(1)^2,\quad
           \mathbb{E}[X_t] = \lambda(t)\,x_1,\quad
           \mathrm{Var}[X_t] = h(1)^2\,\lambda(t)\,(1-\lambda(t)) = h(t)^2\alpha(t)^2/h(1)^2 .

All functions take a tensor ``t`` of any shape with values in ``[0, 1]`` and return a tensor
of the same shape.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = ["NoiseSchedule", "GeometricSchedule", "LinearSchedule"]

#: Largest noise scale a schedule accepts: its square (the terminal variance) must stay far
#: inside the float32 range in which states are simulated.
MAX_SIGMA = 1e15


class NoiseSchedule(ABC):
    """Abstract schedule: ``g(t)`` and ``h(t)^2 = ∫_0^t g²``.

    Subclasses implement :meth:`g` and :meth:`h2`; bridge coefficients and ``h(1)`` are derived.
    """

    @abstractmethod
    def g(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion coefficient ``g(t)``, same shape as ``t``."""

    @abstractmethod
    def h2(self, t: torch.Tensor) -> torch.Tensor:
        """Accumulated variance ``h(t)^2 = ∫_0^t g(s)^2 ds``, same shape as ``t``."""

    def h(self, t: torch.Tensor) -> torch.Tensor:
        """Base standard deviation ``h(t)`` at time ``t``."""
        return self.h2(t).clamp_min(0).sqrt()

    def time_of_h2(self, v: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`h2`: the time ``t`` in ``[0, 1]`` with ``h(t)² = v``.

        The default bisects the increasing function ``h2`` (60 halvings in float64, exact to
        ~1e-16 in ``t``); schedules with a closed-form inverse override it.

        Args:
            v: Accumulated variances in ``[0, h(1)²]`` (values outside are clamped), any shape.

        Returns:
            Times of the same shape and dtype as ``v``.
        """
        target = v.detach().to(torch.float64).clamp(0.0, self.h1_squared)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self.h2(mid) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(v.dtype)

    @property
    def h1_squared(self) -> float:
        """``h(1)^2``, the variance of the base terminal marginal per coordinate."""
        return float(self.h2(torch.tensor(1.0, dtype=torch.float64)))

    def bridge_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient and standard deviation of ``X_t | X_0 = 0, X_1 = x_1``.

        Args:
            t: Times in ``[0, 1]``, any shape.

        Returns:
            ``(λ(t), σ_bridge(t))`` so that ``X_t = λ(t) x_1 + σ_bridge(t) ε``, with
            ``λ = h(t)²/h(1)²`` and ``σ_bridge² = h(1)² λ (1 - λ)``; same shape as ``t``.
        """
        lam = (self.h2(t) / self.h1_squared).clamp(0.0, 1.0)
        std = (self.h1_squared * lam * (1.0 - lam)).clamp_min(0).sqrt()
        return lam, std

    @abstractmethod
    def config(self) -> dict:
        """Constructor arguments, so that a schedule can be re-created from a checkpoint."""


class GeometricSchedule(NoiseSchedule):
    r"""Geometric ("VE") schedule of the Adjoint Sampling paper.

    .. math::  g(t) = \sigma_{\min}\, r^{1-t} \sqrt{2\ln r},\quad r = \sigma_{\max}/\sigma_{\min},
               \qquad h(t)^2 = \sigma_{\max}^2 (1 - r^{-2t}),

    so ``g`` is largest at the source (``t = 0``) and ``h(1)^2 = σ_max² - σ_min²``.

    Args:
        sigma_min: ``σ_min > 0``.
        sigma_max: ``σ_min < σ_max <= 1e15``, with ``σ_max/σ_min <= 1e30`` (``g(0)`` and
            ``h(1)²`` must be finite in float32).
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1.0) -> None:
        if not sigma_min > 0:
            raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
        if not sigma_max > sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if not sigma_max <= MAX_SIGMA:
            raise ValueError(f"sigma_max must be at most {MAX_SIGMA:g} (its square must be finite "
                             f"in float32), got {sigma_max}")
        if not sigma_max / sigma_min <= 1e30:
            raise ValueError(f"sigma_max / sigma_min must be at most 1e30 (g(t) grows like their "
                             f"ratio), got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_r = math.log(self.sigma_max / self.sigma_min)

    def g(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.sigma_min * torch.exp((1 - t) * self._log_r) * math.sqrt(2 * self._log_r)

    def h2(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.sigma_max**2 * (-torch.expm1(-2 * t * self._log_r))

    def time_of_h2(self, v: torch.Tensor) -> torch.Tensor:
        """Closed-form inverse ``t = −ln(1 − v/σ_max²) / (2 ln r)``, clamped to ``[0, 1]``."""
        frac = (v / self.sigma_max**2).clamp(0.0, 1.0 - (self.sigma_min / self.sigma_max) ** 2)
        return (-torch.log1p(-frac) / (2 * self._log_r)).clamp(0.0, 1.0)

    def config(self) -> dict:  # noqa: D102
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def __repr__(self) -> str:
        return f"GeometricSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class LinearSchedule(NoiseSchedule):
    """Brownian motion with constant diffusion: ``g(t) = σ``, ``h(t)^2 = σ² t``.

    Args:
        sigma: ``σ > 0``.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        if not 0 < sigma <= MAX_SIGMA:
            raise ValueError(f"sigma must be > 0 and at most {MAX_SIGMA:g}, got {sigma}")
        self.sigma = float(sigma)

    def g(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.full_like(t, self.sigma)

    def h2(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.sigma**2 * t

    def time_of_h2(self, v: torch.Tensor) -> torch.Tensor:
        """Closed-form inverse ``t = v / σ²``, clamped to ``[0, 1]``."""
        return (v / self.sigma**2).clamp(0.0, 1.0)

    def config(self) -> dict:  # noqa: D102
        return {"sigma": self.sigma}

    def __repr__(self) -> str:
        return f"LinearSchedule(sigma={self.sigma})"
