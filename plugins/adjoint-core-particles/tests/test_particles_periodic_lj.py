"""Periodic Lennard-Jones fluid: hand-computed values, gradient, invariances, registry."""

from __future__ import annotations

import math

import adjoint_core_particles.plugin as plugin
import pytest
import torch
from adjoint_core_particles import PeriodicLennardJonesEnergy, lj_periodic

from adjoint_core import ConfigError, PeriodicSpace, Registry
from adjoint_core.testing import (
    assert_energy_gradient,
    assert_energy_invariant,
    check_energy_contract,
)

DT = torch.float64


def _lj(r, rc=2.5):
    """Hand formula: 4(r^-12 - r^-6) - 4(rc^-12 - rc^-6) below rc, 0 above (ε = σ = 1)."""
    if r >= rc:
        return 0.0
    return 4 * (r**-12 - r**-6) - 4 * (rc**-12 - rc**-6)


def test_two_particles_hand_values_including_across_the_boundary():
    e = PeriodicLennardJonesEnergy(2, 2, box=6.0)
    assert e.box == (6.0, 6.0) and e.r_cut == 2.5
    x = torch.tensor([[[0.0, 0.0], [1.2, 0.0]],          # plain pair at r = 1.2
                      [[-2.9, 0.0], [2.8, 0.0]],         # across the boundary: r = 0.3 + ... = 0.3
                      [[-2.7, 2.9], [2.6, -2.8]],        # diagonal image: r = sqrt(0.7² + 0.3²)
                      [[0.0, 0.0], [2.6, 0.0]],          # beyond the cut-off
                      [[0.0, 0.0], [2.0 ** (1 / 6), 0.0]]], dtype=DT)  # pair minimum
    want = torch.tensor([_lj(1.2), _lj(0.3), _lj(math.hypot(0.7, 0.3)), 0.0,
                         -1.0 - 4 * (2.5**-12 - 2.5**-6)], dtype=DT)
    assert torch.allclose(e.energy(x), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(e.pair_distances(x)[:, 0],
                          torch.tensor([1.2, 0.3, math.hypot(0.7, 0.3), 2.6, 2.0 ** (1 / 6)],
                                       dtype=DT))
    # the shift makes the energy continuous at r_c
    r = torch.tensor([2.5 - 1e-9, 2.5 + 1e-9], dtype=DT)
    assert e.pair_potential(r).abs().max() < 1e-9
    unshifted = PeriodicLennardJonesEnergy(2, 2, box=6.0, shift=False)
    assert float(unshifted.energy(x[:1])) == pytest.approx(4 * (1.2**-12 - 1.2**-6))


def test_three_particles_sum_of_pairs_3d():
    e = PeriodicLennardJonesEnergy(3, 3, box=[5.0, 6.0, 7.0], epsilon=0.5, sigma=1.1,
                                   cutoff=2.0)
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.3, 0.2, -0.1], [-2.4, 2.9, 3.4]]], dtype=DT)
    rc = 2.2

    def phi(r):
        if r >= rc:
            return 0.0
        return 2 * ((1.1 / r) ** 12 - (1.1 / r) ** 6) - 2 * ((1.1 / rc) ** 12 - (1.1 / rc) ** 6)

    box = torch.tensor([5.0, 6.0, 7.0], dtype=DT)
    total = 0.0
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        d = x[0, i] - x[0, j]
        d = d - box * torch.round(d / box)
        total += phi(float(d.norm()))
    assert float(e.energy(x)) == pytest.approx(total, rel=1e-12)
    assert total != 0.0


def _fluid(batch=4, seed=0, n=8, box=4.0):
    """Random configurations without overlaps (rejection on pair distance >= 0.85)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < batch:
        x = (torch.rand(n, 2, generator=g, dtype=DT) - 0.5) * box
        d = x[:, None] - x[None]
        d = d - box * torch.round(d / box)
        r = d.norm(dim=-1) + 10 * torch.eye(n, dtype=DT)
        if r.min() > 0.85:
            out.append(x)
    return torch.stack(out)


def test_gradient_matches_finite_differences():
    e = PeriodicLennardJonesEnergy(8, 2, box=4.0, cutoff=1.9)
    x = _fluid()
    assert_energy_gradient(e, x, eps=1e-6, rtol=1e-5, atol=1e-6)
    _, g = e.energy_and_grad(x)
    # translation invariance: forces sum to zero
    assert g.sum(1).abs().max() < 1e-9


def test_invariant_to_wrapping_translation_and_permutation():
    e = PeriodicLennardJonesEnergy(8, 2, box=4.0, cutoff=1.9)
    x = _fluid(seed=1)
    # images x + kL (box from e.box), translations and permutations; atol: allclose's default
    assert_energy_invariant(e, x, symmetries=("periodic", "translation", "permutation"),
                            rtol=1e-10, atol=1e-8, n_trials=2)
    e0 = e.energy(x)
    k = torch.randint(-3, 4, x.shape, generator=torch.Generator().manual_seed(5)).to(DT)
    space = PeriodicSpace(box=4.0, n_particles=8, spatial_dim=2)
    assert torch.allclose(e.energy(space.project(x + 4.0 * k)), e0, rtol=1e-10)


def test_energy_contract():
    e = PeriodicLennardJonesEnergy(8, 2, box=4.0, cutoff=1.9)
    space = PeriodicSpace(box=4.0, n_particles=8, spatial_dim=2)
    check_energy_contract(e, space, _fluid(seed=2).float())
    check_energy_contract(e, space, _fluid(seed=3))


def test_defaults_density_and_cutoff_validation():
    e = lj_periodic()
    assert e.event_shape == (16, 2) and e.temperature == 1.0
    assert e.box[0] == pytest.approx(math.sqrt(16 / 0.6)) and e.density == pytest.approx(0.6)
    assert e.r_cut == 2.5 <= e.box[0] / 2
    with pytest.raises(ValueError, match="cut-off"):
        PeriodicLennardJonesEnergy(8, 2, box=4.0)  # r_c = 2.5 > L/2 = 2
    with pytest.raises(ValueError, match="box"):
        PeriodicLennardJonesEnergy(8, 2, box=[4.0, 4.0, 4.0], cutoff=1.0)
    d3 = PeriodicLennardJonesEnergy(16, 3, density=0.8, cutoff=1.3)
    assert d3.box[0] == pytest.approx((16 / 0.8) ** (1 / 3))
    # coincident or nearly coincident particles: finite energy and float32 gradient
    assert torch.isfinite(e.energy(torch.zeros(1, 16, 2))).all()
    close = torch.zeros(1, 16, 2)
    close[0, :, 0] = torch.arange(16) * 1e-3
    en, grad = e.energy_and_grad(close)
    assert torch.isfinite(en).all() and torch.isfinite(grad).all()


def test_registry_reads_the_box_from_the_space():
    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="particles")
    space = PeriodicSpace(box=[4.0, 5.0], n_particles=6, spatial_dim=2)
    e = reg.build("energy", "lj_periodic", {"cutoff": 2.0}, space=space)
    assert e.box == (4.0, 5.0) and e.event_shape == (6, 2)
    with pytest.raises(ConfigError, match="box"):
        reg.build("energy", "lj_periodic", {"cutoff": 2.0, "box": 4.0}, space=space)
    with pytest.raises(ConfigError, match="n_particles"):
        reg.build("energy", "lj_periodic", {"cutoff": 2.0, "n_particles": 7}, space=space)
    assert "lj_periodic" in reg.names("energy")
