r"""The learned control network :class:`Model` and a plain :class:`MLP`.

Convention (fixed for the whole library): the network output ``u_θ(t, x)`` enters the
controlled SDE as

.. math:: dX_t = g(t)^2\,u_\theta(t, X_t)\,dt + g(t)\,dW_t ,

and is regressed onto ``-∇Φ(x_1)`` with ``Φ(x) = E(x)/τ + log p^base_1(x)`` (so ``u_θ`` is a
score-like quantity and needs no rescaling by ``g``). The zero network is the base process.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from adjoint_core.problem.spaces import PeriodicSpace, StateSpace

__all__ = ["Model", "MLP", "FourierTimeEmbedding"]


class Model(nn.Module, ABC):
    """Abstract control network ``u_θ: (t, x, context) -> tensor like x``.

    Subclasses implement :meth:`forward`. A model declares what it needs of the state space
    through :meth:`check_space`, called once when the sampler is built so a mismatch fails
    with a clear message instead of a shape error deep in training.
    """

    @abstractmethod
    def forward(
        self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
    ) -> torch.Tensor:
        """Control ``u_θ(t, x)``.

        Args:
            t: Times, shape ``(batch,)``.
            x: States, shape ``(batch, *event_shape)``.
            context: Optional conditioning (atom types, graphs) for amortised models.

        Returns:
            Tensor with the shape of ``x``.
        """

    def check_space(self, space: StateSpace) -> None:
        """Raise ``ValueError`` if this model cannot act on ``space`` (default: accept)."""


class FourierTimeEmbedding(nn.Module):
    """Sinusoidal embedding of ``t ∈ [0, 1]``: ``(batch,) -> (batch, dim)``.

    Frequencies are log-spaced in ``[1, max_freq]``.

    Args:
        dim: Even embedding width.
        max_freq: Largest angular frequency.
    """

    def __init__(self, dim: int = 64, max_freq: float = 100.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        arg = t.reshape(-1, 1) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class MLP(Model):
    """Fully connected control network for flat (non-particle) targets.

    ``u_θ(t, x) = MLP([x / s, emb(t)])`` with SiLU activations; the last layer is
    zero-initialised so the untrained sampler is exactly the base process. The input scale ``s``
    keeps the network's inputs of order one for targets spread over large coordinates (e.g.
    ``s = σ_max``; GMM-40 spans ``[-40, 40]²``).

    Args:
        dim: Flat state dimension ``D`` (``prod(event_shape)``).
        hidden: Width of hidden layers.
        n_layers: Number of hidden layers.
        time_dim: Width of the Fourier time embedding.
        input_scale: ``s > 0``, divides the state before the first layer.
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3, time_dim: int = 64,
                 input_scale: float = 1.0) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or n_layers < 1:
            raise ValueError(f"MLP needs dim, hidden, n_layers >= 1, got {dim}, {hidden}, "
                             f"{n_layers}")
        if not input_scale > 0:
            raise ValueError(f"MLP input_scale must be > 0, got {input_scale}")
        self.input_scale = float(input_scale)
        self.dim = int(dim)
        self.time = FourierTimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def check_space(self, space: StateSpace) -> None:  # noqa: D102
        if isinstance(space, PeriodicSpace):
            raise ValueError(
                f"the plain MLP sees raw coordinates, which jump by a box length when a state "
                f"wraps, so it cannot act on the periodic space {space}: use 'mlp_periodic' "
                f"(sin/cos features), or 'egnn' with the space's box for particles"
            )
        if math.prod(space.event_shape) != self.dim:
            raise ValueError(
                f"MLP(dim={self.dim}) does not fit state space {space} with "
                f"{math.prod(space.event_shape)} coordinates"
            )

    def forward(self, t, x, context=None):  # noqa: D102
        flat = x.reshape(x.shape[0], -1)
        out = self.net(torch.cat([flat / self.input_scale, self.time(t.to(flat.dtype))], dim=-1))
        return out.reshape(x.shape)
