"""Importance resampling with path weights (adjoint_core.evaluation.importance)."""

import math

import pytest
import torch

from adjoint_core import MLP, AdjointSampler, EuclideanSpace, GeometricSchedule
from adjoint_core.evaluation.importance import importance_resample, systematic_resample
from adjoint_core.problem.gaussian import gaussian


def test_systematic_resample_counts_are_floor_or_ceil():
    w = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    for seed in range(20):
        idx = systematic_resample(w.log(), 8, torch.Generator().manual_seed(seed))
        counts = torch.bincount(idx, minlength=5)
        assert counts.tolist() == [4, 2, 1, 1, 0]
    w = torch.tensor([0.3, 0.7])
    for seed in range(20):
        idx = systematic_resample(w.log(), 10, torch.Generator().manual_seed(seed))
        counts = torch.bincount(idx, minlength=2)
        assert counts.tolist() == [3, 7]


def test_systematic_resample_ignores_nan_and_rejects_all_zero():
    lw = torch.tensor([float("nan"), 0.0, -math.inf, float("inf")])
    idx = systematic_resample(lw, 5, torch.Generator().manual_seed(0))
    assert set(idx.tolist()) == {1}
    with pytest.raises(ValueError, match="every weight is zero"):
        systematic_resample(torch.full((3,), -math.inf), 2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        systematic_resample(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="1-D"):
        systematic_resample(torch.zeros(2, 2), 1)


def test_resampling_the_base_process_recovers_a_gaussian_target():
    """Untrained sampler = base process N(0, h1² I): its path weights are exactly p/p_base."""
    energy = gaussian(mean=[1.0, -0.5], cov=[[0.5, 0.2], [0.2, 0.4]])
    torch.manual_seed(0)
    sampler = AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(0.01, 2.0),
                             MLP(2, hidden=16, n_layers=1), settings=dict(n_sde_steps=20))
    gen = torch.Generator().manual_seed(1)
    n_before = energy.n_evaluations
    res = importance_resample(sampler, 3000, oversample=10, generator=gen)
    assert energy.n_evaluations - n_before == 30_000 == res.n_drawn
    x = res.x.double()
    mu, cov = energy.moments()
    assert torch.allclose(x.mean(0), mu, atol=0.08), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.08), (torch.cov(x.T), cov)
    # Exact IS of N(μ, Σ) from N(0, 4 I): the ESS is well below 1, above 1 %.
    assert 0.01 < res.ess < 0.5
    assert 0 < res.n_unique <= 3000
    assert res.n_effective == pytest.approx(res.ess * 30_000)
    # ess·M > n/2 here, so no warning; demanding more effective samples than that warns.
    assert res.few_effective_warning() is None
    assert res.n_effective < 30_000
    text = res.few_effective_warning(fraction=10.0)
    assert text is not None and "effective samples" in text and "3000 resampled" in text
    # Plain samples are the base process, far from the target.
    plain = sampler.sample(3000, generator=gen).double()
    assert (plain.mean(0) - mu).abs().max() > 0.4


def test_importance_resample_rejects_bad_oversample():
    energy = gaussian(mean=[0.0], std=[1.0])
    sampler = AdjointSampler(energy, EuclideanSpace(dim=1), GeometricSchedule(0.01, 2.0), MLP(1),
                             settings=dict(n_sde_steps=5))
    with pytest.raises(ValueError, match="oversample must be an integer >= 1"):
        importance_resample(sampler, 10, oversample=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        importance_resample(sampler, 0)
