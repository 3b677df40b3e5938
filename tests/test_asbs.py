"""ASBS (adjoint_core.training.objectives.asbs): the source bridge against its closed form,
corrector matching
against the exact base-marginal score, the whole loop on a Gaussian target, persistence and
the config path.

Stated tolerances: bridge moments from 200,000 draws within 0.01 (mean) and 2 % (variance);
the corrector learned on base pairs within mean squared error 0.01 of ``−x/(s² + h(1)²)``;
a 2-D Gaussian learned by ASBS from a Gaussian source with a Brownian (non-memoryless) base
has its mean within 0.1 and covariance entries within 0.15 of the exact values (6,000
samples), while after the first stage alone (corrector taken as zero) the covariance is off by
more than 0.2 in some entry.
"""

import copy

import pytest
import torch

from adjoint_core import (
    MLP,
    EuclideanSpace,
    LinearSchedule,
    PeriodicSpace,
    SchrodingerBridge,
    SchrodingerBridgeSampler,
)
from adjoint_core.app.config import load_config
from adjoint_core.app.run import build_trainer, load_run, train_run
from adjoint_core.evaluation.metrics import path_ess
from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.gaussian import gaussian
from adjoint_core.training.objectives.asbs import corrector_target, source_bridge_sample

SETTINGS = dict(n_epochs=90, samples_per_epoch=256, grad_steps_per_epoch=100,
                train_batch_size=256, n_sde_steps=60, lr=2e-3, max_grad_norm=None)
ASBS = dict(source_std=1.0, am_epochs_per_stage=20, cm_epochs_per_stage=10)


def _sampler(energy, space, schedule, settings=SETTINGS, asbs=ASBS, seed=0):
    torch.manual_seed(seed)
    dim = space.dim if not space.mean_free else int(torch.tensor(space.event_shape).prod())
    return SchrodingerBridgeSampler(energy, space, schedule, MLP(dim, hidden=64, n_layers=2),
                                    MLP(dim, hidden=64, n_layers=2), settings=settings,
                                    asbs=asbs, seed=seed)


def test_source_bridge_matches_closed_form():
    space, sched = EuclideanSpace(dim=3), LinearSchedule(1.5)
    n = 200_000
    x0 = torch.tensor([1.0, -2.0, 0.5]).expand(n, 3)
    x1 = torch.tensor([-1.0, 0.0, 3.0]).expand(n, 3)
    t = torch.full((n,), 0.3)
    xt = source_bridge_sample(space, sched, x0, x1, t, torch.Generator().manual_seed(0))
    lam = 0.3  # h(t)²/h(1)² for Brownian motion
    assert torch.allclose(xt.mean(0), x0[0] + lam * (x1[0] - x0[0]), atol=0.01)
    var = sched.h1_squared * lam * (1 - lam)
    assert torch.allclose(xt.var(0), torch.full((3,), var), rtol=0.02)
    for tt, end in ((0.0, x0), (1.0, x1)):
        e = source_bridge_sample(space, sched, x0[:5], x1[:5], torch.full((5,), tt))
        assert torch.allclose(e, end[:5], atol=1e-6)


def test_source_bridge_and_target_stay_mean_free():
    space, sched = EuclideanSpace(4, 2, mean_free=True), LinearSchedule(1.0)
    x0 = space.project(torch.randn(16, 4, 2))
    x1 = space.project(torch.randn(16, 4, 2))
    xt = source_bridge_sample(space, sched, x0, x1, torch.rand(16))
    assert xt.mean(1).abs().max() < 1e-6
    tgt = corrector_target(space, sched, x0, x1)
    assert torch.allclose(tgt, (x0 - x1) / sched.h1_squared, atol=1e-6)


def test_stages_alternate():
    s = _sampler(gaussian(dim=2), EuclideanSpace(dim=2), LinearSchedule(),
                 asbs=dict(am_epochs_per_stage=3, cm_epochs_per_stage=2))
    kinds = [s.objective.stage(e) for e in range(7)]
    assert kinds == [("adjoint", 0)] * 3 + [("corrector", 1)] * 2 + [("adjoint", 2)] * 2
    s = _sampler(gaussian(dim=2), EuclideanSpace(dim=2), LinearSchedule(),
                 asbs=dict(am_epochs_per_stage=3, cm_epochs_per_stage=2, init_stage="corrector"))
    kinds = [s.objective.stage(e) for e in range(6)]
    assert kinds == [("corrector", 0)] * 2 + [("adjoint", 1)] * 3 + [("corrector", 2)]


def test_corrector_matching_learns_the_base_marginal_score():
    """On base-process pairs the optimal corrector is E[(x0 − x1)/h1² | x1] = −x1/(s² + h1²)."""
    sched = LinearSchedule(1.0)
    settings = {**SETTINGS, "n_epochs": 10}
    s = _sampler(gaussian(dim=2), EuclideanSpace(dim=2), sched, settings=settings,
                 asbs={**ASBS, "init_stage": "corrector"})
    s.fit()
    assert s.counters["energy_evals"] == 0 and len(s.buffer) == 0
    assert [r["stage"] for r in s.history] == ["corrector"] * 10
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    h = s.objective.corrector(torch.ones(2000), x).detach()
    exact = -x / (ASBS["source_std"] ** 2 + sched.h1_squared)
    assert float((h - exact).pow(2).mean()) < 0.01


def test_asbs_samples_a_gaussian_from_a_gaussian_source():
    energy = gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.6], [0.6, 0.8]])
    s = _sampler(energy, EuclideanSpace(dim=2), LinearSchedule(1.0))
    mu, cov = energy.moments()
    s.fit(n_epochs=20)  # the first stage: corrector taken as zero, a biased problem
    x = s.sample(6000, n_steps=100, generator=torch.Generator().manual_seed(2)).double()
    assert (torch.cov(x.T) - cov).abs().max() > 0.2
    s.fit()
    x = s.sample(6000, n_steps=100, generator=torch.Generator().manual_seed(3)).double()
    assert torch.allclose(x.mean(0), mu, atol=0.1), x.mean(0)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), torch.cov(x.T)
    c = s.counters
    am_epochs = sum(r["stage"] == "adjoint" for r in s.history)
    assert am_epochs == 60
    assert c["energy_evals"] == am_epochs * SETTINGS["samples_per_epoch"]
    assert c["grad_steps"] == 90 * SETTINGS["grad_steps_per_epoch"]


def test_path_weights_use_the_source_convolved_base_marginal():
    """Zero control and target = base marginal N(0, s² + h1²): every path weight is equal."""
    sched, s_std = LinearSchedule(0.8), 0.6
    var = s_std**2 + sched.h1_squared
    energy = gaussian(mean=[0.0, 0.0], std=[var**0.5, var**0.5])
    s = _sampler(energy, EuclideanSpace(dim=2), sched, asbs={**ASBS, "source_std": s_std})
    for p in s.model.parameters():
        torch.nn.init.zeros_(p)
    x, log_w = s.path_log_weights(4000, generator=torch.Generator().manual_seed(0))
    assert float(log_w.std()) < 1e-4
    assert path_ess(log_w.numpy()) > 0.999
    assert float(x.double().var(0).mean()) == pytest.approx(var, rel=0.05)


def test_invalid_components_are_refused():
    m = MLP(2)
    with pytest.raises(ValueError, match="Euclidean"):
        SchrodingerBridgeSampler(gaussian(dim=2), PeriodicSpace(dim=2, box=1.0),
                                 LinearSchedule(), m, MLP(2))
    with pytest.raises(ValueError, match="second network"):
        SchrodingerBridgeSampler(gaussian(dim=2), EuclideanSpace(dim=2), LinearSchedule(), m, m)
    with pytest.raises(ValueError, match="reweight"):
        SchrodingerBridgeSampler(gaussian(dim=2), EuclideanSpace(dim=2), LinearSchedule(), m,
                                 MLP(2), settings=dict(reweight=True))


def _cfg():
    return {
        "seed": 0,
        "algorithm": "asbs",
        "energy": {"name": "gaussian", "mean": [1.0, -1.0], "cov": [[1.0, 0.4], [0.4, 0.6]]},
        "space": {"name": "euclidean", "dim": 2},
        "schedule": {"name": "linear", "sigma": 1.0},
        "model": {"name": "mlp", "hidden": 32, "n_layers": 2},
        "train": {"n_epochs": 7, "samples_per_epoch": 128, "sim_batch_size": 64,
                  "grad_steps_per_epoch": 10, "train_batch_size": 64, "n_sde_steps": 20,
                  "lr": 0.003, "init_samples": 128},
        "asbs": {"source_std": 0.5, "am_epochs_per_stage": 3, "cm_epochs_per_stage": 2},
        "eval": {"n_samples": 200, "geometric_samples": 0},
        "checkpoint_every": 2,
    }


def test_config_run_resume_and_reload(tmp_path):
    cfg = load_config(_cfg())
    record = train_run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    c = record["counters"]
    assert c["energy_evals"] == 128 + 5 * 128  # init samples + 5 adjoint epochs
    assert c["grad_steps"] == 7 * 10
    s = load_run(tmp_path / "run")
    assert isinstance(s.objective, SchrodingerBridge) and s.counters["epoch"] == 7
    assert len(s.objective.corrector_buffer) == 2 * 128
    # resuming continues exactly: 4 epochs + reload + 3 epochs == 7 epochs in one go
    a = build_trainer(cfg)
    a.fit(n_epochs=4)
    b = build_trainer(cfg)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as saved to and read from disk
    b.fit(n_epochs=3)
    a.fit(n_epochs=3)
    for net, (na, nb) in {"model": (a.model, b.model),
                          "corrector": (a.objective.corrector, b.objective.corrector)}.items():
        pa = torch.cat([p.flatten() for p in na.parameters()])
        pb = torch.cat([p.flatten() for p in nb.parameters()])
        assert torch.equal(pa, pb), net


def test_refuses_other_algorithms_and_bad_configs():
    s = build_trainer(load_config(_cfg()))
    state = s.state_dict()
    state["algorithm"] = "adjoint"
    with pytest.raises(ValueError, match="algorithm"):
        s.load_state_dict(state)
    bad = {**_cfg(), "asbs": {"source_std": -1.0}}
    with pytest.raises(ConfigError, match="asbs.source_std"):
        load_config(bad)
    periodic = {**_cfg(), "space": {"name": "periodic", "dim": 2, "box": 3.0},
                "model": {"name": "mlp_periodic"}}
    with pytest.raises(ConfigError, match="Euclidean"):
        build_trainer(load_config(periodic))


def test_asbs_section_needs_the_asbs_algorithm():
    cfg = {**_cfg(), "algorithm": "adjoint"}
    with pytest.raises(ConfigError, match="algorithm: asbs"):
        load_config(cfg)
