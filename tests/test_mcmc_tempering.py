"""Parallel tempering, convergence diagnostics and counters of adjoint_core.mcmc.samplers.

Stated tolerances: the left-well mass of an asymmetric 1-D double well within 0.04 of
quadrature (tempered) while untempered chains started in the right well stay there (< 0.05);
the integrated autocorrelation time of an AR(1) trace within 12 % of (1+φ)/(1-φ); split-R̂
below 1.02 for independent chains and above 1.5 for chains with different means. Chains are
seeded.
"""

import math

import pytest
import torch

from adjoint_core import Energy, EuclideanSpace, run_mcmc
from adjoint_core.mcmc.samplers import MCMCSettings, _split_rhat, integrated_autocorr_time
from adjoint_core.problem.gaussian import gaussian


class _DoubleWell(Energy):
    """``E(x) = a (x² − 1)² + b x`` in 1-D: barrier ≈ a, left well favoured for b > 0."""

    def __init__(self, a: float = 8.0, b: float = 0.5):
        super().__init__((1,))
        self.a, self.b = a, b

    def _energy(self, x):
        x = x[..., 0]
        return self.a * (x.square() - 1).square() + self.b * x

    def left_mass(self) -> float:
        grid = torch.linspace(-4, 4, 200_001, dtype=torch.float64)
        w = torch.exp(-(self.a * (grid.square() - 1).square() + self.b * grid))
        return float(w[grid < 0].sum() / w.sum())


def test_parallel_tempering_finds_both_modes():
    energy = _DoubleWell()
    space = EuclideanSpace(dim=1)
    x0 = torch.ones(200, 1)
    common = dict(n_chains=200, n_steps=600, burn_in=200, thin=3, step_size=0.3, x0=x0)
    plain = run_mcmc(energy, space, generator=torch.Generator().manual_seed(0), **common)
    energy.n_evaluations = 0
    pt = run_mcmc(energy, space, temperatures=[1.0, 2.0, 4.5, 10.0],
                  generator=torch.Generator().manual_seed(0), **common)
    exact = energy.left_mass()
    assert exact > 0.6  # the left well is the heavier one
    assert float((plain.samples < 0).double().mean()) < 0.05
    assert float((pt.samples < 0).double().mean()) == pytest.approx(exact, abs=0.04)
    # counting: 4 temperatures x 200 chains, initial states plus 800 steps
    assert pt.energy_evals == 4 * 200 * (1 + 800) == energy.n_evaluations
    d = pt.diagnostics()
    assert d["temperatures"] == [1.0, 2.0, 4.5, 10.0]
    assert len(d["acceptance_per_temperature"]) == 4 and len(d["swap_acceptance"]) == 3
    assert all(0.05 < s < 1 for s in d["swap_acceptance"])
    assert all(abs(a - 0.574) < 0.08 for a in d["acceptance_per_temperature"])
    # hotter replicas take larger steps
    assert d["step_sizes"][-1] > d["step_sizes"][0]
    assert pt.samples.shape == (200 * 200, 1)
    assert d["rhat_energy"] < 1.1 and d["frozen_chains"] == 0


def test_tempering_keeps_a_gaussian_exact():
    """Exchanges with hotter replicas leave the target moments of the T=1 chains unchanged."""
    energy = gaussian(mean=[0.5, -0.5], cov=[[1.0, 0.3], [0.3, 0.5]])
    res = run_mcmc(energy, EuclideanSpace(dim=2), n_chains=300, n_steps=300, burn_in=150,
                   thin=3, step_size=0.5, temperatures=[1.0, 1.7, 3.0],
                   generator=torch.Generator().manual_seed(1))
    mu, cov = energy.moments()
    x = res.samples.double()
    assert torch.allclose(x.mean(0), mu, atol=0.05)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)


def test_mala_mean_free_with_tempering_stays_mean_free():
    energy = gaussian(n_particles=4, spatial_dim=3, std=[0.8, 1.0, 1.2])
    space = EuclideanSpace(4, 3, mean_free=True)
    res = run_mcmc(energy, space, n_chains=64, n_steps=100, burn_in=50, step_size=0.3,
                   temperatures=[1.0, 2.0], generator=torch.Generator().manual_seed(2),
                   batch_size=50)
    assert res.samples.mean(1).abs().max() < 1e-5
    assert res.energy_evals == 2 * 64 * 151


def test_autocorrelation_time_of_ar1():
    g = torch.Generator().manual_seed(3)
    phi, n, c = 0.8, 4000, 16
    x = torch.zeros(n, c, dtype=torch.float64)
    noise = torch.randn(n, c, generator=g, dtype=torch.float64)
    x[0] = noise[0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    assert integrated_autocorr_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.12)
    assert integrated_autocorr_time(noise) == pytest.approx(1.0, abs=0.15)
    assert _split_rhat(noise) < 1.02
    shifted = noise + torch.arange(c, dtype=torch.float64)
    assert _split_rhat(shifted) > 1.5


def test_settings_and_ladder_validation():
    with pytest.raises(ValueError, match="start at 1.0"):
        MCMCSettings(temperatures=[2.0, 3.0])
    with pytest.raises(ValueError, match="increasing"):
        run_mcmc(gaussian(dim=1), EuclideanSpace(dim=1), temperatures=[1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="swap_every"):
        run_mcmc(gaussian(dim=1), EuclideanSpace(dim=1), swap_every=0)
    with pytest.raises(ValueError):
        MCMCSettings(n_chains=0)


@pytest.mark.parametrize("mean_free", [False, True])
def test_hmc_gaussian_moments_and_counting(mean_free):
    if mean_free:
        energy = gaussian(n_particles=3, spatial_dim=2, std=[0.7, 1.3],
                          mean=[0.5, 0.0, -0.5, 1.0, 0.0, -1.0])
        space = EuclideanSpace(3, 2, mean_free=True)
        mu, cov = energy.moments(mean_free_particles=(3, 2))
    else:
        energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]], temperature=0.5)
        space = EuclideanSpace(dim=2)
        mu, cov = energy.moments()
    res = run_mcmc(energy, space, n_chains=300, n_steps=200, burn_in=100, thin=2,
                   step_size=0.3, method="hmc", n_leapfrog=5,
                   generator=torch.Generator().manual_seed(7))
    x = res.samples.reshape(res.samples.shape[0], -1).double()
    assert torch.allclose(x.mean(0), mu, atol=0.05), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)
    assert abs(res.acceptance - 0.65) < 0.08
    assert res.energy_evals == 300 * (1 + 300 * 5) == energy.n_evaluations
    if mean_free:
        assert res.samples.mean(1).abs().max() < 1e-5


def test_relax_moves_downhill_and_is_counted():
    from adjoint_core.mcmc.samplers import relax

    energy = gaussian(n_particles=4, spatial_dim=3, std=[0.5, 0.5, 0.5])
    space = EuclideanSpace(4, 3, mean_free=True)
    x0 = space.project(torch.randn(32, 4, 3, generator=torch.Generator().manual_seed(8)) * 3)
    x, n = relax(energy, space, x0, 50, batch_size=10)
    assert n == 32 * 51
    assert (energy.energy(x) <= energy.energy(x0)).all()
    assert float(energy.energy(x).max()) < 0.05
    assert x.mean(1).abs().max() < 1e-5
    res = run_mcmc(energy, space, n_chains=32, n_steps=2, burn_in=0, relax_steps=5,
                   method="hmc", n_leapfrog=2, generator=torch.Generator().manual_seed(9))
    assert res.energy_evals == 32 * 6 + 32 * (1 + 2 * 2)


def test_mcmc_cli_writes_samples_and_report(tmp_path):
    import json

    import numpy as np
    import yaml

    from adjoint_core.app.cli import main

    cfg = {"seed": 1, "energy": {"name": "gaussian", "mean": [1.0, 0.0]},
           "space": {"name": "euclidean", "dim": 2},
           "mcmc": {"method": "hmc", "n_chains": 50, "burn_in": 20, "n_steps": 20, "thin": 5,
                    "n_leapfrog": 3, "temperatures": [1.0, 2.0]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "s.npy"
    assert main(["mcmc", str(path), "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (4 * 50, 2)
    report = json.loads(out.with_suffix(".json").read_text())
    d = report["diagnostics"]
    assert d["energy_evals"] == 2 * 50 * (1 + 40 * 3)
    assert len(d["swap_acceptance"]) == 1 and "rhat_energy" in d
    path.write_text(yaml.safe_dump({**cfg, "mcmc": {"n_chains": 0}}))
    assert main(["mcmc", str(path), "--out", str(out)]) == 2  # config error, named field


class _Quartic(Energy):
    """``E(x) = Σ x⁴``: stiff far from the origin (curvature 12 x²)."""

    def __init__(self, dim: int) -> None:
        super().__init__((dim,))

    def _energy(self, x):
        return x.pow(4).sum(-1)


def test_per_chain_step_size_rescues_a_stiff_chain():
    """One chain starts at x = 6 (curvature ~430 vs ~4 typical). With one shared HMC step size,
    tuned by the 99 typical chains, it rejects every proposal (frozen, an outlier chain); with a
    step size per chain it shrinks its own step, walks down and equilibrates."""
    dim, n = 2, 100
    x0 = 0.3 * torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    x0[0] = 6.0
    kw = dict(n_chains=n, n_steps=200, burn_in=300, thin=2, step_size=0.5, method="hmc",
              n_leapfrog=5, x0=x0)
    shared = run_mcmc(_Quartic(dim), EuclideanSpace(dim=dim),
                      generator=torch.Generator().manual_seed(1), **kw)
    per = run_mcmc(_Quartic(dim), EuclideanSpace(dim=dim),
                   generator=torch.Generator().manual_seed(1), step_size_per_chain=True, **kw)
    d_shared, d_per = shared.diagnostics(), per.diagnostics()
    assert float(shared.energy_chains()[:, 0].min()) > 1000  # never left x = 6 (E = 2592)
    assert d_shared["frozen_chains"] == 1 and d_shared["outlier_chains"] == 1
    assert d_shared["rhat_energy_without_outliers"] < 1.1 < d_shared["rhat_energy"]
    assert d_per["frozen_chains"] == 0 and d_per["outlier_chains"] == 0
    assert float(per.energy_chains()[:, 0].max()) < 10
    lo, hi = d_per["step_size_range"]
    assert lo < hi and per.chain_step_sizes.shape == (n,)
    assert d_shared["step_size_range"][0] == d_shared["step_size_range"][1]
    # E[x⁴] per coordinate under exp(-x⁴) is Γ(5/4)/Γ(1/4) = 1/4
    assert float(per.sample_energies.double().mean()) == pytest.approx(dim / 4, abs=0.05)
    assert abs(per.acceptance - 0.65) < 0.05
