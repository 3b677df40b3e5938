r"""Importance resampling of sampler output with its path weights.

A trained sampler's terminal law ``p^u`` is never exactly the target ``p ∝ exp(-E/τ)``. The
path weights of :mod:`adjoint_core.training.sde` (Girsanov running cost plus the terminal cost
``Φ(x_1) = E(x_1)/τ + log p^{base}_1(x_1)``) are importance weights of whole paths with respect
to the optimal path measure, whose terminal marginal is ``p``. Sampling-importance-resampling
(SIR) turns them into samples:

1. simulate ``M = k·n`` paths and evaluate the energy of their ends (``M`` energy evaluations);
2. normalise ``w_i ∝ exp(log w_i)`` (the unknown constant cancels);
3. draw ``n`` indices by **systematic resampling**: one uniform ``U ~ U[0, 1)`` and the points
   ``(U + j)/n``, ``j = 0..n-1``, located in the cumulative weights. Each path ``i`` is then
   kept ``⌊n w_i⌋`` or ``⌈n w_i⌉`` times (lower variance than multinomial draws, unbiased counts).

The resampled set is consistent as ``M → ∞`` but not exact at finite ``M``: it repeats paths
(at most ``M·ESS`` distinct states carry the weight) and cannot create states the sampler never
visits. Report it next to the plain samples, with ``k`` and the normalised ESS, never instead
of them: the papers' benchmark numbers are plain samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from adjoint_core.evaluation.metrics import path_ess

if TYPE_CHECKING:  # pragma: no cover
    from adjoint_core.training.trainer import Trainer

__all__ = ["ResampledSamples", "systematic_resample", "importance_resample"]


@dataclass
class ResampledSamples:
    """Output of :func:`importance_resample`.

    Attributes:
        x: Resampled states ``(n, *event_shape)``.
        index: Index of each resampled state among the drawn paths, ``(n,)``.
        log_weights: Path log-weights of all drawn paths ``(M,)`` (non-finite: weight 0).
        ess: Normalised effective sample size of the ``M`` weights, in ``[1/M, 1]``.
        n_drawn: ``M``, the number of simulated paths (= energy evaluations spent).
        n_unique: Number of distinct paths among the ``n`` resampled states.
    """

    x: torch.Tensor
    index: torch.Tensor
    log_weights: torch.Tensor
    ess: float
    n_drawn: int
    n_unique: int

    @property
    def n_effective(self) -> float:
        """Effective number of independent samples behind the resampled set, ``ess · M``."""
        return self.ess * self.n_drawn

    def few_effective_warning(self, fraction: float = 0.5) -> str | None:
        """A warning if fewer than ``fraction · n`` effective samples stand behind the ``n``.

        Resampling then repeats a few heavy paths many times: the set looks like ``n`` samples
        but its statistics have the variance of ``n_effective`` ones.

        Returns:
            The warning text, or ``None`` when ``n_effective >= fraction · n``.
        """
        n = int(self.index.numel())
        if self.n_effective >= fraction * n:
            return None
        return (f"only ~{self.n_effective:.0f} effective samples (ESS {self.ess:.2g} of "
                f"{self.n_drawn} paths) stand behind the {n} resampled states ({self.n_unique} "
                f"distinct); statistics of this set are much noisier than {n} independent "
                f"samples would be: raise the oversampling factor or train longer")


def systematic_resample(
    log_weights: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of ``n`` draws by systematic resampling of normalised ``exp(log_weights)``.

    Args:
        log_weights: Unnormalised log-weights ``(M,)``; ``-inf`` and nan mean weight zero.
        n: Number of indices to draw (``>= 1``).
        generator: Random generator for the single uniform offset.

    Returns:
        Long tensor ``(n,)`` of indices in ``[0, M)``, sorted ascending.

    Raises:
        ValueError: ``n < 1``, ``log_weights`` is not 1-D and non-empty, or no weight is positive
            and finite.
    """
    if n < 1:
        raise ValueError(f"systematic_resample: n must be >= 1, got {n}")
    if log_weights.ndim != 1 or log_weights.numel() == 0:
        raise ValueError(f"systematic_resample: log_weights must be a non-empty 1-D tensor, got "
                         f"shape {tuple(log_weights.shape)}")
    lw = log_weights.detach().to("cpu", torch.float64)
    lw = torch.where(torch.isnan(lw) | torch.isposinf(lw), torch.full_like(lw, -torch.inf), lw)
    if not torch.isfinite(lw).any():
        raise ValueError("systematic_resample: every weight is zero or non-finite")
    w = torch.softmax(lw, dim=0)
    cdf = torch.cumsum(w, dim=0)
    cdf[-1] = 1.0  # guard against round-off below 1
    u = torch.rand((), generator=generator, dtype=torch.float64)
    points = (u + torch.arange(n, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, points, right=True).clamp_max(lw.numel() - 1)


def importance_resample(
    sampler: Trainer, n: int, oversample: int = 4,
    generator: torch.Generator | None = None, **sample_kw,
) -> ResampledSamples:
    """Simulate ``oversample·n`` paths and resample ``n`` states by their path weights.

    Costs ``oversample·n`` energy evaluations (counted on the sampler's energy).

    Args:
        sampler: A trained :class:`~adjoint_core.AdjointSampler`.
        n: Number of states returned.
        oversample: ``k >= 1``; ``M = k·n`` paths are simulated.
        generator: Random generator for simulation and resampling.
        **sample_kw: Passed to :meth:`Trainer.sample` (``n_steps``, ``batch_size``).

    Returns:
        A :class:`ResampledSamples`.

    Raises:
        ValueError: ``n < 1`` or ``oversample < 1``.
    """
    if n < 1:
        raise ValueError(f"importance_resample: n must be >= 1, got {n}")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"importance_resample: oversample must be an integer >= 1, got "
                         f"{oversample}")
    m = int(oversample) * n
    x, log_w = sampler.path_log_weights(m, generator=generator, **sample_kw)
    finite = log_w[torch.isfinite(log_w)]
    idx = systematic_resample(log_w, n, generator)
    idx = idx[torch.randperm(n, generator=generator)]  # sorted indices would order the output
    return ResampledSamples(
        x=x[idx.to(x.device)], index=idx, log_weights=log_w,
        ess=path_ess(finite) * finite.numel() / m if finite.numel() else 0.0,
        n_drawn=m, n_unique=int(idx.unique().numel()),
    )
