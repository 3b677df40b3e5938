r"""The torsional state space: a torus ``T^K = [-π, π)^K`` of torsion angles.

Torsional Adjoint Sampling (Havens et al., ICML 2025; its code, "AS-mol",
github.com/facebookresearch/adjoint_sampling) samples only the ``K`` torsion angles of the
rotatable bonds of a molecule; bond lengths and angles stay those of a reference geometry. The
state is a vector ``τ ∈ [-π, π)^K`` and everything the loop needs from the space is generic
torus maths with period ``2π``, shared with periodic boxes through
:mod:`adjoint_core.problem.torus`:

* **Base process**: Brownian motion on the torus, ``dτ = g(t) dW`` wrapped; the source is
  ``τ = 0`` (AS-mol sets every torsion of the reference conformer to 0 so the source is the
  reference geometry).
* **Terminal density**: a product of wrapped normals ``WN(0, h(1)²)``,

  .. math:: \log p^{base}_1(τ) = \sum_{k=1}^{K} \log \sum_{j=-J}^{J}
            \mathcal N\big(τ_k + 2πj;\, 0, h(1)^2\big),

  with ``J`` images per side (``n_images``; AS-mol uses 6, the default here is
  ``ceil(6 h(1)/2π) + 1``, whose relative truncation error is ``< e^{-18}``), and its exact
  gradient as the base score.
* **Bridge** ``τ_t | τ_0 = 0, τ_1``: the image ``τ_1 + 2πj`` is drawn from its posterior under
  ``N(0, h(1)²)``, the Euclidean bridge is run to it and the result wrapped.
* **SDE step and projection**: ``wrap(τ + dτ)``; the tangent space is all of ``R^K``.

All of this is inherited from :class:`~adjoint_core.problem.spaces.PeriodicSpace` with ``L = 2π`` in
the flat layout; :class:`TorsionalSpace` adds the torsion-specific vocabulary (``n_torsions``)
and an optional *embedding* ``τ → R^{N×3}`` (for molecules: the rigid-rotor map of the
chemistry plugin) so that models and metrics can see Cartesian coordinates. Nothing here knows
about chemistry: a user can sample any density on a torus with it (e.g.
:class:`~adjoint_core.problem.von_mises.VonMisesEnergy` with ``box = 2π``).

The paper's torsional schedule is ``GeometricSchedule(sigma_min=π/100, sigma_max=π)``
(:func:`torsional_schedule`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from adjoint_core.problem import torus
from adjoint_core.problem.schedules import GeometricSchedule
from adjoint_core.problem.spaces import PeriodicSpace

__all__ = ["TorsionalSpace", "torsional_schedule", "angle_difference", "TWO_PI"]

#: The period of a torsion angle.
TWO_PI = 2.0 * math.pi


def angle_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Shortest signed difference ``a − b`` of angles, in ``[-π, π]``.

    Args:
        a: Angles (radians), any shape.
        b: Angles broadcastable to ``a``.

    Returns:
        Tensor like ``a − b``.
    """
    return torus.minimum_image(a - b, TWO_PI)


def torsional_schedule(sigma_min: float = math.pi / 100, sigma_max: float = math.pi
                       ) -> GeometricSchedule:
    """The geometric schedule of AS-mol's torsional runs (``σ_min = π/100``, ``σ_max = π``).

    ``h(1) = π sqrt(1 − 10⁻⁴) ≈ 3.1414``, so the base terminal law is nearly uniform on the
    circle (its mean resultant length is ``exp(−h(1)²/2) ≈ 0.007``).
    """
    return GeometricSchedule(sigma_min=sigma_min, sigma_max=sigma_max)


class TorsionalSpace(PeriodicSpace):
    r"""Torus of ``K`` torsion angles in ``[-π, π)``: a :class:`PeriodicSpace` with ``L = 2π``.

    Args:
        n_torsions: ``K >= 1``, the number of torsion angles (the state is ``(batch, K)``).
        n_images: Images ``J`` on each side of the wrapped-normal sums (``None``: enough for a
            relative truncation error ``< e^{-18}``; AS-mol uses 6).
        embedding: Optional map ``τ (batch, K) → x (batch, N, 3)`` (e.g. a molecule's
            rigid-rotor coordinates); only used by :meth:`to_cartesian`. Not saved by
            :meth:`config`: whoever builds the space (the chemistry plugin) re-attaches it.

    Raises:
        ValueError: ``n_torsions < 1`` or ``n_images < 0``.
    """

    def __init__(self, n_torsions: int, n_images: int | None = None,
                 embedding: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not isinstance(n_torsions, int) or isinstance(n_torsions, bool) or n_torsions < 1:
            raise ValueError(f"TorsionalSpace n_torsions must be an integer >= 1, got "
                             f"{n_torsions!r} (a molecule without rotatable bonds has no "
                             f"torsional degrees of freedom)")
        super().__init__(box=TWO_PI, dim=n_torsions, n_images=n_images)
        self.embedding = embedding

    @property
    def n_torsions(self) -> int:
        """``K``, the number of torsion angles."""
        return self.event_shape[0]

    def uniform(self, batch: int, generator: torch.Generator | None = None, device=None,
                dtype=torch.float32) -> torch.Tensor:
        """Uniform angles on the torus, shape ``(batch, K)`` (e.g. random-torsion baselines)."""
        u = torch.rand((batch, self.n_torsions), generator=generator, device=device, dtype=dtype)
        return torus.wrap(TWO_PI * u - math.pi, TWO_PI)

    def to_cartesian(self, x: torch.Tensor) -> torch.Tensor:
        """Map torsion states to Cartesian coordinates with the attached :attr:`embedding`.

        Args:
            x: Torsion angles ``(batch, K)``.

        Returns:
            Whatever the embedding returns, normally ``(batch, N, 3)``.

        Raises:
            ValueError: No embedding is attached, or ``x`` has the wrong shape.
        """
        if self.embedding is None:
            raise ValueError("this TorsionalSpace has no embedding: build it with "
                             "TorsionalSpace(K, embedding=...) (for molecules the chemistry "
                             "plugin's torsional space does this)")
        if x.ndim != 2 or x.shape[1] != self.n_torsions:
            raise ValueError(f"expected torsion states of shape (batch, {self.n_torsions}), "
                             f"got {tuple(x.shape)}")
        return self.embedding(x)

    def config(self) -> dict:  # noqa: D102
        cfg: dict = {"n_torsions": self.n_torsions}
        if self.n_images is not None:
            cfg["n_images"] = self.n_images
        return cfg

    def __repr__(self) -> str:
        return f"TorsionalSpace({', '.join(f'{k}={v}' for k, v in self.config().items())})"
