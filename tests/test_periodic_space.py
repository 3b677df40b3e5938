"""PeriodicSpace and the shared torus maths: wrapping, wrapped normal, bridge marginals.

Monte Carlo tolerances are stated per test; every test is seeded.
"""

import math

import pytest
import torch

from adjoint_core import GeometricSchedule, LinearSchedule, PeriodicSpace
from adjoint_core.plugins.registry import ConfigError, Registry
from adjoint_core.problem import torus
from adjoint_core.training.sde import simulate

DT = torch.float64


def test_wrap_and_minimum_image():
    box = torch.tensor([1.0, 2.5], dtype=DT)
    x = torch.tensor([[0.49, -0.5], [0.5, 1.25], [-3.7, 7.0]], dtype=DT)
    w = torus.wrap(x, box)
    assert torch.all(w >= -box / 2) and torch.all(w < box / 2)
    assert torch.allclose(w, torch.tensor([[0.49, -0.5], [-0.5, -1.25], [0.3, -0.5]], dtype=DT))
    # wrap changes x by multiples of the box only
    k = (x - w) / box
    assert torch.allclose(k, k.round())
    d = torus.minimum_image(torch.tensor([0.9, -0.6, 0.2], dtype=DT), 1.0)
    assert torch.allclose(d, torch.tensor([-0.1, 0.4, 0.2], dtype=DT))


@pytest.mark.parametrize("sigma,box", [(0.3, 1.0), (1.0, 2.0), (3.0, 1.5)])
def test_wrapped_normal_is_a_normalised_periodic_density(sigma, box):
    k = torus.default_n_images(sigma, box)
    xs = torch.linspace(-box / 2, box / 2, 4001, dtype=DT)
    p = torus.wrapped_normal_log_prob(xs, sigma, box, k).exp()
    assert float(torch.trapezoid(p, xs)) == pytest.approx(1.0, abs=1e-6)
    # periodic in x, and equal to a brute-force sum over many images
    assert torch.allclose(torus.wrapped_normal_log_prob(xs + 3 * box, sigma, box, k).exp(), p)
    ks = torch.arange(-200, 201, dtype=DT)
    brute = (torch.exp(-0.5 * ((xs[:, None] + ks * box) / sigma) ** 2)
             / (sigma * math.sqrt(2 * math.pi))).sum(-1)
    assert torch.allclose(p, brute, rtol=1e-8)


def test_wrapped_normal_score_is_the_autograd_gradient():
    x = torch.linspace(-2.0, 2.0, 101, dtype=DT).requires_grad_(True)
    for sigma, box in [(0.2, 1.0), (1.3, 2.0)]:
        lp = torus.wrapped_normal_log_prob(x, sigma, box, 12)
        (g,) = torch.autograd.grad(lp.sum(), x)
        assert torch.allclose(torus.wrapped_normal_score(x.detach(), sigma, box, 12), g,
                              atol=1e-10)


def test_sample_image_posterior():
    """P(k) ∝ N(x + kL; 0, σ²): empirical frequencies of the lift within 0.005 (200k draws)."""
    x = torch.full((200_000,), 0.3, dtype=DT)
    sigma, box = 0.8, 1.0
    lift = torus.sample_image(x, sigma, box, 6, torch.Generator().manual_seed(0))
    ks = torch.round((lift - 0.3) / box)
    assert torch.allclose(torus.wrap(lift, box), x)
    logw = -0.5 * ((0.3 + torch.arange(-6, 7, dtype=DT) * box) / sigma) ** 2
    w = torch.softmax(logw, 0)
    freq = torch.stack([(ks == k).double().mean() for k in range(-6, 7)])
    assert (freq - w).abs().max() < 0.005, (freq, w)


def _hist_density(x, lo, hi, bins):
    h = torch.histc(x, bins, lo, hi) / x.numel() / ((hi - lo) / bins)
    edges = torch.linspace(lo, hi, bins + 1, dtype=DT)
    return 0.5 * (edges[1:] + edges[:-1]), h


def test_space_basics_and_config():
    sp = PeriodicSpace(box=[2.0, 3.0], n_particles=4, spatial_dim=2)
    assert sp.event_shape == (4, 2) and sp.particle_shape == (4, 2) and sp.dim == 8
    x = torch.randn(5, 4, 2, dtype=DT, generator=torch.Generator().manual_seed(0)) * 5
    y = sp.project(x)
    assert torch.all(y[..., 0].abs() <= 1.0) and torch.all(y[..., 1].abs() <= 1.5)
    assert torch.equal(sp.tangent(x), x)
    assert torch.allclose(sp.step(y, torch.full_like(y, 2.0)), sp.project(y + 2.0))
    assert PeriodicSpace(**sp.config()).config() == sp.config()
    assert sp.config() == {"box": [2.0, 3.0], "n_particles": 4, "spatial_dim": 2}
    flat = PeriodicSpace(box=1.5, dim=3, n_images=4)
    assert flat.box == (1.5, 1.5, 1.5) and flat.images(GeometricSchedule()) == 4
    for bad in [dict(box=1.0), dict(box=[1.0, 2.0, 3.0], n_particles=2, spatial_dim=2),
                dict(box=-1.0, dim=2), dict(box=1.0, dim=2, n_particles=2)]:
        with pytest.raises(ValueError):
            PeriodicSpace(**bad)


def test_registry_builds_periodic_space():
    from adjoint_core.plugins import builtins

    reg = Registry(load_entry_points=False)
    reg.add_plugin(builtins, name="core")
    sp = reg.build("space", "periodic", {"box": 5, "n_particles": 3, "spatial_dim": 2})
    assert isinstance(sp, PeriodicSpace) and sp.box == (5.0, 5.0)
    with pytest.raises(ConfigError, match="box"):
        reg.build("space", "periodic", {"box": "wide", "dim": 2})


def test_base_score_is_gradient_of_base_log_prob_and_normalised():
    sched = GeometricSchedule(0.01, 1.2)
    sp = PeriodicSpace(box=[1.0, 2.0], n_particles=3, spatial_dim=2)
    x = (torch.rand(6, 3, 2, dtype=DT, generator=torch.Generator().manual_seed(1)) - 0.5) * 4
    x.requires_grad_(True)
    lp = sp.base_log_prob(x, sched)
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert torch.allclose(sp.base_score(x.detach(), sched), g, atol=1e-10)
    # the 1-D terminal density integrates to one over the box
    one = PeriodicSpace(box=2.0, dim=1)
    xs = torch.linspace(-1.0, 1.0, 4001, dtype=DT).reshape(-1, 1)
    assert float(torch.trapezoid(one.base_log_prob(xs, sched).exp(), xs[:, 0])) == \
        pytest.approx(1.0, abs=1e-6)


def test_terminal_samples_follow_the_wrapped_normal():
    """sample_base and the zero-control SDE both give WN(0, h(1)²) (histogram within 0.03)."""
    sched = LinearSchedule(1.0)  # h(1) = 1 on a box of 4: far from uniform
    sp = PeriodicSpace(box=4.0, dim=1)
    g = torch.Generator().manual_seed(2)
    c = None
    for x in (sp.sample_base(200_000, sched, g, dtype=DT),
              simulate(lambda t, x: torch.zeros_like(x), sp, sched, 100_000, 20, g,
                       dtype=DT).x1):
        assert x.abs().max() <= 2.0
        c, h = _hist_density(x[:, 0], -2.0, 2.0, 40)
        p = sp.base_log_prob(c.reshape(-1, 1), sched).exp()
        assert (h - p).abs().max() < 0.03, (h, p)
    p = sp.base_log_prob(c.reshape(-1, 1), sched).exp()
    assert float(p.max() / p.min()) > 3  # far from uniform: the check is discriminative


def test_bridge_marginal_given_x1_matches_wrapped_closed_form():
    """X_t | X_1 = x1 on the circle is the mixture over lifts k (weights ∝ N(x1 + kL; 0, h(1)²))
    of the wrapped ambient bridges WN(λ(x1 + kL), σ_b²); histogram within 0.03 (200k draws)."""
    sched = LinearSchedule(1.0)
    box = 2.0
    sp = PeriodicSpace(box=box, dim=1)
    n, x1v = 200_000, 0.9  # near the edge: the lifts 0.9 and -1.1 are both likely
    x1 = torch.full((n, 1), x1v, dtype=DT)
    g = torch.Generator().manual_seed(3)
    for tv in (0.3, 0.6):
        t = torch.full((n,), tv, dtype=DT)
        xt = sp.bridge_sample(x1, t, sched, g)
        c, h = _hist_density(xt[:, 0], -1.0, 1.0, 40)
        lam, std = (float(v) for v in sched.bridge_coefficients(torch.tensor(tv, dtype=DT)))
        ks = torch.arange(-10, 11, dtype=DT)
        w = torch.softmax(-0.5 * ((x1v + ks * box) ** 2) / sched.h1_squared, 0)
        dens = torch.stack([torus.wrapped_normal_log_prob(c - lam * (x1v + k * box), std, box,
                                                          10).exp() for k in ks], -1)
        p = (dens * w).sum(-1)
        assert (h - p).abs().max() < 0.03, (tv, h, p)
        # dropping the image draw (always k = 0) is detectably wrong
        naive = torus.wrapped_normal_log_prob(c - lam * x1v, std, box, 10).exp()
        assert (naive - p).abs().max() > 0.1
    # endpoints: t = 1 returns x1, t = 0 the origin
    assert torch.allclose(sp.bridge_sample(x1[:10], torch.ones(10, dtype=DT), sched, g), x1[:10])
    assert sp.bridge_sample(x1[:10], torch.zeros(10, dtype=DT), sched, g).abs().max() == 0


def test_bridge_of_base_samples_has_base_marginal():
    """x1 ~ WN(0, h(1)²), then x_t ~ bridge: x_t ~ WN(0, h(t)²) (histogram within 0.03)."""
    sched = LinearSchedule(1.2)
    sp = PeriodicSpace(box=2.5, dim=1)
    g = torch.Generator().manual_seed(4)
    n = 200_000
    x1 = sp.sample_base(n, sched, g, dtype=DT)
    for tv in (0.2, 0.6):
        xt = sp.bridge_sample(x1, torch.full((n,), tv, dtype=DT), sched, g)
        c, h = _hist_density(xt[:, 0], -1.25, 1.25, 40)
        ht = float(sched.h(torch.tensor(tv, dtype=DT)))
        p = torus.wrapped_normal_log_prob(c, ht, 2.5, 10).exp()
        assert (h - p).abs().max() < 0.03, (tv, h, p)


def test_periodic_features_are_periodic():
    box = torch.tensor([1.0, 3.0])
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    f = torus.periodic_features(x, box, n_harmonics=2)
    assert f.shape == (7, 8)
    assert torch.allclose(torus.periodic_features(x + box * torch.tensor([2.0, -1.0]), box, 2),
                          f, atol=1e-5)
    assert torch.allclose(f[:, :2], torch.sin(2 * math.pi * x / box))


def test_radial_distribution_uniform_and_hand_values():
    from adjoint_core.problem.periodic import radial_distribution

    g = torch.Generator().manual_seed(5)
    for d, box in [(2, [3.0, 4.0]), (3, 2.5)]:
        b = torch.as_tensor(box, dtype=DT).expand(d)
        x = (torch.rand(4000, 6, d, generator=g, dtype=DT) - 0.5) * b
        r, gr = radial_distribution(x, box, n_bins=10)
        assert r.shape == gr.shape == (10,)
        assert float(r[-1]) == pytest.approx(float(b.min()) / 2 * 0.95)
        # ideal gas: g ≡ 1 (4000 × 15 pairs; ≥ ~150 pairs in the smallest bin in 3-D)
        assert (gr[2:] - 1).abs().max() < 0.08, gr
        assert (gr[:2] - 1).abs().max() < 0.35, gr
    # two particles at minimum-image distance 0.35 across the boundary of a 2-D box of 4:
    # one pair in the bin [0.3, 0.4), volume 16, shell area π(0.4² − 0.3²): g = 16 / shell
    x = torch.tensor([[[-1.9, 0.0], [1.75, 0.0]]], dtype=DT)
    r, gr = radial_distribution(x, 4.0, n_bins=20, r_max=2.0)
    assert torch.count_nonzero(gr) == 1 and float(r[3]) == pytest.approx(0.35)
    assert float(gr[3]) == pytest.approx(16 / (math.pi * (0.4**2 - 0.3**2)))
    with pytest.raises(ValueError, match="r_max"):
        radial_distribution(x, 4.0, r_max=2.5)
