r"""A Gaussian energy: the known-answer target used to validate samplers.

.. math:: E(x) = \tfrac12 (x - \mu)^\top \Sigma^{-1} (x - \mu)

on the flattened state ``x ∈ R^D``. With temperature ``τ`` the Boltzmann density is
``N(μ, τΣ)``; on a mean-free particle space it is that Gaussian conditioned on zero centre of
mass, which is again Gaussian with known moments (see :meth:`GaussianEnergy.moments`).
"""

from __future__ import annotations

import math

import torch

from adjoint_core.problem.energy import Energy

__all__ = ["GaussianEnergy", "gaussian"]


class GaussianEnergy(Energy):
    """Quadratic energy with mean ``μ`` and covariance ``Σ`` (flattened coordinates).

    Args:
        mean: ``μ``, shape ``(D,)``.
        cov: ``Σ``, symmetric positive definite, shape ``(D, D)``.
        event_shape: Shape of one state, ``prod(event_shape) = D``.
        temperature: ``τ``.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor,
                 event_shape: tuple[int, ...] | None = None, temperature: float = 1.0) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.numel()
        if cov.shape != (d, d):
            raise ValueError(
                f"cov must have shape ({d}, {d}) to match mean, got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric")
        try:
            torch.linalg.cholesky(cov)
        except RuntimeError as exc:
            raise ValueError("cov must be positive definite") from exc
        event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold {d} coordinates")
        super().__init__(event_shape, temperature)
        self.mean = mean
        self.cov = cov
        self.precision = torch.linalg.inv(cov)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        d = x.reshape(x.shape[0], -1) - self.mean.to(x)
        return 0.5 * ((d @ self.precision.to(x)) * d).sum(-1)

    def moments(self, mean_free_particles: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean ``(D,)`` and covariance ``(D, D)`` of ``exp(-E/τ)`` (float64).

        Args:
            mean_free_particles: ``(N, d)`` to condition on zero centre of mass (the density
                restricted to the mean-free subspace).
        """
        mu, cov = self.mean, self.cov * self.temperature
        if mean_free_particles is None:
            return mu, cov
        n, d = mean_free_particles
        # Linear map onto the subspace: x = B z with B an orthonormal basis of {Σ_i x_i = 0}.
        p = torch.eye(n, dtype=torch.float64) - 1.0 / n
        evals, evecs = torch.linalg.eigh(p)
        basis_n = evecs[:, evals > 0.5]  # (N, N-1)
        b = torch.kron(basis_n, torch.eye(d, dtype=torch.float64))  # (N d, (N-1) d)
        prec = torch.linalg.inv(cov)
        prec_z = b.T @ prec @ b
        cov_z = torch.linalg.inv(prec_z)
        mean_z = cov_z @ (b.T @ prec @ mu)
        return b @ mean_z, b @ cov_z @ b.T


def gaussian(
    mean: list[float] | None = None,
    std: list[float] | None = None,
    cov: list[list[float]] | None = None,
    dim: int | None = None,
    n_particles: int | None = None,
    spatial_dim: int | None = None,
    temperature: float = 1.0,
) -> GaussianEnergy:
    """Registry factory of :class:`GaussianEnergy` from plain config values.

    Give ``dim`` (or let it follow from ``mean``/``std``/``cov``) or ``n_particles`` and
    ``spatial_dim``. ``std`` (length ``D``, or
    ``spatial_dim`` for a per-axis std shared by all particles) or ``cov`` (``D × D``);
    default identity covariance and zero mean.
    """
    if dim is None and n_particles is None and spatial_dim is None:
        given = mean if mean is not None else std if std is not None else cov
        dim = len(given) if given is not None else None
    if dim is not None:
        event_shape: tuple[int, ...] = (dim,)
    elif n_particles is not None and spatial_dim is not None:
        event_shape = (n_particles, spatial_dim)
    else:
        raise ValueError("gaussian energy needs dim or n_particles and spatial_dim")
    d = math.prod(event_shape)
    mu = torch.zeros(d) if mean is None else torch.tensor(mean, dtype=torch.float64)
    if cov is not None and std is not None:
        raise ValueError("give std or cov, not both")
    if cov is not None:
        c = torch.tensor(cov, dtype=torch.float64)
    else:
        s = torch.ones(d, dtype=torch.float64) if std is None else torch.tensor(std,
                                                                               dtype=torch.float64)
        if len(event_shape) == 2 and s.numel() == event_shape[1]:
            s = s.repeat(event_shape[0])
        if s.numel() != d or (s <= 0).any():
            raise ValueError(f"std must be {d} positive values, got {std}")
        c = torch.diag(s**2)
    return GaussianEnergy(mu, c, event_shape, temperature)
