"""MALA / random-walk Metropolis (adjoint_core.mcmc.samplers) against exact moments.

Stated tolerances: Gaussian mean within 0.05 and covariance entries within 0.06 of the exact
values; von Mises circular means within 0.02·L and mean resultant lengths within 0.02 of
I1(κ)/I0(κ). Chains are seeded.
"""

import math

import pytest
import torch

from adjoint_core import Energy, EuclideanSpace, PeriodicSpace, run_mcmc
from adjoint_core.mcmc.samplers import default_initial_states
from adjoint_core.problem.gaussian import gaussian
from adjoint_core.problem.von_mises import circular_moments, von_mises


def test_mala_gaussian_moments_and_counters():
    energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]], temperature=0.5)
    space = EuclideanSpace(dim=2)
    res = run_mcmc(energy, space, n_chains=400, n_steps=400, burn_in=200, thin=4,
                   step_size=1.0, generator=torch.Generator().manual_seed(0))
    mu, cov = energy.moments()
    x = res.samples.double()
    assert res.samples.shape == (100 * 400, 2)
    assert res.chains().shape == (100, 400, 2)
    assert torch.allclose(x.mean(0), mu, atol=0.05), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06), (torch.cov(x.T), cov)
    # step size adapted toward the MALA target acceptance 0.574
    assert abs(res.acceptance - 0.574) < 0.06
    assert res.step_size != 1.0 and res.step_size_trace[-1] == pytest.approx(res.step_size)
    assert res.energy_evals == 400 * (1 + 600) == energy.n_evaluations
    assert res.energies_trace.shape == (600,) and res.acceptance_trace.shape == (600,)
    assert torch.allclose(res.sample_energies.double(), energy.energy(res.samples).double(),
                          atol=1e-4)
    # energy mean: E[E] = τ·D/2 for a quadratic energy
    assert float(res.sample_energies.mean()) == pytest.approx(0.5 * 2 * 0.5, abs=0.03)


def test_rwm_mean_free_gaussian():
    """Mean-free particle Gaussian: RWM keeps the centre of mass at zero and matches moments."""
    energy = gaussian(n_particles=3, spatial_dim=2, std=[0.7, 1.3],
                      mean=[0.5, 0.0, -0.5, 1.0, 0.0, -1.0])
    space = EuclideanSpace(3, 2, mean_free=True)
    res = run_mcmc(energy, space, n_chains=500, n_steps=600, burn_in=300, thin=6,
                   step_size=0.5, method="rwm", generator=torch.Generator().manual_seed(1))
    x = res.samples.reshape(res.samples.shape[0], -1).double()
    mu, cov = energy.moments(mean_free_particles=(3, 2))
    assert res.samples.mean(1).abs().max() < 1e-5
    assert torch.allclose(x.mean(0), mu, atol=0.05), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)
    assert abs(res.acceptance - 0.234) < 0.05


@pytest.mark.parametrize("method", ["mala", "rwm"])
def test_von_mises_product_on_the_torus(method):
    """Wrapped proposals: MALA (image-sum proposal density) and RWM are both exact."""
    box = [1.0, 2.0, 0.5]
    energy = von_mises(kappa=[2.0, 0.5, 4.0], mu=[0.45, -0.6, 0.1], box=box)
    space = PeriodicSpace(box=box, dim=3)
    res = run_mcmc(energy, space, n_chains=400, n_steps=400, burn_in=200, thin=4,
                   step_size=0.3, method=method, generator=torch.Generator().manual_seed(2))
    x = res.samples
    assert (x.abs() <= torch.tensor(box) / 2).all()
    m, r = circular_moments(x, energy.box)
    m0, r0 = energy.moments()
    dm = (m - m0 + energy.box / 2) % energy.box - energy.box / 2
    assert (dm.abs() <= 0.02 * energy.box).all(), (m, m0)
    assert torch.allclose(r, r0, atol=0.02), (r, r0)


def test_mala_with_large_steps_needs_the_image_sum():
    """A step comparable to the box: the exact wrapped proposal density keeps MALA correct."""
    energy = von_mises(kappa=[1.0], mu=[0.0], box=[1.0])
    space = PeriodicSpace(box=1.0, dim=1)
    res = run_mcmc(energy, space, n_chains=2000, n_steps=200, burn_in=0, thin=2,
                   step_size=0.6, adapt=False, generator=torch.Generator().manual_seed(3))
    _, r = circular_moments(res.samples, energy.box)
    _, r0 = energy.moments()
    assert float(r) == pytest.approx(float(r0), abs=0.02)


class _WalledGaussian(Energy):
    """½‖x‖² inside |x_k| < 3, +inf outside."""

    def __init__(self):
        super().__init__((2,))

    def _energy(self, x):
        wall = torch.where(x.abs().amax(-1) > 3, math.inf, 0.0)
        return 0.5 * x.square().sum(-1) + wall


@pytest.mark.parametrize("method", ["mala", "rwm"])
def test_chains_leave_nonfinite_states(method):
    """Chains started where E = inf move to finite states and never accept an infinite one."""
    energy = _WalledGaussian()
    x0 = torch.full((256, 2), 3.3)
    res = run_mcmc(energy, EuclideanSpace(dim=2), n_chains=256, n_steps=200, burn_in=200,
                   step_size=0.5, method=method, x0=x0, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(res.sample_energies).all()
    assert float(res.samples.double().var(0).mean()) == pytest.approx(0.97, abs=0.1)
    assert not torch.equal(res.samples[:256], x0)


def test_bad_arguments_rejected():
    energy = gaussian(dim=2)
    space = EuclideanSpace(dim=2)
    with pytest.raises(ValueError, match="method"):
        run_mcmc(energy, space, method="nuts")
    with pytest.raises(ValueError, match="x0"):
        run_mcmc(energy, space, n_chains=4, x0=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="event shape"):
        run_mcmc(energy, EuclideanSpace(dim=3))


def test_default_initial_states():
    g = torch.Generator().manual_seed(0)
    sp = PeriodicSpace(box=[2.0, 4.0], n_particles=5, spatial_dim=2)
    x = default_initial_states(sp, 1000, g)
    assert x.shape == (1000, 5, 2)
    assert float(x[..., 1].abs().max()) > 1.9 and float(x[..., 1].abs().max()) <= 2.0
    assert float(x[..., 1].std()) == pytest.approx(4 / math.sqrt(12), rel=0.05)
    e = default_initial_states(EuclideanSpace(4, 3, mean_free=True), 10, g)
    assert e.mean(1).abs().max() < 1e-6


def test_non_overlapping_states_keep_every_pair_apart():
    from adjoint_core.mcmc.samplers import non_overlapping_states

    g = torch.Generator().manual_seed(0)
    sp = PeriodicSpace(box=[3.0, 4.0], n_particles=8, spatial_dim=2)
    x = default_initial_states(sp, 500, g, min_distance=0.9)
    assert x.shape == (500, 8, 2)
    half = torch.tensor([1.5, 2.0])
    assert bool((x.abs() <= half).all())  # wrapped into the box
    i, j = torch.triu_indices(8, 8, offset=1)
    d = x[:, i] - x[:, j]
    d = d - torch.tensor([3.0, 4.0]) * torch.round(d / torch.tensor([3.0, 4.0]))
    assert float(d.norm(dim=-1).min()) >= 0.9 - 1e-6
    # uniform starts of the same box overlap (the reason for the option)
    u = default_initial_states(sp, 500, g)
    du = u[:, i] - u[:, j]
    du = du - torch.tensor([3.0, 4.0]) * torch.round(du / torch.tensor([3.0, 4.0]))
    assert float(du.norm(dim=-1).min()) < 0.1
    # each particle is still uniform on the box: first-moment and spread checks
    assert float(x[..., 0].mean()) == pytest.approx(0.0, abs=0.05)
    assert float(x[..., 1].std()) == pytest.approx(4 / math.sqrt(12), rel=0.05)
    with pytest.raises(RuntimeError, match="density is too high"):
        non_overlapping_states(sp, 4, 2.5, g, max_tries=50)
    with pytest.raises(ValueError, match="periodic particle space"):
        default_initial_states(EuclideanSpace(4, 2), 4, g, min_distance=0.5)
    with pytest.raises(ValueError, match="not both"):
        default_initial_states(sp, 4, g, lattice_spacing=1.0, min_distance=0.5)


def test_run_mcmc_from_non_overlapping_starts():
    from adjoint_core.mcmc.samplers import MCMCSettings

    assert MCMCSettings(min_distance=0.9).min_distance == 0.9
    with pytest.raises(ValueError):
        MCMCSettings(min_distance=0.0)
    sp = PeriodicSpace(box=3.0, n_particles=4, spatial_dim=2)

    class _Soft(Energy):
        def __init__(self):
            super().__init__((4, 2))

        def _energy(self, x):
            i, j = torch.triu_indices(4, 4, offset=1)
            d = x[:, i] - x[:, j]
            d = d - 3.0 * torch.round(d / 3.0)
            return (1.0 / d.pow(2).sum(-1).clamp_min(1e-6) ** 6).sum(-1)

    res = run_mcmc(_Soft(), sp, n_chains=16, n_steps=5, burn_in=0, step_size=0.01, method="rwm",
                   min_distance=1.0, generator=torch.Generator().manual_seed(1))
    assert res.samples.shape == (80, 4, 2)
    assert float(res.sample_energies.max()) < 16  # starts without overlaps: E ≤ 6 at r ≥ 1
