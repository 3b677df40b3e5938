"""TorsionalSpace: wrapping invariance, the wrapped-normal base, the bridge's closed form.

The bridge tests compare Monte Carlo samples with closed forms through the maximum distance
between the empirical CDF and the exact CDF on a fine grid (a Kolmogorov–Smirnov distance):
with n samples its typical size is ``≈ 0.9/sqrt(n)``, so ``n = 40,000`` and a threshold of
0.012 is a ~2.6-sigma-free margin (the statistic exceeds 1.63/sqrt(n) = 0.008 with
probability 1 %), while the tests that must fail (no image draw) are off by > 0.05.
"""

import math

import pytest
import torch

from adjoint_core import GeometricSchedule, PeriodicSpace, TorsionalSpace
from adjoint_core.plugins.registry import Registry
from adjoint_core.problem.periodic import mlp_periodic
from adjoint_core.problem.torsional import TWO_PI, angle_difference, torsional_schedule
from adjoint_core.problem.torus import wrapped_normal_log_prob
from adjoint_core.problem.von_mises import von_mises

DT = torch.float64
PI = math.pi


def _wn_cdf(grid: torch.Tensor, mean: torch.Tensor, std: float, n_images: int = 8
            ) -> torch.Tensor:
    """CDF on ``[-π, grid]`` of ``wrap(N(mean, std²))``, averaged over the means ``(m,)``.

    Exact: ``Σ_j Φ((g + 2πj − μ)/s) − Φ((−π + 2πj − μ)/s)``.
    """
    j = torch.arange(-n_images, n_images + 1, dtype=DT)
    normal = torch.distributions.Normal(torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    mu = mean.reshape(1, -1, 1)
    hi = normal.cdf((grid.reshape(-1, 1, 1) + TWO_PI * j - mu) / std)
    lo = normal.cdf((-PI + TWO_PI * j - mu) / std)
    return (hi - lo).sum(-1).mean(-1)


def _ks(samples: torch.Tensor, cdf_fn) -> float:
    grid = torch.linspace(-PI, PI, 721, dtype=DT)
    emp = (samples.reshape(-1, 1) <= grid).double().mean(0)
    return float((emp - cdf_fn(grid)).abs().max())


def test_space_is_a_2pi_periodic_space_and_validates():
    space = TorsionalSpace(3)
    assert isinstance(space, PeriodicSpace)
    assert space.event_shape == (3,) and space.dim == 3 and space.n_torsions == 3
    assert space.box == (TWO_PI,) * 3 and space.particle_shape is None
    assert space.config() == {"n_torsions": 3}
    assert TorsionalSpace(2, n_images=6).config() == {"n_torsions": 2, "n_images": 6}
    assert "TorsionalSpace(n_torsions=3)" == repr(space)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_torsions"):
            TorsionalSpace(bad)
    with pytest.raises(ValueError, match="n_images"):
        TorsionalSpace(2, n_images=-1)
    with pytest.raises(ValueError, match="embedding"):
        space.to_cartesian(torch.zeros(1, 3))
    emb = TorsionalSpace(2, embedding=lambda x: torch.stack([x.cos(), x.sin()], -1))
    assert emb.to_cartesian(torch.zeros(4, 2)).shape == (4, 2, 2)
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        emb.to_cartesian(torch.zeros(4, 3))
    u = space.uniform(10_000, torch.Generator().manual_seed(0), dtype=DT)
    assert (u >= -PI).all() and (u < PI).all() and abs(float(u.mean())) < 0.05


def test_registry_builds_the_torsional_space():
    from adjoint_core.plugins import builtins

    reg = Registry(load_entry_points=False)
    reg.add_plugin(builtins, name="core")
    space = reg.build("space", "torsional", {"n_torsions": 4, "n_images": 5})
    assert isinstance(space, TorsionalSpace) and space.n_torsions == 4 and space.n_images == 5
    model = reg.build("model", "mlp_periodic", {"hidden": 8}, space=space)
    model.check_space(space)


def test_wrapping_invariance():
    """Everything the loop computes is unchanged by τ → τ + 2πk; states stay in [-π, π)."""
    torch.manual_seed(0)
    space = TorsionalSpace(3)
    sched = torsional_schedule()
    x = (torch.rand(64, 3, dtype=DT) * 2 - 1) * PI
    k = torch.randint(-4, 5, (64, 3)).to(DT)
    y = x + TWO_PI * k
    assert torch.allclose(space.project(y), x, atol=1e-12)
    assert torch.allclose(space.project(space.project(y)), space.project(y))
    assert torch.allclose(space.base_log_prob(y, sched), space.base_log_prob(x, sched),
                          atol=1e-10)
    assert torch.allclose(space.base_score(y, sched), space.base_score(x, sched), atol=1e-10)
    energy = von_mises(kappa=[1.0, 2.0, 0.5], mu=[0.3, -2.0, 3.0], box=TWO_PI)
    e_x, g_x = energy.energy_and_grad(x)
    e_y, g_y = energy.energy_and_grad(y)
    assert torch.allclose(e_x, e_y, atol=1e-10) and torch.allclose(g_x, g_y, atol=1e-10)
    model = mlp_periodic(space, hidden=16, n_layers=2).double()
    with torch.no_grad():
        model.net[-1].weight.normal_()
    t = torch.rand(64, dtype=DT)
    # (the model stores its period in float32: 2π to ~3e-8 relative, hence the tolerance)
    assert torch.allclose(model(t, x), model(t, y), atol=1e-5)
    # a large SDE step lands in [-π, π) and equals the wrapped Euclidean update
    dx = 10 * torch.randn(64, 3, dtype=DT)
    stepped = space.step(x, dx)
    assert (stepped >= -PI).all() and (stepped <= PI).all()
    assert torch.allclose(angle_difference(stepped, x + dx), torch.zeros_like(x), atol=1e-10)
    assert torch.allclose(space.step(y, dx), stepped, atol=1e-10)
    # angle_difference is the shortest signed arc
    a = torch.tensor([PI - 0.1, -PI + 0.1, 0.5], dtype=DT)
    b = torch.tensor([-PI + 0.1, PI - 0.1, 0.2], dtype=DT)
    assert torch.allclose(angle_difference(a, b), torch.tensor([-0.2, 0.2, 0.3], dtype=DT))


def test_base_density_is_normalised_and_its_score_is_exact():
    space = TorsionalSpace(2, n_images=6)
    sched = torsional_schedule()
    # midpoint rule: spectrally accurate for a smooth periodic integrand
    grid = torch.linspace(-PI, PI, 201, dtype=DT)[:-1] + PI / 200
    xx = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    z = float(space.base_log_prob(xx, sched).exp().sum()) * (TWO_PI / 200) ** 2
    assert z == pytest.approx(1.0, abs=1e-9)
    x = (torch.rand(32, 2, dtype=DT) * 2 - 1) * PI
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(space.base_log_prob(xr, sched).sum(), xr)
    assert torch.allclose(space.base_score(x, sched), g, atol=1e-12)
    # the default number of images agrees with AS-mol's 6 to truncation accuracy
    auto = TorsionalSpace(2)
    assert torch.allclose(auto.base_log_prob(x, sched), space.base_log_prob(x, sched),
                          atol=1e-12)
    # closed form per coordinate
    sigma = math.sqrt(sched.h1_squared)
    want = wrapped_normal_log_prob(x, sigma, TWO_PI, 6).sum(-1)
    assert torch.allclose(space.base_log_prob(x, sched), want)


def test_bridge_marginal_given_x1_matches_the_wrapped_closed_form():
    """``τ_t | τ_0 = 0, τ_1`` is the mixture over images j (weights ∝ N(τ_1 + 2πj; 0, h(1)²))
    of wrapped normals WN(λ(t)(τ_1 + 2πj), σ_bridge(t)²); skipping the image draw is wrong.

    With σ_max/σ_min = 100, λ(t) = 1/2 already at t ≈ 0.075, so the image matters at small t.
    """
    space = TorsionalSpace(1)
    sched = torsional_schedule()
    sigma1 = math.sqrt(sched.h1_squared)
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    for x1v, tv in ((3.0, 0.04), (-2.5, 0.08), (2.9, 0.5), (0.4, 0.3)):
        x1 = torch.full((n, 1), x1v, dtype=DT)
        t = torch.full((n,), tv, dtype=DT)
        xt = space.bridge_sample(x1, t, sched, gen)
        assert (xt >= -PI).all() and (xt <= PI).all()
        lam, std = (float(v) for v in sched.bridge_coefficients(torch.tensor(tv, dtype=DT)))
        j = torch.arange(-6, 7, dtype=DT)
        lifts = x1v + TWO_PI * j
        w = torch.softmax(-0.5 * (lifts / sigma1) ** 2, 0)

        def cdf(grid, lifts=lifts, w=w, lam=lam, std=std):
            parts = torch.stack([_wn_cdf(grid, lam * lift.reshape(1), std) for lift in lifts])
            return (w.reshape(-1, 1) * parts).sum(0)

        assert _ks(xt, cdf) < 0.012, (x1v, tv)
        # without the image draw (always the principal lift) the law is detectably different
        if abs(x1v) > 2 and tv < 0.1:
            principal = torch.tensor([lam * x1v], dtype=DT)
            assert _ks(xt, lambda g, p=principal, s=std: _wn_cdf(g, p, s)) > 0.05, (x1v, tv)


def test_bridge_of_base_samples_has_the_wrapped_normal_marginal():
    """τ_1 ~ WN(0, h(1)²) then τ_t from the bridge gives τ_t ~ WN(0, h(t)²) (closed form)."""
    space = TorsionalSpace(2)
    for sched in (torsional_schedule(), GeometricSchedule(0.05, 1.5)):
        gen = torch.Generator().manual_seed(1)
        n = 40_000
        x1 = space.sample_base(n, sched, gen, dtype=DT)
        assert _ks(x1[:, 0], lambda g, s=sched: _wn_cdf(g, torch.zeros(1, dtype=DT),
                                                        math.sqrt(s.h1_squared))) < 0.012
        for tv in (0.2, 0.7):
            t = torch.full((n,), tv, dtype=DT)
            xt = space.bridge_sample(x1, t, sched, gen)
            ht = math.sqrt(float(sched.h2(torch.tensor(tv, dtype=DT))))
            for c in range(2):
                assert _ks(xt[:, c], lambda g, ht=ht: _wn_cdf(g, torch.zeros(1, dtype=DT),
                                                              ht)) < 0.012, (sched, tv, c)
