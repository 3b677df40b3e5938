r"""Molecular energies on the core :class:`~adjoint_core.problem.energy.Energy` interface.

Every energy here is built for **one molecule** (a :class:`~adjoint_core_chem.molecule.Molecule`)
and is batched over its conformers: states are ``(batch, N, 3)`` in Å. Several molecules are
evaluated together with :func:`energy_and_grad_many` (one call, a list of per-molecule batches).

**Parallel evaluation.** MMFF94 and GFN2-xTB are evaluated one conformer at a time on the CPU;
with an :class:`~adjoint_core_chem.workers.EnergyWorkerPool` (``make_energy(..., workers=pool)``
or the ``molecules`` problem's ``energy_workers``) a batch is split over worker processes, with
the same per-conformer code (results equal the in-process path to float64 round-off).
**eSEN** (``kind="esen"``, the adjoint-core-esen plugin) is a torch model, evaluated in-process
on the input's device; :func:`make_energy` takes one loaded ``ESENPotential`` shared by all
molecules.

Units (one convention for the whole plugin):

* positions in Å; energies in **kcal/mol**; gradients ``+∇E`` in kcal/mol/Å;
* GFN2-xTB (tblite) works in Bohr and Hartree: positions are divided by
  :data:`BOHR_IN_ANGSTROM` = 0.529177210903 Å, energies multiplied by
  :data:`HARTREE_IN_KCAL` = 627.509474 kcal/mol and gradients by
  ``HARTREE_IN_KCAL / BOHR_IN_ANGSTROM``;
* the temperature ``τ`` is ``k_B T`` in kcal/mol, default ``k_B · 300 K`` =
  0.596 kcal/mol (:data:`KT_300K`). The published SPICE runs used ``τ = 5e-3`` in the eSEN
  model's units (eV by fairchem convention, ≈ 0.115 kcal/mol, ≈ 58 K); the paper's gradients are
  clipped per atom at 150 anyway, so the choice of ``τ`` mostly sets how soon clipping starts.

The external codes return gradients directly; their energies are wrapped in a
``torch.autograd.Function`` so that ``_energy`` is differentiable too and wrappers such as
:class:`BondRegularizedEnergy` compose by autograd.

**Regulariser** (the Adjoint Sampling paper's ``bond_structure_regularizer`` in AS-mol,
docs/conventions.md):

.. math:: E_{reg}(x) = \alpha \sum_{i \ne j} \begin{cases}
          \mathrm{ReLU}(d_{ij} - 1.5 (r^{cov}_i + r^{cov}_j)) & \text{bonded} \\
          \mathrm{ReLU}((r^{vdW}_i + r^{vdW}_j)/1.5 - d_{ij}) & \text{not bonded}
          \end{cases}

summed over ordered pairs (each pair twice), ``α = 100``. The paper adds ``∇E_reg`` to the
adjoint **without** dividing it by ``τ``; with the core's convention (the sampler divides the
whole ``∇E`` by ``τ``) the wrapper therefore returns ``E + τ·E_reg``, whose ``∇/τ`` is
``∇E/τ + ∇E_reg`` exactly as in the paper.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from adjoint_core.problem.energy import Energy, external_energy

from .molecule import Molecule, MoleculeError
from .workers import EnergyWorkerPool, WorkerSpec

__all__ = [
    "KB_KCAL", "KT_300K", "HARTREE_IN_KCAL", "BOHR_IN_ANGSTROM", "MMFFEnergy", "XTBEnergy",
    "BondRegularizedEnergy", "energy_and_grad_many", "make_energy", "COVALENT_RADII",
    "VDW_RADII", "ENERGY_KINDS",
]

#: Boltzmann constant in kcal/mol/K.
KB_KCAL = 0.0019872043
#: ``k_B · 300 K`` in kcal/mol, the default temperature ``τ``.
KT_300K = KB_KCAL * 300.0
#: 1 Hartree in kcal/mol.
HARTREE_IN_KCAL = 627.509474
#: 1 Bohr in Å.
BOHR_IN_ANGSTROM = 0.529177210903
#: Covalent radii (Å) of the regulariser, by atomic number.
COVALENT_RADII = {1: 0.31, 6: 0.76, 8: 0.66, 7: 0.71, 9: 0.57, 17: 0.99, 35: 1.14, 16: 1.05,
                  53: 1.33, 15: 1.07}
#: van der Waals radii (Å) of the regulariser, by atomic number.
VDW_RADII = {1: 1.10, 6: 1.70, 8: 1.52, 7: 1.55, 9: 1.47, 17: 1.75, 35: 1.83, 16: 1.80,
             53: 1.98, 15: 1.80}
#: Energy kinds of :func:`make_energy`.
ENERGY_KINDS = ("mmff", "xtb", "esen")


class _MoleculeEnergy(Energy):
    """Base of the per-molecule CPU energies: event shape ``(N, 3)``, external gradient.

    Subclasses implement ``_compute`` (one batch, in-process) and ``_worker_options`` (the
    keyword options that rebuild the energy in a worker process).

    Attributes:
        workers: The worker pool that evaluates batches of two or more conformers, or ``None``
            (in-process).
    """

    #: Unit of the energies (all energies of this plugin use kcal/mol).
    unit = "kcal/mol"
    #: Name of the energy kind (:data:`ENERGY_KINDS`).
    kind = ""

    def __init__(self, molecule: Molecule, temperature: float = KT_300K) -> None:
        super().__init__((molecule.n_atoms, 3), temperature)
        self.molecule = molecule
        self.workers: EnergyWorkerPool | None = None
        self._spec: WorkerSpec | None = None

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, ∇E)`` of a batch in-process (float64, on ``x``'s device)."""
        raise NotImplementedError

    def _worker_options(self) -> dict[str, Any]:
        """Keyword options of the constructor (besides molecule and temperature)."""
        raise NotImplementedError

    def worker_spec(self) -> WorkerSpec:
        """What a worker process needs to rebuild this energy (built once, then cached)."""
        if self._spec is None:
            self._spec = WorkerSpec(self.kind, self.molecule.name, self.molecule.mol.ToBinary(),
                                    tuple(sorted(self._worker_options().items())))
        return self._spec

    def _uses_workers(self, batch: int) -> bool:
        return self.workers is not None and self.workers.n_workers > 1 and batch > 1

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, ∇E)`` of a batch, in the worker pool when there is one (float64)."""
        if not self._uses_workers(x.shape[0]):
            return self._compute(x)
        ((e, g),) = self.workers.evaluate_many([(self.worker_spec(), _positions(x))])
        return _from_numpy(e, g, x)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return external_energy(x, self._evaluate)

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, g = self._evaluate(x.detach())
        return e.to(x.dtype), g.to(x.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.molecule.name!r}, n_atoms="
                f"{self.molecule.n_atoms}, T={self.temperature:.4g} kcal/mol)")


class MMFFEnergy(_MoleculeEnergy):
    """MMFF94 (RDKit) energy of one molecule, batched over conformers.

    Energies in kcal/mol, gradient ``+∇E`` in kcal/mol/Å (RDKit's ``CalcGrad``). The force
    field is set up once (MMFF typing); each conformer costs one ``CalcEnergy`` +
    ``CalcGrad`` call. Non-finite results (e.g. coincident atoms) are returned as NaN for the
    sampler to drop.

    Args:
        molecule: The molecule (explicit hydrogens).
        temperature: ``τ = k_B T`` in kcal/mol (default 300 K).
        variant: ``"MMFF94"`` or ``"MMFF94s"``.

    Raises:
        MoleculeError: If MMFF cannot type the molecule (names it).
    """

    kind = "mmff"

    def __init__(self, molecule: Molecule, temperature: float = KT_300K,
                 variant: str = "MMFF94") -> None:
        super().__init__(molecule, temperature)
        if variant not in ("MMFF94", "MMFF94s"):
            raise ValueError(f"MMFF variant must be 'MMFF94' or 'MMFF94s', got {variant!r}")
        self.variant = variant
        mol = Chem.Mol(molecule.mol)
        RDLogger.DisableLog("rdApp.*")
        try:
            props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant=variant)
        finally:
            RDLogger.EnableLog("rdApp.*")
        if props is None or not AllChem.MMFFHasAllMoleculeParams(mol):
            raise MoleculeError(f"molecule {molecule.name!r}: MMFF94 cannot type it (missing "
                                f"atom types or parameters)")
        conf = Chem.Conformer(molecule.n_atoms)
        rng = np.random.default_rng(0)
        for i, p in enumerate(rng.normal(size=(molecule.n_atoms, 3))):
            conf.SetAtomPosition(i, p.tolist())
        mol.AddConformer(conf, assignId=True)
        self._mol, self._props = mol, props
        self._ff = AllChem.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
        if self._ff is None:
            raise MoleculeError(f"molecule {molecule.name!r}: MMFF94 force-field set-up failed")

    def _worker_options(self) -> dict[str, Any]:
        return {"variant": self.variant}

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = x.detach().double().cpu().numpy().reshape(x.shape[0], -1)
        e = np.empty(x.shape[0])
        g = np.empty_like(xs)
        for k, row in enumerate(xs):
            if not np.isfinite(row).all():
                e[k], g[k] = np.nan, np.nan
                continue
            pos = row.tolist()
            e[k] = self._ff.CalcEnergy(pos)
            g[k] = self._ff.CalcGrad(pos)
        return (torch.from_numpy(e).to(x.device),
                torch.from_numpy(g).reshape(x.shape).to(x.device))

    def minimize(self, x: torch.Tensor, max_iters: int = 200) -> torch.Tensor:
        """Relax conformers with RDKit's MMFF minimiser (at most ``max_iters`` iterations).

        Args:
            x: ``(K, N, 3)`` in Å.
            max_iters: Iterations per conformer.

        Returns:
            Relaxed positions ``(K, N, 3)`` (float32); non-finite inputs are returned as is.
        """
        out = x.detach().clone().float()
        for k in range(x.shape[0]):
            if not torch.isfinite(x[k]).all():
                continue
            mol = Chem.Mol(self._mol)
            conf = mol.GetConformer()
            for i, p in enumerate(x[k].double().tolist()):
                conf.SetAtomPosition(i, p)
            ff = AllChem.MMFFGetMoleculeForceField(mol, self._props,
                                                   ignoreInterfragInteractions=False)
            ff.Minimize(maxIts=int(max_iters))
            out[k] = torch.tensor(np.array(ff.Positions()).reshape(-1, 3), dtype=torch.float32)
        return out


class XTBEnergy(_MoleculeEnergy):
    """GFN2-xTB (tblite) energy of one molecule, batched over conformers (one SCF each).

    tblite works in Bohr / Hartree; this class converts to Å / kcal/mol (module docstring).
    The total charge is the sum of RDKit formal charges, the number of unpaired electrons the
    sum of radical electrons. A failed SCF gives NaN for that conformer.

    Args:
        molecule: The molecule (explicit hydrogens).
        temperature: ``τ = k_B T`` in kcal/mol.
        method: ``"GFN2-xTB"`` (default) or ``"GFN1-xTB"``.
        accuracy: tblite accuracy parameter.
        max_iterations: SCF iteration limit.

    Raises:
        ImportError: tblite is not installed.
    """

    kind = "xtb"

    def __init__(self, molecule: Molecule, temperature: float = KT_300K,
                 method: str = "GFN2-xTB", accuracy: float = 1.0,
                 max_iterations: int = 250) -> None:
        super().__init__(molecule, temperature)
        from tblite.interface import Calculator  # noqa: F401  (fail early if missing)

        self.method = method
        self.accuracy = float(accuracy)
        self.max_iterations = int(max_iterations)
        self.charge = float(sum(a.GetFormalCharge() for a in molecule.mol.GetAtoms()))
        self.uhf = int(sum(a.GetNumRadicalElectrons() for a in molecule.mol.GetAtoms()))
        self._numbers = molecule.atomic_numbers.numpy().astype(np.int32)

    def _worker_options(self) -> dict[str, Any]:
        return {"method": self.method, "accuracy": self.accuracy,
                "max_iterations": self.max_iterations}

    def _single(self, pos_angstrom: np.ndarray) -> tuple[float, np.ndarray]:
        from tblite.interface import Calculator

        calc = Calculator(self.method, self._numbers, pos_angstrom / BOHR_IN_ANGSTROM,
                          charge=self.charge, uhf=self.uhf)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iterations)
        res = calc.singlepoint()
        return (float(res.get("energy")) * HARTREE_IN_KCAL,
                np.asarray(res.get("gradient")) * (HARTREE_IN_KCAL / BOHR_IN_ANGSTROM))

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = x.detach().double().cpu().numpy()
        e = np.full(x.shape[0], np.nan)
        g = np.full(xs.shape, np.nan)
        for k, pos in enumerate(xs):
            if not np.isfinite(pos).all():
                continue
            try:
                e[k], g[k] = self._single(pos)
            except RuntimeError:  # SCF not converged or tblite error: dropped by the sampler
                continue
        return torch.from_numpy(e).to(x.device), torch.from_numpy(g).to(x.device)

    def minimize(self, x: torch.Tensor, max_iters: int = 50, fmax: float = 0.0154 * 23.06
                 ) -> torch.Tensor:
        """Short relaxation by steepest descent with a backtracking step (Å, kcal/mol).

        Args:
            x: ``(K, N, 3)`` in Å.
            max_iters: Gradient evaluations per conformer.
            fmax: Stop when the largest atomic gradient norm is below this (kcal/mol/Å;
                default 0.0154 eV/Å, the paper's threshold).

        Returns:
            Relaxed positions ``(K, N, 3)`` float32.
        """
        out = x.detach().clone().double()
        for k in range(x.shape[0]):
            pos = out[k].numpy()
            try:
                e, g = self._single(pos)
            except RuntimeError:
                continue
            step = 0.01
            for _ in range(max_iters):
                if np.linalg.norm(g, axis=1).max() < fmax:
                    break
                trial = pos - step * g / max(np.linalg.norm(g, axis=1).max(), 1e-12)
                try:
                    e2, g2 = self._single(trial)
                except RuntimeError:
                    break
                if e2 < e:
                    pos, e, g, step = trial, e2, g2, min(step * 1.2, 0.2)
                else:
                    step *= 0.5
            out[k] = torch.from_numpy(pos)
        return out.float()


class BondRegularizedEnergy(Energy):
    r"""``E(x) + τ·E_reg(x)``: the paper's bond-structure regulariser around a molecular energy.

    See the module docstring for ``E_reg``; its gradient reaches the adjoint unscaled by ``τ``,
    as in the paper. Elements outside the radius tables raise.

    Args:
        base: A per-molecule energy with a ``molecule`` attribute (MMFF94, GFN2-xTB, eSEN);
            ``base.molecule`` is used for bonds and radii.
        alpha: Weight ``α`` of the penalty (paper: 100).
    """

    unit = "kcal/mol"

    def __init__(self, base: Energy, alpha: float = 100.0) -> None:
        super().__init__(base.event_shape, base.temperature)
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"regulariser alpha must be a finite number >= 0, got {alpha!r}")
        self.base, self.alpha, self.molecule = base, float(alpha), base.molecule
        self.unit = getattr(base, "unit", type(self).unit)
        z = self.molecule.atomic_numbers.tolist()
        missing = sorted({v for v in z if v not in COVALENT_RADII})
        if missing:
            raise MoleculeError(f"molecule {self.molecule.name!r}: no regulariser radii for "
                                f"atomic numbers {missing}")
        n = len(z)
        rc = torch.tensor([COVALENT_RADII[v] for v in z], dtype=torch.float64)
        rv = torch.tensor([VDW_RADII[v] for v in z], dtype=torch.float64)
        bonded = torch.zeros(n, n, dtype=torch.bool)
        bonded[self.molecule.edge_index[0], self.molecule.edge_index[1]] = True
        off = ~torch.eye(n, dtype=torch.bool)
        self._bonded = bonded & off
        self._free = ~bonded & off
        self._upper = 1.5 * (rc[:, None] + rc[None, :])
        self._lower = (rv[:, None] + rv[None, :]) / 1.5

    def regularizer(self, x: torch.Tensor) -> torch.Tensor:
        """``E_reg(x)`` (without ``τ``), shape ``(batch,)``."""
        xd = x.double()
        d = torch.sqrt((xd[:, :, None] - xd[:, None, :]).square().sum(-1) + 1e-6)
        up, lo = self._upper.to(x.device), self._lower.to(x.device)
        pen = torch.where(self._bonded.to(x.device), torch.relu(d - up), 0.0)
        pen = pen + torch.where(self._free.to(x.device), torch.relu(lo - d), 0.0)
        return self.alpha * pen.sum((-1, -2))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._energy(x) + (self.temperature * self.regularizer(x)).to(x.dtype)

    def _energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, g = self.base._energy_and_grad(x)
        return self._add_regularizer(x, e, g)

    def _add_regularizer(self, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e + τ·E_reg(x), g + τ·∇E_reg(x))`` for the base energy's ``(e, g)`` at ``x``."""
        with torch.enable_grad():
            xr = x.detach().double().requires_grad_(True)
            r = self.regularizer(xr)
            (gr,) = torch.autograd.grad(r.sum(), xr)
        t = self.temperature
        return (e + t * r.detach().to(e.dtype)), (g + t * gr.to(g.dtype))

    def minimize(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Relax with the base energy's minimiser (the regulariser is zero near minima)."""
        return self.base.minimize(x, **kw)

    def __repr__(self) -> str:
        return f"BondRegularizedEnergy({self.base!r}, alpha={self.alpha})"


def _positions(x: torch.Tensor) -> np.ndarray:
    """``x`` as a float64 numpy array on the CPU (what the worker processes receive)."""
    return x.detach().to("cpu", torch.float64).numpy()


def _from_numpy(e: np.ndarray, g: np.ndarray, x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker results as float64 tensors shaped and placed like ``x``."""
    return (torch.from_numpy(e).to(x.device),
            torch.from_numpy(g).reshape(x.shape).to(x.device))


def _esen_energy(molecule: Molecule, temperature: float, potential: Any) -> Energy:
    """The eSEN energy of ``molecule`` (adjoint-core-esen, imported here, not before)."""
    if potential is None:
        raise ValueError("energy kind 'esen' needs a loaded eSEN model: pass esen_potential (an "
                         "adjoint_core_esen.ESENPotential, shared by all molecules, or a local "
                         "checkpoint path)")
    try:
        from adjoint_core_esen.energy import ESENEnergy
    except ImportError as exc:
        raise ImportError(f"energy kind 'esen' needs the eSEN plugin adjoint-core-esen and "
                          f"fairchem-core: install them with `pip install adjoint-core[esen]` "
                          f"({exc})") from exc
    if isinstance(potential, (str, Path)):
        return ESENEnergy(str(potential), molecule=molecule, temperature=temperature)
    return ESENEnergy(potential, molecule=molecule, temperature=temperature)


def make_energy(molecule: Molecule, kind: str = "mmff", temperature: float = KT_300K,
                regularize: bool = True, alpha: float = 100.0, *,
                workers: EnergyWorkerPool | None = None, esen_potential: Any = None) -> Energy:
    """Build the energy of ``molecule`` by name.

    Args:
        molecule: The molecule.
        kind: ``"mmff"`` (MMFF94, RDKit), ``"xtb"`` (GFN2-xTB, tblite) or ``"esen"`` (eSEN,
            fairchem; needs ``esen_potential``).
        temperature: ``τ`` in kcal/mol.
        regularize: Wrap in :class:`BondRegularizedEnergy`.
        alpha: Regulariser weight.
        workers: Worker pool that evaluates conformer batches of ``mmff`` / ``xtb`` in
            parallel (``None``: in-process); it may be shared by many molecules' energies.
        esen_potential: For ``kind="esen"``: a loaded ``adjoint_core_esen.ESENPotential``
            (share one between molecules so that the checkpoint is loaded once) or a local
            checkpoint path. eSEN is evaluated in-process on the input's device.

    Raises:
        ValueError: Unknown ``kind``, ``workers`` with ``"esen"``, ``"esen"`` without
            ``esen_potential``. MoleculeError: the molecule cannot be typed.
        ImportError: tblite (``"xtb"``) or adjoint-core-esen / fairchem-core (``"esen"``) is
            not installed.
    """
    if kind == "mmff":
        base: Energy = MMFFEnergy(molecule, temperature)
    elif kind == "xtb":
        base = XTBEnergy(molecule, temperature)
    elif kind == "esen":
        if workers is not None:
            raise ValueError("workers: eSEN is a torch model evaluated in-process; worker "
                             "processes are for the 'mmff' and 'xtb' energies")
        base = _esen_energy(molecule, temperature, esen_potential)
    else:
        raise ValueError(f"energy kind must be 'mmff' or 'xtb' (or 'esen' with an "
                         f"esen_potential), got {kind!r}")
    if workers is not None:
        base.workers = workers
    return BondRegularizedEnergy(base, alpha) if regularize else base


def energy_and_grad_many(energies: list[Energy], xs: list[torch.Tensor]
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluate several molecules in one call: ``energies[i]`` on the batch ``xs[i]``.

    MMFF94 / GFN2-xTB energies (regularised or not) that share a worker pool are queued
    together, so that the workers stay busy even when each molecule has few conformers; the
    other energies are evaluated one after the other. The results and evaluation counts equal
    ``[e.energy_and_grad(x) for e, x in zip(energies, xs)]``.

    Args:
        energies: One energy per molecule.
        xs: Conformer batches, ``xs[i]`` of shape ``(b_i, N_i, 3)``.

    Returns:
        ``[(E_i (b_i,), ∇E_i (b_i, N_i, 3)), …]``.

    Raises:
        EnergyWorkerError: An evaluation failed in a worker process (names the molecule).
    """
    if len(energies) != len(xs):
        raise ValueError(f"got {len(energies)} energies for {len(xs)} conformer batches")
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(xs)
    pooled: dict[int, list[int]] = {}
    for i, (en, x) in enumerate(zip(energies, xs, strict=True)):
        base = en.base if isinstance(en, BondRegularizedEnergy) else en
        if isinstance(base, _MoleculeEnergy) and base._uses_workers(x.shape[0]):
            en._check(x)
            pooled.setdefault(id(base.workers), []).append(i)
        else:
            out[i] = en.energy_and_grad(x)
    for idx in pooled.values():
        bases = [energies[i].base if isinstance(energies[i], BondRegularizedEnergy)
                 else energies[i] for i in idx]
        results = bases[0].workers.evaluate_many(
            [(b.worker_spec(), _positions(xs[i])) for b, i in zip(bases, idx, strict=True)])
        for i, (e_np, g_np) in zip(idx, results, strict=True):
            en, x = energies[i], xs[i]
            e, g = _from_numpy(e_np, g_np, x)
            e, g = e.to(x.dtype), g.to(x.dtype)
            if isinstance(en, BondRegularizedEnergy):
                e, g = en._add_regularizer(x, e, g)
            en.n_evaluations += x.shape[0]
            out[i] = (e, g)
    return out  # type: ignore[return-value]
