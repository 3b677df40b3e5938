"""``adjoint-core`` sub-commands of the chemistry plugin: chem-train, conformers, chem-export.

``adjoint-core chem-train CONFIG --out RUN_DIR`` is an alias of ``adjoint-core train CONFIG
--out RUN_DIR`` (amortized runs are ordinary core runs of the ``molecules`` problem, see
:mod:`adjoint_core_chem.problem`); it only also sets the number of torch threads.

``adjoint-core conformers [RUN_DIR] --smiles-file FILE --num-conformers K --out DIR
[--relax none|mmff|xtb] [--weights] [--finetune-steps N --finetune-energy mmff|xtb]`` loads the
model: by default the shipped one (:data:`~adjoint_core_chem.pretrained.DEFAULT_MODEL`; the
error says how to train and export one while it is not installed), else ``--run`` / ``RUN_DIR``:
a model directory of ``chem-export`` or any run directory whose problem can make a target for
a new molecule (:func:`adjoint_core.app.run.load_run`, ``trainer.problem.make_target``: the
chemistry plugin's ``molecules``, the torsion plugin's ``torsional_molecules``, or a plugin's
own). It samples K states with ``trainer.sample(K, target=...)`` and turns them into Cartesian
coordinates with the target's ``info["to_positions"]`` when it has one (states that are
already coordinates otherwise; a target with ``info["fixed_positions"]`` has nothing to sample
and returns that geometry K times). It writes ``DIR/<name>.sdf`` per molecule: K conformers
with hydrogens, each with the properties ``conformer_id``, ``energy_mmff_kcal_mol`` (and
``energy_xtb_kcal_mol`` after an xTB relaxation), ``relaxed`` and, when the target names one
in ``info["state_property"]``, the sampled state (e.g. ``torsions_rad``); with ``--weights``
(raw samples only) also ``log_weight``, ``importance_weight`` and the molecule's ``ess``.
``--finetune-steps N`` first fine-tunes the model on each molecule for N gradient steps of
Adjoint Sampling on ``--finetune-energy`` (:mod:`adjoint_core_chem.finetune`). Molecules that
cannot be parsed, are salts, charged, radicals, too large, have an unsupported element or
cannot be typed by MMFF are skipped and reported (in the output and in ``DIR/summary.json``);
the others are still written, and a re-run skips the molecules already written. Exit status 0
when every molecule succeeded, 1 when none did, 2 when some were skipped. A bad argument ends
with one line ``error: <argument>: <value>: <what is allowed>`` and status 2 before any
molecule is generated.

``adjoint-core chem-export RUN_DIR --out MODEL_DIR [--card CARD.json]`` writes the slim model
directory of a trained run (:func:`adjoint_core_chem.pretrained.export_model`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from rdkit import Chem

from adjoint_core.app.cli import arg_int, arg_output, arg_seed
from adjoint_core.plugins.registry import ConfigError

from .energy import MMFFEnergy, XTBEnergy
from .molecule import Molecule

__all__ = ["add_commands", "generate_for_molecule", "sample_conformers", "write_sdf"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "molecule"


def write_sdf(path: Path, molecule: Molecule, positions: torch.Tensor,
              props: dict[str, list]) -> None:
    """Write ``positions`` ``(K, N, 3)`` of ``molecule`` as K SDF records with properties."""
    mol = molecule.with_conformers(positions)
    mol.SetProp("_Name", molecule.name)
    mol.SetProp("smiles", molecule.smiles)
    with Chem.SDWriter(str(path)) as writer:
        for k, conf in enumerate(mol.GetConformers()):
            for key, values in props.items():
                v = values[k]
                if isinstance(v, float):
                    mol.SetDoubleProp(key, v)
                else:
                    mol.SetProp(key, str(v))
            writer.write(mol, confId=conf.GetId())


def sample_conformers(trainer, molecule: Molecule, k: int, n_steps: int | None = None,
                      seed: int = 0, batch_size: int = 256
                      ) -> tuple[torch.Tensor, dict[str, list]]:
    """``k`` conformers of a (new) molecule from a trained run, in Å.

    Args:
        trainer: A trained :class:`~adjoint_core.training.trainer.Trainer` (e.g. from
            :func:`adjoint_core.app.run.load_run`) whose problem has ``make_target``.
        molecule: The molecule.
        k: Number of conformers.
        n_steps: Euler–Maruyama steps (default: the training value).
        seed: Seed of the sampling generator.
        batch_size: Paths simulated at once.

    Returns:
        ``(positions (k, N, 3) float32, properties {name: [k values]})``; the properties hold
        the sampled states under the target's ``info["state_property"]`` when it names one.

    Raises:
        ConfigError: The run's problem cannot make targets for new molecules.
        MoleculeError: The problem cannot build a target for this molecule.
    """
    make_target = trainer.problem.make_target
    if make_target is None:
        raise ConfigError("this run's problem cannot make a target for a new molecule (train "
                          "with problem: molecules or torsional_molecules)")
    target = make_target(molecule)
    info = target.info or {}
    if "fixed_positions" in info:  # nothing to sample (e.g. no rotatable bond)
        ref = torch.as_tensor(info["fixed_positions"]).float()
        return ref.expand(k, -1, -1).clone(), {}
    gen = torch.Generator(device=trainer.device).manual_seed(seed)
    x = trainer.sample(k, n_steps=n_steps, batch_size=batch_size, generator=gen,
                       target=target).cpu()
    props: dict[str, list] = {}
    if info.get("state_property"):
        props[info["state_property"]] = [" ".join(f"{v:.4f}" for v in row)
                                         for row in x.reshape(k, -1).tolist()]
    to_positions = info.get("to_positions")
    pos = to_positions(x.double()) if to_positions is not None else x
    return pos.float(), props


def generate_for_molecule(trainer, molecule: Molecule, k: int, n_steps: int | None = None,
                          relax: str = "none", relax_steps: int = 200, seed: int = 0,
                          batch_size: int = 256) -> tuple[torch.Tensor, dict[str, list]]:
    """Generate ``k`` conformers, optionally relax them, and compute their energies.

    Returns:
        ``(positions (k, N, 3) in Å, properties {name: [k values]})``.

    Raises:
        MoleculeError: MMFF cannot type the molecule.
    """
    mmff = MMFFEnergy(molecule)
    x, extra = sample_conformers(trainer, molecule, k, n_steps, seed, batch_size)
    props: dict[str, list] = {"conformer_id": list(range(k)), "relaxed": [relax] * k, **extra}
    if relax == "mmff":
        x = mmff.minimize(x, max_iters=relax_steps)
    elif relax == "xtb":
        xtb = XTBEnergy(molecule)
        x = xtb.minimize(x, max_iters=relax_steps)
        props["energy_xtb_kcal_mol"] = [float(v) for v in xtb.energy(x.double())]
    props["energy_mmff_kcal_mol"] = [float(v) for v in mmff.energy(x.double())]
    return x, props


def _run_train(args: argparse.Namespace) -> int:
    from adjoint_core.app.cli import main

    torch.set_num_threads(args.threads)
    return main(["train", args.config, "--out", args.out]
                + (["--no-progress"] if args.no_progress else []))


def _run_export(args: argparse.Namespace) -> int:
    from .pretrained import export_model, read_json_object

    card = (read_json_object(args.card, "--card", "give a JSON file holding an object")
            if args.card else None)
    dest = export_model(args.run_dir, args.out, card)
    size = (dest / "model.pt").stat().st_size
    print(f"exported {args.run_dir} -> {dest} (model.pt {size / 1e6:.2f} MB); use it with "
          f"adjoint-core conformers --run {dest}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``chem-train``, ``conformers`` and ``chem-export`` to the ``adjoint-core`` CLI."""
    from .api import add_input_arguments, run_conformers_command

    p = subparsers.add_parser("chem-train", help="alias of `train` with a torch thread count "
                              "(amortized conformer configs: problem: {name: molecules})")
    p.add_argument("config", help="run config (YAML), as for `adjoint-core train`")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--threads", type=arg_int(1), default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    c = subparsers.add_parser("conformers", help="generate conformers from SMILES with a "
                              "trained amortized sampler (one SDF per molecule)")
    add_input_arguments(c)
    c.add_argument("--smiles-file", default=None,
                   help="TSV with a SMILES column, or lines 'SMILES [name]'")
    c.add_argument("--num-conformers", type=arg_int(1), required=True,
                   help="conformers per molecule")
    c.add_argument("--out", type=arg_output(directory=True), required=True,
                   help="output folder for the SDF files")
    c.add_argument("--relax", choices=["none", "mmff", "xtb"], default="none",
                   help="short minimisation of the generated conformers")
    c.add_argument("--relax-steps", type=arg_int(0), default=200, help="minimiser iterations")
    c.add_argument("--n-sde-steps", type=arg_int(1), default=None,
                   help="Euler-Maruyama steps (default: the training value)")
    c.add_argument("--batch-size", type=arg_int(1), default=256,
                   help="conformers simulated at once")
    c.add_argument("--seed", type=arg_seed, default=0, help="seed (molecule i uses seed + i)")
    c.add_argument("--limit", type=arg_int(0), default=0,
                   help="only the first N molecules (0: all)")
    c.add_argument("--weights", action="store_true",
                   help="also write importance weights (log_weight, importance_weight) and "
                   "the ESS (raw samples: needs --relax none)")
    c.add_argument("--finetune-steps", type=arg_int(0), default=0,
                   help="fine-tune the model on each molecule for N gradient steps of Adjoint "
                   "Sampling before generating (0: off)")
    c.add_argument("--finetune-energy", choices=["mmff", "xtb"], default="mmff",
                   help="energy of the fine-tuning (xtb needs tblite)")
    c.add_argument("--no-progress", action="store_true", help="no fine-tuning progress bar")
    c.add_argument("--threads", type=arg_int(1), default=1, help="torch threads (default 1)")
    c.set_defaults(func=run_conformers_command)

    e = subparsers.add_parser("chem-export", help="write the slim model directory of a "
                              "trained molecular run (config, sampling weights, card)")
    e.add_argument("run_dir", help="run directory of `adjoint-core train`")
    e.add_argument("--out", type=arg_output(directory=True), required=True,
                   help="model directory to write (use it with conformers --run)")
    e.add_argument("--card", default=None,
                   help="JSON file of notes for card.json (description, cpu_hours, ...)")
    e.set_defaults(func=_run_export)
