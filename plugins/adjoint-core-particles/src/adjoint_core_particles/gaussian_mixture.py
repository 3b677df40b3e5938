r"""Equal-weight isotropic Gaussian mixture (GMM-40 of the iDEM paper) with exact sampling."""

from __future__ import annotations

import math

import torch

from adjoint_core import Energy

from ._validation import check_int, check_positive

__all__ = ["GaussianMixtureEnergy", "SOFTPLUS_ONE"]

#: ``softplus(1) = log(1 + e)``, the per-dimension standard deviation of GMM-40's modes.
SOFTPLUS_ONE = math.log1p(math.e)


class GaussianMixtureEnergy(Energy):
    r"""Negative log-density of an equal-weight mixture of isotropic Gaussians.

    .. math::

        E(x) = -\log p(x), \qquad
        p(x) = \frac{1}{K} \sum_{k=1}^{K} \mathcal N\big(x;\ \mu_k,\ \sigma^2 I_D\big),

    computed with ``logsumexp`` (normalised, so ``exp(-E)`` integrates to 1). The means are
    ``μ = (U - 0.5) · 2 · loc_scaling`` with ``U = torch.rand(K, D)`` drawn in float32 from a
    CPU :class:`torch.Generator` seeded with ``seed``. The defaults reproduce GMM-40 of the
    iDEM paper (fab-torch ``GMM(dim=2, n_mixes=40, loc_scaling=40)`` after
    ``torch.manual_seed(0)``): ``K = 40`` modes in ``D = 2``, means in ``[-40, 40]²``
    (the first two are ``[-0.299, 21.458]`` and ``[-32.922, -29.438]``),
    ``σ = softplus(1) = 1.3132616``, ``τ = 1``. Unlike fab-torch, log-densities below ``-1e4``
    are not replaced by ``-∞``.

    States have shape ``(batch, dim)``; :meth:`energy` returns shape ``(batch,)``.

    Args:
        n_modes: Number of components ``K >= 1``.
        dim: Dimension ``D >= 1``.
        loc_scaling: Half-width of the box the means are drawn in (``> 0``).
        std: Standard deviation ``σ > 0`` of every component, per dimension.
        seed: Seed of the CPU generator that draws the means.
        temperature: ``τ`` of the target ``exp(-E/τ)``; exact samples (:meth:`sample`)
            exist only for ``τ = 1``.

    Raises:
        ValueError: If a parameter is out of range (the message names it and its value).
    """

    def __init__(
        self,
        n_modes: int = 40,
        dim: int = 2,
        loc_scaling: float = 40.0,
        std: float = SOFTPLUS_ONE,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> None:
        self.n_modes = check_int("n_modes", n_modes, 1)
        self.dim = check_int("dim", dim, 1)
        self.loc_scaling = check_positive("loc_scaling", loc_scaling)
        self.std = check_positive("std", std)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        temperature = check_positive("temperature", temperature)
        super().__init__((self.dim,), temperature)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        u = torch.rand(self.n_modes, self.dim, generator=gen, dtype=torch.float32)
        self._means = (u - 0.5) * (2.0 * self.loc_scaling)
        self._log_norm = (
            math.log(self.n_modes)
            + self.dim * math.log(self.std)
            + 0.5 * self.dim * math.log(2.0 * math.pi)
        )

    @property
    def means(self) -> torch.Tensor:
        """Component means, shape ``(n_modes, dim)``, float32 on the CPU (a copy)."""
        return self._means.clone()

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        mu = self._means.to(device=x.device, dtype=x.dtype)
        sq = (x.unsqueeze(1) - mu.unsqueeze(0)).pow(2).sum(dim=-1)  # (batch, K)
        return self._log_norm - torch.logsumexp(sq * (-0.5 / self.std**2), dim=-1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Exact i.i.d. samples of the mixture (the GMM-40 reference samples).

        A component is drawn uniformly, then ``x = μ_k + σ ε`` with ``ε ~ N(0, I)``.

        Args:
            n: Number of samples ``>= 0``.
            generator: CPU generator for reproducibility (the global one if ``None``).
            dtype: Floating dtype of the result.

        Returns:
            Samples of shape ``(n, dim)`` on the CPU.

        Raises:
            ValueError: If ``n < 0`` or the temperature is not 1 (the tempered density
                ``p^(1/τ)`` is not a Gaussian mixture, so there is no exact sampler here).
        """
        n = check_int("n", n, 0)
        if self.temperature != 1.0:
            raise ValueError(
                "exact samples exist only at temperature 1 (the mixture itself); "
                f"this energy has temperature={self.temperature}"
            )
        k = torch.randint(self.n_modes, (n,), generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self._means[k].to(torch.float64) + self.std * eps).to(dtype)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of the states ``x`` whose nearest mean is each mode.

        Each state is assigned to its nearest component mean (for well-separated modes of equal
        width, the component that most likely produced it).

        Args:
            x: States, shape ``(n, dim)`` with ``n >= 1``.

        Returns:
            Float64 tensor of shape ``(n_modes,)`` on the CPU, summing to 1.

        Raises:
            ValueError: If ``x`` is not ``(n, dim)`` with ``n >= 1``.
        """
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] < 1:
            raise ValueError(f"mode_weights: x must have shape (n >= 1, {self.dim}), got "
                             f"{tuple(x.shape)}")
        nearest = torch.cdist(x.detach().cpu().double(), self._means.double()).argmin(dim=1)
        return torch.bincount(nearest, minlength=self.n_modes).double() / x.shape[0]

    def mode_coverage(self, x: torch.Tensor) -> dict[str, float]:
        """How evenly the states ``x`` populate the (equal-weight) modes.

        Args:
            x: States, shape ``(n, dim)``.

        Returns:
            ``modes_visited``: number of modes that are the nearest mode of at least one state;
            ``mode_weight_tv``: total-variation distance ``½ Σ_k |w_k − 1/K|`` between the
            empirical mode weights (:meth:`mode_weights`) and the mixture's uniform weights, in
            ``[0, 1 − 1/K]``. Exact samples score ``O(√(K/n))`` (about 0.06 for ``K = 40``,
            ``n = 2000``), not 0.
        """
        w = self.mode_weights(x)
        return {"modes_visited": float((w > 0).sum()),
                "mode_weight_tv": float(0.5 * (w - 1.0 / self.n_modes).abs().sum())}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_modes={self.n_modes}, dim={self.dim}, "
            f"loc_scaling={self.loc_scaling}, std={self.std}, seed={self.seed}, "
            f"temperature={self.temperature})"
        )
