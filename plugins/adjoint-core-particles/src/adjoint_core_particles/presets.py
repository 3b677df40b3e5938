"""Named benchmark systems: DW-4, LJ-13, LJ-55 and GMM-40 with their published constants.

Each preset fixes the size of the system (what its name says) and keeps every other
constructor parameter, with the benchmark value as default, so a config can still set e.g.
the temperature: ``{"name": "lj13", "temperature": 2.0}``.
"""

from __future__ import annotations

from .double_well import DoubleWellEnergy
from .gaussian_mixture import SOFTPLUS_ONE, GaussianMixtureEnergy
from .lennard_jones import LennardJonesEnergy

__all__ = ["dw4", "lj13", "lj55", "gmm40"]


def dw4(
    a: float = 0.0,
    b: float = -4.0,
    c: float = 0.9,
    offset: float = 4.0,
    temperature: float = 1.0,
) -> DoubleWellEnergy:
    """DW-4: 4 particles in 2-D, ``E = Σ_{i<j} 0.9 (d-4)⁴ - 4 (d-4)²``, ``τ = 1``.

    Args:
        a: Linear coefficient.
        b: Quadratic coefficient.
        c: Quartic coefficient.
        offset: Reference distance ``d0``.
        temperature: ``τ``.

    Returns:
        A :class:`DoubleWellEnergy` with ``event_shape (4, 2)``.
    """
    return DoubleWellEnergy(4, 2, a=a, b=b, c=c, offset=offset, temperature=temperature)


def lj13(
    epsilon: float = 1.0,
    r_m: float = 1.0,
    oscillator_scale: float = 1.0,
    temperature: float = 1.0,
) -> LennardJonesEnergy:
    """LJ-13: 13 particles in 3-D (ordered-pair LJ sum plus harmonic centre term), ``τ = 1``.

    Args:
        epsilon: Well depth ``ε``.
        r_m: Distance of the pair minimum.
        oscillator_scale: Coefficient of the harmonic centre term.
        temperature: ``τ``.

    Returns:
        A :class:`LennardJonesEnergy` with ``event_shape (13, 3)``.
    """
    return LennardJonesEnergy(13, 3, epsilon=epsilon, r_m=r_m,
                              oscillator_scale=oscillator_scale, temperature=temperature)


def lj55(
    epsilon: float = 1.0,
    r_m: float = 1.0,
    oscillator_scale: float = 1.0,
    temperature: float = 1.0,
) -> LennardJonesEnergy:
    """LJ-55: 55 particles in 3-D (ordered-pair LJ sum plus harmonic centre term), ``τ = 1``.

    Args:
        epsilon: Well depth ``ε``.
        r_m: Distance of the pair minimum.
        oscillator_scale: Coefficient of the harmonic centre term.
        temperature: ``τ``.

    Returns:
        A :class:`LennardJonesEnergy` with ``event_shape (55, 3)``.
    """
    return LennardJonesEnergy(55, 3, epsilon=epsilon, r_m=r_m,
                              oscillator_scale=oscillator_scale, temperature=temperature)


def gmm40(
    loc_scaling: float = 40.0,
    std: float = SOFTPLUS_ONE,
    seed: int = 0,
    temperature: float = 1.0,
) -> GaussianMixtureEnergy:
    """GMM-40: 40 equal-weight Gaussians in 2-D, means seeded 0 in ``[-40, 40]²``, ``σ = 1.313``.

    Args:
        loc_scaling: Half-width of the box of the means.
        std: Standard deviation per dimension.
        seed: Seed of the means.
        temperature: ``τ``.

    Returns:
        A :class:`GaussianMixtureEnergy` with ``event_shape (2,)``.
    """
    return GaussianMixtureEnergy(40, 2, loc_scaling=loc_scaling, std=std, seed=seed,
                                 temperature=temperature)
