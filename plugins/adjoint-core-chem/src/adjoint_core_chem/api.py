"""Conformers from a SMILES or an RDKit molecule with a trained model: the chemist's entry point.

.. code-block:: python

    from adjoint_core_chem.api import generate_conformers

    mol = generate_conformers("CC(=O)Nc1ccc(O)cc1", num_conformers=50)  # the default model
    mol.GetNumConformers()                                    # 50
    mol.GetConformer(0).GetDoubleProp("energy_mmff_kcal_mol")
    mol = generate_conformers(mol, run="runs/chem_spice", weights=True)  # your own run
    mol, atoms = generate_conformers(mol, ase=True)           # + ASE Atoms list

The returned molecule is an RDKit ``Mol`` with explicit hydrogens (in the input's atom order
for an RDKit input, RDKit's ``AddHs`` order for a SMILES), one conformer per sample, and
conformer properties ``energy_mmff_kcal_mol`` (and ``energy_xtb_kcal_mol`` after an xTB
relaxation); with ``weights=True`` also ``log_weight`` and ``importance_weight``
(self-normalised path importance weights towards the Boltzmann density of the model's energy,
:func:`importance_weights`) and the molecule property ``ess`` (their effective sample size,
between 1 and K). ASE ``Atoms`` need the optional ``ase`` package (installed with fairchem).

The model (``run``) is, by default, the plugin's shipped model
(:data:`~adjoint_core_chem.pretrained.DEFAULT_MODEL`, package data
``adjoint_core_chem/data/models/spice_egnn``; while it is not installed the error says how to
train and export one); or the directory of ``adjoint-core train`` with a molecular problem
(``examples/chem_spice_cpu.yaml``, ``docs/chem.md``); or a model directory written by
``adjoint-core chem-export`` (:mod:`adjoint_core_chem.pretrained`); or a loaded trainer, e.g.
one fine-tuned on the molecule by :func:`adjoint_core_chem.finetune.finetune`.

Input checks (:func:`check_molecule`) reject, each with one message naming the molecule:
an unparsable SMILES, several fragments (salts, mixtures), a non-zero net charge, radicals,
elements outside :data:`~adjoint_core_chem.molecule.SUPPORTED_ELEMENTS`, and molecules with
more atoms (hydrogens included) than ``max_atoms``. :func:`run_conformers_command` is the
``adjoint-core conformers`` command built on these.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import Descriptors

from adjoint_core.app.cli import arg_int
from adjoint_core.plugins.registry import ConfigError

from .molecule import Molecule, MoleculeError, mol_from_rdkit, mol_from_smiles, read_smiles_file
from .pretrained import is_model_dir, load_model

__all__ = ["MAX_ATOMS", "check_molecule", "parse_molecule",
           "load_conformer_run", "importance_weights", "weighted_conformers",
           "generate_conformers", "to_ase", "run_conformers_command"]

#: Default size limit (atoms with hydrogens): the dense network's pair tensors grow as N².
MAX_ATOMS = 200


def _fragments(mol: Chem.Mol, name: str) -> None:
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(frags) > 1:
        largest = max(frags, key=lambda f: f.GetNumHeavyAtoms())
        raise MoleculeError(
            f"molecule {name!r}: {len(frags)} fragments (a salt or mixture); give one molecule, "
            f"e.g. its largest fragment {Chem.MolToSmiles(Chem.RemoveHs(largest))}")


def check_molecule(molecule: Molecule, max_atoms: int = MAX_ATOMS) -> None:
    """Reject molecules the sampler cannot serve (module docstring).

    Raises:
        MoleculeError: Naming the molecule and the reason.
    """
    mol, name = molecule.mol, molecule.name
    _fragments(mol, name)
    charge = Chem.GetFormalCharge(mol)
    if charge:
        raise MoleculeError(f"molecule {name!r}: net charge {charge:+d}; only neutral "
                            "molecules are supported (give the neutral form)")
    radicals = Descriptors.NumRadicalElectrons(mol)
    if radicals:
        raise MoleculeError(f"molecule {name!r}: {radicals} radical electron(s); only "
                            "closed-shell molecules are supported")
    if molecule.n_atoms > max_atoms:
        raise MoleculeError(f"molecule {name!r}: {molecule.n_atoms} atoms with hydrogens, "
                            f"more than the limit of {max_atoms}")


def parse_molecule(molecule: str | Chem.Mol | Molecule, name: str | None = None,
                   max_atoms: int = MAX_ATOMS) -> Molecule:
    """Parse a SMILES / RDKit Mol and apply :func:`check_molecule` (fragments checked first).

    Raises:
        MoleculeError: Naming the molecule and the reason.
    """
    if isinstance(molecule, str):
        RDLogger.DisableLog("rdApp.*")
        try:
            rd = Chem.MolFromSmiles(molecule.strip())
        finally:
            RDLogger.EnableLog("rdApp.*")
        if rd is not None:
            _fragments(rd, name or molecule)
    elif isinstance(molecule, Chem.Mol):
        _fragments(molecule, name or "molecule")
    mol = _molecule(molecule, name)
    check_molecule(mol, max_atoms)
    return mol


def _molecule(molecule: str | Chem.Mol | Molecule, name: str | None) -> Molecule:
    if isinstance(molecule, Molecule):
        return molecule
    if isinstance(molecule, Chem.Mol):
        return mol_from_rdkit(molecule, name)
    if isinstance(molecule, str):
        return mol_from_smiles(molecule, name)
    raise MoleculeError(f"molecule {name!r}: give a SMILES string or an RDKit Mol, got "
                        f"{type(molecule).__name__}")


def load_conformer_run(run: str | Path | None, device: str | None = None):
    """Load the model that generates conformers (a :class:`~adjoint_core.training.trainer.Trainer`).

    Args:
        run: ``None`` for the shipped model (:data:`~adjoint_core_chem.pretrained.DEFAULT_MODEL`),
            a model directory (``model.pt`` and ``card.json``, from ``adjoint-core
            chem-export``) or a training run directory (``config.yaml``, ``checkpoints/``).
        device: Torch device (default: the model's or run's config).

    Raises:
        ConfigError: ``run`` is ``None`` and the shipped model is not installed (the message,
            :data:`~adjoint_core_chem.pretrained.NO_DEFAULT_MODEL`, says how to train and
            export one), not a run or model directory, or a problem that cannot make targets
            for new molecules.
    """
    from adjoint_core.app.run import load_run

    if run is None or is_model_dir(run):
        trainer = load_model(run, device=device)
    else:
        trainer = load_run(run, device=device)
    if trainer.problem.make_target is None:
        raise ConfigError(f"--run: {run}: its problem cannot make a target for a new molecule; "
                          "train with problem: molecules or torsional_molecules")
    return trainer


def importance_weights(trainer, target, k: int, n_steps: int | None = None,
                       generator: torch.Generator | None = None, batch_size: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``k`` samples of one target with self-normalised path importance weights.

    ``log w`` is the full path log-weight of
    :meth:`~adjoint_core.training.trainer.Trainer.path_log_weights` (towards the Boltzmann
    density of the target's energy); non-finite ones get weight 0. The effective sample size
    is ``ESS = 1 / Σ w_i²`` (between 1 and the number of finite weights; 0 if none).

    Args:
        trainer: A trained trainer.
        target: The target (e.g. ``trainer.problem.make_target(molecule)``).
        k: Number of samples.
        n_steps: Euler–Maruyama steps (default: the training value).
        generator: Random generator (default: the trainer's).
        batch_size: Paths simulated at once (default: the trainer's ``sim_batch_size``).

    Returns:
        ``(x (k, …), log_w (k,), w (k,), ess)`` with ``w`` summing to 1 (float64).
    """
    x, log_w = trainer.path_log_weights(k, target=target, n_steps=n_steps, generator=generator,
                                        batch_size=batch_size)
    lw = log_w.detach().double().cpu()
    ok = torch.isfinite(lw)
    w = torch.zeros_like(lw)
    if ok.any():
        w[ok] = torch.softmax(lw[ok], 0)
    ess = float(1.0 / w.square().sum()) if ok.any() else 0.0
    return x, lw, w, ess


def weighted_conformers(trainer, molecule: Molecule, k: int, n_steps: int | None = None,
                        seed: int = 0, batch_size: int | None = None
                        ) -> tuple[torch.Tensor, dict[str, list], float]:
    """``k`` raw conformers with importance weights (:func:`importance_weights`), in Å.

    A target with nothing to sample (``info["fixed_positions"]``) gives its geometry ``k``
    times with equal weights (ESS ``k``).

    Returns:
        ``(positions (k, N, 3) float32, properties, ess)``; the properties (one value per
        conformer) are ``conformer_id``, ``relaxed`` (``"none"``), ``log_weight``,
        ``importance_weight`` and ``energy_mmff_kcal_mol``.

    Raises:
        ConfigError: The model cannot make targets for new molecules.
        MoleculeError: MMFF cannot type the molecule.
    """
    from .energy import MMFFEnergy

    if trainer.problem.make_target is None:
        raise ConfigError("this model's problem cannot make a target for a new molecule (train "
                          "with problem: molecules or torsional_molecules)")
    mmff = MMFFEnergy(molecule)
    target = trainer.problem.make_target(molecule)
    info = target.info or {}
    if "fixed_positions" in info:
        x = torch.as_tensor(info["fixed_positions"]).float().expand(k, -1, -1).clone()
        lw, w, ess = torch.zeros(k, dtype=torch.float64), torch.full(
            (k,), 1.0 / k, dtype=torch.float64), float(k)
    else:
        gen = torch.Generator(device=trainer.device).manual_seed(seed)
        x, lw, w, ess = importance_weights(trainer, target, k, n_steps, gen, batch_size)
        if info.get("to_positions") is not None:
            x = info["to_positions"](x.double())
        x = x.detach().float().cpu()
    props: dict[str, list] = {
        "conformer_id": list(range(k)), "relaxed": ["none"] * k,
        "log_weight": [float(v) for v in lw], "importance_weight": [float(v) for v in w],
        "energy_mmff_kcal_mol": [float(v) for v in mmff.energy(x.double())]}
    return x, props, ess


def generate_conformers(
    molecule: str | Chem.Mol | Molecule, run: Any = None, num_conformers: int = 50, *,
    name: str | None = None, n_steps: int | None = None, relax: str = "none",
    relax_steps: int = 200, weights: bool = False, seed: int = 0,
    max_atoms: int = MAX_ATOMS, ase: bool = False,
) -> Chem.Mol | tuple[Chem.Mol, list]:
    """Generate conformers of one molecule with a trained model (module docstring).

    Args:
        molecule: SMILES, RDKit ``Mol`` (its atom order is kept) or
            :class:`~adjoint_core_chem.molecule.Molecule`.
        run: ``None`` (the shipped model), a run or model directory, or an already loaded
            trainer (several molecules, one load; or one from
            :func:`~adjoint_core_chem.finetune.finetune`).
        num_conformers: Conformers to generate (K).
        name: Label for messages and the ``_Name`` property.
        n_steps: Euler–Maruyama steps (default: the training value).
        relax: ``"none"``, ``"mmff"`` or ``"xtb"`` (short minimisation).
        relax_steps: Minimiser iterations.
        weights: Also compute importance weights and their ESS (raw samples only, so only
            with ``relax="none"``).
        seed: Seed of the sampling generator.
        max_atoms: Size limit (:func:`check_molecule`).
        ase: Also return the conformers as a list of ``ase.Atoms`` (needs ``ase``).

    Returns:
        The RDKit molecule with conformers and properties, or ``(mol, atoms_list)``.

    Raises:
        MoleculeError: The molecule is rejected (message names it and the reason).
        ConfigError: No run given and the shipped model is not installed, or a run that
            cannot serve new molecules.
        ValueError: ``weights`` with a relaxation, or a bad ``relax``.
        ImportError: ``ase=True`` without the ``ase`` package.
    """
    from .commands import generate_for_molecule

    if relax not in ("none", "mmff", "xtb"):
        raise ValueError(f"relax must be 'none', 'mmff' or 'xtb', got {relax!r}")
    if weights and relax != "none":
        raise ValueError("importance weights describe the raw samples: use relax='none' with "
                         "weights=True")
    if ase:
        _import_ase()
    mol = parse_molecule(molecule, name, max_atoms)
    trainer = run if hasattr(run, "sample") else load_conformer_run(run)
    extra: dict[str, list] = {}
    ess = None
    if weights:
        x, extra, ess = weighted_conformers(trainer, mol, num_conformers, n_steps, seed)
    else:
        x, extra = generate_for_molecule(trainer, mol, num_conformers, n_steps, relax,
                                         relax_steps, seed)
    out = mol.with_conformers(x)
    out.SetProp("_Name", mol.name)
    out.SetProp("smiles", mol.smiles)
    if ess is not None:
        out.SetDoubleProp("ess", ess)
    for key, values in extra.items():
        for conf, v in zip(out.GetConformers(), values, strict=True):
            if isinstance(v, float):
                conf.SetDoubleProp(key, v)
            elif isinstance(v, int):
                conf.SetIntProp(key, v)
            else:
                conf.SetProp(key, str(v))
    if ase:
        return out, to_ase(out)
    return out


def _import_ase():
    try:
        import ase
    except ImportError:
        raise ImportError("ASE Atoms need the optional package ase (pip install ase; it comes "
                          "with fairchem-core)") from None
    return ase


def to_ase(mol: Chem.Mol) -> list:
    """One ``ase.Atoms`` per conformer of ``mol`` (Å; conformer properties in ``atoms.info``).

    Raises:
        ImportError: Without the optional ``ase`` package.
    """
    ase = _import_ase()
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    out = []
    for conf in mol.GetConformers():
        atoms = ase.Atoms(numbers=numbers, positions=conf.GetPositions())
        atoms.info.update(conf.GetPropsAsDict())
        out.append(atoms)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "molecule"


def _input_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """``(name, smiles, where)`` rows of ``--smiles`` and ``--smiles-file``.

    Raises:
        ConfigError: Neither given, or a file that is missing, not text or empty.
    """
    rows = [(s.strip(), s.strip(), f"--smiles {s!r}") for s in (args.smiles or [])]
    if args.smiles_file:
        p = Path(args.smiles_file)
        if not p.is_file():
            raise ConfigError(f"--smiles-file: {args.smiles_file}: no such file; give a file "
                              "with one SMILES per line (optionally a name after it) or a TSV "
                              "with a SMILES column")
        try:
            got = read_smiles_file(str(p))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--smiles-file: {args.smiles_file}: cannot be read as text "
                              f"({exc}); give one SMILES per line") from None
        if not got:
            raise ConfigError(f"--smiles-file: {args.smiles_file}: holds no SMILES; give one "
                              "SMILES per line (optionally a name after it)")
        rows += [(n, s, f"{args.smiles_file} entry {k + 1}") for k, (n, s) in enumerate(got)]
    if not rows:
        raise ConfigError("--smiles, --smiles-file: neither given; give --smiles SMILES "
                          "(repeatable) or --smiles-file FILE")
    return rows


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option combinations before anything is loaded or written.

    Raises:
        ConfigError: ``--weights`` with a relaxation, or an xTB option without tblite.
    """
    from .finetune import check_energy_available

    if args.weights and args.relax != "none":
        raise ConfigError(f"--weights: with --relax {args.relax}: importance weights describe "
                          "the raw samples; use --relax none with --weights")
    if args.relax == "xtb":
        check_energy_available("xtb", "--relax")
    if args.finetune_steps:
        check_energy_available(args.finetune_energy, "--finetune-energy")


def run_conformers_command(args: argparse.Namespace) -> int:
    """``adjoint-core conformers``: one SDF per molecule, bad molecules reported and skipped.

    The model is ``--run`` (a run or model directory) or, by default, the shipped model.
    Each molecule is written to ``OUT/<name>.sdf`` (atomically); a molecule whose file is
    already there is skipped as done, so re-running the same command finishes an interrupted
    one. Duplicate names (also names that map to the same file name) keep the first
    occurrence. With ``--finetune-steps N`` the model is first fine-tuned on each molecule
    (:func:`~adjoint_core_chem.finetune.finetune`, ``--finetune-energy``); with ``--weights``
    every conformer also gets ``log_weight`` and ``importance_weight`` and every record the
    molecule's ``ess`` (also in ``summary.json``). Exit status 0 when every molecule is
    written or already done, 2 when some were rejected, 1 when none could be written.
    """
    from .commands import generate_for_molecule, write_sdf
    from .finetune import check_finetunable, finetune

    torch.set_num_threads(args.threads)
    run = args.run or args.run_dir
    if args.run and args.run_dir and args.run != args.run_dir:
        raise ConfigError(f"--run: {args.run}: differs from the positional run directory "
                          f"{args.run_dir}; give one")
    rows = _input_rows(args)
    _check_options(args)
    trainer = load_conformer_run(run)
    if args.finetune_steps:
        check_finetunable(trainer)
    model = str(run) if run is not None else (trainer.problem.info or {}).get("model_dir")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.limit:
        rows = rows[:args.limit]
    n_steps = args.n_sde_steps or trainer.settings.n_sde_steps
    done, skipped, already = [], [], []
    files: dict[str, str] = {}
    for idx, (name, smi, where) in enumerate(rows):
        t0 = time.perf_counter()
        fname = _safe(name) + ".sdf"
        if fname in files:
            reason = (f"duplicate name (the same output file {fname} as {files[fname]!r}); "
                      "the first one is kept")
            skipped.append({"name": name, "smiles": smi, "reason": reason})
            print(f"skipped {name} ({where}): {reason}")
            continue
        files[fname] = name
        path = out / fname
        if path.is_file():
            already.append({"name": name, "smiles": smi, "sdf": str(path)})
            print(f"{name}: already done ({path}; delete it to regenerate)")
            continue
        entry: dict[str, Any] = {}
        try:
            mol = parse_molecule(smi, name, args.max_atoms)
            sampler = trainer
            if args.finetune_steps:
                t_ft = time.perf_counter()
                sampler = finetune(mol, trainer, args.finetune_energy, args.finetune_steps,
                                   seed=args.seed + idx, max_atoms=args.max_atoms,
                                   progress=not args.no_progress)
                entry["finetune"] = {"steps": sampler.counters["grad_steps"],
                                     "energy_evals": sampler.counters["energy_evals"],
                                     "seconds": time.perf_counter() - t_ft}
            if args.weights:
                x, props, ess = weighted_conformers(sampler, mol, args.num_conformers,
                                                    n_steps, args.seed + idx, args.batch_size)
                props["ess"] = [ess] * len(x)
                entry["ess"] = ess
            else:
                x, props = generate_for_molecule(sampler, mol, args.num_conformers, n_steps,
                                                 args.relax, args.relax_steps, args.seed + idx,
                                                 args.batch_size)
        except (MoleculeError, RuntimeError) as exc:
            reason = str(exc).removeprefix(f"molecule {name!r}: ")
            skipped.append({"name": name, "smiles": smi, "reason": reason})
            print(f"skipped {name} ({where}): {reason}")
            continue
        tmp = path.with_name(f".{fname}.{os.getpid()}.tmp")
        write_sdf(tmp, mol, x, props)
        os.replace(tmp, path)
        e = torch.tensor(props["energy_mmff_kcal_mol"])
        done.append({"name": name, "smiles": smi, "sdf": str(path), "n_conformers": len(x),
                     "min_energy_mmff": float(e[e.isfinite()].min()) if e.isfinite().any()
                     else None, **entry, "seconds": time.perf_counter() - t0})
        print(f"{name}: {len(x)} conformers -> {path} ({done[-1]['seconds']:.1f} s"
              + (f", ESS {entry['ess']:.1f}" if "ess" in entry else "") + ")")
    (out / "summary.json").write_text(json.dumps(
        {"run_dir": None if run is None else str(run), "model": model,
         "num_conformers": args.num_conformers, "relax": args.relax,
         "n_sde_steps": n_steps, "weights": bool(args.weights),
         "finetune": ({"steps": args.finetune_steps, "energy": args.finetune_energy}
                      if args.finetune_steps else None),
         "written": done, "already_done": already, "skipped": skipped}, indent=2))
    print(f"{len(done)} molecule(s) written, {len(already)} already done, {len(skipped)} "
          "skipped" + (": " + ", ".join(s["name"] for s in skipped) if skipped else ""))
    if not done and not already:
        reasons = "; ".join(f"{k['name']}: {k['reason']}" for k in skipped[:3])
        print(f"error: none of the {len(rows)} molecule(s) could be generated ({reasons}); "
              f"see {out / 'summary.json'}", file=sys.stderr)
        return 1
    return 2 if skipped else 0


def add_input_arguments(c: argparse.ArgumentParser) -> None:
    """The ``conformers`` options for the run and the molecules (``--run``, ``--smiles``…)."""
    c.add_argument("run_dir", nargs="?", default=None,
                   help="run directory of `adjoint-core train` or model directory of "
                   "`adjoint-core chem-export` (same as --run)")
    c.add_argument("--run", default=None, help="run directory of a molecular training run, or "
                   "a model directory of `adjoint-core chem-export` (default: the shipped "
                   "model, adjoint_core_chem/data/models/spice_egnn)")
    c.add_argument("--smiles", action="append", default=None,
                   help="a SMILES (repeatable); named by the SMILES itself")
    c.add_argument("--max-atoms", type=arg_int(1), default=MAX_ATOMS,
                   help=f"skip larger molecules (atoms with H; default {MAX_ATOMS})")

