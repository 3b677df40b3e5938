"""Warm start (config ``init_from``): a run starts from another run's network weights with a
fresh optimizer, buffer and counters; a mismatched network or a missing checkpoint is refused
before training; an existing checkpoint in the run directory (resume) takes precedence."""

import json

import numpy as np
import pytest
import torch

from adjoint_core import ConfigError
from adjoint_core.app.checkpoint import CheckpointError, load_checkpoint
from adjoint_core.app.config import load_config
from adjoint_core.app.run import train_run

# A flat Gaussian target with the core's MLP: no plugin needed, seconds per run.
SOURCE = {
    "seed": 1,
    "energy": {"name": "gaussian", "mean": [1.0, -1.0]},
    "space": {"name": "euclidean", "dim": 2},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "mlp", "hidden": 8, "n_layers": 2, "time_dim": 4},
    "buffer": {"name": "fifo", "capacity": 40},
    "train": {"n_epochs": 3, "samples_per_epoch": 10, "grad_steps_per_epoch": 4,
              "train_batch_size": 8, "n_sde_steps": 5},
    "eval": {"n_samples": 16, "geometric_samples": 0},
}


def _silent(*args, **kwargs):
    pass


def _train(cfg: dict, out):
    return train_run(load_config(cfg), out, progress=False, log=_silent)


def _model_state(run):
    return load_checkpoint(run / "checkpoints" / "latest.pt")["state"]["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Exact samples of the target N((1, -1), I)."""
    path = tmp_path_factory.mktemp("reference") / "ref.npy"
    np.save(path, np.random.default_rng(0).normal(size=(64, 2)) + np.array([1.0, -1.0]))
    return path


def _config(reference=None) -> dict:
    cfg = json.loads(json.dumps(SOURCE))
    if reference is not None:
        cfg["eval"]["reference"] = str(reference)
    return cfg


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, reference):
    run = tmp_path_factory.mktemp("source") / "run"
    _train(_config(reference), run)
    return run


def _fine_tune(source, reference=None, **changes) -> dict:
    # finer time steps, another sigma_max, a new buffer size: all allowed to differ
    cfg = _config(reference)
    cfg["schedule"]["sigma_max"] = 1.5
    cfg["buffer"]["capacity"] = 30
    cfg["train"].update(n_epochs=1, n_sde_steps=9, init_samples=20, lr=1e-9)
    cfg["init_from"] = str(source)
    cfg.update(changes)
    return cfg


def test_warm_start_loads_the_weights_and_starts_everything_else_fresh(source_run, reference,
                                                                        tmp_path):
    run = tmp_path / "ft"
    rec = _train(_fine_tune(source_run, reference), run)
    src = _model_state(source_run)
    new = _model_state(run)
    # lr 1e-9: after 4 Adam steps the weights are the source's up to ~4e-9
    for k in src:
        torch.testing.assert_close(new[k], src[k], atol=1e-7, rtol=0)
    assert any(not torch.equal(new[k], src[k]) for k in src)  # but it did train
    c = rec["counters"]
    assert c["epoch"] == 1 and c["grad_steps"] == 4
    assert c["energy_evals"] == 20 + 10  # init_samples refill the new buffer, then one epoch
    assert rec["init_from"]["path"] == str(source_run / "checkpoints" / "latest.pt")
    assert rec["init_from"]["counters"]["epoch"] == 3
    assert rec["init_from"]["counters"]["grad_steps"] == 3 * 4
    assert [e["tag"] for e in rec["evaluations"]] == ["warm-start", "final"]


def test_warm_start_from_a_checkpoint_file_equals_from_its_run_dir(source_run, reference,
                                                                     tmp_path):
    a = _train(_fine_tune(source_run, reference), tmp_path / "a")
    b = _train(_fine_tune(source_run / "checkpoints" / "latest.pt", reference), tmp_path / "b")
    assert a["evaluations"][0]["energy_w2"] == b["evaluations"][0]["energy_w2"]
    for k, v in _model_state(tmp_path / "a").items():
        assert torch.equal(v, _model_state(tmp_path / "b")[k])


def test_warm_start_with_another_network_is_refused(source_run, tmp_path):
    cfg = _fine_tune(source_run, model={"name": "mlp", "hidden": 16, "n_layers": 2,
                                        "time_dim": 4})
    with pytest.raises(CheckpointError, match=r"another configuration \(model: checkpoint"):
        _train(cfg, tmp_path / "ft")
    assert not (tmp_path / "ft" / "checkpoints" / "latest.pt").exists()


def test_warm_start_from_a_missing_checkpoint_names_the_path(tmp_path):
    cfg = _fine_tune(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"init_from: .*nowhere.*: no checkpoint at .*nowhere"):
        _train(cfg, tmp_path / "ft")


def test_resume_takes_precedence_over_init_from(source_run, reference, tmp_path):
    run = tmp_path / "ft"
    _train(_fine_tune(source_run, reference), run)
    after_one = _model_state(run)
    cfg = _fine_tune(source_run, reference)
    cfg["train"]["n_epochs"] = 2
    rec = _train(cfg, run)
    assert rec["counters"]["epoch"] == 2 and rec["counters"]["energy_evals"] == 20 + 2 * 10
    # the first epoch's weights were the starting point, not the source run's again
    assert [e["tag"] for e in rec["evaluations"]] == ["warm-start", "final", "final"]
    assert any(not torch.equal(after_one[k], v) for k, v in _model_state(run).items())


def _export(run, folder, card: dict | None = None):
    """An exported model directory: the run's config and its network's state dict."""
    import yaml

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text((run / "config.yaml").read_text())
    torch.save(_model_state(run), folder / "model.pt")
    if card is not None:
        (folder / "card.json").write_text(json.dumps(card))
    return yaml.safe_load((run / "config.yaml").read_text())


def test_warm_start_from_an_exported_model_directory(source_run, reference, tmp_path):
    _export(source_run, tmp_path / "model", card={"epochs": 3, "grad_steps": 12,
                                                  "energy_evals": 30, "timers_s": {"train": 1.5}})
    rec = _train(_fine_tune(tmp_path / "model", reference), tmp_path / "ft")
    src, new = _model_state(source_run), _model_state(tmp_path / "ft")
    for k in src:
        torch.testing.assert_close(new[k], src[k], atol=1e-7, rtol=0)
    assert rec["init_from"]["path"] == str(tmp_path / "model" / "model.pt")
    assert rec["init_from"]["counters"] == {"epoch": 3, "grad_steps": 12, "energy_evals": 30}
    assert rec["init_from"]["timers"] == {"train": 1.5}
    # the same weights from the checkpoint: the same first evaluation
    via_ckpt = _train(_fine_tune(source_run, reference), tmp_path / "ft2")
    assert rec["evaluations"][0]["energy_w2"] == via_ckpt["evaluations"][0]["energy_w2"]


def test_exported_model_with_another_network_or_problem_is_refused(source_run, tmp_path):
    cfg = _export(source_run, tmp_path / "model")
    cfg["model"]["hidden"] = 16
    import yaml

    (tmp_path / "model" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"init_from: .*model\.pt: was made with another "
                                              r"configuration \(model: checkpoint"):
        _train(_fine_tune(tmp_path / "model"), tmp_path / "ft")
    (tmp_path / "model" / "model.pt").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match=r"init_from: .*model: cannot read the exported"):
        _train(_fine_tune(tmp_path / "model"), tmp_path / "ft")
