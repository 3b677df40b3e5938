r"""Terminal adjoint and the adjoint-matching regression target.

For the memoryless base process the lean adjoint is constant in time and equals the gradient
of the terminal cost

.. math:: \Phi(x) = E(x)/\tau + \log p^{base}_1(x), \qquad
          a(x_1) = \mathrm{clip}\big(\nabla E(x_1)/\tau\big) + \nabla\log p^{base}_1(x_1),

projected onto the tangent space of the state space. The network is regressed onto
``-a(x_1)`` at bridge samples ``x_t`` (:func:`adjoint_matching_loss`).

Conventions fixed here (the published codes disagree, see docs/conventions.md):

* **Clipping** applies to ``∇E/τ`` only, per particle: each particle's gradient row is scaled
  by ``min(1, M / (‖row‖ + 1e-6))``; for non-particle spaces the whole vector of a sample is
  clipped. The exact, linear base score is never clipped (AS-lib convention).
* **Loss reduction**: mean over the batch and over all ``prod(event_shape)`` coordinates.
* **Temperature**: the energy's ``τ`` divides ``∇E`` here and nowhere else; reported energies
  are raw.
"""

from __future__ import annotations

import torch

from adjoint_core.problem.energy import Energy
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import StateSpace

__all__ = ["clip_per_particle", "energy_gradient_term", "terminal_adjoint",
           "adjoint_matching_loss"]


def clip_per_particle(
    v: torch.Tensor, max_norm: float | None, particle_shape: tuple[int, int] | None
) -> torch.Tensor:
    """Scale rows of ``v`` so no particle's vector is longer than ``max_norm``.

    Args:
        v: ``(batch, *event_shape)``.
        max_norm: Largest allowed norm ``M``; ``None`` disables clipping.
        particle_shape: ``(N, d)`` to clip per particle, ``None`` to clip per sample.

    Returns:
        Clipped tensor like ``v``.
    """
    if max_norm is None:
        return v
    if particle_shape:
        rows = v.reshape(v.shape[0], *particle_shape)
    else:
        rows = v.reshape(v.shape[0], 1, -1)
    norm = rows.norm(dim=-1, keepdim=True)
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return (rows * scale).reshape(v.shape)


def energy_gradient_term(
    energy: Energy, space: StateSpace, x1: torch.Tensor, max_grad_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the energy once: ``(tangent(clip(∇E(x1)/τ)), E(x1))``.

    The energy part of every terminal adjoint (Adjoint Sampling adds the base score, ASBS the
    corrector). Shapes: ``(batch, *event_shape)`` and ``(batch,)``.
    """
    e, grad = energy.energy_and_grad(x1)
    grad = clip_per_particle(grad / energy.temperature, max_grad_norm, space.particle_shape)
    return space.tangent(grad), e


def terminal_adjoint(
    energy: Energy,
    space: StateSpace,
    schedule: NoiseSchedule,
    x1: torch.Tensor,
    max_grad_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the energy once and return ``(a(x1), E(x1))``.

    Args:
        energy: The target energy (one evaluation per row of ``x1`` is counted).
        space: State space (tangent projection, base score).
        schedule: Base schedule (``h(1)²``).
        x1: Terminal samples ``(batch, *event_shape)``.
        max_grad_norm: Per-particle clipping threshold for ``∇E/τ``.

    Returns:
        ``a`` of shape ``(batch, *event_shape)`` and raw energies ``(batch,)``. Rows where the
        energy or its gradient is not finite have non-finite entries; callers decide.
    """
    g, e = energy_gradient_term(energy, space, x1, max_grad_norm)
    return g + space.base_score(x1, schedule), e


def adjoint_matching_loss(
    model_out: torch.Tensor, adjoint: torch.Tensor
) -> torch.Tensor:
    """``mean_{batch, coords} (u_θ(t, x_t) + a(x_1))²``: regression of ``u_θ`` onto ``-a``.

    Args:
        model_out: Tangent-projected network output, ``(batch, *event_shape)``.
        adjoint: Terminal adjoints ``a(x_1)``, same shape.

    Returns:
        Scalar loss.
    """
    return (model_out + adjoint).pow(2).mean()
