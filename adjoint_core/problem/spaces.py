r"""State spaces: what a state is, how to keep it valid, and the base process on it.

The Adjoint Sampling loop never touches coordinates directly; it asks the state space for

* the source ``x_0`` (:meth:`StateSpace.origin`) and a standard Gaussian in the tangent space
  (:meth:`StateSpace.noise`),
* an Euler–Maruyama update ``x ← project(x + dx)`` (:meth:`StateSpace.step`),
* a bridge sample of the base process ``X_t | X_0 = x_0, X_1 = x_1``
  (:meth:`StateSpace.bridge_sample`),
* the base terminal density ``p^base_1`` and its score ``∇ log p^base_1``
  (:meth:`StateSpace.base_log_prob`, :meth:`StateSpace.base_score`),
* the projection of vectors (targets, model outputs) onto the tangent space
  (:meth:`StateSpace.tangent`).

This is enough for Euclidean spaces (optionally centre-of-mass free), periodic boxes and
tori (torsion angles): a periodic/torsional space overrides ``step`` (wrap), ``bridge_sample``
(sample an image of ``x_1``, bridge in the ambient space, wrap) and the wrapped-normal
``base_log_prob``/``base_score``; the loop does not change. :class:`PeriodicSpace` does exactly
that with the shared torus maths of :mod:`adjoint_core.problem.torus`.

Shapes: a state batch is ``(batch, *event_shape)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from adjoint_core.problem import torus
from adjoint_core.problem.schedules import NoiseSchedule

__all__ = ["StateSpace", "EuclideanSpace", "PeriodicSpace"]


def _layout(
    cls: str, n_particles: int | None, spatial_dim: int | None, dim: int | None
) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """``(event_shape, particle_shape)`` from either ``dim`` or ``n_particles, spatial_dim``."""
    if dim is not None:
        if n_particles is not None or spatial_dim is not None:
            raise ValueError("give either dim=D, or n_particles and spatial_dim, not both")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        return (int(dim),), None
    if n_particles is None or spatial_dim is None:
        raise ValueError(f"{cls} needs dim=D or n_particles and spatial_dim")
    if n_particles < 1 or spatial_dim < 1:
        raise ValueError(
            f"n_particles and spatial_dim must be >= 1, got {n_particles}, {spatial_dim}"
        )
    return (int(n_particles), int(spatial_dim)), (int(n_particles), int(spatial_dim))


class StateSpace(ABC):
    """Abstract state space of the sampler.

    Attributes:
        event_shape: Shape of one state.
        particle_shape: ``(n_particles, spatial_dim)`` for particle systems, else ``None``;
            used for per-particle clipping and by equivariant models.
    """

    event_shape: tuple[int, ...]
    particle_shape: tuple[int, int] | None = None

    # ------------------------------------------------------------------ geometry
    @property
    @abstractmethod
    def dim(self) -> int:
        """Intrinsic dimension (degrees of freedom), e.g. ``(N-1)·d`` when mean-free."""

    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Map an ambient point to a valid state (remove centre of mass, wrap, ...)."""

    @abstractmethod
    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """Project a vector (noise, drift, regression target) onto the tangent space."""

    def origin(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The source ``x_0`` of the base process (a Dirac), shape ``(batch, *event_shape)``."""
        return torch.zeros((batch, *self.event_shape), device=device, dtype=dtype)

    def noise(
        self, batch: int, generator: torch.Generator | None = None, device=None,
        dtype=torch.float32,
    ) -> torch.Tensor:
        """Standard Gaussian in the tangent space, shape ``(batch, *event_shape)``."""
        eps = torch.randn((batch, *self.event_shape), generator=generator, device=device,
                          dtype=dtype)
        return self.tangent(eps)

    def step(self, x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Euler–Maruyama update ``project(x + dx)``."""
        return self.project(x + dx)

    # ------------------------------------------------------------------ base process
    def bridge_sample(
        self, x1: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``X_t | X_0 = origin, X_1 = x1`` of the base process.

        Args:
            x1: Terminal states, shape ``(batch, *event_shape)``.
            t: Times, shape ``(batch,)``.
            schedule: The base process' noise schedule.
            generator: Random generator.

        Returns:
            ``x_t``, shape ``(batch, *event_shape)``.
        """
        lam, std = schedule.bridge_coefficients(t)
        shape = (-1,) + (1,) * len(self.event_shape)
        eps = self.noise(x1.shape[0], generator, x1.device, x1.dtype)
        return self.project(lam.view(shape) * x1 + std.view(shape) * eps)

    @abstractmethod
    def base_log_prob(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """``log p^base_1(x1)``, shape ``(batch,)``."""

    @abstractmethod
    def base_score(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """``∇ log p^base_1(x1)``, shape of ``x1``."""

    def sample_base(
        self, batch: int, schedule: NoiseSchedule, generator: torch.Generator | None = None,
        device=None, dtype=torch.float32,
    ) -> torch.Tensor:
        """Exact samples of the base terminal marginal ``p^base_1``."""
        x0 = self.origin(batch, device, dtype)
        return self.step(x0, math.sqrt(schedule.h1_squared) *
                         self.noise(batch, generator, device, dtype))

    # ------------------------------------------------------------------ I/O layout
    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, *event_shape) -> (batch, prod(event_shape))`` (the reference-data layout)."""
        return x.reshape(x.shape[0], -1)

    def unflatten(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`flatten`; raises a clear error on a wrong width."""
        width = math.prod(self.event_shape)
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(
                f"expected samples of shape (N, {width}) for event shape {self.event_shape}, "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], *self.event_shape)

    @abstractmethod
    def config(self) -> dict:
        """Constructor arguments (for checkpoints)."""


class EuclideanSpace(StateSpace):
    r"""``R^D``, or ``N`` particles in ``R^d`` optionally with zero centre of mass.

    With ``mean_free=True`` states live on the subspace ``Σ_i x_i = 0`` (unweighted centre of
    geometry) of dimension ``(N-1)·d``; noise, drifts and targets are projected onto it, and
    the base terminal density is ``N(0, h(1)² I)`` on that subspace:

    .. math:: \log p^{base}_1(x) = -\frac{\|x\|^2}{2h(1)^2} - \frac{n}{2}\log(2\pi h(1)^2),
              \qquad \nabla \log p^{base}_1(x) = -x / h(1)^2,

    with ``n`` = :attr:`dim`.

    Args:
        n_particles: Number of particles ``N`` (use ``EuclideanSpace(dim=D)`` for plain vectors).
        spatial_dim: Dimension ``d`` of each particle.
        mean_free: Remove the centre of mass (particle systems only).
        dim: Alternative to ``n_particles``/``spatial_dim`` for a flat ``R^D`` state.
    """

    def __init__(
        self, n_particles: int | None = None, spatial_dim: int | None = None,
        mean_free: bool = False, dim: int | None = None,
    ) -> None:
        if dim is not None and mean_free:
            raise ValueError("give either dim=D, or n_particles and spatial_dim, not both")
        if mean_free and n_particles is not None and n_particles < 2:
            raise ValueError("mean_free needs at least 2 particles")
        self.event_shape, self.particle_shape = _layout("EuclideanSpace", n_particles,
                                                        spatial_dim, dim)
        self.mean_free = bool(mean_free)

    @property
    def dim(self) -> int:  # noqa: D102
        n = math.prod(self.event_shape)
        return n - self.event_shape[1] if self.mean_free else n

    def tangent(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return v - v.mean(dim=-2, keepdim=True) if self.mean_free else v

    def project(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.tangent(x)

    def base_log_prob(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:  # noqa: D102
        h1s = schedule.h1_squared
        sq = self.project(x1).pow(2).flatten(1).sum(-1)
        return -0.5 * sq / h1s - 0.5 * self.dim * math.log(2 * math.pi * h1s)

    def base_score(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:  # noqa: D102
        return -self.project(x1) / schedule.h1_squared

    def config(self) -> dict:  # noqa: D102
        if self.particle_shape is None:
            return {"dim": self.event_shape[0]}
        return {"n_particles": self.event_shape[0], "spatial_dim": self.event_shape[1],
                "mean_free": self.mean_free}

    def __repr__(self) -> str:
        return f"EuclideanSpace({', '.join(f'{k}={v}' for k, v in self.config().items())})"


class PeriodicSpace(StateSpace):
    r"""A periodic box: every coordinate lives on a circle of length ``L`` (a flat torus).

    Layouts: ``N`` particles in a ``d``-dimensional box (``n_particles``, ``spatial_dim``,
    ``box`` = one length per axis or one for all), or a flat vector (``dim=D``, ``box`` = one
    length per coordinate or one for all). States are stored wrapped into ``[-L/2, L/2)``
    (:func:`adjoint_core.problem.torus.wrap`); the source of the base process is the origin, the
    centre
    of the box.

    Base process: Brownian motion ``dX = g(t) dW`` on the torus, i.e. the Euclidean process
    wrapped. Its terminal density is a product of wrapped normals
    (:func:`adjoint_core.problem.torus.wrapped_normal_log_prob`),

    .. math:: \log p^{base}_1(x) = \sum_c \log \sum_{k=-K}^{K}
              \mathcal N\big(x_c + kL_c;\, 0, h(1)^2\big),

    and :meth:`base_score` is its exact gradient
    (:func:`~adjoint_core.problem.torus.wrapped_normal_score`),
    which is what the terminal adjoint ``a = clip(∇E/τ) + ∇ log p^base_1`` needs. The bridge
    draws the image of ``x_1`` from its posterior under ``N(0, h(1)²)``, runs the Euclidean
    bridge to it and wraps (:func:`~adjoint_core.problem.torus.wrapped_bridge_sample`). ``tangent``
    is
    the identity and ``step``/``project`` wrap.

    **Centre of mass: kept free.** On a torus the centre of mass is not a well-defined linear
    function of the state (it changes by ``L/N`` when one particle is wrapped), so it cannot be
    projected out consistently; and a periodic fluid's target is invariant under translations,
    so its centre-of-mass marginal is uniform on the box, which the free process represents
    exactly. All ``N·d`` coordinates are degrees of freedom (:attr:`dim`). With
    ``h(1) ≳ L`` the base terminal density is uniform to ``~2·exp(-2π²h(1)²/L²)`` (``< 1e-8``
    at ``h(1) = L``), so the optimal control has no centre-of-mass component and a
    translation-invariant network such as EGNN loses nothing; choose ``σ_max ≳ L`` for
    particle boxes.

    Args:
        box: Period(s): a float for all axes, or one per spatial axis (particle layout) or per
            coordinate (flat layout).
        n_particles: Number of particles ``N`` (particle layout).
        spatial_dim: Spatial dimension ``d`` (particle layout).
        dim: Flat layout with ``D`` coordinates (instead of ``n_particles``/``spatial_dim``).
        n_images: Images ``K`` on each side in the wrapped-normal sums; ``None`` (default):
            ``ceil(6 h(1) / L_min) + 1`` per call
            (:func:`adjoint_core.problem.torus.default_n_images`).

    Raises:
        ValueError: Inconsistent layout or a non-positive box length.
    """

    def __init__(
        self, box: float | list[float], n_particles: int | None = None,
        spatial_dim: int | None = None, dim: int | None = None, n_images: int | None = None,
    ) -> None:
        self.event_shape, self.particle_shape = _layout("PeriodicSpace", n_particles,
                                                        spatial_dim, dim)
        width = self.event_shape[-1]
        lengths = [float(box)] * width if isinstance(box, (int, float)) else \
            [float(b) for b in box]
        if len(lengths) == 1 and width > 1:
            lengths = lengths * width
        if len(lengths) != width:
            what = "spatial axis" if self.particle_shape else "coordinate"
            raise ValueError(f"box needs one length or one per {what} ({width}), got {box}")
        if not all(math.isfinite(b) and b > 0 for b in lengths):
            raise ValueError(f"box lengths must be finite and > 0, got {box}")
        if n_images is not None and n_images < 0:
            raise ValueError(f"n_images must be >= 0 or None, got {n_images}")
        #: Period of each axis (particle layout) or coordinate (flat layout).
        self.box: tuple[float, ...] = tuple(lengths)
        self.n_images = None if n_images is None else int(n_images)

    # ------------------------------------------------------------------ geometry
    @property
    def dim(self) -> int:  # noqa: D102
        return math.prod(self.event_shape)

    @property
    def volume(self) -> float:
        """Volume of the box of one particle (particle layout) or of the whole torus (flat)."""
        return math.prod(self.box)

    def box_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """Box lengths as a tensor of shape ``(event_shape[-1],)`` like ``like``."""
        return torch.tensor(self.box, device=like.device, dtype=like.dtype)

    def images(self, schedule: NoiseSchedule) -> int:
        """Images ``K`` per side used in the wrapped-normal sums for this schedule."""
        if self.n_images is not None:
            return self.n_images
        return torus.default_n_images(math.sqrt(schedule.h1_squared), min(self.box))

    def tangent(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return v

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Wrap into ``[-L/2, L/2)``."""
        return torus.wrap(x, self.box_tensor(x))

    def displacement(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Minimum-image displacement ``y − x`` per coordinate (shape of ``x``)."""
        return torus.minimum_image(y - x, self.box_tensor(x))

    # ------------------------------------------------------------------ base process
    def bridge_sample(
        self, x1: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Lift ``x1`` to an image, run the Euclidean bridge from the origin, wrap.

        Args:
            x1: Terminal states ``(batch, *event_shape)``.
            t: Times ``(batch,)``.
            schedule: The base schedule.
            generator: Random generator (image draw, then the bridge noise).

        Returns:
            ``x_t`` ``(batch, *event_shape)``, wrapped.
        """
        lam, std = schedule.bridge_coefficients(t)
        shape = (-1,) + (1,) * len(self.event_shape)
        box = self.box_tensor(x1)
        sigma1 = math.sqrt(schedule.h1_squared)
        lift = torus.sample_image(x1, sigma1, box, self.images(schedule), generator)
        eps = self.noise(x1.shape[0], generator, x1.device, x1.dtype)
        return torus.wrap(lam.view(shape).to(x1) * lift + std.view(shape).to(x1) * eps, box)

    def base_log_prob(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """Sum over coordinates of the wrapped-normal ``WN(0, h(1)²)`` log-density, ``(batch,)``."""
        lp = torus.wrapped_normal_log_prob(x1, math.sqrt(schedule.h1_squared),
                                           self.box_tensor(x1), self.images(schedule))
        return lp.flatten(1).sum(-1)

    def base_score(self, x1: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """Exact gradient of :meth:`base_log_prob`, shape of ``x1``."""
        return torus.wrapped_normal_score(x1, math.sqrt(schedule.h1_squared),
                                          self.box_tensor(x1), self.images(schedule))

    def step_log_prob(self, y: torch.Tensor, mean: torch.Tensor,
                      std: float | torch.Tensor) -> torch.Tensor:
        """Log-density of ``y = wrap(mean + std·ε)``, ``ε ~ N(0, I)``: a wrapped normal.

        Used by Metropolis–Hastings corrections (:mod:`adjoint_core.mcmc.samplers`): the exact
        density
        of a wrapped Gaussian proposal, summed over images.

        Args:
            y: Proposed states ``(batch, *event_shape)``.
            mean: Unwrapped proposal means, same shape.
            std: Proposal standard deviation (float, or broadcastable, e.g. ``(batch, 1, 1)``).

        Returns:
            Shape ``(batch,)``.
        """
        box = self.box_tensor(y)
        s = float(torch.as_tensor(std).max())
        k = self.n_images if self.n_images is not None else \
            torus.default_n_images(s, min(self.box))
        return torus.wrapped_normal_log_prob(y - mean, std, box, k).flatten(1).sum(-1)

    def config(self) -> dict:  # noqa: D102
        box = self.box[0] if len(set(self.box)) == 1 else list(self.box)
        cfg: dict = {"box": box}
        if self.particle_shape is None:
            cfg["dim"] = self.event_shape[0]
        else:
            cfg.update(n_particles=self.event_shape[0], spatial_dim=self.event_shape[1])
        if self.n_images is not None:
            cfg["n_images"] = self.n_images
        return cfg

    def __repr__(self) -> str:
        return f"PeriodicSpace({', '.join(f'{k}={v}' for k, v in self.config().items())})"
