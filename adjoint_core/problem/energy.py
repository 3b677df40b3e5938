"""The :class:`Energy` interface: the target Boltzmann density ``p(x) ∝ exp(-E(x)/τ)``.

An energy is the only thing Adjoint Sampling knows about the target. The sampler calls
:meth:`Energy.energy_and_grad` exactly once per terminal sample ``x_1``; everything else
(many regression steps) reuses the stored gradient, so the energy is the expensive part the
library counts (:attr:`Energy.n_evaluations`).

Conventions fixed for the whole library:

* states have shape ``(batch, *event_shape)``; for particle systems
  ``event_shape = (n_particles, spatial_dim)``;
* :meth:`Energy.energy` returns the **raw** energy ``E(x)`` of shape ``(batch,)`` in the
  energy's own units; the temperature ``τ`` (:attr:`Energy.temperature`, same units) is
  applied by the sampler, which targets ``exp(-E(x)/τ)`` and uses ``∇E(x)/τ``;
* :meth:`Energy.grad` returns ``+∇E(x)`` (not forces) with the shape of ``x``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

__all__ = ["Energy", "external_energy"]


class Energy(ABC):
    """Abstract energy ``E: (batch, *event_shape) -> (batch,)``.

    Subclasses implement :meth:`_energy` (a differentiable torch function) and may override
    :meth:`_energy_and_grad` when an external code returns gradients directly (RDKit, xTB);
    the default gradient uses autograd.

    The public methods check the input shape, count evaluations and never build a graph the
    caller did not ask for.

    Args:
        event_shape: Shape of one state, e.g. ``(4, 2)`` for DW-4.
        temperature: ``τ`` of the Boltzmann density ``exp(-E/τ)``, in the energy's units.
    """

    def __init__(self, event_shape: tuple[int, ...], temperature: float = 1.0) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.temperature = float(temperature)
        self.n_evaluations = 0

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of a batch.

        Args:
            x: States, shape ``(batch, *event_shape)``.

        Returns:
            Energies, shape ``(batch,)``.
        """

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and its gradient (autograd by default).

        Args:
            x: States, shape ``(batch, *event_shape)``.

        Returns:
            ``(E, ∇E)`` with shapes ``(batch,)`` and ``(batch, *event_shape)``.
        """
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            e = self._energy(xr)
            (g,) = torch.autograd.grad(e.sum(), xr)
        return e.detach(), g.detach()

    # ------------------------------------------------------------------ public API
    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{type(self).__name__} expects states of shape (batch, "
                f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Raw energy ``E(x)``; counts ``batch`` evaluations.

        Args:
            x: States, shape ``(batch, *event_shape)``.

        Returns:
            Shape ``(batch,)``.
        """
        self._check(x)
        self.n_evaluations += x.shape[0]
        return self._energy(x)

    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and gradient ``(E(x), ∇E(x))``; counts ``batch`` evaluations.

        Args:
            x: States, shape ``(batch, *event_shape)``.

        Returns:
            ``(E, ∇E)`` with shapes ``(batch,)`` and ``(batch, *event_shape)``, detached.
        """
        self._check(x)
        self.n_evaluations += x.shape[0]
        return self._energy_and_grad(x)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient ``∇E(x)`` (not forces), shape ``(batch, *event_shape)``."""
        return self.energy_and_grad(x)[1]

    def log_prob_unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        """``-E(x)/τ``, shape ``(batch,)``."""
        return -self.energy(x) / self.temperature

    def __repr__(self) -> str:
        return f"{type(self).__name__}(event_shape={self.event_shape}, T={self.temperature})"


class _ExternalEnergy(torch.autograd.Function):
    """``E(x)`` computed outside autograd, with its precomputed ``∇E`` as the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn) -> torch.Tensor:  # noqa: D102
        e, g = fn(x.detach())
        ctx.save_for_backward(g.to(x.dtype))
        return e.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (g,) = ctx.saved_tensors
        return grad_out.reshape(-1, *([1] * (g.ndim - 1))) * g, None


def external_energy(
    x: torch.Tensor, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Differentiable energy from an external code that returns its own gradient.

    For energies computed outside torch (RDKit force fields, quantum-chemistry codes, other
    frameworks): ``fn`` is called once on ``x`` detached and returns ``(E, ∇E)``; the result
    is ``E`` and back-propagating through it multiplies the saved ``∇E`` by the incoming
    gradient, so ``torch.autograd.grad(E.sum(), x)`` returns ``∇E`` without a second call.

    Args:
        x: States ``(batch, *event_shape)``.
        fn: ``x -> (E, ∇E)`` with shapes ``(batch,)`` and ``(batch, *event_shape)``.

    Returns:
        ``E`` of shape ``(batch,)`` in ``x``'s dtype, attached to ``x``'s graph.
    """
    return _ExternalEnergy.apply(x, fn)
