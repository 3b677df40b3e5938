"""eSEN in amortized runs: the chemistry plugin's ``molecules`` problem with ``kind: esen``.

One random-weight checkpoint (built here, nothing downloaded) is loaded once and shared by all
molecules' targets; the energies equal a separately loaded :class:`ESENEnergy`.
"""

import math

import pytest
import torch

pytest.importorskip(
    "fairchem.core",
    reason="fairchem-core is not installed (pip install adjoint-core[esen]); eSEN tests skipped")
pytest.importorskip("adjoint_core_chem.problem",
                    reason="the molecules problem needs adjoint-core-chem (RDKit)")

import adjoint_core_esen.energy as esen_energy  # noqa: E402
from adjoint_core_chem.energy import BondRegularizedEnergy, energy_and_grad_many  # noqa: E402
from adjoint_core_chem.problem import molecules  # noqa: E402
from adjoint_core_esen import ESENEnergy, build_random_checkpoint  # noqa: E402
from adjoint_core_esen._fairchem import FAIRCHEM_HINT  # noqa: E402

from adjoint_core.app.run import train_run  # noqa: E402
from adjoint_core.plugins.registry import ConfigError, default_registry  # noqa: E402

SMILES = ["CCO", "CCCN", "CC(=O)OC"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("esen") / "esen.pt", seed=7)


def test_molecules_esen_loads_the_checkpoint_once(ckpt, monkeypatch):
    loads = []
    init = esen_energy.ESENPotential.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(args[0] if args else kwargs.get("checkpoint"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(esen_energy.ESENPotential, "__init__", counting_init)
    problem = default_registry().build("problem", "molecules", {
        "smiles": SMILES, "kind": "esen", "esen_checkpoint": str(ckpt), "energy_workers": "auto"})
    assert len(loads) == 1 and str(loads[0]) == str(ckpt)
    assert problem.info["esen_checkpoint"] == str(ckpt) and problem.info["energy_workers"] == 1
    energies = [t.energy for t in problem.targets]
    assert all(isinstance(e, BondRegularizedEnergy) and isinstance(e.base, ESENEnergy)
               for e in energies)
    potential = energies[0].base.potential
    assert all(e.base.potential is potential for e in energies)
    new = problem.make_target("CCCCO")
    assert new.energy.base.potential is potential and len(loads) == 1
    assert new.energy.event_shape == (15, 3) and new.energy.unit == "kcal/mol"
    assert [e.base.molecule.name for e in energies] == SMILES


def test_molecules_esen_energies_match_a_separate_model(ckpt):
    problem = molecules(smiles=SMILES, kind="esen", esen_checkpoint=str(ckpt), regularize=False)
    reg = molecules(smiles=SMILES[:1], kind="esen", esen_checkpoint=str(ckpt))
    for target in problem.targets:
        x = target.data(3, 1)
        e, g = target.energy.energy_and_grad(x)
        ref = ESENEnergy(str(ckpt), smiles=target.info["smiles"])
        e_ref, g_ref = ref.energy_and_grad(x)
        assert e.shape == (3,) and g.shape == x.shape and torch.isfinite(g).all()
        torch.testing.assert_close(e, e_ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
        assert target.energy.temperature == pytest.approx(0.0019872043 * 300.0)
    # regularised: E + τ·E_reg on top of the same eSEN energy
    t = reg.targets[0]
    x = t.data(2, 3)
    e_reg, _ = t.energy.energy_and_grad(x)
    e_base, _ = problem.targets[0].energy.energy_and_grad(x)
    penalty = t.energy.temperature * t.energy.regularizer(x.double())
    torch.testing.assert_close(e_reg.double(), e_base.double() + penalty, rtol=1e-5, atol=1e-4)
    # several molecules in one call (evaluated one by one, counted like energy_and_grad)
    xs = [tg.data(2, 5) for tg in problem.targets]
    many = energy_and_grad_many([tg.energy for tg in problem.targets], xs)
    for tg, x, (e, g) in zip(problem.targets, xs, many, strict=True):
        torch.testing.assert_close(e, tg.energy.energy(x))
        assert g.shape == x.shape


def test_molecules_esen_checkpoint_and_fairchem_errors(ckpt, tmp_path, monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match=r"problem.esen_checkpoint: '.*junk.pt': "):
        molecules(smiles=SMILES, kind="esen", esen_checkpoint=str(junk))

    def no_fairchem():
        raise ImportError(FAIRCHEM_HINT)

    monkeypatch.setattr(esen_energy, "require_fairchem", no_fairchem)
    with pytest.raises(ConfigError, match=r"problem.kind: 'esen' \(problem.esen_checkpoint: "
                                          r"'.*esen.pt'\): .*needs fairchem-core"):
        molecules(smiles=SMILES, kind="esen", esen_checkpoint=str(ckpt))


def test_amortized_training_with_esen(ckpt, tmp_path):
    cfg = {"seed": 0,
           "problem": {"name": "molecules", "smiles": SMILES[:2], "kind": "esen",
                       "esen_checkpoint": str(ckpt)},
           "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4},
           "buffer": {"name": "fifo", "capacity": 16},
           "train": {"n_epochs": 2, "warmup_epochs": 0, "targets_per_epoch": 2,
                     "samples_per_epoch": 4, "grad_steps_per_epoch": 2, "targets_per_step": 2,
                     "train_batch_size": 4, "n_sde_steps": 4, "max_grad_norm": 150.0}}
    rec = train_run(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
    assert rec["counters"]["epoch"] == 2 and rec["counters"]["energy_evals"] == 16
    assert rec["problem"]["esen_checkpoint"] == str(ckpt)
    assert all(math.isfinite(row["loss"]) for row in rec["history"])
