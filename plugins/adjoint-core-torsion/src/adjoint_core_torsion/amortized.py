r"""Amortized torsional Adjoint Sampling of conformers (one :class:`TorsionNet` for all molecules).

The torsional variant of the paper's conformer method (ALGORITHM_NOTES §2), composed from the
core's generic pieces and the chemistry plugin, with no change to either:

* each molecule ``m`` has its torsional coordinates
  (:class:`adjoint_core_chem.torsion.MoleculeTorsions`: rotatable bonds, one ETKDG reference
  geometry, MMFF-relaxed by default), its :class:`~adjoint_core.problem.torsional.TorsionalSpace`
  ``T^{K_m}``, its energy (the chemistry plugin's Cartesian energy evaluated at ``x(τ)``,
  :class:`~adjoint_core_chem.torsion.TorsionalEnergy`) and its own replay buffer;
* *simulate*: :func:`adjoint_core.training.sde.simulate` on the torus (every update wrapped) with the
  control ``u_θ(t, τ; context_m)``;
* *energy*: :func:`adjoint_core.training.adjoint.terminal_adjoint`, i.e. ``∇_τ E/τ`` (clipped, whole
  vector per sample) plus the wrapped-normal base score;
* *train*: each Adam step draws ``molecules_per_step`` molecules with data, ``batch_per_molecule``
  rows of each, bridge samples on the torus (image draw, Euclidean bridge, wrap), and minimises
  the mean over molecules of :func:`adjoint_core.training.adjoint.adjoint_matching_loss` (a mean over
  torsions; AS-mol sums over all torsions of the batch, ALGORITHM_NOTES §2.3).

Molecules without a rotatable bond have nothing to learn and are skipped in training; at
generation they return their reference geometry.

Run directory (:func:`train_torsional`)::

    RUN_DIR/torsion_config.yaml    the validated config (kind: torsion_amortized)
    RUN_DIR/checkpoints/latest.pt  model, optimizer, buffers, RNG, counters (resumable)
    RUN_DIR/metrics.json           per-epoch log, counters, wall time per phase, molecule set

The chemistry plugin's ``adjoint-core conformers`` command recognises such a directory and
generates with :func:`generate_torsional`.
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

from adjoint_core.app.config import read_config_file
from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.buffer import ReplayBuffer
from adjoint_core.problem.schedules import GeometricSchedule
from adjoint_core.training.adjoint import adjoint_matching_loss, terminal_adjoint
from adjoint_core.training.sde import simulate

from .model import TorsionNet

try:
    from adjoint_core_chem.amortized import EnergySettings, MoleculeSet, load_molecules
    from adjoint_core_chem.energy import make_energy
    from adjoint_core_chem.molecule import N_ATOM_FEATURES, N_PAIR_FEATURES, Molecule
    from adjoint_core_chem.torsion import MoleculeTorsions
except ImportError as exc:  # pragma: no cover - the plugin is installed in this repo
    raise ImportError("amortized torsional sampling needs the chemistry plugin: "
                      "pip install adjoint-core-torsion[chem]") from exc

__all__ = ["TorsionConfig", "AmortizedTorsionSampler", "train_torsional", "load_torsional",
           "sample_torsional_conformers", "is_torsional_run", "CONFIG_NAME",
           "generate_torsional", "TorsionEnergySettings", "TorsionScheduleSettings",
           "TorsionModelSettings", "ReferenceSettings", "TorsionTrainSettings"]

#: Name of the config file that marks a torsional run directory.
CONFIG_NAME = "torsion_config.yaml"


class TorsionEnergySettings(EnergySettings):
    """Energy of every molecule; unregularised by default.

    AS-mol's torsional setting: bond lengths and angles are fixed, so the regulariser could
    only penalise clashes, which MMFF's van der Waals term already does.
    """

    regularize: bool = False


class TorsionScheduleSettings(BaseModel):
    """Geometric base schedule on the torus (AS-mol: ``σ_min = π/100``, ``σ_max = π``)."""

    model_config = ConfigDict(extra="forbid")
    sigma_min: float = Field(math.pi / 100, gt=0)
    sigma_max: float = Field(math.pi, gt=0)


class TorsionModelSettings(BaseModel):
    """:class:`~adjoint_core_torsion.model.TorsionNet` parameters.

    The context widths are fixed by the chemistry plugin's features.
    """

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(32, ge=1)
    n_layers: int = Field(3, ge=1)
    time_dim: int = Field(16, ge=2)
    cutoff: float = Field(5.0, gt=0)
    n_rbf: int = Field(16, ge=1)
    aggregation_scale: float = Field(10.0, gt=0)
    output_scale: float = Field(10.0, gt=0)


class ReferenceSettings(BaseModel):
    """Reference geometry of each molecule (bond lengths, angles, rings, chirality)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    relax: bool = True


class TorsionTrainSettings(BaseModel):
    """Budgets of the amortized torsional loop.

    Attributes:
        n_epochs: Epochs.
        molecules_per_epoch: Molecules simulated per epoch.
        conformers_per_molecule: New conformers (energy evaluations) per molecule and epoch.
        grad_steps_per_epoch: Adam steps per epoch.
        molecules_per_step: Molecules per Adam step (losses averaged).
        batch_per_molecule: Buffer rows of each of them per step.
        buffer_per_molecule: Replay capacity per molecule (FIFO).
        n_sde_steps: Euler–Maruyama steps.
        lr: Adam learning rate (AS-mol torsional: 1e-3).
        max_grad_norm: Clipping of ``∇_τ E/τ`` (norm of each sample's vector; AS-mol clips
            each torsion at 200).
        n_images: Images per side in the wrapped-normal sums (``None``: automatic).
        time_limit_s: Stop after the epoch during which this wall time is exceeded.
    """

    model_config = ConfigDict(extra="forbid")
    n_epochs: int = Field(100, ge=0)
    molecules_per_epoch: int = Field(4, ge=1)
    conformers_per_molecule: int = Field(16, ge=1)
    grad_steps_per_epoch: int = Field(20, ge=0)
    molecules_per_step: int = Field(4, ge=1)
    batch_per_molecule: int = Field(16, ge=1)
    buffer_per_molecule: int = Field(256, ge=1)
    n_sde_steps: int = Field(50, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_grad_norm: float | None = Field(500.0, gt=0)
    n_images: int | None = Field(None, ge=0)
    time_limit_s: float | None = Field(None, gt=0)


class TorsionConfig(BaseModel):
    """A complete amortized torsional run (YAML ``kind: torsion_amortized``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["torsion_amortized"] = "torsion_amortized"
    seed: int = 0
    molecules: MoleculeSet
    energy: TorsionEnergySettings = TorsionEnergySettings()
    schedule: TorsionScheduleSettings = TorsionScheduleSettings()
    model: TorsionModelSettings = TorsionModelSettings()
    reference: ReferenceSettings = ReferenceSettings()
    train: TorsionTrainSettings = TorsionTrainSettings()


def load_torsion_config(path: str | Path | dict) -> tuple[TorsionConfig, Path | None]:
    """Read and validate a torsional config; returns it and the file's folder.

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
        return TorsionConfig.model_validate(data), folder
    except ValidationError as exc:
        lines = [f"invalid torsional config {src}:"]
        for err in exc.errors():
            lines.append(f"  {'.'.join(map(str, err['loc']))}: {err['msg']} "
                         f"(got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def build_model(cfg: TorsionConfig) -> TorsionNet:
    """The :class:`TorsionNet` of a config, sized for the chemistry plugin's context."""
    return TorsionNet(N_ATOM_FEATURES, N_PAIR_FEATURES, **cfg.model.model_dump())


def schedule_of(cfg: TorsionConfig) -> GeometricSchedule:
    """The base schedule of a config."""
    return GeometricSchedule(cfg.schedule.sigma_min, cfg.schedule.sigma_max)


def sample_torsional_conformers(model: TorsionNet, torsions: MoleculeTorsions, n: int,
                                schedule, n_steps: int = 50,
                                generator: torch.Generator | None = None,
                                batch_size: int = 128, n_images: int | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` conformers from the learned torsional SDE.

    Returns:
        ``(positions (n, N, 3) float32 in Å, torsions (n, K))``; a molecule without rotatable
        bonds returns its reference geometry ``n`` times and an empty ``(n, 0)``.
    """
    if torsions.n_torsions == 0:
        x = torsions.reference.float().expand(n, -1, -1).clone()
        return x, torch.zeros(n, 0)
    space = torsions.space(n_images)
    ctx = torsions.context()
    was = model.training
    model.eval()
    taus = []
    for s in range(0, n, batch_size):
        b = min(batch_size, n - s)
        res = simulate(lambda t, x: model(t, x, ctx), space, schedule, b, n_steps, generator)
        taus.append(res.x1)
    model.train(was)
    tau = torch.cat(taus)
    return torsions.positions(tau.double()).float(), tau


class AmortizedTorsionSampler:
    """The amortized torsional loop over a list of molecules (module docstring).

    Args:
        molecules: Training molecules (those without rotatable bonds are skipped when visited).
        config: The run config.
    """

    def __init__(self, molecules: list[Molecule], config: TorsionConfig) -> None:
        if not molecules:
            raise ValueError("the torsional sampler needs at least one molecule")
        self.config, self.molecules = config, molecules
        torch.manual_seed(config.seed)
        self._torsions: dict[int, MoleculeTorsions] = {}
        #: Names of visited molecules without a rotatable bond (skipped).
        self.dropped: list[str] = []
        s = config.train
        self.model = build_model(config)
        self.schedule = schedule_of(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.buffers: dict[int, ReplayBuffer] = {}
        self._energies: dict[int, object] = {}
        self._order = torch.randperm(len(molecules), generator=self.generator).tolist()
        self._cursor = 0
        self.counters = {"epoch": 0, "energy_evals": 0, "grad_steps": 0, "nonfinite_dropped": 0}
        self.timers = {"simulate": 0.0, "energy": 0.0, "train": 0.0}
        self.history: list[dict] = []

    def torsions(self, i: int) -> MoleculeTorsions:
        """Torsional coordinates of molecule ``i`` (reference geometry built on first use)."""
        if i not in self._torsions:
            ref = self.config.reference
            self._torsions[i] = MoleculeTorsions.from_molecule(self.molecules[i], seed=ref.seed,
                                                               relax=ref.relax)
            if self._torsions[i].n_torsions == 0:
                self.dropped.append(self.molecules[i].name)
        return self._torsions[i]

    def energy(self, i: int):
        """Torsional energy of molecule ``i`` (built once)."""
        if i not in self._energies:
            e = self.config.energy
            cart = make_energy(self.molecules[i], e.kind, e.temperature, e.regularize, e.alpha)
            self._energies[i] = self.torsions(i).energy(cart)
        return self._energies[i]

    def collect(self, i: int, n: int) -> float:
        """Simulate ``n`` torsion states of molecule ``i``, evaluate once, fill its buffer.

        Returns:
            Mean raw energy of the kept states (NaN if none).
        """
        s = self.config.train
        tors = self.torsions(i)
        if tors.n_torsions == 0:
            return math.nan
        space, ctx = tors.space(s.n_images), tors.context()
        t0 = time.perf_counter()
        self.model.eval()
        res = simulate(lambda t, x: self.model(t, x, ctx), space, self.schedule, n,
                       s.n_sde_steps, self.generator)
        self.model.train()
        self.timers["simulate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        a, e = terminal_adjoint(self.energy(i), space, self.schedule, res.x1, s.max_grad_norm)
        self.counters["energy_evals"] += n
        ok = torch.isfinite(e) & torch.isfinite(a).all(-1)
        self.counters["nonfinite_dropped"] += int((~ok).sum())
        if ok.any():
            buf = self.buffers.setdefault(i, ReplayBuffer(s.buffer_per_molecule))
            buf.add(res.x1[ok], a[ok].float(), energy=e[ok].float())
        self.timers["energy"] += time.perf_counter() - t0
        return float(e[ok].mean()) if ok.any() else math.nan

    def loss(self, i: int, batch: int) -> torch.Tensor:
        """Adjoint-matching loss on ``batch`` rows of molecule ``i``'s buffer."""
        rows = self.buffers[i].sample(batch, self.generator)
        x1, a = rows["x1"], rows["adjoint"]
        t = torch.rand(x1.shape[0], generator=self.generator)
        tors = self.torsions(i)
        space = tors.space(self.config.train.n_images)
        xt = space.bridge_sample(x1, t, self.schedule, self.generator)
        return adjoint_matching_loss(self.model(t, xt, tors.context()), a)

    def train_epoch(self) -> dict:
        """One epoch: new states for a few molecules, then Adam steps; returns its log row."""
        s = self.config.train
        energies = []
        for _ in range(s.molecules_per_epoch):
            i = self._order[self._cursor % len(self._order)]
            self._cursor += 1
            energies.append(self.collect(i, s.conformers_per_molecule))
        t0 = time.perf_counter()
        have = sorted(self.buffers)
        losses = []
        for _ in range(s.grad_steps_per_epoch if have else 0):
            pick = torch.randint(len(have), (min(s.molecules_per_step, len(have)),),
                                 generator=self.generator).tolist()
            loss = sum(self.loss(have[k], s.batch_per_molecule) for k in pick) / len(pick)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.counters["grad_steps"] += 1
            losses.append(float(loss.detach()))
        self.timers["train"] += time.perf_counter() - t0
        self.counters["epoch"] += 1
        finite = [v for v in energies if math.isfinite(v)]
        row = {"epoch": self.counters["epoch"],
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
        self.generator.set_state(state["generator"])
        self._cursor, self._order = int(state["cursor"]), list(state["order"])
        self.counters.update(state["counters"])
        self.timers.update(state["timers"])
        self.history = list(state["history"])


def _resumable(cfg: dict) -> dict:
    """The config without the budget fields a resume may change."""
    train = {k: v for k, v in cfg["train"].items() if k not in ("n_epochs", "time_limit_s")}
    return {**cfg, "train": train}


def train_torsional(config: str | Path | dict | TorsionConfig, out: str | Path, log=print,
                    molecules: list[Molecule] | None = None) -> dict:
    """Train (or resume) an amortized torsional sampler into ``out``.

    Args:
        config: Path to a YAML config, a dict, or a :class:`TorsionConfig`.
        out: Run directory.
        log: Logger.
        molecules: Use these instead of reading ``config.molecules`` (tests).

    Returns:
        The ``metrics.json`` record.

    Raises:
        ConfigError: Bad config, or ``out`` holds a run with a different config (other than
            ``train.n_epochs`` / ``train.time_limit_s``, which a resume may extend).
    """
    folder = None
    cfg = config if isinstance(config, TorsionConfig) else None
    if cfg is None:
        cfg, folder = load_torsion_config(config)
    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = []
    if molecules is None:
        molecules, skipped = load_molecules(cfg.molecules, folder, cfg.energy, log)
    sampler = AmortizedTorsionSampler(molecules, cfg)
    ckpt = out / "checkpoints" / "latest.pt"
    cfg_dict = json.loads(cfg.model_dump_json())
    if ckpt.exists():
        payload = torch.load(ckpt, weights_only=False)
        if _resumable(payload["config"]) != _resumable(cfg_dict):
            raise ConfigError(f"{out} holds a run with a different config (only train.n_epochs "
                              f"and train.time_limit_s may change on resume); use a new "
                              f"directory")
        sampler.load_state_dict(payload["state"])
        log(f"resuming {out} from epoch {sampler.counters['epoch']}")
    (out / CONFIG_NAME).write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    record = {"config": cfg_dict, "n_molecules": len(molecules),
              "molecule_atoms": [m.n_atoms for m in molecules], "skipped": skipped}
    start = time.perf_counter()

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": cfg_dict, "state": sampler.state_dict()}, tmp)
        tmp.replace(ckpt)
        record.update({"history": sampler.history, "counters": sampler.counters,
                       "timers": sampler.timers, "no_rotatable_bond": sampler.dropped,
                       "molecule_torsions": {sampler.molecules[i].name: t.n_torsions
                                             for i, t in sampler._torsions.items()}})
        (out / "metrics.json").write_text(json.dumps(record, indent=2))

    limit = cfg.train.time_limit_s
    while sampler.counters["epoch"] < cfg.train.n_epochs:
        row = sampler.train_epoch()
        if row["epoch"] % 10 == 0 or row["epoch"] == cfg.train.n_epochs:
            log(f"epoch {row['epoch']}: loss={row['loss']:.4g} "
                f"E_new={row['new_energy_mean']:.4g} kcal/mol evals={row['energy_evals']} "
                f"t={time.perf_counter() - start:.0f}s")
            save()
        if limit is not None and time.perf_counter() - start > limit:
            log(f"time limit {limit:.0f} s reached after epoch {row['epoch']}")
            break
    record["stopped_at_epoch"] = sampler.counters["epoch"]
    record["wall_seconds"] = time.perf_counter() - start
    save()
    return record


def is_torsional_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by :func:`train_torsional`."""
    return (Path(run_dir) / CONFIG_NAME).is_file()


def load_torsional(run_dir: str | Path) -> tuple[TorsionNet, GeometricSchedule, TorsionConfig]:
    """The trained model, its schedule and config from a run directory.

    Raises:
        ConfigError: ``run_dir`` is not a torsional run.
    """
    run_dir = Path(run_dir)
    cfg_path, ckpt = run_dir / CONFIG_NAME, run_dir / "checkpoints" / "latest.pt"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise ConfigError(f"{run_dir} is not a torsional run directory (needs {CONFIG_NAME} "
                          f"and checkpoints/latest.pt)")
    cfg, _ = load_torsion_config(cfg_path)
    model = build_model(cfg)
    model.load_state_dict(torch.load(ckpt, weights_only=False)["state"]["model"])
    model.eval()
    return model, schedule_of(cfg), cfg


def generate_torsional(run_dir: str | Path, molecule: Molecule, k: int,
                       n_steps: int | None = None, seed: int = 0, batch_size: int = 128,
                       loaded: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` conformers of ``molecule`` (Å, float32) from a torsional run; and their torsions.

    The reference geometry is built as in training (``config.reference``).
    """
    model, schedule, cfg = loaded or load_torsional(run_dir)
    tors = MoleculeTorsions.from_molecule(molecule, seed=cfg.reference.seed,
                                          relax=cfg.reference.relax)
    gen = torch.Generator().manual_seed(seed)
    return sample_torsional_conformers(model, tors, k, schedule,
                                       n_steps or cfg.train.n_sde_steps, gen, batch_size,
                                       cfg.train.n_images)
