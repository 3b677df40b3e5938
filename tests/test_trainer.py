"""One trainer for every algorithm: capability checks, registered objectives (including a third
party's), amortized problems of several targets, ``sample --resample`` on AS, ASBS and iDEM
runs, and ``mcmc`` on every training config."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adjoint_core import (
    MLP,
    AdjointSampling,
    Capabilities,
    EuclideanSpace,
    LinearSchedule,
    PeriodicMLP,
    PeriodicSpace,
    Problem,
    ReplayBuffer,
    SchrodingerBridge,
    Target,
    Trainer,
    hookimpl,
)
from adjoint_core.app.cli import main
from adjoint_core.app.config import read_config_file
from adjoint_core.mcmc.run import load_mcmc_config
from adjoint_core.plugins.registry import ConfigError, Registry
from adjoint_core.problem.gaussian import gaussian

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_epochs": 2, "samples_per_epoch": 32, "grad_steps_per_epoch": 3,
        "train_batch_size": 16, "n_sde_steps": 10}


def _target(mean, name="t"):
    return Target(gaussian(mean=mean, cov=[[1.0, 0.0], [0.0, 1.0]]), EuclideanSpace(dim=2),
                  ReplayBuffer(256), name=name)


def test_capabilities_are_checked_once_with_the_setting_named():
    class PlainObjective(AdjointSampling):
        name = "plain"
        capabilities = Capabilities()

    t = _target([0.0, 0.0])
    with pytest.raises(ValueError, match="train.reweight is not supported by algorithm 'plain'"):
        Trainer(t, LinearSchedule(), MLP(2, hidden=8, n_layers=1), PlainObjective(),
                settings={**TINY, "reweight": True})
    with pytest.raises(ValueError, match="variance_time_fraction"):
        Trainer(t, LinearSchedule(), MLP(2, hidden=8, n_layers=1), PlainObjective(),
                settings={**TINY, "variance_time_fraction": 0.5})
    with pytest.raises(ValueError, match="does not support amortized problems"):
        Trainer([t, _target([1.0, 1.0])], LinearSchedule(), MLP(2, hidden=8, n_layers=1),
                PlainObjective(), settings=TINY)
    with pytest.raises(ValueError, match="needs a state space of type EuclideanSpace"):
        Trainer(Target(gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]]),
                       PeriodicSpace(dim=2, box=6.0), ReplayBuffer(64)),
                LinearSchedule(), PeriodicMLP(6.0, 2, hidden=8, n_layers=1),
                SchrodingerBridge(PeriodicMLP(6.0, 2, hidden=8, n_layers=1)), settings=TINY)
    with pytest.raises(ValueError, match="warmup_epochs=1 needs reference states"):
        Trainer(t, LinearSchedule(), MLP(2, hidden=8, n_layers=1),
                settings={**TINY, "warmup_epochs": 1})


def test_amortized_problem_visits_targets_in_cycle_and_keeps_one_buffer_each():
    targets = [_target([float(i), -float(i)], name=f"g{i}") for i in range(3)]
    torch.manual_seed(0)
    tr = Trainer(Problem(targets), LinearSchedule(), MLP(2, hidden=8, n_layers=1),
                 settings={**TINY, "n_epochs": 3, "targets_per_epoch": 2,
                           "targets_per_step": 2, "samples_per_epoch": 8})
    tr.fit()
    # 3 epochs x 2 targets x 8 samples, cycling through a seeded permutation of 3 targets
    assert tr.counters["energy_evals"] == 3 * 2 * 8
    assert sorted(len(t.buffer) for t in targets) == [16, 16, 16]
    assert tr.history[-1]["targets_with_data"] == 3
    assert tr.counters["grad_steps"] == 3 * 3
    assert tr.counters["model_evals"] >= 3 * 3 * 2 * 16  # two targets' rows per step
    with pytest.raises(AttributeError, match="3 targets"):
        _ = tr.energy
    x = tr.sample(5, target=1)
    assert x.shape == (5, 2)
    # resume: a copy of the state continues identically
    state = tr.state_dict()
    torch.manual_seed(0)
    again = Trainer(Problem([_target([float(i), -float(i)], name=f"g{i}") for i in range(3)]),
                    LinearSchedule(), MLP(2, hidden=8, n_layers=1),
                    settings={**TINY, "n_epochs": 5, "targets_per_epoch": 2,
                              "targets_per_step": 2, "samples_per_epoch": 8})
    again.load_state_dict(copy.deepcopy(state))  # as saved to and read from disk
    tr.settings = again.settings
    tr.fit(n_epochs=2)
    again.fit(n_epochs=2)
    for p, q in zip(tr.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_warmup_bridge_matching_then_adjoint_sampling():
    def data(n, seed):
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + 3.0

    t = Target(gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.0], [0.0, 1.0]]), EuclideanSpace(dim=2),
               ReplayBuffer(256), data=data)
    tr = Trainer(t, LinearSchedule(), MLP(2, hidden=8, n_layers=1),
                 settings={**TINY, "n_epochs": 3, "warmup_epochs": 2})
    tr.fit()
    assert [r.get("stage") for r in tr.history] == ["warm-up", "warm-up", None]
    assert tr.warmup.n_reference == 2 * 32
    assert tr.counters["energy_evals"] == 32  # the warm-up evaluates no energy


class ScaledAdjoint(AdjointSampling):
    """A third party's objective: Adjoint Sampling with its loss scaled by a constant."""

    name = "scaled_adjoint"

    def __init__(self, scale: float = 2.0):
        self.scale = scale

    def loss(self, target, batch, model, phase):
        return self.scale * super().loss(target, batch, model, phase)


class _ObjectivePlugin:
    @hookimpl
    def register_objectives(self):
        return {"scaled_adjoint": ScaledAdjoint}


def test_third_party_objective_by_name_from_a_config(tmp_path):
    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import build_trainer

    reg = Registry()
    reg.add_plugin(_ObjectivePlugin(), "scaled")
    cfg = load_config({"energy": {"name": "gaussian", "dim": 2},
                       "space": {"name": "euclidean", "dim": 2},
                       "model": {"name": "mlp", "hidden": 8, "n_layers": 1},
                       "algorithm": {"name": "scaled_adjoint", "scale": 3.0}, "train": TINY})
    tr = build_trainer(cfg, reg)
    assert isinstance(tr.objective, ScaledAdjoint) and tr.objective.scale == 3.0
    tr.fit()
    assert tr.counters["epoch"] == 2
    bad = load_config({"energy": {"name": "gaussian", "dim": 2},
                       "space": {"name": "euclidean", "dim": 2},
                       "model": {"name": "mlp"}, "algorithm": {"name": "scaled_adjoint",
                                                               "scael": 3.0}})
    with pytest.raises(ConfigError, match="objective.scael: 3.0: unknown parameter"):
        build_trainer(bad, reg)


def _dw4_run(tmp_path, algorithm, extra):
    cfg = {"seed": 1, "energy": {"name": "dw4"},
           "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
           "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
           "model": {"name": "egnn", "hidden": 8, "n_layers": 1},
           "buffer": {"name": "fifo", "capacity": 200},
           "train": {**TINY, "max_grad_norm": 100.0}, "algorithm": algorithm,
           "eval": {"n_samples": 20, "geometric_samples": 0}, **extra}
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / f"run_{algorithm}"
    assert main(["train", str(path), "--out", str(run), "--no-progress"]) == 0
    return run


@pytest.mark.parametrize("algorithm,extra", [
    ("adjoint", {}),
    ("asbs", {"asbs": {"source_std": 1.0, "am_epochs_per_stage": 1, "cm_epochs_per_stage": 1}}),
    ("idem", {"idem": {"n_mc_samples": 4}}),
])
def test_sample_with_importance_resampling_on_every_algorithm(tmp_path, algorithm, extra,
                                                              capsys):
    run = _dw4_run(tmp_path, algorithm, extra)
    out = tmp_path / "x.npy"
    assert main(["sample", str(run), "--num-samples", "40", "--resample", "3", "--out",
                 str(out), "--no-progress"]) == 0
    x = np.load(out)
    assert x.shape == (40, 8) and np.isfinite(x).all()
    assert "importance-resampled" in capsys.readouterr().out


def test_mcmc_accepts_every_training_config():
    configs = sorted((ROOT / "examples").glob("*.yaml")) + \
        sorted((ROOT / "bench" / "configs").glob("*.yaml"))
    checked = 0
    for path in configs:
        data = read_config_file(path)
        if "problem" in data or "kind" in data:  # amortized problems have no single energy
            with pytest.raises(ConfigError):
                load_mcmc_config(data)
            continue
        cfg = load_mcmc_config(data)
        assert cfg.energy.name == data["energy"]["name"], path
        checked += 1
    assert checked >= 10
