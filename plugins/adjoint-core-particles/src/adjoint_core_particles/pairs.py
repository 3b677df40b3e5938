"""Unordered particle pairs ``i < j`` and their squared distances, vectorised over a batch."""

from __future__ import annotations

import torch

__all__ = ["PairIndex", "pair_squared_distances"]


class PairIndex:
    """The ``P = N(N-1)/2`` unordered pairs ``i < j`` of ``N`` particles, cached per device.

    Args:
        n_particles: Number of particles ``N``.

    Attributes:
        n_particles: ``N``.
        n_pairs: ``P = N(N-1)/2``.
    """

    def __init__(self, n_particles: int) -> None:
        self.n_particles = int(n_particles)
        ij = torch.triu_indices(self.n_particles, self.n_particles, offset=1)
        self.n_pairs = int(ij.shape[1])
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {
            ij.device: (ij[0], ij[1])
        }

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors ``(i, j)``, each of shape ``(P,)``, on ``device``."""
        device = torch.device(device)
        if device not in self._cache:
            i, j = next(iter(self._cache.values()))
            self._cache[device] = (i.to(device), j.to(device))
        return self._cache[device]


def pair_squared_distances(x: torch.Tensor, pairs: PairIndex) -> torch.Tensor:
    """Squared distances ``|x_i - x_j|²`` of all pairs ``i < j``.

    Args:
        x: Positions, shape ``(batch, N, spatial_dim)``.
        pairs: The pair index of ``N`` particles.

    Returns:
        Shape ``(batch, P)`` with ``P = N(N-1)/2``, pairs in row-major upper-triangle order
        ``(0,1), (0,2), ..., (N-2,N-1)``.
    """
    i, j = pairs.on(x.device)
    r = x[:, i, :] - x[:, j, :]
    return r.pow(2).sum(dim=-1)
