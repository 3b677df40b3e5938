r"""Lennard-Jones fluid in a periodic box (minimum image, truncated and shifted at ``r_c``).

.. math::

    E(x) = \sum_{i<j} \phi(r_{ij}), \qquad
    r_{ij} = \big\lVert x_i - x_j - L \odot \mathrm{round}\big((x_i - x_j) \oslash L\big)\big\rVert,

    \phi(r) = \begin{cases}
        4\varepsilon\big[(\sigma/r)^{12} - (\sigma/r)^{6}\big] - \phi_c & r < r_c \\
        0 & r \ge r_c
    \end{cases},
    \qquad \phi_c = 4\varepsilon\big[(\sigma/r_c)^{12} - (\sigma/r_c)^{6}\big]
    \ \text{(``shift=True``, else } \phi_c = 0\text{)}.

Constants (the usual reduced Lennard-Jones units): ``ε = 1``, ``σ = 1`` (pair minimum at
``r_m = 2^{1/6} σ ≈ 1.122 σ``), cut-off ``r_c = 2.5 σ`` with the energy **shifted** so that
``φ(r_c) = 0`` (the energy is continuous; the force jumps by ``|φ'(r_c)| ≈ 0.039 ε/σ`` at
``r_c``). Each unordered pair counts **once** — the physics convention, unlike the LJ-13/LJ-55
cluster energy of :mod:`adjoint_core_particles.lennard_jones`, which sums ordered pairs.
Only the nearest image of each pair interacts, which is exact for the truncated potential when
``r_c ≤ L_min / 2``; that is required (a larger cut-off raises an error).

Defaults (``lj_periodic``): ``N = 16`` particles in 2-D at number density ``ρ = 0.6 σ^{-2}``,
i.e. a square box ``L = sqrt(N/ρ) ≈ 5.164 σ``, with ``kT = τ = 1.0 ε`` — a dense
supercritical fluid of the 2-D truncated LJ model (critical temperature ≈ 0.5 ε). A 3-D
liquid-like state, e.g. ``N = 16, ρ = 0.8 σ^{-3}`` (``L ≈ 2.71 σ``), needs ``cutoff ≤ L/2``.

The energy is invariant under shifting any particle by a multiple of the box, global
translations, permutations and the box symmetries.
"""

from __future__ import annotations

import math

import torch

from adjoint_core import Energy
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace
from adjoint_core.problem.torus import minimum_image

from ._validation import check_int, check_positive
from .pairs import PairIndex

__all__ = ["PeriodicLennardJonesEnergy", "lj_periodic"]


class PeriodicLennardJonesEnergy(Energy):
    """Truncated (and by default shifted) Lennard-Jones fluid with minimum-image distances.

    See the module docstring for the formula and constants. States have shape
    ``(batch, n_particles, spatial_dim)`` (any representative of the periodic coordinates);
    :meth:`energy` returns ``(batch,)``.

    Args:
        n_particles: ``N >= 2``.
        spatial_dim: ``d >= 1``.
        box: Box length(s): a float or one per axis; ``None``: a cubic box of volume
            ``N / density``.
        density: Number density ``ρ`` used when ``box`` is ``None``.
        epsilon: Well depth ``ε > 0``.
        sigma: Length ``σ > 0`` (the pair potential is zero at ``r = σ``).
        cutoff: ``r_c`` in units of ``σ`` (``r_c = cutoff·σ``); must satisfy ``r_c ≤ L_min/2``.
        shift: Subtract ``φ_LJ(r_c)`` so that ``φ(r_c) = 0``.
        temperature: ``τ = kT`` of the target ``exp(-E/τ)``.

    Raises:
        ValueError: A parameter out of range, or ``r_c > L_min / 2``.
    """

    #: Smallest squared distance used (``1e-5 σ²``, i.e. ``r ≈ 3.2·10⁻³ σ``): closer pairs
    #: count as at that distance (about ``4·10³⁰ ε`` each, zero gradient), so energies and
    #: gradients stay finite in float32 even for coincident particles.
    MIN_R2 = 1e-5

    def __init__(
        self,
        n_particles: int = 16,
        spatial_dim: int = 2,
        box: float | list[float] | None = None,
        density: float = 0.6,
        epsilon: float = 1.0,
        sigma: float = 1.0,
        cutoff: float = 2.5,
        shift: bool = True,
        temperature: float = 1.0,
    ) -> None:
        self.n_particles = check_int("n_particles", n_particles, 2)
        self.spatial_dim = check_int("spatial_dim", spatial_dim, 1)
        self.epsilon = check_positive("epsilon", epsilon)
        self.sigma = check_positive("sigma", sigma)
        self.cutoff = check_positive("cutoff", cutoff)
        self.shift = bool(shift)
        if box is None:
            density = check_positive("density", density)
            lengths = [(self.n_particles / density) ** (1.0 / self.spatial_dim)] * \
                self.spatial_dim
        else:
            lengths = [float(box)] * self.spatial_dim if isinstance(box, (int, float)) else \
                [float(b) for b in box]
            if len(lengths) == 1:
                lengths = lengths * self.spatial_dim
            if len(lengths) != self.spatial_dim:
                raise ValueError(f"box needs 1 or {self.spatial_dim} lengths, got {box}")
            for b in lengths:
                check_positive("box", b)
        self.box: tuple[float, ...] = tuple(lengths)
        self.r_cut = self.cutoff * self.sigma
        if self.r_cut > min(self.box) / 2 * (1 + 1e-12):
            raise ValueError(
                f"cut-off r_c = {self.r_cut} exceeds half the smallest box length "
                f"{min(self.box) / 2}: the minimum-image convention would miss interactions; "
                f"use cutoff <= {min(self.box) / (2 * self.sigma):.4g} or a larger box"
            )
        temperature = check_positive("temperature", temperature)
        super().__init__((self.n_particles, self.spatial_dim), temperature)
        sr6 = (self.sigma / self.r_cut) ** 6
        #: ``φ_LJ(r_c)``, subtracted from every interacting pair when ``shift``.
        self.energy_shift = 4 * self.epsilon * (sr6 * sr6 - sr6) if self.shift else 0.0
        self._pairs = PairIndex(self.n_particles)

    @property
    def density(self) -> float:
        """Number density ``N / V``."""
        return self.n_particles / math.prod(self.box)

    def pair_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Minimum-image distances of the pairs ``i < j``, shape ``(batch, N(N-1)/2)``."""
        self._check(x)
        return self._pair_r2(x).sqrt()

    def _pair_r2(self, x: torch.Tensor) -> torch.Tensor:
        i, j = self._pairs.on(x.device)
        box = torch.tensor(self.box, device=x.device, dtype=x.dtype)
        d = minimum_image(x[:, i, :] - x[:, j, :], box)
        return d.square().sum(-1)

    def pair_potential(self, r: torch.Tensor) -> torch.Tensor:
        """``φ(r)`` (truncated, shifted if ``shift``) element-wise."""
        return self._phi(r.square())

    def _phi(self, r2: torch.Tensor) -> torch.Tensor:
        s2 = (self.sigma * self.sigma) / r2.clamp_min(self.MIN_R2 * self.sigma**2)
        s6 = s2 * s2 * s2
        phi = 4 * self.epsilon * (s6 * s6 - s6) - self.energy_shift
        return torch.where(r2 < self.r_cut**2, phi, torch.zeros_like(phi))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self._phi(self._pair_r2(x)).sum(-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_particles={self.n_particles}, "
                f"spatial_dim={self.spatial_dim}, box={list(self.box)}, epsilon={self.epsilon}, "
                f"sigma={self.sigma}, cutoff={self.cutoff}, shift={self.shift}, "
                f"temperature={self.temperature})")


def lj_periodic(
    n_particles: int | None = None,
    spatial_dim: int | None = None,
    box: float | list[float] | None = None,
    density: float = 0.6,
    epsilon: float = 1.0,
    sigma: float = 1.0,
    cutoff: float = 2.5,
    shift: bool = True,
    temperature: float = 1.0,
    space: StateSpace | None = None,
) -> PeriodicLennardJonesEnergy:
    """Registry factory ``lj_periodic``: sizes and box default to the periodic state space.

    With a :class:`~adjoint_core.problem.spaces.PeriodicSpace` injected as ``space``, unset
    ``n_particles``, ``spatial_dim`` and ``box`` are read from it (so a config states the box
    once, in the space); given values must agree with it. Without a periodic space the
    defaults are those of :class:`PeriodicLennardJonesEnergy` (``N = 16``, ``d = 2``,
    ``ρ = 0.6``).

    Raises:
        ValueError: Values that contradict the space, or see
            :class:`PeriodicLennardJonesEnergy`.
    """
    if isinstance(space, PeriodicSpace) and space.particle_shape is not None:
        n_sp, d_sp = space.particle_shape
        if n_particles is not None and n_particles != n_sp or \
                spatial_dim is not None and spatial_dim != d_sp:
            raise ValueError(f"n_particles/spatial_dim ({n_particles}, {spatial_dim}) differ from "
                             f"the space's ({n_sp}, {d_sp})")
        n_particles, spatial_dim = n_sp, d_sp
        if box is None:
            box = list(space.box)
    energy = PeriodicLennardJonesEnergy(
        16 if n_particles is None else n_particles, 2 if spatial_dim is None else spatial_dim,
        box=box, density=density, epsilon=epsilon, sigma=sigma, cutoff=cutoff, shift=shift,
        temperature=temperature)
    if isinstance(space, PeriodicSpace) and not all(
            math.isclose(a, b, rel_tol=1e-6)
            for a, b in zip(energy.box, space.box, strict=True)):
        raise ValueError(f"energy box {list(energy.box)} differs from the space's box "
                         f"{list(space.box)}")
    return energy
