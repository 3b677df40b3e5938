"""iDEM (adjoint_core.training.objectives.idem): the MC score estimator against the exact noised
Gaussian score,
and a small end-to-end run through the config/train machinery.

Stated tolerances: with K = 4000 the estimator is within 0.08·(1 + |score|) of the closed form
``−(C + α²I)⁻¹(x − μ)`` at every point; its error shrinks from K = 10 to K = 1000; a 2-D
Gaussian learned by iDEM (CPU, seconds) has its mean within 0.2 and covariance entries within
0.3 of the exact values.
"""

import pytest
import torch

from adjoint_core import EuclideanSpace, GeometricSchedule
from adjoint_core.app.config import load_config
from adjoint_core.app.run import build_trainer, train_run
from adjoint_core.problem.gaussian import gaussian
from adjoint_core.training.objectives.idem import (
    IDEM,
    estimate_noised_score,
    noise_std,
)


def _exact_score(energy, x, std):
    mu, cov = energy.moments()
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    out = []
    for xi, si in zip(x.double(), std.double(), strict=True):
        out.append(-torch.linalg.solve(cov + si**2 * eye, xi - mu))
    return torch.stack(out)


def test_estimator_matches_closed_form_noised_gaussian_score():
    energy = gaussian(mean=[1.0, -0.5], cov=[[0.8, 0.3], [0.3, 0.5]], temperature=1.5)
    space = EuclideanSpace(dim=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=g) * 1.5
    std = torch.tensor([0.05, 0.3, 1.0, 2.0] * 3)
    est = estimate_noised_score(energy, space, x, std, 4000, g, chunk=10_000).double()
    exact = _exact_score(energy, x, std)
    tol = 0.08 * (1 + exact.norm(dim=-1, keepdim=True))
    assert ((est - exact).abs() <= tol).all(), (est, exact)
    assert energy.n_evaluations == 12 * 4000
    # consistency: the error shrinks with K
    errs = []
    for k in (10, 1000):
        e = [(estimate_noised_score(energy, space, x, std, k, g).double() - exact).norm(dim=-1)
             .mean() for _ in range(5)]
        errs.append(float(sum(e) / len(e)))
    assert errs[1] < 0.5 * errs[0], errs


def test_estimator_mean_free_and_clipped():
    energy = gaussian(n_particles=3, spatial_dim=2, std=[1.0, 0.5])
    space = EuclideanSpace(3, 2, mean_free=True)
    x = space.project(torch.randn(5, 3, 2) * 4)
    s = estimate_noised_score(energy, space, x, torch.full((5,), 0.5), 64,
                              torch.Generator().manual_seed(1), max_score_norm=1.0)
    assert s.mean(1).abs().max() < 1e-5
    assert (s.flatten(1).norm(dim=-1) <= 1.0 + 1e-5).all()


def test_noise_std_convention():
    sch = GeometricSchedule(0.01, 3.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    a = noise_std(sch, t)
    assert float(a[0]) == pytest.approx(sch.h1_squared ** 0.5)
    assert float(a[2]) == 0.0
    # α(t)² = σ_max² (r^{-2t} − r^{-2})
    r = 3.0 / 0.01
    assert float(a[1]) ** 2 == pytest.approx(9.0 * (r ** -1.0 - r ** -2.0), rel=1e-9)


def _cfg(tmp_path=None):
    return {
        "seed": 0,
        "algorithm": "idem",
        "energy": {"name": "gaussian", "mean": [1.0, -1.0], "cov": [[1.0, 0.4], [0.4, 0.6]]},
        "space": {"name": "euclidean", "dim": 2},
        "schedule": {"name": "geometric", "sigma_min": 0.01, "sigma_max": 3.0},
        "model": {"name": "mlp", "hidden": 64, "n_layers": 2},
        "train": {"n_epochs": 8, "samples_per_epoch": 256, "sim_batch_size": 256,
                  "grad_steps_per_epoch": 40, "train_batch_size": 128, "n_sde_steps": 50,
                  "lr": 0.003, "init_samples": 512},
        "idem": {"n_mc_samples": 64, "max_score_norm": 50.0},
        "eval": {"n_samples": 1000, "geometric_samples": 0},
        "checkpoint_every": 8,
    }


def test_idem_learns_a_gaussian_end_to_end(tmp_path):
    cfg = load_config(_cfg())
    record = train_run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    c = record["counters"]
    # energy evaluations: K per regression point, plus the energies of buffered samples
    assert c["energy_evals"] == 8 * 40 * 128 * 64 + 512 + 8 * 256
    assert c["grad_steps"] == 8 * 40
    from adjoint_core.app.run import load_run
    from adjoint_core.evaluation import metrics

    s = load_run(tmp_path / "run")
    assert isinstance(s.objective, IDEM) and s.counters["epoch"] == 8
    x = s.sample(2000, generator=torch.Generator().manual_seed(5)).double()
    mu, cov = s.energy.moments()
    assert torch.allclose(x.mean(0), mu, atol=0.2), x.mean(0)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.3), torch.cov(x.T)
    _, log_w = s.path_log_weights(1000, generator=torch.Generator().manual_seed(6))
    assert 0.05 < metrics.path_ess(log_w.numpy()) <= 1.0


def test_idem_refuses_adjoint_checkpoint():
    cfg = load_config(_cfg())
    s = build_trainer(cfg)
    state = s.state_dict()
    state.pop("algorithm")
    with pytest.raises(ValueError, match="algorithm"):
        s.load_state_dict(state)
