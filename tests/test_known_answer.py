"""The whole loop on Gaussian targets whose answer is known exactly.

Tolerances (stated): sample mean within 0.1 of the exact mean in every coordinate and every
covariance entry within 0.15 (absolute) of the exact covariance, from 6,000 samples.
"""

import pytest
import torch

from adjoint_core import MLP, AdjointSampler, EuclideanSpace, GeometricSchedule, ReplayBuffer
from adjoint_core.gaussian import gaussian

SETTINGS = dict(n_epochs=60, samples_per_epoch=256, grad_steps_per_epoch=100,
                train_batch_size=256, n_sde_steps=60, lr=2e-3, max_grad_norm=None)


def _train_and_sample(energy, space, seed=0):
    torch.manual_seed(seed)
    model = MLP(energy.mean.numel(), hidden=64, n_layers=2)
    sampler = AdjointSampler(energy, space, GeometricSchedule(0.01, 2.0), model,
                             ReplayBuffer(4096), settings=SETTINGS, seed=seed)
    sampler.fit()
    x = sampler.sample(6000, n_steps=100).reshape(6000, -1).double()
    return sampler, x


def test_anisotropic_correlated_gaussian_2d():
    energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]])
    sampler, x = _train_and_sample(energy, EuclideanSpace(dim=2))
    mu, cov = energy.moments()
    assert torch.allclose(x.mean(0), mu, atol=0.1), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), (torch.cov(x.T), cov)
    c = sampler.counters
    assert c["energy_evals"] == SETTINGS["n_epochs"] * SETTINGS["samples_per_epoch"]
    assert c["grad_steps"] == SETTINGS["n_epochs"] * SETTINGS["grad_steps_per_epoch"]
    assert energy.n_evaluations == c["energy_evals"]


def test_mean_free_particle_gaussian():
    """3 particles in 2-D, per-axis std (0.7, 1.3), off-centre mean, conditioned on COM = 0."""
    energy = gaussian(n_particles=3, spatial_dim=2, std=[0.7, 1.3],
                      mean=[0.5, 0.0, -0.5, 1.0, 0.0, -1.0])
    space = EuclideanSpace(3, 2, mean_free=True)
    _, x = _train_and_sample(energy, space, seed=1)
    mu, cov = energy.moments(mean_free_particles=(3, 2))
    assert x.reshape(-1, 3, 2).mean(1).abs().max() < 1e-5
    assert torch.allclose(x.mean(0), mu, atol=0.1), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), (torch.cov(x.T), cov)


def test_untrained_sampler_is_the_base_process():
    energy = gaussian(mean=[3.0, 3.0], std=[0.3, 0.3])
    space = EuclideanSpace(dim=2)
    sched = GeometricSchedule(0.01, 2.0)
    sampler = AdjointSampler(energy, space, sched, MLP(2), settings=dict(n_sde_steps=50))
    x = sampler.sample(20_000).double()
    assert x.mean(0).abs().max() < 0.05
    assert float(x.var(0).mean()) == pytest.approx(sched.h1_squared, rel=0.05)


def test_seed_makes_run_reproducible():
    energy = gaussian(mean=[1.0, 0.0], std=[1.0, 0.5])
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        s = AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(0.01, 2.0),
                           MLP(2, hidden=16, n_layers=1), ReplayBuffer(512),
                           settings=dict(n_epochs=2, samples_per_epoch=64, grad_steps_per_epoch=5,
                                         train_batch_size=32, n_sde_steps=10), seed=11)
        s.fit()
        outs.append(torch.cat([p.detach().flatten() for p in s.model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_shape_mismatch_is_reported():
    energy = gaussian(dim=3)
    with pytest.raises(ValueError, match="event shape"):
        AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(), MLP(2))
    with pytest.raises(ValueError, match="MLP"):
        AdjointSampler(gaussian(dim=2), EuclideanSpace(dim=2), GeometricSchedule(), MLP(3))
