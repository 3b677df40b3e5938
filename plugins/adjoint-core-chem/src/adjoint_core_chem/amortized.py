r"""Amortized Adjoint Sampling over many molecules (one network for all of them).

The loop is the core's (:mod:`adjoint_core.training.trainer`) with a molecule drawn per batch; it is
composed from the core's generic pieces and needs no change to them:

* each molecule ``m`` has its own mean-free :class:`~adjoint_core.problem.spaces.EuclideanSpace`
  ``(N_m, 3)``, its energy (:func:`~adjoint_core_chem.energy.make_energy`) and its own
  :class:`~adjoint_core.problem.buffer.ReplayBuffer` of ``(x_1, a(x_1), E)`` rows;
* *simulate*: :func:`adjoint_core.training.sde.simulate` with the control
  ``u(t, x) = u_θ(t, x; context_m)`` (the context travels in a closure);
* *energy*: :func:`adjoint_core.training.adjoint.terminal_adjoint` (one MMFF / xTB evaluation per
  conformer, per-atom clipping of ``∇E/τ``, base score);
* *train*: each Adam step draws ``molecules_per_step`` molecules with data and
  ``batch_per_molecule`` rows of each, and minimises the mean over molecules of
  :func:`adjoint_core.training.adjoint.adjoint_matching_loss` at base-bridge samples.

Optional warm-up (``train.pretrain_epochs``, the paper's "AS + RDKit warm-up"): the first epochs
regress the control onto the base bridge towards RDKit ETKDG conformers (bridge matching), then
Adjoint Sampling continues from those weights.

One epoch = ``molecules_per_epoch`` molecules (cycled through a seeded permutation of the
training set) × ``conformers_per_molecule`` new conformers, then ``grad_steps_per_epoch`` steps.

Run directory (:func:`train_amortized`)::

    RUN_DIR/chem_config.yaml       the validated config (kind: chem_amortized)
    RUN_DIR/checkpoints/latest.pt  model, optimizer, buffers, RNG, counters (resumable)
    RUN_DIR/checkpoints/warmup.pt  the same at the end of the warm-up (if pretrain_epochs > 0)
    RUN_DIR/metrics.json           per-epoch log, counters, wall time per phase, molecule set
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rdkit.Chem.rdMolDescriptors import CalcNumRotatableBonds

from adjoint_core.app.config import read_config_file
from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.buffer import ReplayBuffer
from adjoint_core.problem.schedules import GeometricSchedule
from adjoint_core.problem.spaces import EuclideanSpace
from adjoint_core.training.adjoint import adjoint_matching_loss, terminal_adjoint
from adjoint_core.training.sde import simulate

from .energy import KT_300K, make_energy
from .model import MolecularEGNN
from .molecule import Molecule, MoleculeError, mol_from_smiles, read_smiles_file

__all__ = ["ChemConfig", "AmortizedConformerSampler", "train_amortized", "load_amortized",
           "load_chem_config", "sample_conformers", "MoleculeSet", "EnergySettings",
           "ScheduleSettings", "ModelSettings", "ChemTrainSettings"]


class MoleculeSet(BaseModel):
    """Which molecules to train on.

    Attributes:
        smiles_file: TSV with a ``SMILES`` column (or ``SMILES name`` lines).
        max_molecules: Keep the first this many usable molecules (after filters).
        max_atoms: Skip molecules with more atoms (hydrogens included).
        offset: Skip this many rows of the file first.
        shuffle_seed: If given, visit the rows in a random order drawn with this seed (the
            SPICE files are sorted by rotatable bonds, so the first rows are all rigid).
        min_rotatable_bonds: Skip molecules with fewer rotatable bonds (RDKit's strict count).
    """

    model_config = ConfigDict(extra="forbid")
    smiles_file: str
    max_molecules: int = Field(256, ge=1)
    max_atoms: int = Field(60, ge=2)
    offset: int = Field(0, ge=0)
    shuffle_seed: int | None = None
    min_rotatable_bonds: int = Field(0, ge=0)


class EnergySettings(BaseModel):
    """Energy of every molecule (see :func:`~adjoint_core_chem.energy.make_energy`)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["mmff", "xtb"] = "mmff"
    temperature: float = Field(KT_300K, gt=0)
    regularize: bool = True
    alpha: float = Field(100.0, ge=0)


class ScheduleSettings(BaseModel):
    """Geometric base schedule (the paper's SPICE setting: 1e-3 → 1 Å)."""

    model_config = ConfigDict(extra="forbid")
    sigma_min: float = Field(1e-3, gt=0)
    sigma_max: float = Field(1.0, gt=0)


class ModelSettings(BaseModel):
    """:class:`~adjoint_core_chem.model.MolecularEGNN` parameters."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(64, ge=1)
    n_layers: int = Field(4, ge=1)
    time_dim: int = Field(16, ge=2)


class ChemTrainSettings(BaseModel):
    """Budgets of the amortized loop.

    Attributes:
        n_epochs: Epochs.
        molecules_per_epoch: Molecules simulated per epoch.
        conformers_per_molecule: New conformers (energy evaluations) per molecule and epoch.
        grad_steps_per_epoch: Adam steps per epoch.
        molecules_per_step: Molecules per Adam step (losses averaged).
        batch_per_molecule: Buffer rows of each of them per step.
        buffer_per_molecule: Replay capacity per molecule (FIFO).
        n_sde_steps: Euler–Maruyama steps.
        lr: Adam learning rate.
        max_grad_norm: Per-atom clipping of ``∇E/τ`` (paper: 150).
        time_limit_s: Stop after the epoch during which this wall time is exceeded (None: off).
        pretrain_epochs: The paper's "RDKit warm-up": this many first epochs fill per-molecule
            buffers with ETKDG conformers (no energy evaluations) and minimise the scaled
            bridge-matching loss ``mean ((h(1)² − h(t)²)·u_θ(t, x_t) − (x_1 − x_t))²`` (the
            base bridge's control pinned at ``x_1``); 0 (default): pure Adjoint Sampling.
    """

    model_config = ConfigDict(extra="forbid")
    n_epochs: int = Field(100, ge=0)
    molecules_per_epoch: int = Field(4, ge=1)
    conformers_per_molecule: int = Field(16, ge=1)
    grad_steps_per_epoch: int = Field(50, ge=0)
    molecules_per_step: int = Field(4, ge=1)
    batch_per_molecule: int = Field(16, ge=1)
    buffer_per_molecule: int = Field(256, ge=1)
    n_sde_steps: int = Field(100, ge=1)
    lr: float = Field(3e-4, gt=0)
    max_grad_norm: float | None = Field(150.0, gt=0)
    time_limit_s: float | None = Field(None, gt=0)
    pretrain_epochs: int = Field(0, ge=0)


class ChemConfig(BaseModel):
    """A complete amortized conformer run (YAML ``kind: chem_amortized``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["chem_amortized"] = "chem_amortized"
    seed: int = 0
    molecules: MoleculeSet
    energy: EnergySettings = EnergySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    model: ModelSettings = ModelSettings()
    train: ChemTrainSettings = ChemTrainSettings()


def load_chem_config(path: str | Path | dict) -> tuple[ChemConfig, Path | None]:
    """Read and validate a chemistry config; returns it and the file's folder.

    The file may inherit from another with ``base:`` (:func:`adjoint_core.app.config.read_config_file`).

    Raises:
        ConfigError: Missing file, bad YAML, or a bad field (named with its value).
    """
    if isinstance(path, dict):
        data, src, folder = path, "<dict>", None
    else:
        p = Path(path)
        data, src, folder = read_config_file(p), str(p), p.resolve().parent
    try:
        return ChemConfig.model_validate(data), folder
    except ValidationError as exc:
        lines = [f"invalid chemistry config {src}:"]
        for err in exc.errors():
            lines.append(f"  {'.'.join(map(str, err['loc']))}: {err['msg']} "
                         f"(got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def load_molecules(spec: MoleculeSet, folder: Path | None = None, energy: EnergySettings
                   | None = None, log=print) -> tuple[list[Molecule], list[dict]]:
    """Parse the training molecules; unusable ones are skipped and reported.

    Returns:
        ``(molecules, skipped)`` with ``skipped = [{"name", "smiles", "reason"}, …]``.
    """
    path = Path(spec.smiles_file)
    if not path.exists() and folder is not None and (folder / path).exists():
        path = folder / path
    if not path.is_file():
        raise ConfigError(f"molecules.smiles_file: file not found: {spec.smiles_file}")
    rows = read_smiles_file(str(path))[spec.offset:]
    if spec.shuffle_seed is not None:
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
            spec.shuffle_seed)).tolist()
        rows = [rows[k] for k in perm]
    mols, skipped = [], []
    for name, smi in rows:
        if len(mols) >= spec.max_molecules:
            break
        try:
            m = mol_from_smiles(smi, name)
            if m.n_atoms > spec.max_atoms or (
                    spec.min_rotatable_bonds
                    and CalcNumRotatableBonds(m.mol) < spec.min_rotatable_bonds):
                continue
            if energy is not None and energy.kind == "mmff":
                make_energy(m, "mmff", energy.temperature, False)  # MMFF typing check
        except MoleculeError as exc:
            skipped.append({"name": name, "smiles": smi, "reason": str(exc)})
            continue
        mols.append(m)
    if skipped:
        log(f"skipped {len(skipped)} molecule(s): " + "; ".join(s["reason"] for s in skipped[:5]))
    return mols, skipped


def sample_conformers(model: MolecularEGNN, molecule: Molecule, n: int, schedule,
                      n_steps: int = 100, generator: torch.Generator | None = None,
                      batch_size: int = 256) -> torch.Tensor:
    """``n`` conformers of ``molecule`` from the learned SDE, ``(n, N, 3)`` in Å (mean-free)."""
    space = EuclideanSpace(molecule.n_atoms, 3, mean_free=True)
    ctx = molecule.context()
    was = model.training
    model.eval()
    out = []
    for s in range(0, n, batch_size):
        b = min(batch_size, n - s)
        res = simulate(lambda t, x: model(t, x, ctx), space, schedule, b, n_steps, generator)
        out.append(res.x1)
    model.train(was)
    return torch.cat(out)


class AmortizedConformerSampler:
    """The amortized loop over a list of molecules (module docstring).

    Args:
        molecules: Training molecules.
        config: The run config (energy, schedule, model, budgets, seed).
    """

    def __init__(self, molecules: list[Molecule], config: ChemConfig) -> None:
        if not molecules:
            raise ValueError("the amortized sampler needs at least one molecule")
        self.config, self.molecules = config, molecules
        s = config.train
        torch.manual_seed(config.seed)
        self.model = MolecularEGNN(**config.model.model_dump())
        self.schedule = GeometricSchedule(config.schedule.sigma_min, config.schedule.sigma_max)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.buffers: dict[int, ReplayBuffer] = {}
        self.bm_buffers: dict[int, ReplayBuffer] = {}
        self._energies: dict[int, object] = {}
        self._spaces: dict[int, EuclideanSpace] = {}
        self._order = torch.randperm(len(molecules), generator=self.generator).tolist()
        self._cursor = 0
        self.counters = {"epoch": 0, "energy_evals": 0, "grad_steps": 0, "nonfinite_dropped": 0,
                         "etkdg_conformers": 0}
        self.timers = {"simulate": 0.0, "energy": 0.0, "train": 0.0, "etkdg": 0.0}
        self.history: list[dict] = []

    def energy(self, i: int):
        """Energy of molecule ``i`` (built once)."""
        if i not in self._energies:
            e = self.config.energy
            self._energies[i] = make_energy(self.molecules[i], e.kind, e.temperature,
                                            e.regularize, e.alpha)
        return self._energies[i]

    def space(self, i: int) -> EuclideanSpace:
        """Mean-free ``(N_i, 3)`` space of molecule ``i``."""
        if i not in self._spaces:
            self._spaces[i] = EuclideanSpace(self.molecules[i].n_atoms, 3, mean_free=True)
        return self._spaces[i]

    def collect(self, i: int, n: int) -> float:
        """Simulate ``n`` conformers of molecule ``i``, evaluate them once, fill its buffer.

        Returns:
            Mean raw energy of the kept conformers (NaN if none).
        """
        s = self.config.train
        mol, space = self.molecules[i], self.space(i)
        ctx = mol.context()
        t0 = time.perf_counter()
        self.model.eval()
        res = simulate(lambda t, x: self.model(t, x, ctx), space, self.schedule, n,
                       s.n_sde_steps, self.generator)
        self.model.train()
        self.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        a, e = terminal_adjoint(self.energy(i), space, self.schedule, res.x1, s.max_grad_norm)
        self.counters["energy_evals"] += n
        ok = torch.isfinite(e) & torch.isfinite(a.flatten(1)).all(-1)
        self.counters["nonfinite_dropped"] += int((~ok).sum())
        if ok.any():
            buf = self.buffers.setdefault(i, ReplayBuffer(s.buffer_per_molecule))
            buf.add(res.x1[ok], a[ok], energy=e[ok].float())
        self.timers["energy"] += time.perf_counter() - t0
        return float(e[ok].mean()) if ok.any() else math.nan

    def loss(self, i: int, batch: int) -> torch.Tensor:
        """Adjoint-matching loss on ``batch`` rows of molecule ``i``'s buffer."""
        rows = self.buffers[i].sample(batch, self.generator)
        x1, a = rows["x1"], rows["adjoint"]
        t = torch.rand(x1.shape[0], generator=self.generator)
        space = self.space(i)
        xt = space.bridge_sample(x1, t, self.schedule, self.generator)
        out = space.tangent(self.model(t, xt, self.molecules[i].context()))
        return adjoint_matching_loss(out, a)

    def collect_etkdg(self, i: int, n: int) -> None:
        """Add ``n`` centred ETKDG conformers of molecule ``i`` to its warm-up buffer."""
        s = self.config.train
        t0 = time.perf_counter()
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        try:
            x = self.space(i).project(self.molecules[i].embed(n, seed=seed))
        except MoleculeError:
            return
        buf = self.bm_buffers.setdefault(i, ReplayBuffer(s.buffer_per_molecule))
        buf.add(x, torch.zeros_like(x))
        self.counters["etkdg_conformers"] += int(x.shape[0])
        self.timers["etkdg"] += time.perf_counter() - t0

    def bm_loss(self, i: int, batch: int) -> torch.Tensor:
        """Scaled bridge-matching loss on ``batch`` ETKDG rows of molecule ``i``."""
        x1 = self.bm_buffers[i].sample(batch, self.generator)["x1"]
        t = torch.rand(x1.shape[0], generator=self.generator)
        space = self.space(i)
        xt = space.bridge_sample(x1, t, self.schedule, self.generator)
        rem = (self.schedule.h1_squared - self.schedule.h2(t.double())).float().view(-1, 1, 1)
        out = space.tangent(self.model(t, xt, self.molecules[i].context()))
        return (rem * out - (x1 - xt)).pow(2).mean()

    def train_epoch(self) -> dict:
        """One epoch: new conformers for a few molecules, then Adam steps; returns its row."""
        s = self.config.train
        warm = self.counters["epoch"] < s.pretrain_epochs
        energies = []
        for _ in range(s.molecules_per_epoch):
            i = self._order[self._cursor % len(self._order)]
            self._cursor += 1
            if warm:
                self.collect_etkdg(i, s.conformers_per_molecule)
            else:
                energies.append(self.collect(i, s.conformers_per_molecule))
        t0 = time.perf_counter()
        bufs = self.bm_buffers if warm else self.buffers
        loss_fn = self.bm_loss if warm else self.loss
        have = sorted(bufs)
        losses = []
        for _ in range(s.grad_steps_per_epoch if have else 0):
            pick = torch.randint(len(have), (min(s.molecules_per_step, len(have)),),
                                 generator=self.generator).tolist()
            loss = sum(loss_fn(have[k], s.batch_per_molecule) for k in pick) / len(pick)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.counters["grad_steps"] += 1
            losses.append(float(loss.detach()))
        self.timers["train"] += time.perf_counter() - t0
        self.counters["epoch"] += 1
        finite = [v for v in energies if math.isfinite(v)]
        row = {"epoch": self.counters["epoch"], "phase": "warm-up" if warm else "adjoint",
               "loss": sum(losses) / len(losses) if losses else math.nan,
               "new_energy_mean": sum(finite) / len(finite) if finite else math.nan,
               "molecules_seen": len(self.buffers),
               **{k: v for k, v in self.counters.items() if k != "epoch"}}
        self.history.append(row)
        return row

    def state_dict(self) -> dict:
        """Everything needed to resume exactly."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffers": {i: b.state_dict() for i, b in self.buffers.items()},
                "bm_buffers": {i: b.state_dict() for i, b in self.bm_buffers.items()},
                "generator": self.generator.get_state(), "cursor": self._cursor,
                "order": self._order, "counters": dict(self.counters),
                "timers": dict(self.timers), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        cap = self.config.train.buffer_per_molecule
        self.buffers = {}
        for i, b in state["buffers"].items():
            self.buffers[int(i)] = ReplayBuffer(cap)
            self.buffers[int(i)].load_state_dict(b)
        self.bm_buffers = {}
        for i, b in state.get("bm_buffers", {}).items():
            self.bm_buffers[int(i)] = ReplayBuffer(cap)
            self.bm_buffers[int(i)].load_state_dict(b)
        self.generator.set_state(state["generator"])
        self._cursor, self._order = int(state["cursor"]), list(state["order"])
        self.counters.update(state["counters"])
        self.timers.update(state["timers"])
        self.history = list(state["history"])


def _comparable(cfg: dict) -> dict:
    """The part of a config a resume must keep: all but the ``train`` budgets.

    ``train.buffer_per_molecule`` (the stored buffers' capacity) must also stay.
    """
    return {**{k: v for k, v in cfg.items() if k != "train"},
            "buffer_per_molecule": cfg["train"]["buffer_per_molecule"]}


def train_amortized(config: str | Path | dict | ChemConfig, out: str | Path, log=print,
                    molecules: list[Molecule] | None = None) -> dict:
    """Train (or resume) an amortized conformer sampler into ``out``.

    A run directory with a checkpoint is resumed if its config equals ``config`` except for
    the ``train`` budgets (epochs, warm-up epochs, steps, batch sizes, learning rate, time
    limit; not the buffer capacity): a run can be extended or continued with other budgets.
    Every launch's train settings are listed in ``metrics.json`` under ``"launches"``.

    Args:
        config: Path to a YAML config, a dict, or a :class:`ChemConfig`.
        out: Run directory.
        log: Logger.
        molecules: Use these instead of reading ``config.molecules`` (tests).

    Returns:
        The ``metrics.json`` record.
    """
    folder = None
    cfg = config if isinstance(config, ChemConfig) else None
    if cfg is None:
        cfg, folder = load_chem_config(config)
    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = []
    if molecules is None:
        molecules, skipped = load_molecules(cfg.molecules, folder, cfg.energy, log)
    sampler = AmortizedConformerSampler(molecules, cfg)
    ckpt = out / "checkpoints" / "latest.pt"
    cfg_dict = json.loads(cfg.model_dump_json())
    launches: list[dict] = []
    if (out / "metrics.json").exists():
        launches = json.loads((out / "metrics.json").read_text()).get("launches", [])
    if ckpt.exists():
        payload = torch.load(ckpt, weights_only=False)
        if _comparable(payload["config"]) != _comparable(cfg_dict):
            raise ConfigError(f"{out} holds a run with a different config; use a new directory")
        sampler.load_state_dict(payload["state"])
        log(f"resuming {out} from epoch {sampler.counters['epoch']}")
    (out / "chem_config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    record = {"config": cfg_dict, "n_molecules": len(molecules),
              "molecule_atoms": [m.n_atoms for m in molecules], "skipped": skipped,
              "launches": launches + [{"from_epoch": sampler.counters["epoch"],
                                       "train": cfg_dict["train"]}]}
    start = time.perf_counter()

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": cfg_dict, "state": sampler.state_dict()}, tmp)
        tmp.replace(ckpt)
        record.update({"history": sampler.history, "counters": sampler.counters,
                       "timers": sampler.timers})
        (out / "metrics.json").write_text(json.dumps(record, indent=2))

    limit = cfg.train.time_limit_s
    while sampler.counters["epoch"] < cfg.train.n_epochs:
        row = sampler.train_epoch()
        if row["epoch"] == cfg.train.pretrain_epochs:
            torch.save({"config": cfg_dict, "state": sampler.state_dict()},
                       out / "checkpoints" / "warmup.pt")
        if row["epoch"] % 10 == 0 or row["epoch"] == cfg.train.n_epochs:
            log(f"epoch {row['epoch']} ({row['phase']}): loss={row['loss']:.4g} "
                f"E_new={row['new_energy_mean']:.4g} kcal/mol evals={row['energy_evals']} "
                f"t={time.perf_counter() - start:.0f}s")
            save()
        if limit is not None and time.perf_counter() - start > limit:
            log(f"time limit {limit:.0f} s reached after epoch {row['epoch']}")
            break
    record["stopped_at_epoch"] = sampler.counters["epoch"]
    save()
    return record


def load_amortized(run_dir: str | Path, checkpoint: str = "latest"
                   ) -> tuple[MolecularEGNN, GeometricSchedule, ChemConfig]:
    """The trained model, its schedule and config from a run directory.

    Args:
        run_dir: Run directory of :func:`train_amortized`.
        checkpoint: ``"latest"`` or ``"warmup"`` (the end of the warm-up phase).

    Raises:
        ConfigError: ``run_dir`` is not an amortized chemistry run.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "chem_config.yaml"
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise ConfigError(f"{run_dir} is not an amortized chemistry run directory (needs "
                          f"chem_config.yaml and checkpoints/{checkpoint}.pt)")
    cfg, _ = load_chem_config(cfg_path)
    model = MolecularEGNN(**cfg.model.model_dump())
    state = torch.load(ckpt, weights_only=False)["state"]
    model.load_state_dict(state["model"])
    model.eval()
    return model, GeometricSchedule(cfg.schedule.sigma_min, cfg.schedule.sigma_max), cfg
