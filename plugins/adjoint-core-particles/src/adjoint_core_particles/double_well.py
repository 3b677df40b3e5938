r"""Multi-particle double-well energy (DW-n), the DW-4 benchmark of the iDEM and AS papers."""

from __future__ import annotations

import torch

from adjoint_core import Energy

from ._validation import check_int, check_positive, check_real
from .pairs import PairIndex, pair_squared_distances

__all__ = ["DoubleWellEnergy"]


class DoubleWellEnergy(Energy):
    r"""Pairwise double-well potential of ``N`` particles in ``spatial_dim`` dimensions.

    .. math::

        E(x) = \sum_{i<j} \big[ a\,(d_{ij}-d_0) + b\,(d_{ij}-d_0)^2 + c\,(d_{ij}-d_0)^4 \big],
        \qquad d_{ij} = \sqrt{\lVert x_i - x_j\rVert^2 + 10^{-8}}

    in the notation of the Adjoint Sampling paper (``a`` linear, ``b`` quadratic, ``c``
    quartic coefficient, ``d0 = offset``). The defaults are DW-4 exactly as its reference
    samples were generated: 4 particles in 2-D, ``a = 0``, ``b = -4``, ``c = 0.9``,
    ``d0 = 4``, ``τ = 1``, i.e. ``E = Σ_{i<j} 0.9 (d-4)⁴ - 4 (d-4)²`` with wells at
    ``d = 4 ± 1.491``. (The iDEM/bgflow code names the same constants ``a = 0.9`` quartic and
    ``b = -4`` quadratic.)

    The ``1e-8`` inside the square root (:attr:`DISTANCE_EPS`, as in Meta's
    ``adjoint_samplers``) keeps the gradient finite when two particles coincide; it shifts
    distances by at most ``5e-9`` at ``d ≥ 1``. The energy is invariant under translations,
    rotations, reflections and permutations of the particles; it does not confine the centre
    of mass, so it is meant for a mean-free state space.

    States have shape ``(batch, n_particles, spatial_dim)``; :meth:`energy` returns shape
    ``(batch,)``.

    Args:
        n_particles: Number of particles ``N >= 2``.
        spatial_dim: Spatial dimension ``>= 1``.
        a: Linear coefficient.
        b: Quadratic coefficient.
        c: Quartic coefficient (``>= 0``).
        offset: Reference distance ``d0``.
        temperature: ``τ`` of the target ``exp(-E/τ)``.

    Raises:
        ValueError: If a parameter is out of range (the message names it and its value), or
            if the pair potential is unbounded below (``c < 0``, or ``c = 0`` with ``b < 0``,
            or ``c = b = 0`` with ``a < 0``).
    """

    #: Added to ``|x_i - x_j|²`` before the square root (gradient safety at coincidence).
    DISTANCE_EPS = 1e-8

    def __init__(
        self,
        n_particles: int = 4,
        spatial_dim: int = 2,
        a: float = 0.0,
        b: float = -4.0,
        c: float = 0.9,
        offset: float = 4.0,
        temperature: float = 1.0,
    ) -> None:
        self.n_particles = check_int("n_particles", n_particles, 2)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, 1)
        self.a = check_real("a", a)
        self.b = check_real("b", b)
        self.c = check_real("c", c)
        self.offset = check_real("offset", offset)
        if self.c < 0 or (self.c == 0 and (self.b < 0 or (self.b == 0 and self.a < 0))):
            raise ValueError(
                f"the pair potential a(d-d0) + b(d-d0)^2 + c(d-d0)^4 with a={self.a}, "
                f"b={self.b}, c={self.c} is unbounded below as d grows; need c > 0, or c = 0 "
                "with b > 0, or c = b = 0 with a >= 0"
            )
        temperature = check_positive("temperature", temperature)
        super().__init__((self.n_particles, self.spatial_dim), temperature)
        self._pairs = PairIndex(self.n_particles)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.sqrt(pair_squared_distances(x, self._pairs) + self.DISTANCE_EPS)
        u = d - self.offset
        u2 = u * u
        return (self.a * u + self.b * u2 + self.c * u2 * u2).sum(dim=-1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_particles={self.n_particles}, "
            f"spatial_dim={self.spatial_dim}, a={self.a}, b={self.b}, c={self.c}, "
            f"offset={self.offset}, temperature={self.temperature})"
        )
