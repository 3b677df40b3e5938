"""examples/esen_ethanol.yaml in CI-sized form: 2 epochs with a random-weight eSEN."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip(
    "fairchem.core",
    reason="fairchem-core is not installed (pip install adjoint-core[esen]); eSEN tests skipped")
pytest.importorskip("adjoint_core_chem.molecule",
                    reason="the example's smiles needs adjoint-core-chem (RDKit)")
pytest.importorskip("adjoint_core_egnn", reason="the example's model needs adjoint-core-egnn")

from adjoint_core_esen import ESENEnergy, build_random_checkpoint  # noqa: E402

from adjoint_core.app.run import load_run, train_run  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "esen_ethanol.yaml"


@pytest.mark.slow
def test_esen_example_trains_two_epochs(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    assert cfg["energy"]["name"] == "esen" and cfg["model"]["name"] == "egnn_bound"
    cfg["energy"]["checkpoint"] = str(build_random_checkpoint(tmp_path / "esen.pt"))
    cfg["train"].update(n_epochs=2, samples_per_epoch=16, sim_batch_size=16,
                        grad_steps_per_epoch=5, train_batch_size=16, n_sde_steps=20)
    cfg["eval"]["n_samples"] = 8
    cfg["checkpoint_every"] = 1
    record = train_run(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
    assert record["counters"]["epoch"] == 2
    assert record["counters"]["energy_evals"] == 32
    assert record["counters"]["grad_steps"] == 10
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["buffer_energy_mean"])
               for row in record["history"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["counters"] == record["counters"]
    assert (tmp_path / "run" / "plots" / "energy_hist.png").is_file()

    sampler = load_run(tmp_path / "run")
    energy = sampler.energy
    assert isinstance(getattr(energy, "base", energy), ESENEnergy)
    x = sampler.sample(4, n_steps=20, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 9, 3)
    assert torch.isfinite(energy.energy(x)).all()
