r"""eSEN (FAIR Chemistry, fairchem-core) as an adjoint-core energy.

An :class:`~adjoint_core.problem.energy.Energy`.

Two layers:

* :class:`ESENPotential` loads one checkpoint (a local file, checked by
  :func:`~adjoint_core_esen.checkpoint.inspect_checkpoint`) and evaluates **any mix of
  molecules and conformers in one fairchem batch**: :meth:`ESENPotential.evaluate` takes one
  ``(B_i, N_i, 3)`` conformer batch per molecule and returns energies and forces in fairchem's
  units (eV, eV/Å). The fairchem predictor (``MLIPPredictUnit``, which applies the checkpoint's
  normalisers and element references) is built lazily per device type, so the device follows
  the input tensor.
* :class:`ESENEnergy` is the energy of one molecule batched over its conformers, on the core's
  interface: states ``(batch, N, 3)`` in Å, energies ``(batch,)`` and gradients ``+∇E = -F``.
  :func:`energy_and_grad_many` evaluates several :class:`ESENEnergy` objects that share a
  potential in a single fairchem call.

Units and conventions follow the chemistry plugin (:mod:`adjoint_core_chem.energy`) so that
eSEN and MMFF / GFN2-xTB are interchangeable in a config:

* positions in Å; energies in **kcal/mol** and gradients in kcal/mol/Å by default
  (``units="kcal/mol"``: fairchem's eV are multiplied by :data:`EV_IN_KCAL_MOL` = 23.0605…;
  ``units="eV"`` keeps fairchem's units);
* the temperature ``τ = k_B T`` is in the same units; default ``k_B · 300 K`` (0.596 kcal/mol,
  or 0.02585 eV). The published SPICE runs used ``τ = 5e-3`` eV with per-atom clipping at 150;
* the molecule is described as in the chemistry plugin: a ``smiles`` (RDKit, explicit
  hydrogens, RDKit's atom order; needs ``adjoint-core-chem``) or plain ``atomic_numbers``;
  total charge (sum of formal charges for a SMILES, else 0) and spin multiplicity (unpaired
  electrons + 1, else 1) go to fairchem's ``omol`` head as ``charge`` / ``spin``.

``ESENEnergy._energy`` is differentiable: a ``torch.autograd.Function`` returns fairchem's
energy and uses ``-F`` as its gradient, so wrappers such as the chemistry plugin's
``BondRegularizedEnergy`` compose by autograd. Conformers with non-finite coordinates get NaN
energies and gradients (the sampler drops them) and are not sent to fairchem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from adjoint_core.problem.energy import Energy, external_energy

from ._fairchem import require_fairchem
from .checkpoint import CheckpointInfo, ESENCheckpointError, inspect_checkpoint

__all__ = [
    "EV_IN_KCAL_MOL", "KB_EV", "UNIT_SCALE", "ELEMENT_TYPES", "default_temperature",
    "ESENPotential", "ESENEnergy", "energy_and_grad_many",
]

#: 1 eV in kcal/mol (CODATA 2018: e · N_A / 4184 J).
EV_IN_KCAL_MOL = 23.060547830619026
#: Boltzmann constant in eV/K.
KB_EV = 8.617333262e-5
#: Factor from fairchem's eV to each supported energy unit.
UNIT_SCALE = {"kcal/mol": EV_IN_KCAL_MOL, "eV": 1.0}
#: Atomic numbers of the node types of :meth:`ESENEnergy.context` (the chemistry plugin's
#: ``SUPPORTED_ELEMENTS``, same order: H C N O F P S Cl Br I).
ELEMENT_TYPES: tuple[int, ...] = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def default_temperature(units: str = "kcal/mol") -> float:
    """``k_B · 300 K`` in ``units`` (0.596 kcal/mol, 0.02585 eV)."""
    if units not in UNIT_SCALE:
        raise ValueError(f"units must be one of {sorted(UNIT_SCALE)}, got {units!r}")
    return KB_EV * 300.0 * UNIT_SCALE[units]


class ESENPotential:
    """A loaded eSEN checkpoint that evaluates batches of molecules and conformers.

    Args:
        checkpoint: Local path of a fairchem-core 2.x inference checkpoint (see
            :mod:`adjoint_core_esen.checkpoint`).
        task_name: Dataset / head of the model to use (``"omol"`` for molecules).
        precision: ``"float32"`` (fairchem's default) or ``"float64"`` (model and inputs cast
            to double; slower, for tight finite-difference checks).
        max_atoms_per_call: Conformers are sent to fairchem in chunks of at most this many
            atoms (a memory knob; one conformer is never split).

    Raises:
        ESENCheckpointError: Missing or incompatible checkpoint (names the path and what was
            expected).
        ImportError: fairchem-core is not installed (says what to install).
    """

    def __init__(self, checkpoint: str | Path, task_name: str = "omol",
                 precision: Literal["float32", "float64"] = "float32",
                 max_atoms_per_call: int = 20000) -> None:
        if precision not in _DTYPES:
            raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
        if max_atoms_per_call < 1:
            raise ValueError(f"max_atoms_per_call must be >= 1, got {max_atoms_per_call}")
        self._fc = require_fairchem()
        self.info: CheckpointInfo = inspect_checkpoint(checkpoint, task_name)
        self.task_name = task_name
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.max_atoms_per_call = int(max_atoms_per_call)
        max_z = self.info.backbone_config.get("max_num_elements", 100)
        self.max_atomic_number = int(max_z) - 1
        self._units: dict[str, Any] = {}
        self._templates: dict[tuple, Any] = {}
        self.predict_unit("cpu")  # build once now: weights that do not fit fail here, clearly

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.info.path

    def predict_unit(self, device: torch.device | str):
        """The fairchem ``MLIPPredictUnit`` for ``device``'s type (built on first use)."""
        kind = torch.device(device).type
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"eSEN runs on 'cpu' or 'cuda' devices, got {device!r}")
        unit = self._units.get(kind)
        if unit is None:
            fc = self._fc
            settings = fc.InferenceSettings(
                tf32=False, activation_checkpointing=False, merge_mole=False, compile=False,
                external_graph_gen=False, base_precision_dtype=self.dtype,
                auto_add_default_untrained_tasks=False,
                predict_untrained_forces=set() if self.info.has_forces_task
                else {self.task_name},
            )
            try:
                unit = fc.MLIPPredictUnit(str(self.path), device=kind,
                                          inference_settings=settings)
            except Exception as exc:  # hydra / state-dict errors: the file does not fit
                version = self.info.fairchem_version
                raise ESENCheckpointError(
                    f"eSEN checkpoint {str(self.path)!r}: fairchem-core {version} could not "
                    f"build the model from it ({type(exc).__name__}: {exc})"
                ) from exc
            self._units[kind] = unit
        return unit

    def check_atomic_numbers(self, atomic_numbers: Sequence[int], label: str = "molecule"
                             ) -> None:
        """Raise ``ValueError`` naming the molecule if an element is outside the model."""
        bad = sorted({int(z) for z in atomic_numbers
                      if not 1 <= int(z) <= self.max_atomic_number})
        if bad:
            raise ValueError(f"{label}: atomic numbers {bad} are outside the eSEN model's range "
                             f"1..{self.max_atomic_number}")

    def _template(self, numbers: tuple[int, ...], charge: int, spin: int):
        key = (numbers, charge, spin)
        data = self._templates.get(key)
        if data is None:
            import ase

            atoms = ase.Atoms(numbers=list(numbers), positions=[[0.0, 0.0, 0.0]] * len(numbers))
            atoms.info.update(charge=int(charge), spin=int(spin))
            data = self._fc.AtomicData.from_ase(
                atoms, task_name=self.task_name, r_data_keys=["charge", "spin"],
                target_dtype=self.dtype)
            if len(self._templates) >= 256:
                self._templates.pop(next(iter(self._templates)))
            self._templates[key] = data
        return data

    def evaluate(
        self, atomic_numbers: Sequence[Sequence[int]], positions: Sequence[torch.Tensor],
        charges: Sequence[int] | None = None, spins: Sequence[int] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Energies and forces of several molecules' conformers, in as few fairchem calls as fit.

        Args:
            atomic_numbers: One sequence ``(N_i,)`` per molecule.
            positions: One tensor ``(B_i, N_i, 3)`` per molecule, in Å, all on one device.
            charges: Total charge per molecule (default 0).
            spins: Spin multiplicity per molecule (default 1).

        Returns:
            ``[(E_i, F_i), …]``: energies ``(B_i,)`` in eV and forces ``(B_i, N_i, 3)`` in
            eV/Å, detached, float64, on the device of ``positions``. Conformers with
            non-finite coordinates give NaN.
        """
        n_mol = len(positions)
        if len(atomic_numbers) != n_mol:
            raise ValueError(f"got {len(atomic_numbers)} molecules' atomic numbers for {n_mol} "
                             f"conformer batches")
        charges = [0] * n_mol if charges is None else list(charges)
        spins = [1] * n_mol if spins is None else list(spins)
        if not positions:
            return []
        device = positions[0].device
        unit = self.predict_unit(device)
        out_e = [torch.full((p.shape[0],), math.nan, dtype=torch.float64, device=device)
                 for p in positions]
        out_f = [torch.full(p.shape, math.nan, dtype=torch.float64, device=device)
                 for p in positions]
        jobs: list[tuple[int, int, Any]] = []  # (molecule, conformer, AtomicData)
        for i, (z, pos) in enumerate(zip(atomic_numbers, positions, strict=True)):
            numbers = tuple(int(v) for v in z)
            if pos.ndim != 3 or tuple(pos.shape[1:]) != (len(numbers), 3):
                raise ValueError(f"molecule {i}: positions must have shape (batch, "
                                 f"{len(numbers)}, 3), got {tuple(pos.shape)}")
            if pos.device != device:
                raise ValueError(f"all positions must be on one device, got {device} and "
                                 f"{pos.device}")
            template = self._template(numbers, int(charges[i]), int(spins[i]))
            finite = torch.isfinite(pos).flatten(1).all(dim=1).tolist()
            pos_c = pos.detach().to("cpu", self.dtype)
            for b in range(pos.shape[0]):
                if finite[b]:
                    d = template.clone()
                    d.pos = pos_c[b].clone()
                    jobs.append((i, b, d))
        start = 0
        while start < len(jobs):
            stop, atoms = start, 0
            while stop < len(jobs) and (stop == start
                                        or atoms + len(jobs[stop][2].pos)
                                        <= self.max_atoms_per_call):
                atoms += len(jobs[stop][2].pos)
                stop += 1
            chunk = jobs[start:stop]
            batch = self._fc.atomicdata_list_to_batch([d for _, _, d in chunk])
            pred = unit.predict(batch)
            energy = pred["energy"].detach().to(device, torch.float64).reshape(-1)
            forces = pred["forces"].detach().to(device, torch.float64)
            offset = 0
            for k, (i, b, d) in enumerate(chunk):
                n = len(d.pos)
                out_e[i][b] = energy[k]
                out_f[i][b] = forces[offset:offset + n]
                offset += n
            start = stop
        return list(zip(out_e, out_f, strict=True))

    def __repr__(self) -> str:
        return (f"ESENPotential({str(self.path)!r}, task_name={self.task_name!r}, "
                f"precision={self.precision!r}, backbone={self.info.backbone.rsplit('.', 1)[-1]})")


def _molecule_from_smiles(smiles: str):
    try:
        from adjoint_core_chem.molecule import mol_from_smiles
    except ImportError as exc:
        raise ImportError(
            f"an eSEN energy given by smiles={smiles!r} needs the chemistry plugin "
            f"(adjoint-core-chem, RDKit) to build the molecule; install adjoint-core[chem] or "
            f"give atomic_numbers instead ({exc})") from exc
    return mol_from_smiles(smiles)


class ESENEnergy(Energy):
    """eSEN energy of one molecule, batched over its conformers.

    Give exactly one of ``molecule`` (a chemistry-plugin
    :class:`~adjoint_core_chem.molecule.Molecule`), ``smiles`` or ``atomic_numbers``.

    Args:
        checkpoint: Local checkpoint path, or an already loaded :class:`ESENPotential` (to share
            one model between several molecules).
        molecule: A chemistry-plugin molecule (atomic numbers, charge and spin are read from it).
        smiles: SMILES (RDKit, explicit hydrogens, RDKit atom order; needs adjoint-core-chem).
        atomic_numbers: Atomic numbers ``(N,)`` in the order of the state's particles.
        charge: Total charge (default: sum of formal charges for a molecule, else 0).
        spin: Spin multiplicity (default: radical electrons + 1 for a molecule, else 1).
        temperature: ``τ = k_B T`` in ``units`` (default ``k_B · 300 K``).
        units: ``"kcal/mol"`` (default, as the chemistry plugin) or ``"eV"`` (fairchem's).
        task_name: fairchem dataset / head (default ``"omol"``, or the given potential's).
        precision: ``"float32"`` or ``"float64"`` (see :class:`ESENPotential`; default
            ``"float32"``, or the given potential's).

    Attributes:
        unit: The energy unit (``units``).
        atomic_numbers: ``(N,)`` long.
        molecule: The chemistry-plugin molecule, or ``None`` for ``atomic_numbers`` input.
        potential: The shared :class:`ESENPotential`.

    Raises:
        ESENCheckpointError: Missing or incompatible checkpoint.
        ImportError: fairchem-core (or, for ``smiles``, the chemistry plugin) is missing.
        ValueError: Bad molecule description, element outside the model, bad units.
    """

    def __init__(
        self, checkpoint: str | Path | ESENPotential, molecule: Any = None, *,
        smiles: str | None = None, atomic_numbers: Sequence[int] | None = None,
        charge: int | None = None, spin: int | None = None, temperature: float | None = None,
        units: Literal["kcal/mol", "eV"] = "kcal/mol", task_name: str | None = None,
        precision: Literal["float32", "float64"] | None = None,
    ) -> None:
        if units not in UNIT_SCALE:
            raise ValueError(f"units must be one of {sorted(UNIT_SCALE)}, got {units!r}")
        given = [n for n, v in (("molecule", molecule), ("smiles", smiles),
                                ("atomic_numbers", atomic_numbers)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of molecule, smiles, atomic_numbers; got "
                             f"{', '.join(given) or 'none'}")
        if smiles is not None:
            molecule = _molecule_from_smiles(smiles)
        if molecule is not None:
            z = [int(v) for v in molecule.atomic_numbers.tolist()]
            atoms = list(molecule.mol.GetAtoms())
            default_charge = int(sum(a.GetFormalCharge() for a in atoms))
            default_spin = int(sum(a.GetNumRadicalElectrons() for a in atoms)) + 1
            label = f"molecule {molecule.name!r}"
        else:
            z = [int(v) for v in atomic_numbers]
            default_charge, default_spin = 0, 1
            label = f"molecule with atomic numbers {z[:12]}{'…' if len(z) > 12 else ''}"
        if len(z) < 1:
            raise ValueError("atomic_numbers: a molecule needs at least one atom")
        super().__init__((len(z), 3), default_temperature(units) if temperature is None
                         else temperature)
        if isinstance(checkpoint, ESENPotential):
            for name, want, have in (("task_name", task_name, checkpoint.task_name),
                                     ("precision", precision, checkpoint.precision)):
                if want is not None and want != have:
                    raise ValueError(f"{name}={want!r} differs from the given ESENPotential's "
                                     f"{have!r}")
            self.potential = checkpoint
        else:
            self.potential = ESENPotential(checkpoint, task_name=task_name or "omol",
                                           precision=precision or "float32")
        self.potential.check_atomic_numbers(z, label)
        self.molecule = molecule
        self.label = label
        self.atomic_numbers = torch.tensor(z, dtype=torch.long)
        self.charge = default_charge if charge is None else int(charge)
        self.spin = default_spin if spin is None else int(spin)
        if self.spin < 0:
            raise ValueError(f"spin (multiplicity) must be >= 0, got {self.spin}")
        self.unit = units
        self.scale = UNIT_SCALE[units]

    # ------------------------------------------------------------------ evaluation
    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, ∇E)`` in ``self.unit`` (float64, on ``x``'s device)."""
        ((e, f),) = self.potential.evaluate([self.atomic_numbers.tolist()], [x],
                                            [self.charge], [self.spin])
        return e * self.scale, -f * self.scale

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return external_energy(x, self._compute)

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, g = self._compute(x)
        return e.to(x.dtype), g.to(x.dtype)

    def energy_and_forces_ev(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fairchem output for ``x`` ``(batch, N, 3)``: energies (eV), forces (eV/Å).

        Does not count evaluations; float64.
        """
        self._check(x)
        ((e, f),) = self.potential.evaluate([self.atomic_numbers.tolist()], [x],
                                            [self.charge], [self.spin])
        return e, f

    # ------------------------------------------------------------------ model context
    def context(self) -> dict:
        """Conditioning for a control network.

        Returns:
            The chemistry plugin's ``Molecule.context()`` when built from a molecule / SMILES,
            else ``{"node_types": (N,) long}`` with indices into :data:`ELEMENT_TYPES` (what
            the EGNN plugin reads with ``n_node_types=len(ELEMENT_TYPES)``).

        Raises:
            ValueError: An element outside :data:`ELEMENT_TYPES` (atomic-number input only).
        """
        if self.molecule is not None:
            return self.molecule.context()
        index = {z: i for i, z in enumerate(ELEMENT_TYPES)}
        bad = sorted({int(z) for z in self.atomic_numbers.tolist() if int(z) not in index})
        if bad:
            raise ValueError(f"{self.label}: no node type for atomic numbers {bad}; node types "
                             f"cover {list(ELEMENT_TYPES)}")
        return {"node_types": torch.tensor([index[int(z)] for z in self.atomic_numbers.tolist()],
                                           dtype=torch.long)}

    def __repr__(self) -> str:
        return (f"ESENEnergy({self.label}, n_atoms={self.event_shape[0]}, "
                f"T={self.temperature:.4g} {self.unit}, checkpoint={str(self.potential.path)!r})")


def energy_and_grad_many(energies: Sequence[ESENEnergy], xs: Sequence[torch.Tensor]
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluate several molecules' conformers; energies sharing a potential go in one batch.

    The counterpart of the chemistry plugin's ``energy_and_grad_many`` for eSEN: all
    ``energies`` that share an :class:`ESENPotential` are evaluated in one fairchem call (per
    ``max_atoms_per_call`` chunk) instead of one call per molecule.

    Args:
        energies: One :class:`ESENEnergy` per molecule.
        xs: Conformer batches, ``xs[i]`` of shape ``(b_i, N_i, 3)`` (Å), on one device.

    Returns:
        ``[(E_i (b_i,), ∇E_i (b_i, N_i, 3)), …]`` in each energy's units and ``xs[i]``'s dtype;
        each energy's evaluation counter grows by ``b_i``.
    """
    if len(energies) != len(xs):
        raise ValueError(f"got {len(energies)} energies for {len(xs)} conformer batches")
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(xs)
    groups: dict[int, list[int]] = {}
    for i, (en, x) in enumerate(zip(energies, xs, strict=True)):
        en._check(x)
        groups.setdefault(id(en.potential), []).append(i)
    for idx in groups.values():
        pot = energies[idx[0]].potential
        res = pot.evaluate([energies[i].atomic_numbers.tolist() for i in idx],
                           [xs[i] for i in idx], [energies[i].charge for i in idx],
                           [energies[i].spin for i in idx])
        for i, (e, f) in zip(idx, res, strict=True):
            en = energies[i]
            en.n_evaluations += xs[i].shape[0]
            out[i] = ((e * en.scale).to(xs[i].dtype), (-f * en.scale).to(xs[i].dtype))
    return out  # type: ignore[return-value]
