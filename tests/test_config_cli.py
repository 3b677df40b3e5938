"""Config validation and the CLI end to end (train -> sample -> evaluate)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adjoint_core import ConfigError
from adjoint_core.app.cli import main
from adjoint_core.app.config import build_components, load_config

REPO = Path(__file__).resolve().parents[1]
DW4_REF = REPO.parent / "shared" / "data" / "particles" / "dw4_val.npy"

TINY = {
    "seed": 0,
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 16, "n_layers": 2},
    "buffer": {"name": "fifo", "capacity": 512},
    "train": {"n_epochs": 2, "samples_per_epoch": 64, "grad_steps_per_epoch": 3,
              "train_batch_size": 32, "n_sde_steps": 10},
    "eval": {"n_samples": 64, "geometric_samples": 16},
}


def _with(**changes):
    cfg = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = cfg
        *head, last = dotted.split("__")
        for k in head:
            node = node[k]
        node[last] = value
    return cfg


@pytest.mark.parametrize("changes, pattern", [
    ({"schedule__sigma_min": -1.0}, r"sigma_min must be > 0, got -1"),
    ({"schedule__sigma_max": 0.0005}, r"sigma_max must be > sigma_min"),
    ({"energy__name": "dw5"}, r"energy.name: 'dw5': unknown energy 'dw5'; registered: .*dw4"),
    ({"model__name": "transformer"}, r"unknown model 'transformer'; registered: .*egnn.*mlp"),
    ({"space__n_particles": 5}, r"event shape \(4, 2\) but space 'euclidean' has \(5, 2\)"),
    ({"train__lr": -0.1}, r"train.lr: -0.1: Input should be greater than 0"),
    ({"train__n_sde_steps": 0}, r"train.n_sde_steps"),
    ({"train__learning_rate": 0.1},
     r"train.learning_rate: 0.1: not a field here \(Extra inputs are not permitted\)"),
    ({"model__hidden": "wide"}, r"model.hidden: .*'wide'"),
    ({"space__mean_free": "maybe"}, r"space.mean_free"),
    ({"buffer__capacity": 0}, r"buffer capacity must be >= 1, got 0"),
])
def test_bad_config_values_fail_before_training(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_components(load_config(_with(**changes)))


def test_unknown_top_level_key_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"optimiser: \{'lr': 1\}: not a field here"):
        load_config({**TINY, "optimiser": {"lr": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("energy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_base_inheritance(tmp_path):
    from adjoint_core.app.config import merge_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump(TINY))
    child = {"base": "sub/base.yaml", "train": {"n_sde_steps": 40},
             "model": {"name": "egnn", "hidden": 8}}
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.n_sde_steps == 40 and cfg.train.n_epochs == 2  # merged, not replaced
    assert cfg.model.params == {"hidden": 8, "n_layers": 2}  # same component: merged
    # a grandchild that names another component replaces the whole section
    grand = {"base": "child.yaml", "model": {"name": "mlp", "hidden": 8}}
    (tmp_path / "grand.yaml").write_text(yaml.safe_dump(grand))
    cfg = load_config(tmp_path / "grand.yaml")
    assert cfg.model.name == "mlp" and cfg.model.params == {"hidden": 8}
    assert cfg.train.n_sde_steps == 40
    # merge_config leaves its inputs alone
    a, b = {"train": {"lr": 1.0, "n_epochs": 3}}, {"train": {"lr": 2.0}}
    assert merge_config(a, b) == {"train": {"lr": 2.0, "n_epochs": 3}}
    assert a == {"train": {"lr": 1.0, "n_epochs": 3}} and b == {"train": {"lr": 2.0}}


@pytest.mark.parametrize("base, pattern", [
    ("missing.yaml", "config file not found"),
    (3, "base: 3: must be the path"),
    ("loop.yaml", "cycle"),
])
def test_config_base_errors(tmp_path, base, pattern):
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({"base": "loop.yaml", **TINY}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": base, **TINY}))
    with pytest.raises(ConfigError, match=pattern):
        load_config(tmp_path / "c.yaml")


def test_example_configs_with_a_base_equal_their_expansion():
    cfg = load_config(REPO / "examples" / "dw4_cpu_reweight_sde400.yaml")
    base = load_config(REPO / "examples" / "dw4_cpu_reweight.yaml")
    assert cfg.train.n_sde_steps == 400
    assert cfg.model_dump() == base.model_copy(update={"train": base.train.model_copy(
        update={"n_sde_steps": 400})}).model_dump()


def test_model_that_does_not_fit_the_space():
    cfg = _with(space={"name": "euclidean", "dim": 8}, energy={"name": "gaussian", "dim": 8})
    with pytest.raises(ConfigError, match="particle"):
        build_components(load_config(cfg))


def test_reference_of_wrong_shape_fails_before_training(tmp_path):
    ref = tmp_path / "ref.npy"
    np.save(ref, np.zeros((10, 9), dtype=np.float32))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_with(eval={"reference": str(ref)})))
    rc = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_train_sample_evaluate_and_resume(tmp_path, capsys):
    ref = tmp_path / "ref.npy"
    if DW4_REF.exists():
        np.save(ref, np.load(DW4_REF)[:200])
    else:  # synthetic stand-in with the right layout
        np.save(ref, np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32) * 2)
    cfg_path = tmp_path / "dw4.yaml"
    cfg_path.write_text(yaml.safe_dump(_with(eval={**TINY["eval"], "reference": str(ref)})))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run), "--no-progress"]) == 0
    for f in ["config.yaml", "checkpoints/latest.pt", "metrics.json", "plots/loss.png",
              "plots/energy_hist.png", "plots/pair_distances.png"]:
        assert (run / f).is_file(), f
    rec = json.loads((run / "metrics.json").read_text())
    assert [e["tag"] for e in rec["evaluations"]] == ["untrained", "final"]
    assert rec["counters"]["energy_evals"] == 2 * 64
    assert rec["counters"]["grad_steps"] == 2 * 3
    assert set(rec["timers"]) == {"simulate", "energy", "train", "evaluate"}
    final = rec["evaluations"][-1]
    assert {"energy_w2", "geometric_w2_papers", "geometric_w2_invariant"} <= set(final)
    assert 0.0 <= final["path_ess"] <= 1.0
    # resume: a longer budget continues from epoch 2
    cfg_path.write_text(yaml.safe_dump(_with(eval={**TINY["eval"], "reference": str(ref)},
                                             train__n_epochs=3)))
    assert main(["train", str(cfg_path), "--out", str(run), "--no-progress"]) == 0
    rec = json.loads((run / "metrics.json").read_text())
    assert rec["counters"]["epoch"] == 3 and rec["counters"]["energy_evals"] == 3 * 64
    # a different model in the same run dir is refused
    cfg_path.write_text(yaml.safe_dump(_with(model={"name": "egnn", "hidden": 8, "n_layers": 2})))
    assert main(["train", str(cfg_path), "--out", str(run), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err

    out = tmp_path / "samples.npy"
    assert main(["sample", str(run), "--num-samples", "50", "--out", str(out),
                 "--no-progress"]) == 0
    x = np.load(out)
    assert x.shape == (50, 8) and np.isfinite(x).all()
    assert np.abs(x.reshape(50, 4, 2).mean(1)).max() < 1e-5
    # importance-resampled samples: drawn from the 3 x 50 simulated paths
    out_rs = tmp_path / "resampled.npy"
    assert main(["sample", str(run), "--num-samples", "50", "--out", str(out_rs),
                 "--resample", "3", "--no-progress"]) == 0
    assert "importance-resampled" in capsys.readouterr().out
    xr = np.load(out_rs)
    assert xr.shape == (50, 8) and np.isfinite(xr).all()

    res_path = tmp_path / "eval.json"
    assert main(["evaluate", str(out), "--reference", str(ref), "--energy", "dw4",
                 "--geometric-samples", "20", "--out", str(res_path)]) == 0
    res = json.loads(res_path.read_text())
    assert res["energy_w2"] >= 0 and res["geometric_w2_papers"] >= res["geometric_w2_invariant"]
    # the evaluation agrees with an independent energy W2 computed here
    from adjoint_core_particles import DoubleWellEnergy

    e = DoubleWellEnergy()
    eg = e.energy(torch.tensor(x).reshape(-1, 4, 2)).numpy()
    assert res["energy_mean"] == pytest.approx(float(eg.mean()), rel=1e-5)


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "adjoint_core.app.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "sample", "evaluate", "plugins"):
        assert cmd in out
