"""Importance-weighted regression (``train.reweight``): stored path weights, truncated draw
probabilities, weighted buffer draws, and the whole loop on a Gaussian whose answer is exact.

Tolerances as in test_known_answer.py: mean within 0.1, covariance entries within 0.15, from
6,000 samples.
"""

import math

import pytest
import torch

from adjoint_core import (
    MLP,
    AdjointSampler,
    EuclideanSpace,
    GeometricSchedule,
    IDEMSampler,
    ReplayBuffer,
)
from adjoint_core.problem.gaussian import gaussian


def _sampler(reweight=True, capacity=4096, seed=0, **kw):
    torch.manual_seed(seed)
    energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]])
    settings = dict(n_epochs=60, samples_per_epoch=256, grad_steps_per_epoch=100,
                    train_batch_size=256, n_sde_steps=60, lr=2e-3, max_grad_norm=None,
                    reweight=reweight, **kw)
    return AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(0.01, 2.0),
                          MLP(2, hidden=64, n_layers=2), ReplayBuffer(capacity),
                          settings=settings, seed=seed)


def test_stored_log_weights_are_the_path_log_weights():
    s = _sampler()
    s.fit(3)  # a non-trivial control
    s.generator.manual_seed(11)
    s.collect(32)
    rows = s.buffer.tensors()
    s.generator.manual_seed(11)
    x, lw = s.path_log_weights(32)
    torch.testing.assert_close(rows["x1"][-32:], x)
    torch.testing.assert_close(rows["log_weight"][-32:], lw)


def test_draw_probabilities_are_truncated_weights():
    s = _sampler(reweight_max=4.0)
    n = 100
    lw = torch.zeros(n, dtype=torch.float64)
    lw[0] = math.log(50.0)  # one dominant row
    lw[1] = -math.inf  # a path the target cannot produce
    s.buffer.add(torch.zeros(n, 2), torch.zeros(n, 2), energy=torch.zeros(n), log_weight=lw)
    p = s.buffer_probabilities()
    w = lw.exp()
    cap = 4.0 * float(w.mean())
    expect = w.clamp(max=cap)
    torch.testing.assert_close(p, expect / expect.sum())
    assert p[1] == 0 and p[0] == pytest.approx(cap / float(expect.sum()))
    # weighted draws follow p
    draws = s.buffer.sample(200_000, torch.Generator().manual_seed(0), probs=p)
    assert draws["x1"].shape == (200_000, 2)
    idx = torch.multinomial(p, 200_000, replacement=True,
                            generator=torch.Generator().manual_seed(0))
    freq0 = float((idx == 0).double().mean())
    assert freq0 == pytest.approx(float(p[0]), abs=0.005)
    with pytest.raises(ValueError, match="probs must have shape"):
        s.buffer.sample(4, probs=torch.ones(3))
    assert _sampler(reweight=False).buffer_probabilities() is None


def test_tempered_draw_probabilities():
    n = 64
    lw = torch.linspace(-6.0, 2.0, n, dtype=torch.float64)
    lw[3] = -math.inf
    probs = {}
    for beta in (1.0, 0.25):
        s = _sampler(reweight_max=1e9, reweight_power=beta)
        s.buffer.add(torch.zeros(n, 2), torch.zeros(n, 2), energy=torch.zeros(n), log_weight=lw)
        probs[beta] = s.buffer_probabilities()
        expect = (beta * lw).exp()
        torch.testing.assert_close(probs[beta], expect / expect.sum())
    # tempering flattens the weights: a larger effective sample size, same ordering
    ess = {b: float(1 / (p ** 2).sum()) / n for b, p in probs.items()}
    assert ess[0.25] > 3 * ess[1.0]
    assert probs[0.25][3] == 0 and bool((probs[0.25][4:].diff() > 0).all())
    # constant weights (the optimal control) give uniform draws for any power
    s = _sampler(reweight_power=0.3)
    s.buffer.add(torch.zeros(n, 2), torch.zeros(n, 2), energy=torch.zeros(n),
                 log_weight=torch.full((n,), -7.0, dtype=torch.float64))
    torch.testing.assert_close(s.buffer_probabilities(),
                               torch.full((n,), 1 / n, dtype=torch.float64))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="reweight_power"):
            _sampler(reweight_power=bad)
    # a uniform share keeps every row drawable, including the one of weight 0
    s = _sampler(reweight_max=1e9, reweight_power=0.25, reweight_uniform=0.4)
    s.buffer.add(torch.zeros(n, 2), torch.zeros(n, 2), energy=torch.zeros(n), log_weight=lw)
    p = s.buffer_probabilities()
    torch.testing.assert_close(p, 0.4 / n + 0.6 * probs[0.25])
    assert float(p.sum()) == pytest.approx(1.0) and p[3] == pytest.approx(0.4 / n)
    with pytest.raises(ValueError, match="reweight_uniform"):
        _sampler(reweight_uniform=1.0)
    with pytest.raises(ValueError, match="train.reweight_power: 0.5: only acts with reweight"):
        _sampler(reweight=False, reweight_power=0.5)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_reweighted_adjoint_sampling_on_a_gaussian(power):
    # Weighted draws make each batch noisier; the EMA average keeps the final control steady
    # (without it the sample mean of the last epoch wanders by ~0.1 on this budget). Tempered
    # weights (power < 1) have the same fixed point.
    s = _sampler(ema_decay=0.995, reweight_power=power)
    rows = s.fit()
    assert "buffer_ess" in rows[-1] and 0 < rows[-1]["buffer_ess"] <= 1
    e = s.buffer.tensors()["energy"].double()  # the log's buffer statistics: 1,024 drawn rows
    assert float(e.min()) <= rows[-1]["buffer_energy_median"] <= float(e.max())
    assert abs(rows[-1]["buffer_energy_median"] - float(e.median())) < 0.2
    x = s.sample(6000, n_steps=100).double()
    mu, cov = s.energy.moments()
    assert torch.allclose(x.mean(0), mu, atol=0.1), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), (torch.cov(x.T), cov)


def test_idem_rejects_reweight():
    energy = gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="reweight"):
        IDEMSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(0.01, 2.0),
                    MLP(2, hidden=8, n_layers=1), settings={"reweight": True})
