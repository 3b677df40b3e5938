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

from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace

__all__ = ["Model", "MLP", "FourierTimeEmbedding", "PreconditionedControl",
           "control_loss_weight", "bridge_loss_weight"]


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


class PreconditionedControl(Model):
    r"""Time-dependent output scaling of a control network (EDM-style preconditioning).

    The control of the base bridge pinned at ``x_1`` is ``(x_1 − x_t)/r(t)`` with
    ``r(t) = h(1)² − h(t)²``; the optimal control ``(E[x_1 | x_t] − x_t)/r(t)`` therefore grows
    like ``1/\sqrt{r}`` towards ``t = 1`` (thousands for ``σ_min = 10⁻³``), a range a network
    with outputs of order one cannot span. This wrapper lets the inner network ``F_θ`` predict
    the normalised displacement and derives the control

    .. math:: u_θ(t, x) = \frac{c(t)}{r(t)}\,F_θ(t, x), \qquad
              c(t)^2 = \frac{r\,h(1)^2\,s^2}{r\,h(1)^2 + s^2\,h(t)^2},

    where ``c(t)`` is EDM's ``c_out = σ s/\sqrt{σ² + s²}`` (Karras et al., "Elucidating the
    design space of diffusion-based generative models", NeurIPS 2022) with the noise level
    ``σ(t)² = r\,h(1)²/h(t)²`` of ``x_t/λ(t)`` about ``x_1`` on the base bridge, and ``s`` the
    data scale: ``c`` is the posterior standard deviation of ``x_1`` given ``x_t`` for data of
    scale ``s`` (``c = s`` at ``t = 0``, ``c ≈ \sqrt{r}`` as ``t → 1``). The regression targets
    in ``F``-space are then of order one at every time, provided the objectives weight their
    control-space losses so that the loss is uniform in ``F``:
    :func:`bridge_loss_weight` ``= 1/c²`` for the bridge-matching warm-up (whose residual is
    ``r·u − (x_1 − x_t) = c·(F − (x_1 − x_t)/c)``) and :func:`control_loss_weight`
    ``= (r/c)²`` for adjoint matching (residual ``u + a = (c/r)(F + a·r/c)``). Both objectives
    (:class:`~adjoint_core.training.objectives.bridge.BridgeMatching`,
    :class:`~adjoint_core.training.objectives.adjoint_sampling.AdjointSampling`) apply them
    when the trained model is a ``PreconditionedControl``; other objectives regress the control
    unweighted. Without this wrapper nothing changes.

    ``r`` is floored at ``min_remaining · h(1)²`` so that ``t = 1`` stays finite.

    ``noise_floor`` (same units, default 0) floors ``c``: ``c(t) ← max(c(t), noise_floor)`` in
    the output scale and in both loss weights. Below the floor the inner network predicts the
    displacement ``E[x_1 | x_t] − x_t`` in units of the floor, a function of the geometry
    that no longer depends on ``t`` (for molecules: "move the atoms towards valid bond
    lengths"), instead of a unit-variance noise estimate that would have to grow like ``1/c``
    through the time embedding. ``noise_floor = data_scale`` makes ``c`` constant: the network
    then predicts the displacement at every time with a uniform loss.

    Args:
        net: The inner network ``F_θ(t, x[, context])``.
        schedule: The base process's noise schedule (``h(t)²``).
        data_scale: ``s > 0``, in the units of the states (Å for molecules).
        min_remaining: Floor of ``r(t)/h(1)²``, ``0 < min_remaining < 1``.
        noise_floor: ``≥ 0``, the floor of ``c(t)`` (same units as the states).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, data_scale: float = 0.5,
                 min_remaining: float = 1e-9, noise_floor: float = 0.0) -> None:
        super().__init__()
        if not data_scale > 0:
            raise ValueError(f"data_scale must be > 0, got {data_scale}")
        if not 0 < min_remaining < 1:
            raise ValueError(f"min_remaining must be in (0, 1), got {min_remaining}")
        if not noise_floor >= 0:
            raise ValueError(f"noise_floor must be >= 0, got {noise_floor}")
        self.net = net
        self.schedule = schedule
        self.data_scale = float(data_scale)
        self.min_remaining = float(min_remaining)
        self.noise_floor = float(noise_floor)

    def check_space(self, space: StateSpace) -> None:
        """The inner network's check."""
        check = getattr(self.net, "check_space", None)
        if check is not None:
            check(space)

    def scales(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c(t), r(t))`` in float64, shape of ``t`` (``r`` floored, see the class)."""
        t = t.detach().to(torch.float64)
        h1 = self.schedule.h1_squared
        ht = self.schedule.h2(t)
        rem = (h1 - ht).clamp_min(self.min_remaining * h1)
        s2 = self.data_scale ** 2
        c = (rem * h1 * s2 / (rem * h1 + s2 * ht)).sqrt().clamp_min(self.noise_floor)
        return c, rem

    def output_scale(self, t: torch.Tensor) -> torch.Tensor:
        """``c(t)/r(t)``, the factor from ``F_θ`` to the control (float64, shape of ``t``)."""
        c, rem = self.scales(t)
        return c / rem

    def forward(self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
                ) -> torch.Tensor:
        """``u_θ(t, x) = c(t)/r(t) · F_θ(t, x[, context])``."""
        out = self.net(t, x) if context is None else self.net(t, x, context)
        scale = self.output_scale(t.reshape(-1)).to(out.dtype)
        if scale.numel() == 1:
            scale = scale.expand(out.shape[0])
        return out * scale.view(-1, *([1] * (out.ndim - 1)))


def _preconditioned(model: nn.Module) -> PreconditionedControl | None:
    """The :class:`PreconditionedControl` inside ``model`` (DDP / averaged wrappers), if any."""
    for _ in range(3):
        if isinstance(model, PreconditionedControl):
            return model
        model = getattr(model, "module", None)
        if model is None:
            return None
    return None


def control_loss_weight(model: nn.Module, t: torch.Tensor) -> torch.Tensor | None:
    """Per-row weight ``(r/c)²`` of a control-space regression, or ``None``.

    ``None`` (no weighting) unless ``model`` is a :class:`PreconditionedControl`.

    Args:
        model: The trained network (possibly wrapped by DDP).
        t: Regression times, shape ``(batch,)``.

    Returns:
        Weights of shape ``(batch,)`` in float64, or ``None``.
    """
    pre = _preconditioned(model)
    if pre is None:
        return None
    c, rem = pre.scales(t)
    return (rem / c).square()


def bridge_loss_weight(model: nn.Module, t: torch.Tensor) -> torch.Tensor | None:
    """Per-row weight ``1/c²`` of the bridge-matching loss, or ``None``.

    Same arguments and ``None`` rule as :func:`control_loss_weight`.
    """
    pre = _preconditioned(model)
    if pre is None:
        return None
    c, _ = pre.scales(t)
    return c.square().reciprocal()
