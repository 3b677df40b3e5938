"""PreconditionedControl: the output scaling c(t)/r(t), its loss weights, and that it is opt-in."""

import math

import torch

from adjoint_core.problem.models import (
    MLP,
    PreconditionedControl,
    bridge_loss_weight,
    control_loss_weight,
)
from adjoint_core.problem.schedules import GeometricSchedule


def test_scales_limits_and_forward():
    sch = GeometricSchedule(1e-3, 1.0)
    net = MLP(4, hidden=8, n_layers=1)
    torch.nn.init.normal_(net.net[-1].weight)
    pre = PreconditionedControl(net, sch, data_scale=0.5)
    h1 = sch.h1_squared
    t = torch.tensor([0.0, 0.5, 0.98])
    c, rem = pre.scales(t)
    assert math.isclose(float(c[0]), 0.5, rel_tol=1e-9)          # c = s at t = 0
    assert math.isclose(float(rem[0]), h1, rel_tol=1e-12)
    assert abs(float(c[2]) / math.sqrt(float(rem[2])) - 1) < 1e-3  # c ≈ sqrt(r) as t → 1
    assert torch.isfinite(pre.output_scale(torch.ones(1))).all()   # floored at t = 1
    x = torch.randn(3, 4)
    u = pre(t, x)
    assert torch.allclose(u, net(t, x) * pre.output_scale(t).float()[:, None])
    # weights: None for a plain network, (r/c)² and 1/c² for the wrapper
    assert control_loss_weight(net, t) is None and bridge_loss_weight(net, t) is None
    assert torch.allclose(control_loss_weight(pre, t), (rem / c) ** 2)
    assert torch.allclose(bridge_loss_weight(pre, t), c ** -2)


def test_bridge_loss_is_uniform_in_inner_output():
    """(r u − d)²/c² equals (F − d/c)²: the weighted loss regresses the inner output."""
    sch = GeometricSchedule(1e-3, 1.0)
    net = MLP(4, hidden=8, n_layers=1)
    torch.nn.init.normal_(net.net[-1].weight)
    pre = PreconditionedControl(net, sch).double()
    t = torch.rand(16, dtype=torch.float64) * 0.999
    x, d = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    c, rem = pre.scales(t)
    lhs = bridge_loss_weight(pre, t)[:, None] * (rem[:, None] * pre(t, x) - d) ** 2
    rhs = (net(t, x) - d / c[:, None]) ** 2
    assert torch.allclose(lhs, rhs, rtol=1e-6, atol=1e-9)


def test_noise_floor_bounds_c_and_constant_scale_is_displacement_form():
    """c(t) ≥ noise_floor; with noise_floor = data_scale, c is constant and the network
    predicts the displacement r·u = c·F at every time with a uniform bridge loss."""
    sch = GeometricSchedule(1e-3, 1.0)
    net = MLP(4, hidden=8, n_layers=1)
    t = torch.linspace(0, 1, 11)
    c_plain, _ = PreconditionedControl(net, sch, data_scale=0.5).scales(t)
    c_floor, rem = PreconditionedControl(net, sch, data_scale=0.5, noise_floor=0.05).scales(t)
    assert torch.equal(c_floor, c_plain.clamp_min(0.05)) and (c_plain < 0.05).any()
    const = PreconditionedControl(net, sch, data_scale=1.0, noise_floor=1.0)
    c, rem = const.scales(t)
    assert torch.allclose(c, torch.ones_like(c))
    x = torch.randn(11, 4)
    assert torch.allclose(rem.float()[:, None] * const(t, x), net(t, x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(bridge_loss_weight(const, t), torch.ones(11, dtype=torch.float64))
    assert torch.allclose(control_loss_weight(const, t), rem ** 2)
    try:
        PreconditionedControl(net, sch, noise_floor=-1.0)
    except ValueError as exc:
        assert "noise_floor" in str(exc)
    else:
        raise AssertionError("a negative noise_floor must be rejected")
