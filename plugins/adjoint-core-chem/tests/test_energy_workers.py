"""Worker processes for MMFF94 / GFN2-xTB (``energy_workers``) and ``kind: esen`` settings.

The worker results must equal the in-process path (bit for bit for MMFF94, float64 round-off
for GFN2-xTB); errors in a worker must name the molecule; the pool must shut down cleanly.
Every pool here has 2 workers.
"""

import copy
import math
import os
import sys

import numpy as np
import pytest
import torch
from adjoint_core_chem.energy import (
    BondRegularizedEnergy,
    MMFFEnergy,
    energy_and_grad_many,
    make_energy,
)
from adjoint_core_chem.molecule import mol_from_smiles
from adjoint_core_chem.problem import molecules
from adjoint_core_chem.workers import (
    MAX_AUTO_WORKERS,
    EnergyWorkerError,
    EnergyWorkerPool,
    WorkerSpec,
    available_cores,
    resolve_workers,
)

from adjoint_core.app.run import train_run
from adjoint_core.plugins.registry import ConfigError, default_registry


@pytest.fixture(scope="module")
def pool():
    p = EnergyWorkerPool(2)
    yield p
    p.close()


@pytest.fixture(scope="module")
def para():
    m = mol_from_smiles("CC(=O)Nc1ccc(O)cc1", "paracetamol")
    x = m.embed(9, seed=5)  # odd batch: uneven chunks
    x[4, 2, 1] = float("nan")  # a non-finite conformer gives NaN in both paths
    return m, x


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_mmff_workers_equal_serial_bit_for_bit(pool, para):
    m, x = para
    for regularize in (False, True):
        serial = make_energy(m, "mmff", regularize=regularize)
        pooled = make_energy(m, "mmff", regularize=regularize, workers=pool)
        assert isinstance(pooled, BondRegularizedEnergy) == regularize
        base = pooled.base if regularize else pooled
        assert base.workers is pool and base._uses_workers(x.shape[0])
        for dtype in (torch.float32, torch.float64):
            xs = x.to(dtype)
            e1, g1 = serial.energy_and_grad(xs)
            e2, g2 = pooled.energy_and_grad(xs)
            _same(e1, e2)
            _same(g1, g2)
            assert bool(torch.isnan(e2[4])) and torch.isfinite(e2[torch.arange(9) != 4]).all()
        assert pooled.n_evaluations == serial.n_evaluations == 18
        # the autograd path (external_energy) goes through the pool too
        xr = x.double().clone()
        xr[4] = xr[0]
        xr.requires_grad_(True)
        (ga,) = torch.autograd.grad(pooled.energy(xr).sum(), xr)
        (gs,) = torch.autograd.grad(serial.energy(xr).sum(), xr)
        _same(ga, gs)
        torch.testing.assert_close(ga, serial.energy_and_grad(xr.detach())[1])
    assert pool.started and pool.n_workers == 2


def test_single_conformer_stays_in_process(para):
    m, x = para
    p = EnergyWorkerPool(2)
    energy = make_energy(m, "mmff", regularize=False, workers=p)
    e, _ = energy.energy_and_grad(x[:1])
    assert math.isfinite(float(e[0])) and not p.started  # no process was started
    p.close()
    assert p.closed


def test_xtb_workers_equal_serial(pool):
    pytest.importorskip("tblite.interface",
                        reason="tblite is not installed (pip install tblite); xTB worker test "
                               "skipped")
    m = mol_from_smiles("CCO", "ethanol")
    x = m.embed(3, seed=2).double()
    serial = make_energy(m, "xtb", regularize=True)
    pooled = make_energy(m, "xtb", regularize=True, workers=pool)
    e1, g1 = serial.energy_and_grad(x)
    e2, g2 = pooled.energy_and_grad(x)
    assert torch.isfinite(e1).all() and torch.isfinite(g1).all()
    torch.testing.assert_close(e2, e1, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g2, g1, rtol=1e-10, atol=1e-9)


def test_energy_and_grad_many_queues_molecules_together(pool):
    mols = [mol_from_smiles(s) for s in ("CCO", "CCCN", "CC(=O)OC")]
    xs = [m.embed(b, seed=b) for m, b in zip(mols, (3, 2, 5), strict=True)]
    pooled = [make_energy(mols[0], "mmff", workers=pool),
              make_energy(mols[1], "mmff", regularize=False, workers=pool),
              make_energy(mols[2], "mmff")]  # no pool: evaluated in-process
    serial = [make_energy(m, "mmff", regularize=r)
              for m, r in zip(mols, (True, False, True), strict=True)]
    got = energy_and_grad_many(pooled, xs)
    for (e1, g1), (e2, g2), x in zip((s.energy_and_grad(x) for s, x in zip(serial, xs,
                                                                           strict=True)),
                                     got, xs, strict=True):
        _same(e1, e2)
        _same(g1, g2)
        assert e2.shape == (x.shape[0],) and g2.shape == x.shape
    assert [e.n_evaluations for e in pooled] == [3, 2, 5]
    with pytest.raises(ValueError, match="2 energies for 3"):
        energy_and_grad_many(pooled[:2], xs)


def test_worker_error_names_the_molecule(pool, para):
    m, x = para
    bad = WorkerSpec("mmff", "broken-paracetamol", m.mol.ToBinary(),
                     (("variant", "MMFF99"),))
    with pytest.raises(EnergyWorkerError,
                       match=r"molecule 'broken-paracetamol': the MMFF94 energy failed in a "
                             r"worker process: ValueError: MMFF variant"):
        pool.evaluate(bad, x[:4].double().numpy())
    # the pool is still usable afterwards
    e, g = pool.evaluate(MMFFEnergy(m).worker_spec(), x[:2].double().numpy())
    assert e.shape == (2,) and g.shape == (2, m.n_atoms, 3) and np.isfinite(e).all()


def test_dead_worker_is_reported_and_the_pool_restarts(para):
    m, x = para
    energy = make_energy(m, "mmff", regularize=False)
    with EnergyWorkerPool(2) as p:
        energy.workers = p
        e0, _ = energy.energy_and_grad(x[:2])
        old = list(p._state.executor._processes.values())
        p._state.executor.submit(os._exit, 3)  # kills one worker: the executor is broken
        with pytest.raises(EnergyWorkerError,
                           match="molecule 'paracetamol': a MMFF94 energy worker process died"):
            for _ in range(50):  # the break is noticed at the latest on the next submissions
                energy.energy_and_grad(x[:2])
        e1, _ = energy.energy_and_grad(x[:2])  # a new executor
        torch.testing.assert_close(e1, e0, rtol=0, atol=0)
        assert all(not proc.is_alive() for proc in old)
        current = list(p._state.executor._processes.values())
    assert p.closed and all(not proc.is_alive() for proc in current)
    with pytest.raises(RuntimeError, match="closed"):
        p.evaluate(energy.worker_spec(), x[:2].double().numpy())


def test_pool_settings_and_copies():
    with pytest.raises(ValueError, match="n_workers"):
        EnergyWorkerPool(0)
    with pytest.raises(ValueError, match="start_method"):
        EnergyWorkerPool(2, start_method="thread")
    with pytest.raises(ValueError, match="threads_per_worker"):
        EnergyWorkerPool(2, threads_per_worker=0)
    p = EnergyWorkerPool(3, threads_per_worker=2)
    q = copy.deepcopy(p)  # a copy is a new, unstarted pool with the same settings
    assert q is not p and q.n_workers == 3 and not q.started and "idle" in repr(q)
    assert q._state is not p._state and q._state.threads == 2
    p.close()
    q.close()


def test_resolve_workers():
    assert resolve_workers(0) == 0 and resolve_workers(1) == 1 and resolve_workers(5) == 5
    assert resolve_workers("auto") == max(1, min(available_cores() - 1, MAX_AUTO_WORKERS))
    for bad in (-1, 2.5, "4", True, None):
        with pytest.raises(ValueError, match=r"energy_workers: .*'auto'"):
            resolve_workers(bad)


def test_molecules_problem_shares_one_pool():
    problem = molecules(smiles=["CCO", "CCCN"], energy_workers=2)
    pools = {id(t.energy.base.workers) for t in problem.targets}
    assert len(pools) == 1 and problem.info["energy_workers"] == 2
    p = problem.targets[0].energy.base.workers
    new = problem.make_target("CC(=O)OC")
    assert new.energy.base.workers is p
    serial = molecules(smiles=["CCO", "CCCN"])
    assert serial.info["energy_workers"] == 1
    assert all(t.energy.base.workers is None for t in serial.targets)
    for a, b in zip(problem.targets, serial.targets, strict=True):
        x = a.data(4, 0)
        e1, g1 = a.energy.energy_and_grad(x)
        e2, g2 = b.energy.energy_and_grad(x)
        _same(e1, e2)
        _same(g1, g2)
    p.close()


def test_molecules_config_errors(tmp_path):
    reg = default_registry()
    built = reg.build("problem", "molecules", {"smiles": ["CCO"], "energy_workers": "auto"})
    assert built.info["energy_workers"] == max(1, min(available_cores() - 1, MAX_AUTO_WORKERS))
    base = built.targets[0].energy.base
    if base.workers is not None:
        base.workers.close()
    with pytest.raises(ConfigError, match="problem.energy_workers"):
        reg.build("problem", "molecules", {"smiles": ["CCO"], "energy_workers": -2})
    with pytest.raises(ConfigError, match="problem.energy_workers"):
        reg.build("problem", "molecules", {"smiles": ["CCO"], "energy_workers": "many"})
    with pytest.raises(ConfigError, match="problem.kind"):
        reg.build("problem", "molecules", {"smiles": ["CCO"], "kind": "dft"})
    # kind: esen: the checkpoint is checked before anything is loaded or imported
    with pytest.raises(ConfigError, match=r"problem.esen_checkpoint: missing: kind 'esen'"):
        molecules(smiles=["CCO"], kind="esen")
    missing = tmp_path / "nope" / "esen.pt"
    with pytest.raises(ConfigError, match=r"problem.esen_checkpoint: '.*nope/esen.pt': file not "
                                          r"found .*nothing is downloaded"):
        reg.build("problem", "molecules", {"smiles": ["CCO"], "kind": "esen",
                                           "esen_checkpoint": str(missing)})
    with pytest.raises(ConfigError, match="problem.esen_checkpoint: .*only used with kind: esen"):
        molecules(smiles=["CCO"], kind="mmff", esen_checkpoint=str(missing))
    with pytest.raises(ConfigError, match=r"problem.energy_workers: 2: eSEN .* in-process"):
        molecules(smiles=["CCO"], kind="esen", energy_workers=2, esen_checkpoint=str(missing))
    with pytest.raises(ValueError, match="needs a loaded eSEN model"):
        make_energy(mol_from_smiles("CCO"), "esen")
    with pytest.raises(ValueError, match="eSEN is a torch model evaluated in-process"):
        make_energy(mol_from_smiles("CCO"), "esen", workers=EnergyWorkerPool(2),
                    esen_potential="x.pt")


def test_esen_without_the_plugin_is_a_config_error(tmp_path, monkeypatch):
    ckpt = tmp_path / "esen.pt"
    ckpt.write_bytes(b"not read: the plugin import fails first")
    for name in [n for n in sys.modules if n == "adjoint_core_esen"
                 or n.startswith("adjoint_core_esen.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "adjoint_core_esen", None)  # import fails
    with pytest.raises(ConfigError, match=r"problem.kind: 'esen': needs the eSEN plugin "
                                          r"adjoint-core-esen .*pip install adjoint-core\[esen\]"):
        molecules(smiles=["CCO"], kind="esen", esen_checkpoint=str(ckpt))
    with pytest.raises(ImportError, match="needs the eSEN plugin adjoint-core-esen"):
        make_energy(mol_from_smiles("CCO"), "esen", esen_potential=str(ckpt))


def test_amortized_training_with_workers(tmp_path):
    cfg = {"seed": 0,
           "problem": {"name": "molecules", "smiles": ["CCO", "CCCN"], "energy_workers": 2},
           "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4},
           "buffer": {"name": "fifo", "capacity": 16},
           "train": {"n_epochs": 2, "warmup_epochs": 0, "targets_per_epoch": 2,
                     "samples_per_epoch": 4, "grad_steps_per_epoch": 2, "targets_per_step": 2,
                     "train_batch_size": 4, "n_sde_steps": 4, "max_grad_norm": 150.0}}
    rec = train_run(cfg, tmp_path / "par", progress=False, log=lambda *a, **k: None)
    cfg["problem"]["energy_workers"] = 0
    ref = train_run(cfg, tmp_path / "ser", progress=False, log=lambda *a, **k: None)
    assert rec["problem"]["energy_workers"] == 2 and ref["problem"]["energy_workers"] == 1
    assert rec["counters"]["energy_evals"] == ref["counters"]["energy_evals"] == 16
    assert [r["loss"] for r in rec["history"]] == [r["loss"] for r in ref["history"]]
