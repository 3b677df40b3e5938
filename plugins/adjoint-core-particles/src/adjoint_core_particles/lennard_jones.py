r"""Lennard-Jones cluster with a harmonic centre term (LJ-13, LJ-55 of the iDEM and AS papers)."""

from __future__ import annotations

import torch

from adjoint_core import Energy

from ._validation import check_int, check_non_negative, check_positive
from .pairs import PairIndex, pair_squared_distances

__all__ = ["LennardJonesEnergy"]


class LennardJonesEnergy(Energy):
    r"""Lennard-Jones energy of ``N`` particles plus a harmonic pull to their centre.

    .. math::

        E(x) = \sum_{i \ne j} \varepsilon \Big[ \big(\tfrac{r_m}{d_{ij}}\big)^{12}
               - 2 \big(\tfrac{r_m}{d_{ij}}\big)^{6} \Big]
             + \tfrac{s}{2} \sum_i \lVert x_i - \bar x \rVert^2,
        \qquad d_{ij} = \sqrt{\lVert x_i - x_j\rVert^2 + 10^{-6}}

    The Lennard-Jones sum runs over **ordered** pairs ``i ≠ j``, so every unordered pair counts
    twice (computed as ``2 Σ_{i<j}``); this is the convention of the iDEM and Adjoint Sampling
    code and the one under which the LJ-13 reference samples are stationary (mean energy about
    -43.2). ``s = oscillator_scale`` and ``x̄ = mean_i x_i``. Defaults ``ε = 1``, ``r_m = 1``,
    ``s = 1``, ``τ = 1``; LJ-13 and LJ-55 use ``n_particles = 13`` and ``55`` in 3-D.

    The ``1e-6`` inside the distance (:attr:`DISTANCE_EPS`) is the papers' value; there is no
    clamping or cut-off, so overlapping particles give very large energies and gradients.
    The energy is invariant under translations, rotations, reflections and permutations.

    States have shape ``(batch, n_particles, spatial_dim)``; :meth:`energy` returns shape
    ``(batch,)``.

    Args:
        n_particles: Number of particles ``N >= 2``.
        spatial_dim: Spatial dimension ``>= 1``.
        epsilon: Well depth ``ε > 0`` (a pair at ``d = r_m`` contributes ``-2ε``).
        r_m: Distance of the pair minimum ``r_m > 0``.
        oscillator_scale: Coefficient ``s >= 0`` of the harmonic centre term.
        temperature: ``τ`` of the target ``exp(-E/τ)``.

    Raises:
        ValueError: If a parameter is out of range (the message names it and its value).
    """

    #: Added to ``|x_i - x_j|²`` before taking distances, as in the iDEM/AS code.
    DISTANCE_EPS = 1e-6

    def __init__(
        self,
        n_particles: int = 13,
        spatial_dim: int = 3,
        epsilon: float = 1.0,
        r_m: float = 1.0,
        oscillator_scale: float = 1.0,
        temperature: float = 1.0,
    ) -> None:
        self.n_particles = check_int("n_particles", n_particles, 2)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, 1)
        self.epsilon = check_positive("epsilon", epsilon)
        self.r_m = check_positive("r_m", r_m)
        self.oscillator_scale = check_non_negative("oscillator_scale", oscillator_scale)
        temperature = check_positive("temperature", temperature)
        super().__init__((self.n_particles, self.spatial_dim), temperature)
        self._pairs = PairIndex(self.n_particles)

    def lj_energy(self, x: torch.Tensor) -> torch.Tensor:
        """The Lennard-Jones part alone (ordered pairs), without the harmonic term.

        Args:
            x: Positions, shape ``(batch, n_particles, spatial_dim)``.

        Returns:
            Shape ``(batch,)``.
        """
        self._check(x)
        return self._lj(x)

    def oscillator_energy(self, x: torch.Tensor) -> torch.Tensor:
        """The harmonic centre term ``(s/2) Σ_i |x_i - x̄|²`` alone.

        Args:
            x: Positions, shape ``(batch, n_particles, spatial_dim)``.

        Returns:
            Shape ``(batch,)``.
        """
        self._check(x)
        return self._oscillator(x)

    def _lj(self, x: torch.Tensor) -> torch.Tensor:
        # (r_m / d)^2 with d^2 = |r|^2 + eps: no square root needed.
        s2 = (self.r_m * self.r_m) / (pair_squared_distances(x, self._pairs) + self.DISTANCE_EPS)
        s6 = s2 * s2 * s2
        return (2.0 * self.epsilon) * (s6 * s6 - 2.0 * s6).sum(dim=-1)

    def _oscillator(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return (0.5 * self.oscillator_scale) * centred.pow(2).sum(dim=(1, 2))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        e = self._lj(x)
        if self.oscillator_scale != 0.0:
            e = e + self._oscillator(x)
        return e

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_particles={self.n_particles}, "
            f"spatial_dim={self.spatial_dim}, epsilon={self.epsilon}, r_m={self.r_m}, "
            f"oscillator_scale={self.oscillator_scale}, temperature={self.temperature})"
        )
