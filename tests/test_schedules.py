import math

import pytest
import torch

from adjoint_core import EuclideanSpace, GeometricSchedule, LinearSchedule
from adjoint_core.problem.schedules import NoiseSchedule

SCHEDULES = [GeometricSchedule(1e-3, 1.0), GeometricSchedule(0.01, 3.0), LinearSchedule(1.5)]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_h2_is_integral_of_g2(sched):
    s = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    g2 = sched.g(s) ** 2
    cum = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumulative_trapezoid(g2, s)])
    for t in (0.1, 0.37, 0.8, 1.0):
        i = int(round(t * 200_000))
        assert float(sched.h2(s[i])) == pytest.approx(float(cum[i]), rel=1e-6, abs=1e-9)


def test_geometric_constants():
    sch = GeometricSchedule(1e-3, 2.0)
    assert sch.h1_squared == pytest.approx(2.0**2 - 1e-3**2)
    r = 2.0 / 1e-3
    assert float(sch.g(torch.tensor(0.0))) == pytest.approx(2.0 * math.sqrt(2 * math.log(r)))
    assert float(sch.g(torch.tensor(1.0))) == pytest.approx(1e-3 * math.sqrt(2 * math.log(r)))


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
@pytest.mark.parametrize("t", [0.05, 0.5, 0.9])
def test_bridge_matches_closed_form(sched, t):
    """Monte Carlo mean/variance of x_t | x_0=0, x_1 against h(t)^2 α(t)^2 / h(1)^2."""
    space = EuclideanSpace(dim=3)
    n = 200_000
    x1 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64).expand(n, 3)
    tt = torch.full((n,), t, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    xt = space.bridge_sample(x1, tt, sched, gen)
    h2t = float(sched.h2(torch.tensor(t, dtype=torch.float64)))
    h21 = sched.h1_squared
    mean = h2t / h21 * x1[0]
    var = h2t * (h21 - h2t) / h21
    assert torch.allclose(xt.mean(0), mean, atol=5 * math.sqrt(var / n) + 1e-9)
    assert torch.allclose(xt.var(0), torch.full((3,), var, dtype=torch.float64),
                          rtol=0.02, atol=1e-12)


def test_bridge_endpoints():
    sched = GeometricSchedule(1e-3, 1.0)
    lam, std = sched.bridge_coefficients(torch.tensor([0.0, 1.0]))
    assert lam.tolist() == pytest.approx([0.0, 1.0])
    assert std.tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


def test_mean_free_bridge_stays_mean_free_and_has_projected_variance():
    space = EuclideanSpace(5, 3, mean_free=True)
    sched = GeometricSchedule(0.01, 2.0)
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    x1 = space.project(torch.randn(1, 5, 3, generator=gen, dtype=torch.float64)).expand(n, 5, 3)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    xt = space.bridge_sample(x1, t, sched, gen)
    assert xt.mean(1).abs().max() < 1e-12
    lam, std = sched.bridge_coefficients(t[:1])
    # per-coordinate variance of a projected isotropic Gaussian: std^2 (1 - 1/N)
    assert float(xt.var(0).mean()) == pytest.approx(float(std**2) * (1 - 1 / 5), rel=0.02)
    assert torch.allclose(xt.mean(0), lam * x1[0], atol=0.02)


@pytest.mark.parametrize("bad", [dict(sigma_min=0.0, sigma_max=1.0),
                                 dict(sigma_min=1.0, sigma_max=1.0),
                                 dict(sigma_min=-1.0, sigma_max=1.0)])
def test_geometric_rejects_bad_sigmas(bad):
    with pytest.raises(ValueError, match="sigma"):
        GeometricSchedule(**bad)


def test_linear_rejects_negative_sigma():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        LinearSchedule(-1.0)


class _BisectedGeometric(GeometricSchedule):
    """The geometric schedule with the generic (bisection) inverse of ``h2``."""

    time_of_h2 = NoiseSchedule.time_of_h2


@pytest.mark.parametrize("sched", SCHEDULES + [_BisectedGeometric(1e-3, 1.0)], ids=repr)
def test_time_of_h2_inverts_h2(sched):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    back = sched.time_of_h2(sched.h2(t))
    # Where h2 is flat (geometric schedule near t = 1) t is ill-conditioned: compare in h2 too.
    assert torch.allclose(sched.h2(back), sched.h2(t), atol=1e-12, rtol=1e-10)
    steep = sched.g(t) ** 2 > 1e-3
    assert torch.allclose(back[steep], t[steep], atol=1e-7)
    outside = sched.time_of_h2(torch.tensor([-1.0, 1e9], dtype=torch.float64))
    assert float(outside[0]) == pytest.approx(0.0, abs=1e-15)
    assert float(outside[1]) == pytest.approx(1.0)


def test_closed_form_inverse_matches_bisection():
    v = torch.linspace(0, GeometricSchedule(1e-3, 1.0).h1_squared, 513, dtype=torch.float64)
    closed = GeometricSchedule(1e-3, 1.0).time_of_h2(v)
    bisected = _BisectedGeometric(1e-3, 1.0).time_of_h2(v)
    assert torch.allclose(closed[:-1], bisected[:-1], atol=1e-9)
