import math

import numpy as np
import pytest
import torch
from adjoint_core_particles import SOFTPLUS_ONE, GaussianMixtureEnergy, gmm40
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from adjoint_core import EuclideanSpace
from adjoint_core.testing import assert_energy_gradient, check_energy_contract

# Means of iDEM's GMM-40 (github.com/jarridrb/DEM, dem/energies/gmm_energy.py: fab-torch
# GMM(dim=2, n_mixes=40, loc_scaling=40) after torch.manual_seed(0)), rounded to 3 decimals.
APPENDIX_A = {
    0: [-0.299, 21.458],
    1: [-32.922, -29.438],
    2: [-15.406, 10.726],
    3: [-0.793, 31.716],
    4: [-3.550, 10.585],
    13: [36.219, -37.107],
    25: [25.582, 39.765],
    35: [-30.825, -14.659],
    39: [3.680, -25.024],
}


def scipy_neg_log_pdf(points, means, std):
    comps = np.stack(
        [multivariate_normal(mean=m, cov=std**2 * np.eye(len(m))).logpdf(points) for m in means],
        axis=-1,
    )
    return -(logsumexp(comps, axis=-1) - math.log(len(means)))


def test_std_is_softplus_one():
    assert SOFTPLUS_ONE == pytest.approx(math.log(1 + math.e))
    assert SOFTPLUS_ONE == pytest.approx(1.3132616, abs=1e-7)
    assert gmm40().std == SOFTPLUS_ONE


@pytest.mark.parametrize("row", sorted(APPENDIX_A))
def test_means_match_appendix_a(row):
    means = gmm40().means
    assert means.shape == (40, 2)
    assert torch.allclose(means[row], torch.tensor(APPENDIX_A[row]), atol=1e-3)


def test_means_do_not_depend_on_global_rng():
    torch.manual_seed(123)
    a = gmm40().means
    torch.rand(7)
    b = gmm40().means
    assert torch.equal(a, b)
    assert not torch.equal(a, GaussianMixtureEnergy(seed=1).means)


def test_energy_matches_scipy_mixture():
    e = gmm40()
    gen = torch.Generator().manual_seed(7)
    means = e.means.double()
    # points near modes, between modes, and far outside the box
    x = torch.cat([
        means[:5] + torch.randn(5, 2, generator=gen, dtype=torch.float64),
        (torch.rand(20, 2, generator=gen, dtype=torch.float64) - 0.5) * 90,
        torch.tensor([[0.0, 0.0], [60.0, -70.0]], dtype=torch.float64),
    ])
    ours = e.energy(x).numpy()
    ref = scipy_neg_log_pdf(x.numpy(), means.numpy(), SOFTPLUS_ONE)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-9)
    assert e.energy(x.float()).dtype == torch.float32


def test_general_mixture_in_3d_matches_scipy():
    e = GaussianMixtureEnergy(n_modes=3, dim=3, loc_scaling=2.0, std=0.8, seed=5)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64) * 2
    ref = scipy_neg_log_pdf(x.numpy(), e.means.double().numpy(), 0.8)
    np.testing.assert_allclose(e.energy(x).numpy(), ref, rtol=1e-10, atol=1e-10)


def test_single_gaussian_hand_value():
    e = GaussianMixtureEnergy(n_modes=1, dim=2, std=2.0)
    mu = e.means[0].double()
    x = (mu + torch.tensor([3.0, 4.0], dtype=torch.float64)).unsqueeze(0)
    # -log N = |x - mu|^2 / (2 s^2) + D log s + D/2 log(2 pi) = 25/8 + 2 log 2 + log(2 pi)
    expected = 25 / 8 + 2 * math.log(2.0) + math.log(2 * math.pi)
    assert e.energy(x).item() == pytest.approx(expected, abs=1e-12)


def test_gradient_matches_finite_differences():
    e = gmm40()
    gen = torch.Generator().manual_seed(9)
    x = e.means[:4].double() + torch.randn(4, 2, generator=gen, dtype=torch.float64)
    assert_energy_gradient(e, x, eps=1e-6, rtol=1e-6, atol=1e-7)
    # near one mode the gradient is (x - mu) / s^2
    x0 = e.means[:1].double() + 0.3
    _, g0 = e.energy_and_grad(x0)
    assert torch.allclose(g0, torch.full_like(x0, 0.3 / SOFTPLUS_ONE**2), rtol=1e-6)


def test_energy_contract():
    check_energy_contract(gmm40(), EuclideanSpace(dim=2))
    e = GaussianMixtureEnergy(n_modes=3, dim=3, loc_scaling=2.0, std=0.8, seed=5)
    check_energy_contract(e, EuclideanSpace(dim=3), 2 * e.means.double())


def test_exact_samples():
    e = gmm40()
    gen = torch.Generator().manual_seed(10)
    s = e.sample(20000, generator=gen)
    assert s.shape == (20000, 2) and s.dtype == torch.float32
    # mean of the samples ~ mean of the means (sd of the estimate ~ 23/sqrt(20000) ~ 0.16)
    assert torch.allclose(s.mean(0), e.means.mean(0), atol=0.8)
    # every sample is within a few std of its nearest mode
    nearest = torch.cdist(s, e.means).min(dim=1).values
    assert nearest.max() < 6 * SOFTPLUS_ONE
    # per-component residual std is softplus(1)
    k = torch.cdist(s, e.means).argmin(dim=1)
    resid = s - e.means[k]
    assert resid.std().item() == pytest.approx(SOFTPLUS_ONE, rel=0.05)
    # reproducible with the same seed
    again = e.sample(20000, generator=torch.Generator().manual_seed(10))
    assert torch.equal(s, again)
    assert e.sample(3, dtype=torch.float64).dtype == torch.float64


def test_sample_requires_unit_temperature():
    with pytest.raises(ValueError, match="temperature=2.0"):
        gmm40(temperature=2.0).sample(5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        gmm40().sample(-1)


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"expects states of shape \(batch, 2\)"):
        gmm40().energy(torch.zeros(4, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_modes": 0}, "n_modes must be >= 1, got 0"),
        ({"dim": 0}, "dim must be >= 1, got 0"),
        ({"std": 0.0}, "std must be > 0, got 0.0"),
        ({"loc_scaling": -1.0}, "loc_scaling must be > 0, got -1.0"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"temperature": float("nan")}, "temperature must be finite"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureEnergy(**kwargs)


def test_mode_coverage_of_exact_samples_and_of_one_mode():
    e = gmm40()
    x = e.sample(20_000, generator=torch.Generator().manual_seed(4))
    w = e.mode_weights(x)
    assert w.shape == (40,) and abs(float(w.sum()) - 1.0) < 1e-12
    cov = e.mode_coverage(x)
    assert cov["modes_visited"] == 40
    assert cov["mode_weight_tv"] < 0.05  # ~sqrt(K/n) for exact samples
    # All states at (near) one mean: one mode visited, TV = 1 - 1/K exactly.
    one = e.means[7] + 0.1 * torch.randn(500, 2, generator=torch.Generator().manual_seed(5))
    cov = e.mode_coverage(one)
    assert cov["modes_visited"] == 1
    assert cov["mode_weight_tv"] == pytest.approx(1 - 1 / 40)
    # Half the states at mode 0, half at mode 1: TV = 1 - 2/K.
    two = torch.cat([e.means[:1].expand(10, 2), e.means[1:2].expand(10, 2)])
    assert e.mode_coverage(two)["mode_weight_tv"] == pytest.approx(1 - 2 / 40)


def test_mode_weights_rejects_bad_shape():
    e = gmm40()
    with pytest.raises(ValueError, match=r"shape \(n >= 1, 2\)"):
        e.mode_weights(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="got \\(0, 2\\)"):
        e.mode_weights(torch.zeros(0, 2))
