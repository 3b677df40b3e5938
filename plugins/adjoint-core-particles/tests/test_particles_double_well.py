import math

import pytest
import torch
from adjoint_core_particles import DoubleWellEnergy, dw4

from adjoint_core import EuclideanSpace
from adjoint_core.testing import (
    assert_energy_gradient,
    assert_energy_invariant,
    check_energy_contract,
)


def dw_pair(d, a=0.0, b=-4.0, c=0.9, d0=4.0):
    u = d - d0
    return a * u + b * u**2 + c * u**4


def test_defaults_are_dw4():
    e = DoubleWellEnergy()
    assert e.event_shape == (4, 2)
    assert (e.a, e.b, e.c, e.offset, e.temperature) == (0.0, -4.0, 0.9, 4.0, 1.0)
    assert dw4().event_shape == (4, 2)


def test_two_particles_hand_value():
    e = DoubleWellEnergy(n_particles=2, spatial_dim=2)
    # d = 3 -> u = -1: -4 * 1 + 0.9 * 1 = -3.1 ; d = 4 -> 0 ; d = 5.5 -> u = 1.5
    x = torch.tensor(
        [[[0.0, 0.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 5.0]], [[0.0, 0.0], [3.3, 4.4]]],
        dtype=torch.float64,
    )
    expected = [-3.1, 0.0, -4.0 * 1.5**2 + 0.9 * 1.5**4]
    assert torch.allclose(e.energy(x), torch.tensor(expected, dtype=torch.float64), atol=1e-7)


def test_three_particles_general_constants_hand_value():
    a, b, c, d0 = 0.3, -2.0, 0.5, 2.0
    e = DoubleWellEnergy(n_particles=3, spatial_dim=2, a=a, b=b, c=c, offset=d0)
    pts = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)]  # pair distances 3, 4, 5
    expected = sum(
        dw_pair(math.dist(pts[i], pts[j]), a, b, c, d0) for i in range(3) for j in range(i + 1, 3)
    )
    # by hand: u = 1, 2, 3 -> (0.3 - 2 + 0.5) + (0.6 - 8 + 8) + (0.9 - 18 + 40.5) = 22.8
    assert expected == pytest.approx(22.8)
    x = torch.tensor([pts], dtype=torch.float64)
    assert e.energy(x).item() == pytest.approx(22.8, abs=1e-7)


def test_three_particles_in_3d():
    e = DoubleWellEnergy(n_particles=3, spatial_dim=3)
    pts = [(0.0, 0.0, 0.0), (1.0, 2.0, 2.0), (-2.0, 0.0, 0.0)]  # d = 3, 2, sqrt(17)
    expected = sum(dw_pair(math.dist(pts[i], pts[j])) for i in range(3) for j in range(i + 1, 3))
    assert e.energy(torch.tensor([pts], dtype=torch.float64)).item() == pytest.approx(
        expected, abs=1e-7
    )


def test_float32_and_counter():
    e = dw4()
    x = torch.randn(5, 4, 2) * 3
    out = e.energy(x)
    assert out.shape == (5,) and out.dtype == torch.float32
    assert e.n_evaluations == 5


def test_energy_contract():
    space = EuclideanSpace(4, 2, mean_free=True)
    check_energy_contract(dw4(), space)
    x = 3 * torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    check_energy_contract(DoubleWellEnergy(a=0.2, temperature=2.0), space, x)


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(1)
    e = DoubleWellEnergy(n_particles=4, spatial_dim=2, a=0.2)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64) * 3
    energy, grad = e.energy_and_grad(x)
    assert energy.shape == (3,) and grad.shape == x.shape
    assert_energy_gradient(e, x, eps=1e-6, rtol=1e-6, atol=1e-6)


def test_gradient_finite_at_coincident_particles():
    e = dw4()
    x = torch.zeros(1, 4, 2)
    _, g = e.energy_and_grad(x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("proper", [True, False])
def test_invariances(proper):
    gen = torch.Generator().manual_seed(2)
    e = dw4()
    x = torch.randn(6, 4, 2, generator=gen, dtype=torch.float64) * 3
    rotation = "rotation" if proper else "reflection"
    assert_energy_invariant(e, x, symmetries=(rotation, "translation"), rtol=1e-10, atol=1e-9,
                            translation_scale=10.0)
    assert_energy_invariant(e, x, symmetries=("permutation",), rtol=1e-12, atol=1e-10)


def test_wrong_shape_raises():
    e = dw4()
    with pytest.raises(ValueError, match="expects states of shape"):
        e.energy(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="expects states of shape"):
        e.energy(torch.zeros(2, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_particles": 1}, "n_particles must be >= 2, got 1"),
        ({"n_particles": 2.5}, "n_particles must be an integer"),
        ({"spatial_dim": 0}, "spatial_dim must be >= 1, got 0"),
        ({"c": -1.0}, "unbounded below"),
        ({"c": 0.0, "b": -1.0}, "unbounded below"),
        ({"offset": float("nan")}, "offset must be finite"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be finite"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DoubleWellEnergy(**kwargs)


def test_harmonic_pair_potential_allowed():
    e = DoubleWellEnergy(n_particles=2, spatial_dim=1, a=0.0, b=1.0, c=0.0, offset=1.0)
    x = torch.tensor([[[0.0], [3.0]]], dtype=torch.float64)
    assert e.energy(x).item() == pytest.approx(4.0, abs=1e-7)
