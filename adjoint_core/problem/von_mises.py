r"""A product of von Mises densities in a periodic box: the torus' known-answer target.

.. math:: E(x) = -\sum_k \kappa_k \cos\!\big(2\pi (x_k - \mu_k) / L_k\big)

on the flattened state ``x`` (one term per coordinate, period ``L_k``). With temperature ``τ``
the Boltzmann density is a product of independent von Mises laws of the angles
``θ_k = 2π x_k / L_k`` with locations ``2π μ_k / L_k`` and concentrations ``κ_k / τ``; it is the
analogue on a torus of :mod:`adjoint_core.problem.gaussian`: exact samples
(:meth:`VonMisesEnergy.sample`) and exact circular moments (:meth:`VonMisesEnergy.moments`).
"""

from __future__ import annotations

import math

import torch

from adjoint_core.problem.energy import Energy
from adjoint_core.problem.torus import wrap

__all__ = ["VonMisesEnergy", "von_mises", "circular_moments"]


class VonMisesEnergy(Energy):
    """Independent von Mises terms on the coordinates of a periodic box.

    Args:
        kappa: ``κ_k >= 0``, shape ``(D,)``.
        mu: Locations ``μ_k`` in box units, shape ``(D,)``.
        box: Periods ``L_k > 0``, shape ``(D,)``.
        event_shape: Shape of one state, ``prod(event_shape) = D`` (default ``(D,)``).
        temperature: ``τ``.

    Raises:
        ValueError: Mismatched lengths, negative ``κ`` or non-positive periods.
    """

    def __init__(self, kappa: torch.Tensor, mu: torch.Tensor, box: torch.Tensor,
                 event_shape: tuple[int, ...] | None = None, temperature: float = 1.0) -> None:
        kappa = torch.as_tensor(kappa, dtype=torch.float64).reshape(-1)
        mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
        box = torch.as_tensor(box, dtype=torch.float64).reshape(-1)
        d = kappa.numel()
        if mu.numel() != d or box.numel() != d:
            raise ValueError(f"kappa, mu and box need the same length, got {d}, {mu.numel()}, "
                             f"{box.numel()}")
        if (kappa < 0).any() or not torch.isfinite(kappa).all():
            raise ValueError(f"kappa must be finite and >= 0, got {kappa.tolist()}")
        if (box <= 0).any() or not torch.isfinite(box).all():
            raise ValueError(f"box lengths must be finite and > 0, got {box.tolist()}")
        event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold {d} coordinates")
        super().__init__(event_shape, temperature)
        self.kappa, self.mu, self.box = kappa, mu, box

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        ang = (2 * math.pi) * (flat - self.mu.to(flat)) / self.box.to(flat)
        return -(self.kappa.to(flat) * torch.cos(ang)).sum(-1)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact circular mean (box units, in ``[-L/2, L/2)``) and mean resultant length.

        For a von Mises law of concentration ``κ/τ`` the mean resultant length is
        ``R = I_1(κ/τ) / I_0(κ/τ)``.

        Returns:
            ``(mean, R)``, each of shape ``(D,)`` (float64).
        """
        k = self.kappa / self.temperature
        r = torch.special.i1e(k) / torch.special.i0e(k)
        return wrap(self.mu, self.box), r

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples ``(n, *event_shape)`` (float32), wrapped into ``[-L/2, L/2)``.

        Uses :class:`torch.distributions.VonMises` (Best–Fisher rejection sampler), which draws
        from the global RNG; it runs under :func:`torch.random.fork_rng` seeded from
        ``generator``, so the global state is untouched and the draw is reproducible.
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loc = (2 * math.pi) * wrap(self.mu, self.box) / self.box
            dist = torch.distributions.VonMises(loc, (self.kappa / self.temperature)
                                                .clamp_min(1e-12))
            theta = dist.sample((n,))
        x = wrap(theta * self.box / (2 * math.pi), self.box)
        return x.to(torch.float32).reshape(n, *self.event_shape)


def circular_moments(x: torch.Tensor, box: torch.Tensor | float) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Sample circular mean and mean resultant length per coordinate.

    Args:
        x: Samples ``(n, *event_shape)``.
        box: Periods, broadcastable to the flattened coordinates ``(D,)``.

    Returns:
        ``(mean, R)`` of shape ``(D,)``: ``mean = L·atan2(E sin θ, E cos θ)/(2π)`` and
        ``R = |E e^{iθ}|`` with ``θ = 2πx/L``.
    """
    flat = x.reshape(x.shape[0], -1).double()
    box = torch.as_tensor(box, dtype=torch.float64)
    ang = (2 * math.pi) * flat / box
    s, c = ang.sin().mean(0), ang.cos().mean(0)
    return torch.atan2(s, c) * box / (2 * math.pi), torch.sqrt(s * s + c * c)


def von_mises(
    kappa: float | list[float] = 1.0,
    mu: float | list[float] = 0.0,
    box: float | list[float] = 1.0,
    dim: int | None = None,
    n_particles: int | None = None,
    spatial_dim: int | None = None,
    temperature: float = 1.0,
) -> VonMisesEnergy:
    """Registry factory of :class:`VonMisesEnergy` from plain config values.

    The layout is ``dim`` (or the length of a list-valued ``kappa``/``mu``/``box``), or
    ``n_particles`` and ``spatial_dim``; ``box`` may also be one length per spatial axis in the
    particle layout, like :class:`~adjoint_core.problem.spaces.PeriodicSpace`. Scalars are
    broadcast.
    """
    if n_particles is not None or spatial_dim is not None:
        if n_particles is None or spatial_dim is None or dim is not None:
            raise ValueError("give dim, or n_particles and spatial_dim")
        event_shape: tuple[int, ...] = (n_particles, spatial_dim)
    else:
        if dim is None:
            lens = [len(v) for v in (kappa, mu, box) if isinstance(v, list)]
            dim = max(lens) if lens else 1
        event_shape = (dim,)
    d = math.prod(event_shape)

    def full(name: str, v: float | list[float]) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if t.numel() == 1:
            return t.expand(d).clone()
        if len(event_shape) == 2 and t.numel() == event_shape[1]:
            return t.repeat(event_shape[0])
        if t.numel() != d:
            raise ValueError(f"{name} must have 1 or {d} values, got {t.numel()}")
        return t

    return VonMisesEnergy(full("kappa", kappa), full("mu", mu), full("box", box), event_shape,
                          temperature)
