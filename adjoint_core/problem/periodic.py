r"""Models and observables for periodic boxes (:class:`~adjoint_core.problem.spaces.PeriodicSpace`).

* :class:`PeriodicMLP` (registry name ``mlp_periodic``): a fully connected control network
  that sees each coordinate only through ``sin(2πnx/L), cos(2πnx/L)``
  (:func:`adjoint_core.problem.torus.periodic_features`), so its output is smooth and exactly
  periodic in every coordinate.
* :func:`radial_distribution`: the radial distribution function ``g(r)`` of particles in a
  periodic box from minimum-image distances (:func:`pair_distances`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adjoint_core.problem.models import FourierTimeEmbedding, Model
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace
from adjoint_core.problem.torus import minimum_image, periodic_features

__all__ = ["PeriodicMLP", "mlp_periodic", "pair_distances", "radial_distribution"]


class PeriodicMLP(Model):
    """MLP control ``u_θ(t, x) = MLP([sin/cos features of x, emb(t)])`` on a periodic box.

    SiLU activations; the last layer is zero-initialised so the untrained sampler is the base
    process (as for :class:`~adjoint_core.MLP`). The input is ``2·H·D`` periodic features of
    the ``D`` flattened coordinates (``H`` harmonics) plus a Fourier time embedding.

    Args:
        box: Period of each flattened coordinate: shape ``(D,)``, or ``(d,)`` for particles
            (repeated over the ``N`` particles), or a float.
        dim: Flat state dimension ``D``.
        hidden: Width of hidden layers.
        n_layers: Number of hidden layers.
        time_dim: Width of the Fourier time embedding.
        n_harmonics: Harmonics ``H`` of the periodic features.
    """

    def __init__(self, box: float | list[float] | torch.Tensor, dim: int, hidden: int = 128,
                 n_layers: int = 3, time_dim: int = 64, n_harmonics: int = 1) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or n_layers < 1 or n_harmonics < 1:
            raise ValueError(f"PeriodicMLP needs dim, hidden, n_layers, n_harmonics >= 1, got "
                             f"{dim}, {hidden}, {n_layers}, {n_harmonics}")
        b = torch.as_tensor(box, dtype=torch.float64).reshape(-1)
        if dim % b.numel():
            raise ValueError(f"box with {b.numel()} lengths does not tile {dim} coordinates")
        if not (b > 0).all():
            raise ValueError(f"box lengths must be > 0, got {b.tolist()}")
        self.dim = int(dim)
        self.n_harmonics = int(n_harmonics)
        self.register_buffer("box", b.repeat(dim // b.numel()).float())
        self.time = FourierTimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        width = 2 * n_harmonics * dim + time_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def check_space(self, space: StateSpace) -> None:
        """Require a :class:`PeriodicSpace` with ``D`` coordinates and the same box.

        Raises:
            ValueError: Not periodic, wrong size, or a different box.
        """
        if not isinstance(space, PeriodicSpace):
            raise ValueError(f"PeriodicMLP needs a PeriodicSpace, got {space}; use 'mlp' for "
                             f"non-periodic states")
        if math.prod(space.event_shape) != self.dim:
            raise ValueError(f"PeriodicMLP(dim={self.dim}) does not fit {space} with "
                             f"{math.prod(space.event_shape)} coordinates")
        want = torch.tensor(space.box, dtype=torch.float64).repeat(
            self.dim // len(space.box))
        if not torch.allclose(self.box.double().cpu(), want, rtol=1e-6, atol=0):
            raise ValueError(f"PeriodicMLP was built for box {self.box.tolist()[:len(space.box)]}"
                             f" but the space has box {list(space.box)}")

    def forward(self, t, x, context=None):  # noqa: D102
        flat = x.reshape(x.shape[0], -1)
        feats = periodic_features(flat, self.box.to(flat.dtype), self.n_harmonics)
        out = self.net(torch.cat([feats, self.time(t.to(flat.dtype))], dim=-1))
        return out.reshape(x.shape)


def mlp_periodic(space: StateSpace, hidden: int = 128, n_layers: int = 3, time_dim: int = 64,
                 n_harmonics: int = 1) -> PeriodicMLP:
    """Registry factory ``mlp_periodic``: a :class:`PeriodicMLP` sized from a periodic space.

    Raises:
        ValueError: ``space`` is not a :class:`PeriodicSpace`.
    """
    if not isinstance(space, PeriodicSpace):
        raise ValueError(f"the 'mlp_periodic' model needs a periodic space, got {space}")
    model = PeriodicMLP(list(space.box), math.prod(space.event_shape), hidden=hidden,
                        n_layers=n_layers, time_dim=time_dim, n_harmonics=n_harmonics)
    model.check_space(space)
    return model


def pair_distances(x: torch.Tensor, box: float | list[float] | tuple[float, ...] | torch.Tensor
                   | None = None) -> torch.Tensor:
    """Distances of all unordered particle pairs, minimum-image when ``box`` is given.

    Args:
        x: Configurations ``(M, N, d)``.
        box: Box lengths (a float or ``(d,)``) of a periodic box; ``None``: plain distances.

    Returns:
        ``(M, N(N−1)/2)`` distances, in the dtype of ``x``.
    """
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1, device=x.device)
    diff = x[:, i] - x[:, j]
    if box is not None:
        diff = minimum_image(diff, torch.as_tensor(box, dtype=x.dtype, device=x.device))
    return diff.norm(dim=-1)


def radial_distribution(
    x: torch.Tensor, box: float | list[float] | torch.Tensor, n_bins: int = 50,
    r_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Radial distribution function ``g(r)`` of particles in a periodic box.

    Minimum-image distances of all unordered pairs of every configuration are histogrammed on
    ``n_bins`` equal bins of ``[0, r_max]`` and normalised by the ideal-gas count

    .. math:: g(r_b) = \frac{\text{pairs in bin } b}{M \cdot \frac{N(N-1)}{2} \cdot
              \frac{V_d (r_{b+1}^d - r_b^d)}{V}},

    with ``M`` configurations, ``V`` the box volume and ``V_d r^d`` the volume of a
    ``d``-ball, so ``g ≡ 1`` for uniformly distributed particles. Valid for
    ``r_max ≤ L_min / 2`` (beyond, spherical shells leave the minimum-image cell).

    Args:
        x: Configurations ``(M, N, d)``.
        box: Box lengths: float or ``(d,)``.
        n_bins: Number of bins.
        r_max: Largest distance (default and maximum: ``L_min / 2``).

    Returns:
        ``(r, g)``: bin centres and ``g(r)``, each ``(n_bins,)`` float64.

    Raises:
        ValueError: Wrong shape, or ``r_max > L_min / 2``.
    """
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"expected configurations (M, N >= 2, d), got {tuple(x.shape)}")
    m, n, d = x.shape
    x = x.detach().double()
    b = torch.as_tensor(box, dtype=torch.float64).reshape(-1).expand(d)
    half = float(b.min()) / 2
    if r_max is None:
        r_max = half
    if not 0 < r_max <= half * (1 + 1e-9):
        raise ValueError(f"r_max must be in (0, L_min/2 = {half}], got {r_max}")
    counts = torch.zeros(n_bins, dtype=torch.float64)
    for start in range(0, m, 4096):  # bounded memory for long MCMC runs
        r = pair_distances(x[start:start + 4096], b).reshape(-1)
        counts += torch.histc(r, bins=n_bins, min=0.0, max=float(r_max)) if r.numel() else 0
    # histc counts values equal to r_max in the last bin and drops larger ones: the same as
    # half-open bins up to a measure-zero set.
    edges = torch.linspace(0.0, float(r_max), n_bins + 1, dtype=torch.float64)
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    shell = ball * (edges[1:] ** d - edges[:-1] ** d)
    volume = float(b.prod())
    ideal = m * (n * (n - 1) / 2) * shell / volume
    return 0.5 * (edges[1:] + edges[:-1]), counts / ideal
