"""Known answer on a 3-torus: Adjoint Sampling of a product of von Mises densities.

Target: ``p(τ) ∝ Π_k exp(κ_k cos(τ_k − μ_k))`` on ``[-π, π)³`` (``VonMisesEnergy`` with
``box = 2π``), with one location near the cut at ±π so that wrapping matters. Sampler:
:class:`TorsionalSpace`, the AS-mol torsional schedule (``σ_min = π/100``, ``σ_max = π``) and a
:class:`PeriodicMLP`, trained briefly on the CPU and compared with the exact moments.

Trained for 40 epochs × 50 gradient steps (≈ 10–17 s on one loaded CPU thread). Stated
tolerances (6,000 generated samples with 300 SDE steps): per torsion, circular mean within
0.1 rad of ``μ_k``; concentration ``κ̂`` (the ``κ`` whose ``I_1(κ)/I_0(κ)`` is the sample mean
resultant length ``R``) within 15 % of ``κ_k``, and ``R`` within 0.04 of ``I_1(κ)/I_0(κ)``;
total-variation distance of 24-bin histograms against 20,000 exact samples below 0.06.
Measured over three seeds: mean errors ≤ 0.065 rad, ``κ̂/κ`` in 0.92–0.97, ``|ΔR|`` ≤ 0.028;
the remaining error is training (a slight under-concentration), not statistics (the standard
error of the mean is ≈ 0.01 rad).
"""

import math

import torch

from adjoint_core import AdjointSampler, ReplayBuffer, TorsionalSpace
from adjoint_core.problem.periodic import PeriodicMLP
from adjoint_core.problem.torsional import TWO_PI, angle_difference, torsional_schedule
from adjoint_core.problem.von_mises import circular_moments, von_mises

DT = torch.float64


def _kappa_from_r(r: torch.Tensor) -> torch.Tensor:
    """Invert ``A(κ) = I_1(κ)/I_0(κ)`` by bisection (``A`` is increasing), elementwise."""
    lo, hi = torch.zeros_like(r), torch.full_like(r, 200.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        a = torch.special.i1e(mid) / torch.special.i0e(mid)
        lo, hi = torch.where(a < r, mid, lo), torch.where(a < r, hi, mid)
    return 0.5 * (lo + hi)


def test_known_answer_von_mises_on_a_3_torus():
    torch.manual_seed(0)
    kappa = [2.0, 1.0, 4.0]
    mu = [1.0, -2.5, 3.0]
    energy = von_mises(kappa=kappa, mu=mu, box=TWO_PI)
    space = TorsionalSpace(3)
    model = PeriodicMLP(TWO_PI, 3, hidden=64, n_layers=2, time_dim=16)
    sampler = AdjointSampler(
        energy, space, torsional_schedule(), model, ReplayBuffer(4096),
        settings=dict(n_epochs=40, samples_per_epoch=256, grad_steps_per_epoch=50,
                      train_batch_size=256, n_sde_steps=40, lr=3e-3, max_grad_norm=None),
        seed=0)
    sampler.fit()
    x = sampler.sample(6000, n_steps=300).double()
    assert (x >= -math.pi).all() and (x <= math.pi).all()
    m, r = circular_moments(x, TWO_PI)
    m0, r0 = energy.moments()
    assert (angle_difference(m, m0).abs() < 0.1).all(), (m, m0)
    k_hat = _kappa_from_r(r)
    assert torch.allclose(k_hat, torch.tensor(kappa, dtype=DT), rtol=0.15), (k_hat, kappa)
    assert torch.allclose(r, r0, atol=0.04), (r, r0)
    exact = energy.sample(20_000, torch.Generator().manual_seed(1)).double()
    for k in range(3):
        h = torch.histc(x[:, k], 24, -math.pi, math.pi) / x.shape[0]
        h0 = torch.histc(exact[:, k], 24, -math.pi, math.pi) / exact.shape[0]
        tv = 0.5 * float((h - h0).abs().sum())
        assert tv < 0.06, (k, tv)
    # the untrained base is nearly uniform (R ≈ exp(-h(1)²/2) ≈ 0.007): the check has teeth
    base = space.sample_base(6000, torsional_schedule(), torch.Generator().manual_seed(2))
    assert float(circular_moments(base, TWO_PI)[1].max()) < 0.05
