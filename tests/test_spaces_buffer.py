import math

import pytest
import torch

from adjoint_core import EuclideanSpace, GeometricSchedule, ReplayBuffer


def test_mean_free_projection_and_dim():
    space = EuclideanSpace(4, 2, mean_free=True)
    x = torch.randn(7, 4, 2, generator=torch.Generator().manual_seed(0))
    y = space.project(x)
    assert y.mean(1).abs().max() < 1e-6
    assert space.dim == 6
    assert torch.allclose(space.project(y), y, atol=1e-6)


def test_base_log_prob_and_score_consistent():
    space = EuclideanSpace(3, 3, mean_free=True)
    sched = GeometricSchedule(0.01, 2.0)
    x = space.project(torch.randn(5, 3, 3, dtype=torch.float64)).requires_grad_(True)
    lp = space.base_log_prob(x, sched)
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert torch.allclose(space.tangent(g), space.base_score(x, sched))


def test_base_log_prob_normalised_flat():
    """Integrate the base density on a grid in 1-D."""
    space = EuclideanSpace(dim=1)
    sched = GeometricSchedule(0.1, 1.5)
    xs = torch.linspace(-12, 12, 20001, dtype=torch.float64).reshape(-1, 1)
    p = space.base_log_prob(xs, sched).exp()
    assert float(torch.trapezoid(p, xs[:, 0])) == pytest.approx(1.0, abs=1e-6)


def test_sample_base_moments():
    space = EuclideanSpace(6, 3, mean_free=True)
    sched = GeometricSchedule(0.01, 2.0)
    x = space.sample_base(50_000, sched, torch.Generator().manual_seed(0))
    assert float(x.var(0).mean()) == pytest.approx(sched.h1_squared * (1 - 1 / 6), rel=0.02)


def test_unflatten_rejects_wrong_width():
    space = EuclideanSpace(13, 3)
    with pytest.raises(ValueError, match=r"\(N, 39\)"):
        space.unflatten(torch.zeros(4, 38))


@pytest.mark.parametrize("kw", [dict(n_particles=1, spatial_dim=2, mean_free=True),
                                dict(dim=0), dict(n_particles=3)])
def test_bad_spaces(kw):
    with pytest.raises(ValueError):
        EuclideanSpace(**kw)


def test_fifo_buffer_overwrites_oldest_and_roundtrips():
    buf = ReplayBuffer(capacity=5)
    for i in range(3):
        x = torch.full((2, 1), float(i))
        buf.add(x, -x, energy=torch.full((2,), float(i)))
    assert len(buf) == 5
    stored = sorted(buf.tensors()["x1"].flatten().tolist())
    assert stored == [0.0, 1.0, 1.0, 2.0, 2.0]  # one of the two oldest rows was overwritten
    state = buf.state_dict()
    other = ReplayBuffer(capacity=5)
    other.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = buf.sample(8, g1), other.sample(8, g2)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert torch.equal(a["adjoint"], -a["x1"])
    buf.add(torch.full((7, 1), 9.0), torch.zeros(7, 1), energy=torch.zeros(7))
    assert buf.tensors()["x1"].flatten().tolist() == [9.0] * 5


def test_buffer_errors():
    buf = ReplayBuffer(capacity=4)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="rows"):
        buf.add(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    buf.add(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(5).load_state_dict(buf.state_dict())
    assert math.isfinite(float(buf.sample(3)["x1"].sum()))


def test_external_energy_backpropagates_the_supplied_gradient():
    from adjoint_core.problem.energy import external_energy

    calls = []

    def fn(x):
        calls.append(x.requires_grad)
        return (x ** 2).sum(dim=(1, 2)), 2 * x

    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    e = external_energy(x, fn)
    (g,) = torch.autograd.grad((3 * e).sum(), x)
    assert torch.allclose(e, (x ** 2).sum(dim=(1, 2)))
    assert torch.allclose(g, 6 * x)
    assert calls == [False]  # called once, on detached states
