"""Regression times drawn uniformly in the base variance (``train.variance_time_fraction``)."""

import pytest
import torch
from pydantic import ValidationError

from adjoint_core import (
    MLP,
    AdjointSampler,
    EuclideanSpace,
    GeometricSchedule,
    LinearSchedule,
    ReplayBuffer,
    SchrodingerBridgeSampler,
)
from adjoint_core.problem.gaussian import gaussian
from adjoint_core.training.objectives.idem import IDEMSampler
from adjoint_core.training.trainer import TrainSettings


def _sampler(rho, seed=0, **settings):
    energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]])
    torch.manual_seed(seed)
    return AdjointSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(1e-3, 1.0),
                          MLP(2, hidden=64, n_layers=2), ReplayBuffer(4096),
                          settings={"variance_time_fraction": rho, **settings}, seed=seed)


def test_zero_fraction_is_the_papers_uniform_stream():
    s = _sampler(0.0, seed=3)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(s.regression_times(1000), torch.rand(1000, generator=g))


def test_full_fraction_is_uniform_in_accumulated_variance():
    s = _sampler(1.0)
    t = s.regression_times(200_000, torch.float64)
    lam = s.schedule.h2(t) / s.schedule.h1_squared
    # h(t)²/h(1)² ~ U(0, 1): its quantiles are the probabilities.
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    assert torch.allclose(torch.quantile(lam, q), q, atol=5e-3)
    # Median time of the geometric schedule: ln 2 / (2 ln r), r = 1000.
    assert float(t.median()) == pytest.approx(0.0502, abs=2e-3)


def test_mixture_fraction_is_respected():
    s = _sampler(0.5)
    t = s.regression_times(200_000, torch.float64)
    # P(t > 0.5) = 0.5 · 0.5 (uniform part) + 0.5 · P_var(t > 0.5) ≈ 0.25 + 0.5 · 0.001.
    frac = float((t > 0.5).double().mean())
    assert frac == pytest.approx(0.25 + 0.5 * 1000 ** -1.0, abs=5e-3)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_fraction_out_of_range_is_rejected(bad):
    with pytest.raises(ValidationError, match="variance_time_fraction"):
        TrainSettings(variance_time_fraction=bad)


def test_idem_refuses_variance_times():
    energy = gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="variance_time_fraction"):
        IDEMSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(1e-3, 1.0),
                    MLP(2, hidden=8, n_layers=1), settings={"variance_time_fraction": 0.5})


def test_gaussian_known_answer_with_variance_times():
    """Same tolerances as tests/test_known_answer.py: the fixed point is unchanged."""
    s = _sampler(0.5, n_epochs=60, samples_per_epoch=256, grad_steps_per_epoch=100,
                 train_batch_size=256, n_sde_steps=60, lr=2e-3, max_grad_norm=None)
    s.fit()
    x = s.sample(6000, n_steps=100).reshape(6000, -1).double()
    mu, cov = s.energy.moments()
    assert torch.allclose(x.mean(0), mu, atol=0.1), (x.mean(0), mu)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), (torch.cov(x.T), cov)


def test_linear_schedule_variance_times_are_uniform_times():
    """With ``g`` constant, ``h(t)²`` is linear in ``t``: both densities are uniform."""
    energy = gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]])
    s = AdjointSampler(energy, EuclideanSpace(dim=2), LinearSchedule(1.7),
                       MLP(2, hidden=8, n_layers=1), settings={"variance_time_fraction": 1.0},
                       seed=5)
    g = torch.Generator().manual_seed(5)
    assert torch.allclose(s.regression_times(1000, torch.float64),
                          torch.rand(1000, generator=g, dtype=torch.float64), atol=1e-12)


def test_asbs_regression_draws_its_times_here(monkeypatch):
    energy = gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]])
    s = SchrodingerBridgeSampler(energy, EuclideanSpace(dim=2), GeometricSchedule(1e-3, 1.0),
                                 MLP(2, hidden=8, n_layers=1), MLP(2, hidden=8, n_layers=1),
                                 settings={"variance_time_fraction": 1.0}, seed=0)
    seen = []
    original = s.regression_times

    def spy(n, dtype=torch.float32):
        t = original(n, dtype)
        seen.append(t)
        return t

    monkeypatch.setattr(s, "regression_times", spy)
    x1 = torch.randn(64, 2)
    loss = s.loss({"x1": x1, "x0": torch.randn(64, 2), "adjoint": torch.randn(64, 2)})
    assert torch.isfinite(loss) and len(seen) == 1 and seen[0].shape == (64,)
    assert float(seen[0].median()) < 0.1  # variance-uniform times of r = 1000 (median 0.05)
