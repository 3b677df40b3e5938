"""The whole loop on Gaussian targets whose answer is known exactly.

Tolerances (stated): sample mean within 0.1 of the exact mean in every coordinate and every
covariance entry within 0.15 (absolute) of the exact covariance, from 6,000 samples.
"""

import pytest
import torch

from adjoint_core import MLP, AdjointSampler, EuclideanSpace, GeometricSchedule, ReplayBuffer
from adjoint_core.problem.gaussian import gaussian

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


def test_path_weights_of_the_exact_control_are_uniform():
    """With the optimal control of a Gaussian target the path weights are constant (ESS ≈ 1).

    Target N(0, s²) in 1-D and base h(1)² = H: the optimal control of the memoryless process is
    u*(t, x) = ∇ log E[p*(X_1)/p^base_1(X_1) | X_t = x] = -a x / (1 + a α(t)²) with
    a = 1/s² - 1/H and α(t)² = H - h(t)². Discretisation error is the only source of weight
    variance, so the ESS must be close to 1, and far below 1 for the zero control.
    """
    from adjoint_core.evaluation.metrics import path_ess
    from adjoint_core.training.sde import simulate

    s2, sched = 0.5, GeometricSchedule(0.01, 2.0)
    a = 1 / s2 - 1 / sched.h1_squared
    energy = gaussian(mean=[0.0], std=[s2**0.5])
    space = EuclideanSpace(dim=1)

    def control(t, x):
        alpha2 = sched.h1_squared - sched.h2(t.double()).to(x.dtype).reshape(-1, 1)
        return -a * x / (1 + a * alpha2)

    res = simulate(control, space, sched, 4000, 2000, torch.Generator().manual_seed(0),
                   dtype=torch.float64, path_weights=True)
    phi = energy.energy(res.x1) / energy.temperature + space.base_log_prob(res.x1, sched)
    log_w = -res.control_cost - res.noise_cost - phi
    assert path_ess(log_w.numpy()) > 0.97
    assert float(res.x1.var()) == pytest.approx(s2, rel=0.06)
    zero = simulate(lambda t, x: torch.zeros_like(x), space, sched, 4000, 50,
                    torch.Generator().manual_seed(0), dtype=torch.float64, path_weights=True)
    phi0 = energy.energy(zero.x1) + space.base_log_prob(zero.x1, sched)
    assert path_ess((-zero.control_cost - zero.noise_cost - phi0).numpy()) < 0.9


def test_cosine_learning_rate_schedule():
    s = AdjointSampler(gaussian(dim=2), EuclideanSpace(dim=2), GeometricSchedule(), MLP(2),
                       settings=dict(n_epochs=4, grad_steps_per_epoch=10, lr=1e-3, lr_min=1e-5,
                                     lr_schedule="cosine", samples_per_epoch=32,
                                     train_batch_size=16, n_sde_steps=5))
    assert s.learning_rate(0) == pytest.approx(1e-3)
    assert s.learning_rate(20) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert s.learning_rate(40) == pytest.approx(1e-5)
    s.fit(n_epochs=1)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(s.learning_rate(9))
