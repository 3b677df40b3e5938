import math
import time

import pytest
import torch
from adjoint_core_particles import LennardJonesEnergy, lj13, lj55

from adjoint_core import EuclideanSpace
from adjoint_core.testing import (
    assert_energy_gradient,
    assert_energy_invariant,
    check_energy_contract,
)

EPS = 1e-6  # inside the distance, as in the papers' code


def lj_hand(points, epsilon=1.0, r_m=1.0, osc=1.0):
    """Plain-Python reference: ordered pairs i != j plus (osc/2) sum |x_i - mean|^2."""
    n = len(points)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d = math.sqrt(math.dist(points[i], points[j]) ** 2 + EPS)
            total += epsilon * ((r_m / d) ** 12 - 2 * (r_m / d) ** 6)
    dim = len(points[0])
    mean = [sum(p[k] for p in points) / n for k in range(dim)]
    total += osc * 0.5 * sum(sum((p[k] - mean[k]) ** 2 for k in range(dim)) for p in points)
    return total


def spread_config(n, gen, batch=1):
    """Particles on a jittered cubic grid, spacing 1.1, so no pair is closer than ~0.8."""
    side = math.ceil(n ** (1 / 3))
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(side, dtype=torch.float64)] * 3, indexing="ij"), -1
    ).reshape(-1, 3)[:n] * 1.1
    return grid + 0.1 * torch.rand(batch, n, 3, generator=gen, dtype=torch.float64)


def test_two_particles_at_r_m():
    e = LennardJonesEnergy(n_particles=2, spatial_dim=3)
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    # 2 * (1 - 2) = -2 ; oscillator 0.5 * (0.5^2 + 0.5^2) = 0.25 ; eps shifts by ~1e-5
    assert e.energy(x).item() == pytest.approx(-1.75, abs=1e-4)
    d2 = 1.0 + EPS
    exact = 2 * (d2**-6 - 2 * d2**-3) + 0.25
    assert e.energy(x).item() == pytest.approx(exact, abs=1e-12)
    assert e.lj_energy(x).item() == pytest.approx(exact - 0.25, abs=1e-12)
    assert e.oscillator_energy(x).item() == pytest.approx(0.25, abs=1e-12)


def test_two_particles_other_constants():
    e = LennardJonesEnergy(n_particles=2, spatial_dim=2, epsilon=2.0, r_m=1.5,
                           oscillator_scale=0.0)
    x = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]], dtype=torch.float64)
    # s = r_m / d = 0.5 -> per ordered pair 2 * (0.5^12 - 2 * 0.5^6); two ordered pairs
    expected = 2 * 2.0 * (0.5**12 - 2 * 0.5**6)
    assert e.energy(x).item() == pytest.approx(expected, rel=1e-6)


def test_three_and_four_particles_hand_values():
    pts3 = [(0.0, 0.0, 0.0), (1.2, 0.0, 0.0), (0.3, 0.9, 0.4)]
    pts4 = [(0.0, 0.0, 0.0), (1.0, 0.1, 0.0), (0.0, 1.1, 0.2), (0.5, 0.5, 0.9)]
    for pts, kw in [(pts3, {}), (pts4, {"epsilon": 0.7, "r_m": 1.1, "oscillator_scale": 2.0})]:
        e = LennardJonesEnergy(n_particles=len(pts), spatial_dim=3, **kw)
        x = torch.tensor([pts], dtype=torch.float64)
        hand = lj_hand(pts, kw.get("epsilon", 1.0), kw.get("r_m", 1.0),
                       kw.get("oscillator_scale", 1.0))
        assert e.energy(x).item() == pytest.approx(hand, rel=1e-12, abs=1e-12)


def test_presets():
    assert lj13().event_shape == (13, 3)
    assert lj55().event_shape == (55, 3)
    e = lj13(temperature=2.0, oscillator_scale=0.5)
    assert e.temperature == 2.0 and e.oscillator_scale == 0.5
    assert e.epsilon == 1.0 and e.r_m == 1.0


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    e = LennardJonesEnergy(n_particles=5, spatial_dim=3, epsilon=1.3, r_m=1.05,
                           oscillator_scale=0.7)
    x = spread_config(5, gen, batch=2)
    assert_energy_gradient(e, x, eps=1e-6, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("proper", [True, False])
def test_invariances(proper):
    gen = torch.Generator().manual_seed(4)
    e = lj13()
    x = spread_config(13, gen, batch=4)
    x = x - x.mean(1, keepdim=True)
    rotation = "rotation" if proper else "reflection"
    assert_energy_invariant(e, x, symmetries=(rotation, "translation"), rtol=1e-10, atol=1e-9,
                            translation_scale=5.0)
    assert_energy_invariant(e, x, symmetries=("permutation",), rtol=1e-12, atol=1e-10)


def test_energy_contract():
    gen = torch.Generator().manual_seed(7)
    space = EuclideanSpace(13, 3, mean_free=True)
    check_energy_contract(lj13(), space, spread_config(13, gen, batch=3).float())
    check_energy_contract(lj13(oscillator_scale=0.5), space, spread_config(13, gen, batch=3))


def test_gradient_is_translation_free():
    gen = torch.Generator().manual_seed(5)
    x = spread_config(13, gen, batch=3)
    _, g = lj13().energy_and_grad(x)
    assert torch.allclose(g.sum(dim=1), torch.zeros(3, 3, dtype=torch.float64), atol=1e-8)


def test_lj55_batch_is_vectorised_and_fast():
    gen = torch.Generator().manual_seed(6)
    e = lj55()
    x = spread_config(55, gen, batch=256).float()
    e.energy_and_grad(x)  # warm-up
    start = time.perf_counter()
    energy, grad = e.energy_and_grad(x)
    elapsed = time.perf_counter() - start
    assert energy.shape == (256,) and grad.shape == (256, 55, 3)
    assert torch.isfinite(energy).all() and torch.isfinite(grad).all()
    # a few batched kernels, not a Python loop over samples (~0.02 s on one core)
    assert elapsed < 2.0
    # batched result equals per-sample results
    single = torch.cat([e.energy(x[k : k + 1]) for k in range(0, 256, 64)])
    assert torch.allclose(single, energy[::64], rtol=1e-5)


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"expects states of shape \(batch, 13, 3\)"):
        lj13().energy(torch.zeros(2, 12, 3))
    with pytest.raises(ValueError, match="expects states of shape"):
        lj13().lj_energy(torch.zeros(2, 13, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_particles": 1}, "n_particles must be >= 2, got 1"),
        ({"n_particles": 0}, "n_particles must be >= 2, got 0"),
        ({"spatial_dim": 0}, "spatial_dim must be >= 1, got 0"),
        ({"epsilon": 0.0}, "epsilon must be > 0, got 0.0"),
        ({"epsilon": -1.0}, "epsilon must be > 0, got -1.0"),
        ({"r_m": -0.5}, "r_m must be > 0, got -0.5"),
        ({"r_m": float("inf")}, "r_m must be finite"),
        ({"oscillator_scale": -1.0}, "oscillator_scale must be >= 0, got -1.0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"temperature": float("inf")}, "temperature must be finite"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LennardJonesEnergy(**kwargs)
