"""Per-molecule refinement of an amortized conformer model with Adjoint Sampling.

The amortized network (the shipped model :data:`~adjoint_core_chem.pretrained.DEFAULT_MODEL`,
a model directory or a training run) has seen many molecules; :func:`finetune` continues
training it on one molecule only, with the core :class:`~adjoint_core.training.trainer.Trainer`
and its Adjoint Sampling objective (``"adjoint"``): each epoch simulates
``samples_per_epoch`` conformers with the current network, evaluates the chosen energy
(MMFF94 or GFN2-xTB) and its gradient once per conformer, and takes ``steps_per_epoch``
adjoint-matching gradient steps, until ``steps`` gradient steps are done. The starting
network is copied (the given trainer is left unchanged), as are the run's noise schedule,
SDE steps and clipping of ``∇E/τ``; the energy keeps the run's temperature and bond
regulariser. Only Cartesian molecule runs (``problem: molecules``) can be fine-tuned.

.. code-block:: python

    from adjoint_core_chem.api import generate_conformers
    from adjoint_core_chem.finetune import finetune

    tuned = finetune("CC(=O)Nc1ccc(O)cc1", energy="mmff", steps=200)
    mol = generate_conformers("CC(=O)Nc1ccc(O)cc1", run=tuned, num_conformers=50)

The returned trainer's ``problem.make_target`` builds targets with the fine-tuning energy, so
importance weights (``generate_conformers(..., weights=True)``) are towards that energy's
Boltzmann density. ``adjoint-core conformers --finetune-steps N --finetune-energy mmff|xtb``
fine-tunes each molecule before generating its conformers.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from rdkit import Chem

from adjoint_core.plugins.registry import ConfigError
from adjoint_core.problem.buffer import ReplayBuffer
from adjoint_core.problem.target import Problem
from adjoint_core.training.trainer import Trainer, TrainSettings

from .energy import KT_300K, BondRegularizedEnergy
from .molecule import Molecule, mol_from_smiles
from .problem import molecule_target

__all__ = ["ENERGIES", "finetune", "check_energy_available", "check_finetunable"]

#: Energies a molecule can be fine-tuned on.
ENERGIES = ("mmff", "xtb")


def check_energy_available(energy: str, field: str = "energy") -> None:
    """Refuse an unknown energy, or ``"xtb"`` without the optional ``tblite`` package.

    Args:
        energy: ``"mmff"`` or ``"xtb"``.
        field: The argument named in the message.

    Raises:
        ConfigError: Naming ``field``, the value and what is allowed.
    """
    if energy not in ENERGIES:
        raise ConfigError(f"{field}: {energy!r}: one of 'mmff', 'xtb'")
    if energy == "xtb":
        try:
            import tblite.interface  # noqa: F401
        except ImportError:
            raise ConfigError(f"{field}: 'xtb': needs the optional package tblite (pip install "
                              "tblite); use mmff") from None


def check_finetunable(trainer) -> None:
    """Refuse a model :func:`finetune` cannot continue training.

    Raises:
        ConfigError: Not trained with Adjoint Sampling, or not a Cartesian molecule model.
    """
    if trainer.objective.name != "adjoint":
        raise ConfigError(f"--run: trained with algorithm {trainer.objective.name!r}; "
                          "fine-tuning uses Adjoint Sampling and needs a run trained with "
                          "algorithm: adjoint")
    probe = trainer.targets[0]
    info = probe.info or {}
    if info.get("to_positions") is not None or "molecule" not in info or \
            tuple(probe.space.event_shape[-1:]) != (3,):
        raise ConfigError("--run: fine-tuning needs a Cartesian molecule model (problem: "
                          "molecules); this one samples another state (e.g. torsions)")


def _energy_settings(base) -> dict[str, Any]:
    """Temperature, regulariser and its weight of the base run's (first) target energy."""
    e = base.targets[0].energy
    regularize = isinstance(e, BondRegularizedEnergy)
    return {"temperature": float(getattr(e, "temperature", KT_300K)),
            "regularize": regularize,
            "alpha": float(e.alpha) if regularize else 100.0}


def finetune(
    molecule: str | Chem.Mol | Molecule, run: Any = None, energy: str = "mmff",
    steps: int = 200, *, name: str | None = None, samples_per_epoch: int = 32,
    steps_per_epoch: int = 10, batch_size: int = 32, lr: float = 1e-5,
    clip: float = 20.0, grad_clip: float | None = 1.0,
    buffer_size: int = 1024, n_sde_steps: int | None = None, seed: int = 0,
    max_atoms: int | None = None, progress: bool = True,
) -> Trainer:
    """Fine-tune the amortized model on one molecule with Adjoint Sampling (module docstring).

    Args:
        molecule: SMILES, RDKit ``Mol`` or :class:`~adjoint_core_chem.molecule.Molecule`
            (checked as by :func:`~adjoint_core_chem.api.parse_molecule`).
        run: The starting model: ``None`` (the shipped model), a model directory, a run
            directory, or a loaded trainer (not modified).
        energy: ``"mmff"`` (MMFF94) or ``"xtb"`` (GFN2-xTB, needs ``tblite``).
        steps: Gradient steps (``>= 1``).
        name: Label of the molecule (messages, the progress bar).
        samples_per_epoch: Conformers simulated and evaluated per epoch (energy evaluations).
        steps_per_epoch: Gradient steps per epoch (the last epoch takes the remainder).
        batch_size: Buffer rows per gradient step.
        lr: Adam learning rate. The defaults of ``lr``, ``clip`` and ``grad_clip`` are the
            least destructive of the settings measured after a bridge-matching warm-up
            (``docs/chem.md``, "Adjoint Sampling after the warm-up"): larger rates or clips
            break bonds within a few epochs.
        clip: Per-atom clipping threshold of ``∇E/τ`` in the adjoint.
        grad_clip: Clip the parameters' gradient norm (``None``: off).
        buffer_size: Replay-buffer capacity (rows).
        n_sde_steps: Euler–Maruyama steps (default: the run's).
        seed: Seed of the fine-tuning's random generator.
        max_atoms: Size limit (default :data:`~adjoint_core_chem.api.MAX_ATOMS`).
        progress: Show a tqdm progress bar over the gradient steps.

    Returns:
        A :class:`~adjoint_core.training.trainer.Trainer` with one target (the molecule) and
        the fine-tuned network; ``counters`` and ``history`` describe the fine-tuning, and
        ``problem.make_target`` builds targets with the fine-tuning energy.

    Raises:
        ConfigError: A bad ``energy`` (or ``xtb`` without tblite), a bad budget, no model, or
            a run that is not a Cartesian molecule run trained with Adjoint Sampling.
        MoleculeError: The molecule is rejected (the message names it and the reason).
        NonFiniteEnergyError: Training diverged (every sample non-finite, or a NaN loss).
    """
    from .api import MAX_ATOMS, load_conformer_run, parse_molecule

    check_energy_available(energy)
    for field, value in (("steps", steps), ("samples_per_epoch", samples_per_epoch),
                         ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size),
                         ("buffer_size", buffer_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field}: {value!r}: an integer >= 1")
    for field, value in (("lr", lr), ("clip", clip), ("grad_clip", grad_clip)):
        if value is None and field == "grad_clip":
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{field}: {value!r}: a number > 0")
    mol = parse_molecule(molecule, name, MAX_ATOMS if max_atoms is None else max_atoms)
    base = run if hasattr(run, "sample") else load_conformer_run(run)
    check_finetunable(base)
    settings_e = _energy_settings(base)

    def make_target(m: Molecule | str, buffer: ReplayBuffer | None = None):
        m = mol_from_smiles(m) if isinstance(m, str) else m
        return molecule_target(m, buffer if buffer is not None else ReplayBuffer(buffer_size),
                               energy, **settings_e)

    target = make_target(mol)
    s = base.settings
    settings = TrainSettings(
        n_epochs=math.ceil(steps / steps_per_epoch), samples_per_epoch=samples_per_epoch,
        sim_batch_size=samples_per_epoch, grad_steps_per_epoch=steps_per_epoch,
        train_batch_size=batch_size, n_sde_steps=n_sde_steps or s.n_sde_steps,
        lr=lr, max_grad_norm=clip, grad_clip=grad_clip, nonfinite="drop")
    model = copy.deepcopy(base.sampling_model)
    tuned = Trainer(Problem([target], make_target=make_target,
                            info={"finetuned": mol.name, "energy": energy, "steps": steps}),
                    base.schedule, model, "adjoint", settings=settings, seed=seed,
                    device=base.device)
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc=f"fine-tuning {mol.name}"[:60], unit="step",
              disable=not progress) as bar:
        while tuned.counters["grad_steps"] < steps:
            left = steps - tuned.counters["grad_steps"]
            if left < steps_per_epoch:
                tuned.settings = tuned.settings.model_copy(update={"grad_steps_per_epoch": left})
            before = tuned.counters["grad_steps"]
            row = tuned.train_epoch()
            bar.update(tuned.counters["grad_steps"] - before)
            bar.set_postfix(loss=f"{row['loss']:.3g}",
                            E_median=f"{row['buffer_energy_median']:.3g}")
    tuned.model.eval()
    return tuned
