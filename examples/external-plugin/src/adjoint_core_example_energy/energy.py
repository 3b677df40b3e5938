r"""A ring of particles joined by harmonic springs.

.. math:: E(x) = \frac{k}{2} \sum_{i=0}^{n-1} \big(\|x_{i+1} - x_i\| - r_0\big)^2,
          \qquad x_n \equiv x_0 ,

for ``n`` particles in ``spatial_dim`` dimensions. The energy depends only on distances, so it
is invariant under translations, rotations and the cyclic relabelling of the particles; sample
it on the mean-free :class:`~adjoint_core.EuclideanSpace`.
"""

from __future__ import annotations

import torch

from adjoint_core import Energy

__all__ = ["HarmonicRingEnergy"]


class HarmonicRingEnergy(Energy):
    """Harmonic springs between consecutive particles of a closed ring.

    Implements :meth:`_energy` (used by autograd) and, to show the hook for codes that return
    gradients themselves, an analytic :meth:`_energy_and_grad`.

    Args:
        n_particles: Number of particles ``n`` (at least 3).
        spatial_dim: Dimension of each particle's position.
        k: Spring constant (energy per squared length), > 0.
        r0: Rest length of each spring, >= 0.
        temperature: ``τ`` of the Boltzmann density ``exp(-E/τ)``, in the energy's units.

    Raises:
        ValueError: A parameter is outside its range (the message names it).
    """

    def __init__(self, n_particles: int = 6, spatial_dim: int = 2, k: float = 10.0,
                 r0: float = 1.0, temperature: float = 1.0) -> None:
        if n_particles < 3:
            raise ValueError(f"n_particles must be >= 3 for a ring, got {n_particles}")
        if spatial_dim < 1:
            raise ValueError(f"spatial_dim must be >= 1, got {spatial_dim}")
        if not k > 0:
            raise ValueError(f"k must be > 0, got {k}")
        if not r0 >= 0:
            raise ValueError(f"r0 must be >= 0, got {r0}")
        super().__init__((n_particles, spatial_dim), temperature)
        self.k = float(k)
        self.r0 = float(r0)

    def _bonds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bond vectors ``x_{i+1} - x_i`` ``(batch, n, d)`` and lengths ``(batch, n)``."""
        d = torch.roll(x, shifts=-1, dims=1) - x
        return d, d.norm(dim=-1).clamp_min(1e-12)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of a batch.

        Args:
            x: Positions, shape ``(batch, n_particles, spatial_dim)``.

        Returns:
            Energies, shape ``(batch,)``.
        """
        _, r = self._bonds(x)
        return 0.5 * self.k * ((r - self.r0) ** 2).sum(dim=-1)

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and its analytic gradient.

        With bond ``b_i = x_{i+1} - x_i`` of length ``r_i`` and ``f_i = k (r_i - r0) b_i / r_i``,
        ``∂E/∂x_i = f_{i-1} - f_i``.

        Args:
            x: Positions, shape ``(batch, n_particles, spatial_dim)``.

        Returns:
            ``(E, ∇E)`` with shapes ``(batch,)`` and ``(batch, n_particles, spatial_dim)``.
        """
        x = x.detach()
        b, r = self._bonds(x)
        e = 0.5 * self.k * ((r - self.r0) ** 2).sum(dim=-1)
        f = (self.k * (r - self.r0) / r).unsqueeze(-1) * b
        return e, torch.roll(f, shifts=1, dims=1) - f
