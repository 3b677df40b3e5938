"""Shipped-model format: export a tiny trained run (with EMA), load it without its training
molecules, and sample exactly what the run itself samples; the default-model lookup and the
``chem-export`` / ``conformers --run MODEL_DIR`` commands."""

import json
import math
import time

import pytest
import torch
import yaml
from adjoint_core_chem import pretrained
from adjoint_core_chem.api import importance_weights, load_conformer_run, parse_molecule
from adjoint_core_chem.commands import generate_for_molecule
from adjoint_core_chem.pretrained import export_model, is_model_dir, load_model
from rdkit import Chem

from adjoint_core.app.cli import main
from adjoint_core.app.config import load_config
from adjoint_core.app.run import load_run, train_run
from adjoint_core.plugins.registry import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run_config):
    run = tmp_path_factory.mktemp("pretrained") / "run"
    cfg = dict(tiny_run_config, train=dict(tiny_run_config["train"], warmup_epochs=1,
                                           ema_decay=0.5))  # EMA weights are what export keeps
    rec = train_run(load_config(cfg), run, progress=False, log=lambda *a: None)
    assert all(math.isfinite(r["loss"]) for r in rec["history"])
    return run


@pytest.fixture(scope="module")
def model_dir(run_dir):
    return export_model(run_dir, run_dir.parent / "model", card={"description": "tiny test"})


def test_export_writes_slim_float32_model_and_card(run_dir, model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == ["card.json", "config.yaml",
                                                           "model.pt"]
    assert is_model_dir(model_dir) and not is_model_dir(run_dir)
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert cfg["problem"] == {"name": "molecules"}  # the training molecules are gone
    assert cfg["train"]["ema_decay"] is None and cfg["device"] == "auto"
    weights = torch.load(model_dir / "model.pt", weights_only=True)
    assert weights and all(v.dtype == torch.float32 for v in weights.values()
                           if v.is_floating_point())
    run = load_run(run_dir)
    assert run.ema_model is not None
    # the exported weights are the EMA average, not the raw network
    ema = run.ema_model.module.state_dict()
    assert all(torch.equal(weights[k], ema[k].float()) for k in ema)
    raw = run.model.state_dict()
    assert any(not torch.equal(weights[k], raw[k].float()) for k in raw)
    card = json.loads((model_dir / "card.json").read_text())
    assert card["source_run"] == str(run_dir.resolve())
    assert card["config"]["problem"]["smiles"] == ["CCO", "CCCN"]
    assert card["training_molecules"] == {"smiles": ["CCO", "CCCN"]}
    assert card["training_command"].startswith("adjoint-core train ")
    assert card["epochs"] == 3 and card["grad_steps"] == 9 and card["energy_evals"] > 0
    assert card["wall_time_s"] > 0 and card["weights"] == "ema"
    assert card["torch_version"] == torch.__version__
    n_params = sum(p.numel() for p in run.ema_model.module.parameters())
    assert card["n_parameters"] == n_params
    assert card["card"] == {"description": "tiny test"}


def test_loaded_model_samples_exactly_like_the_run(run_dir, model_dir):
    run = load_run(run_dir)
    t0 = time.perf_counter()
    model = load_model(model_dir, device="cpu")
    assert time.perf_counter() - t0 < 2.0
    assert len(model.targets) == 1 and model.ema_model is None
    assert model.problem.info["card"]["weights"] == "ema"
    # a molecule that is not in the training set
    mol = parse_molecule("OCC(C)C")
    x_run, p_run = generate_for_molecule(run, mol, 6, seed=3)
    x_mod, p_mod = generate_for_molecule(model, mol, 6, seed=3)
    assert torch.equal(x_run, x_mod) and torch.isfinite(x_mod).all()
    assert p_run["energy_mmff_kcal_mol"] == p_mod["energy_mmff_kcal_mol"]
    # importance weights too
    res = [importance_weights(tr, tr.problem.make_target(mol), 5,
                              generator=torch.Generator().manual_seed(1)) for tr in (run, model)]
    assert torch.equal(res[0][1], res[1][1]) and res[0][3] == res[1][3]
    # a model directory as `run`
    by_path = load_conformer_run(model_dir, device="cpu")
    x_path, _ = generate_for_molecule(by_path, mol, 6, seed=3)
    assert torch.equal(x_path, x_run)


def test_default_model_lookup(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", tmp_path / "absent")
    with pytest.raises(ConfigError, match="not installed") as info:
        load_conformer_run(None)
    assert "chem-export" in str(info.value) and "adjoint-core train" in str(info.value)
    with pytest.raises(ConfigError, match="not a model directory"):
        load_model(tmp_path)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", model_dir)
    trainer = load_conformer_run(None, device="cpu")
    assert trainer.problem.info["model_dir"] == str(model_dir)
    assert trainer.problem.make_target("c1ccccc1O").space.event_shape == (13, 3)


def test_export_refuses_bad_destinations(run_dir, model_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a model directory"):
        export_model(run_dir, foreign)
    with pytest.raises(ConfigError, match="not a run directory"):
        export_model(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="not a run directory"):
        export_model(model_dir, tmp_path / "out")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_export_and_conformers_commands(run_dir, model_dir, tmp_path, capsys, monkeypatch):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"description": "from the CLI", "cpu_hours": 0.01}))
    dest = tmp_path / "exported"
    assert main(["chem-export", str(run_dir), "--out", str(dest), "--card", str(card)]) == 0
    assert f"conformers --run {dest}" in capsys.readouterr().out
    info = json.loads((dest / "card.json").read_text())
    assert info["card"]["description"] == "from the CLI" and info["cpu_hours"] == 0.01
    # re-exporting into the same model directory overwrites it
    assert main(["chem-export", str(run_dir), "--out", str(dest)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["chem-export", str(run_dir), "--out", str(tmp_path / "x"), "--card",
                 str(bad)]) == 2
    assert "--card" in capsys.readouterr().err
    # conformers with the model directory, and with it as the default model
    out = tmp_path / "confs"
    assert main(["conformers", "--run", str(dest), "--smiles", "CCCO", "--num-conformers",
                 "3", "--out", str(out)]) == 0
    supplier = Chem.SDMolSupplier(str(out / "CCCO.sdf"), removeHs=False)
    assert len([m for m in supplier if m is not None]) == 3
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", model_dir)
    out2 = tmp_path / "confs_default"
    assert main(["conformers", "--smiles", "CCCO", "--num-conformers", "3",
                 "--out", str(out2)]) == 0
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["run_dir"] is None and summary["model"] == str(model_dir)
    assert [d["name"] for d in summary["written"]] == ["CCCO"]


def test_warm_start_on_other_molecules_from_an_exported_model(model_dir, tiny_run_config,
                                                              tmp_path):
    """``init_from: MODEL_DIR`` continues an exported model on another molecule set (as
    bench/configs/chem_spice_sizes_cpu.yaml continues the shipped model)."""
    cfg = dict(tiny_run_config, init_from=str(model_dir),
               problem=dict(tiny_run_config["problem"], smiles=["CC(=O)O", "c1ccccc1O"]),
               train=dict(tiny_run_config["train"], n_epochs=1, warmup_epochs=1, lr=1e-12))
    rec = train_run(load_config(cfg), tmp_path / "ft", progress=False, log=lambda *a: None)
    assert rec["init_from"]["path"] == str(model_dir / "model.pt")
    assert rec["init_from"]["counters"]["epoch"] == 3  # the card's epochs of the source run
    src = torch.load(model_dir / "model.pt", weights_only=True)
    new = torch.load(tmp_path / "ft" / "checkpoints" / "latest.pt",
                     weights_only=True)["state"]["model"]
    for k, v in src.items():
        torch.testing.assert_close(new[k], v, atol=1e-8, rtol=0)
