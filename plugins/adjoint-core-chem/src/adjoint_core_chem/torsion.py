r"""Torsional coordinates of a molecule: rotatable bonds, torsions → Cartesian, chain rule.

The torsional variant of Adjoint Sampling (Havens et al., ICML 2025) samples only the torsion angles
``τ ∈ [-π, π)^K`` of the ``K`` rotatable bonds; bond lengths, bond angles, rings and chirality
are those of one reference conformer. This module supplies the chemistry behind the core's
generic :class:`~adjoint_core.problem.torsional.TorsionalSpace`:

* **Rotatable bonds** (:func:`find_torsions`): the SMARTS ``[!$(*#*)&!D1]-&!@[!$(*#*)&!D1]``
  of AS-mol / torsional diffusion: a single, acyclic bond between two non-terminal atoms,
  neither in a triple bond. For a bond ``(b, c)`` the dihedral end atoms are the heaviest
  neighbours (``a`` of ``b`` other than ``c``, ``d`` of ``c`` other than ``b``; ties → lowest
  index); the quadruple is oriented so that ``c``'s side (the atoms that move) is the smaller
  fragment after cutting the bond (tie → the side of the higher index of the two).
* **Torsions → coordinates** (:meth:`MoleculeTorsions.positions`): with ``φ_k`` the dihedrals of
  the reference geometry, ``δ = τ − φ`` is computed once and the atoms on ``c_k``'s side are
  rotated about the axis ``b_k → c_k`` by ``δ_k`` (Rodrigues' formula, right-handed; this
  raises the dihedral by ``δ_k`` in RDKit's sign convention), torsion after torsion.
  Each dihedral about an acyclic bond is unchanged by rigid rotations about the other rotatable
  bonds (atoms on a rotation axis do not move, and otherwise all four atoms move together), so
  the final dihedrals equal ``τ`` exactly and bond lengths and angles are preserved. The result
  is centred (centre of geometry at 0, like the Cartesian mean-free space). Differentiable and
  batched.
* **Chain rule** (:func:`torsion_gradient`): ``∂E/∂τ = J(τ)ᵀ ∇_x E`` by a vector–Jacobian
  product through the map (exact for any Cartesian energy).
* :class:`TorsionalEnergy`: any Cartesian molecular
  :class:`~adjoint_core.problem.energy.Energy` (MMFF, xTB, eSEN, …) evaluated at ``x(τ)``,
  with event shape ``(K,)``, the same temperature and the torsional gradient from the chain
  rule; one Cartesian evaluation per state.

Usage::

    from adjoint_core_chem.molecule import mol_from_smiles
    from adjoint_core_chem.energy import make_energy
    from adjoint_core_chem.torsion import MoleculeTorsions

    mol = mol_from_smiles("CCCCO")
    tors = MoleculeTorsions.from_molecule(mol, seed=0)      # ETKDG + MMFF reference
    space = tors.space()                                    # TorsionalSpace(K), embedding attached
    energy = tors.energy(make_energy(mol, "mmff", regularize=False))
    x = tors.positions(space.uniform(8))                    # (8, N, 3) Å
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from rdkit import Chem

from adjoint_core.problem.energy import Energy
from adjoint_core.problem.torsional import TorsionalSpace
from adjoint_core.problem.torus import wrap

from .molecule import Molecule, MoleculeError

__all__ = ["ROTATABLE_SMARTS", "find_torsions", "dihedral", "rotate_torsions",
           "torsion_gradient", "MoleculeTorsions", "TorsionalEnergy", "cached_torsions",
           "torsional_energy"]

#: Rotatable bonds: single, acyclic, both atoms non-terminal, neither in a triple bond.
ROTATABLE_SMARTS = "[!$(*#*)&!D1]-&!@[!$(*#*)&!D1]"
_PATTERN = Chem.MolFromSmarts(ROTATABLE_SMARTS)


def _component(mol: Chem.Mol, start: int, cut: tuple[int, int]) -> set[int]:
    """Atoms connected to ``start`` once the bond ``cut`` is removed (iterative DFS)."""
    seen, stack = {start}, [start]
    while stack:
        i = stack.pop()
        for nb in mol.GetAtomWithIdx(i).GetNeighbors():
            j = nb.GetIdx()
            if {i, j} == set(cut) or j in seen:
                continue
            seen.add(j)
            stack.append(j)
    return seen


def _heaviest_neighbour(mol: Chem.Mol, atom: int, exclude: int) -> int:
    nbs = [n for n in mol.GetAtomWithIdx(atom).GetNeighbors() if n.GetIdx() != exclude]
    return min(nbs, key=lambda n: (-n.GetMass(), n.GetIdx())).GetIdx()


def find_torsions(molecule: Molecule) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotatable torsions of a molecule and the atoms each one moves.

    Args:
        molecule: The molecule (explicit hydrogens).

    Returns:
        ``(index, masks)``: ``index`` ``(K, 4)`` long, the dihedral atoms ``(a, b, c, d)`` in
        SMARTS-match order; ``masks`` ``(K, N)`` bool, the atoms on ``c``'s side of bond
        ``b–c`` (the smaller fragment), which rotate with ``τ_k``. ``K`` may be 0.
    """
    mol = molecule.mol
    rows, masks = [], []
    for b, c in mol.GetSubstructMatches(_PATTERN):
        side_c = _component(mol, c, (b, c))
        side_b = _component(mol, b, (b, c))
        if len(side_b) < len(side_c) or (len(side_b) == len(side_c) and b > c):
            b, c, side_c = c, b, side_b
        a, d = _heaviest_neighbour(mol, b, c), _heaviest_neighbour(mol, c, b)
        rows.append([a, b, c, d])
        m = torch.zeros(molecule.n_atoms, dtype=torch.bool)
        m[sorted(side_c)] = True
        masks.append(m)
    if not rows:
        return (torch.zeros(0, 4, dtype=torch.long),
                torch.zeros(0, molecule.n_atoms, dtype=torch.bool))
    return torch.tensor(rows, dtype=torch.long), torch.stack(masks)


def dihedral(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (RDKit's sign convention, ``GetDihedralRad``), differentiable.

    Args:
        x: Positions ``(batch, N, 3)``.
        index: Quadruples ``(K, 4)``.

    Returns:
        Angles in ``[-π, π]``, shape ``(batch, K)``.
    """
    p = x[:, index]  # (B, K, 4, 3)
    b1, b2, b3 = p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 1, :], \
        p[..., 3, :] - p[..., 2, :]
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    y = (torch.cross(n1, n2, dim=-1) * b2).sum(-1) / b2.norm(dim=-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def rotate_torsions(x: torch.Tensor, index: torch.Tensor, masks: torch.Tensor,
                    delta: torch.Tensor) -> torch.Tensor:
    """Rotate, torsion after torsion, the atoms ``masks[k]`` about bond ``b_k → c_k`` by ``δ_k``.

    Rodrigues' formula ``v' = v cos δ + (n × v) sin δ + n (n·v)(1 − cos δ)`` with ``v`` the
    offset from atom ``b_k`` and ``n`` the unit bond vector in the current geometry; a
    positive ``δ_k`` increases the dihedral ``(a, b, c, d)`` (RDKit's convention) by ``δ_k``.

    Args:
        x: Positions ``(batch, N, 3)`` or ``(N, 3)`` (broadcast over ``delta``'s batch).
        index: ``(K, 4)`` dihedral quadruples.
        masks: ``(K, N)`` bool, atoms moved by each torsion.
        delta: Angle increments ``(batch, K)``.

    Returns:
        Positions ``(batch, N, 3)``.
    """
    if x.ndim == 2:
        x = x.expand(delta.shape[0], *x.shape)
    for k in range(index.shape[0]):
        b, c = int(index[k, 1]), int(index[k, 2])
        origin = x[:, b:b + 1]
        n = x[:, c:c + 1] - origin
        n = n / n.norm(dim=-1, keepdim=True)
        v = x - origin
        cos, sin = torch.cos(delta[:, k]).view(-1, 1, 1), torch.sin(delta[:, k]).view(-1, 1, 1)
        rot = v * cos + torch.cross(n.expand_as(v), v, dim=-1) * sin + \
            n * (n * v).sum(-1, keepdim=True) * (1 - cos)
        x = torch.where(masks[k].view(1, -1, 1), origin + rot, x)
    return x


def torsion_gradient(torsions: MoleculeTorsions, tau: torch.Tensor, grad_x: torch.Tensor
                     ) -> torch.Tensor:
    """Chain rule ``∂E/∂τ = J(τ)ᵀ ∇_x E`` through :meth:`MoleculeTorsions.positions`.

    Args:
        torsions: The molecule's torsional coordinates.
        tau: Torsion angles ``(batch, K)``.
        grad_x: Cartesian gradient ``∇_x E`` at ``positions(tau)``, ``(batch, N, 3)``.

    Returns:
        ``(batch, K)``, in the dtype of ``tau``.
    """
    with torch.enable_grad():
        t = tau.detach().double().requires_grad_(True)
        x = torsions.positions(t)
        (g,) = torch.autograd.grad(x, t, grad_x.to(x.dtype))
    return g.to(tau.dtype)


@dataclass
class MoleculeTorsions:
    """A molecule's torsional coordinates around one reference geometry.

    Build with :meth:`from_molecule`.

    Attributes:
        molecule: The molecule.
        index: ``(K, 4)`` dihedral quadruples (see :func:`find_torsions`).
        masks: ``(K, N)`` atoms moved by each torsion.
        reference: ``(N, 3)`` float64 reference geometry (Å), centred.
        reference_torsions: ``(K,)`` its dihedrals ``φ``.
    """

    molecule: Molecule
    index: torch.Tensor
    masks: torch.Tensor
    reference: torch.Tensor
    reference_torsions: torch.Tensor
    _space: TorsionalSpace | None = field(default=None, repr=False)

    @classmethod
    def from_molecule(cls, molecule: Molecule, reference: torch.Tensor | None = None,
                      seed: int = 0, relax: bool = True) -> MoleculeTorsions:
        """Detect the torsions and fix the reference geometry.

        Args:
            molecule: The molecule.
            reference: ``(N, 3)`` geometry in Å; default: one ETKDG conformer (``seed``),
                MMFF-relaxed when ``relax`` (bond lengths and angles then sit at the force
                field's equilibrium; AS-mol optionally relaxes with its energy model).
            seed: ETKDG seed.
            relax: MMFF-minimise the ETKDG reference (ignored when ``reference`` is given).

        Raises:
            MoleculeError: Embedding failed, or a given reference has the wrong shape.
        """
        if reference is None:
            reference = molecule.embed(1, seed=seed)[0]
            if relax:
                from .energy import MMFFEnergy

                try:
                    reference = MMFFEnergy(molecule).minimize(reference[None], 500)[0]
                except MoleculeError:
                    pass  # no MMFF parameters: keep the ETKDG geometry
        ref = torch.as_tensor(reference, dtype=torch.float64)
        if tuple(ref.shape) != (molecule.n_atoms, 3):
            raise MoleculeError(f"molecule {molecule.name!r}: reference geometry must have "
                                f"shape ({molecule.n_atoms}, 3), got {tuple(ref.shape)}")
        ref = ref - ref.mean(0)
        index, masks = find_torsions(molecule)
        phi = dihedral(ref[None], index)[0] if len(index) else torch.zeros(0, dtype=ref.dtype)
        return cls(molecule, index, masks, ref, phi)

    @property
    def n_torsions(self) -> int:
        """``K``, the number of rotatable torsions (may be 0)."""
        return int(self.index.shape[0])

    def positions(self, tau: torch.Tensor) -> torch.Tensor:
        """Cartesian coordinates ``(batch, N, 3)`` (Å, centred) at torsion angles ``(batch, K)``.

        Differentiable in ``tau``; computed in float64 and returned in ``tau``'s dtype.
        """
        if tau.ndim != 2 or tau.shape[1] != self.n_torsions:
            raise ValueError(f"molecule {self.molecule.name!r}: expected torsions of shape "
                             f"(batch, {self.n_torsions}), got {tuple(tau.shape)}")
        ref = self.reference.to(tau.device)
        delta = tau.double() - self.reference_torsions.to(tau.device)
        x = rotate_torsions(ref, self.index.to(tau.device), self.masks.to(tau.device), delta)
        return (x - x.mean(1, keepdim=True)).to(tau.dtype)

    def torsions_of(self, x: torch.Tensor) -> torch.Tensor:
        """Torsion angles ``(batch, K)`` of Cartesian conformers ``(batch, N, 3)``, wrapped."""
        return wrap(dihedral(x, self.index.to(x.device)), 2 * math.pi)

    def space(self, n_images: int | None = None) -> TorsionalSpace:
        """The :class:`~adjoint_core.problem.torsional.TorsionalSpace` ``(K,)``, embedding attached.

        The embedding is :meth:`positions`.

        Raises:
            MoleculeError: The molecule has no rotatable bond.
        """
        if self.n_torsions == 0:
            raise MoleculeError(f"molecule {self.molecule.name!r} has no rotatable bond: "
                                f"nothing to sample in torsional space")
        if self._space is None or self._space.n_images != n_images:
            self._space = TorsionalSpace(self.n_torsions, n_images, embedding=self.positions)
        return self._space

    def energy(self, cartesian: Energy) -> TorsionalEnergy:
        """``cartesian`` evaluated at the torsional state (:class:`TorsionalEnergy`)."""
        return TorsionalEnergy(cartesian, self)

    def context(self) -> dict:
        """Context for torsion networks: the molecule's context plus the torsions.

        Returns:
            :meth:`Molecule.context` plus ``"torsion_index"`` ``(K, 4)`` long,
            ``"rotation_masks"`` ``(K, N)`` bool and ``"to_cartesian"`` (:meth:`positions`).
        """
        return {**self.molecule.context(), "torsion_index": self.index,
                "rotation_masks": self.masks, "to_cartesian": self.positions}

    def check(self, tau: torch.Tensor, atol: float = 1e-4) -> None:
        """Assert that :meth:`positions` realises ``tau`` (AS-mol's ``check_torsions``).

        Raises:
            AssertionError: A dihedral differs from the requested angle by more than ``atol``
                (in sine or cosine).
        """
        got = dihedral(self.positions(tau.double()), self.index)
        ok = ((got.sin() - tau.double().sin()).abs() <= atol) & \
            ((got.cos() - tau.double().cos()).abs() <= atol)
        if not bool(ok.all()):
            raise AssertionError(f"molecule {self.molecule.name!r}: torsions not realised "
                                 f"(max error {float((got - tau).abs().max()):.3g} rad)")


class TorsionalEnergy(Energy):
    r"""A Cartesian molecular energy evaluated at the torsional state ``x(τ)``.

    ``E_tor(τ) = E(x(τ))`` with ``∇_τ E_tor = J(τ)ᵀ ∇_x E(x(τ))`` (:func:`torsion_gradient`).
    Event shape ``(K,)``; the temperature and units are those of the Cartesian energy. One
    Cartesian ``energy_and_grad`` per state (counted there and here).

    Args:
        cartesian: Energy of conformers ``(batch, N, 3)`` in Å (e.g. MMFF from
            :func:`~adjoint_core_chem.energy.make_energy`).
        torsions: The molecule's :class:`MoleculeTorsions`.

    Raises:
        ValueError: The Cartesian energy's event shape is not ``(N, 3)`` of the molecule, or
            the molecule has no rotatable bond.
    """

    def __init__(self, cartesian: Energy, torsions: MoleculeTorsions) -> None:
        n = torsions.molecule.n_atoms
        if tuple(cartesian.event_shape) != (n, 3):
            raise ValueError(f"molecule {torsions.molecule.name!r} has {n} atoms but the "
                             f"Cartesian energy expects states {cartesian.event_shape}")
        if torsions.n_torsions == 0:
            raise ValueError(f"molecule {torsions.molecule.name!r} has no rotatable bond")
        super().__init__((torsions.n_torsions,), cartesian.temperature)
        self.cartesian, self.torsions, self.molecule = cartesian, torsions, torsions.molecule
        self.unit = getattr(cartesian, "unit", None)

    def _energy(self, tau: torch.Tensor) -> torch.Tensor:
        return self.cartesian._energy(self.torsions.positions(tau))

    def _energy_and_grad(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.torsions.positions(tau.detach().double())
        e, g = self.cartesian.energy_and_grad(x)
        bad = ~torch.isfinite(g.flatten(1)).all(-1)
        gt = torsion_gradient(self.torsions, tau, torch.nan_to_num(g.double()))
        gt[bad] = math.nan
        return e.to(tau.dtype), gt

    def minimize(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Relax Cartesian conformers with the Cartesian energy's minimiser (all coordinates)."""
        return self.cartesian.minimize(x, **kw)

    def __repr__(self) -> str:
        return f"TorsionalEnergy({self.cartesian!r}, K={self.torsions.n_torsions})"


# ---------------------------------------------------------------------- registry factories
_CACHE: dict[tuple[str, int, bool], MoleculeTorsions] = {}


def cached_torsions(smiles: str, reference_seed: int = 0, relax: bool = True
                    ) -> MoleculeTorsions:
    """:class:`MoleculeTorsions` of ``smiles``, built once per ``(smiles, seed, relax)``.

    The energy and the model of a single-molecule config run are built by separate factories;
    sharing this object gives them the same reference geometry.
    """
    from .molecule import mol_from_smiles

    key = (smiles, int(reference_seed), bool(relax))
    if key not in _CACHE:
        _CACHE[key] = MoleculeTorsions.from_molecule(mol_from_smiles(smiles),
                                                     seed=reference_seed, relax=relax)
    return _CACHE[key]


def _check_space(tors: MoleculeTorsions, space) -> None:
    if space is not None and tuple(space.event_shape) != (tors.n_torsions,):
        raise ValueError(f"molecule {tors.molecule.name!r} has {tors.n_torsions} rotatable "
                         f"torsions: the space needs n_torsions={tors.n_torsions} (space "
                         f"'torsional'), got event shape {tuple(space.event_shape)}")


def torsional_energy(smiles: str, kind: str = "mmff", temperature: float | None = None,
                     regularize: bool = False, alpha: float = 100.0, reference_seed: int = 0,
                     relax: bool = True, space=None) -> TorsionalEnergy:
    """Registry factory ``torsional``: a molecular energy at the torsional state of ``smiles``.

    Config: ``energy: {name: torsional, smiles: "CCCCO", kind: mmff}`` with
    ``space: {name: torsional, n_torsions: K}`` (``K`` is checked and named in the error).

    Args:
        smiles: The molecule.
        kind: ``"mmff"`` or ``"xtb"`` (:func:`~adjoint_core_chem.energy.make_energy`).
        temperature: ``τ`` in kcal/mol (default ``k_B · 300 K``).
        regularize: Add the bond-structure regulariser (off, as AS-mol's torsional runs).
        alpha: Regulariser weight.
        reference_seed: ETKDG seed of the reference geometry.
        relax: MMFF-relax the reference geometry.
        space: Injected state space (checked).
    """
    from .energy import KT_300K, make_energy

    tors = cached_torsions(smiles, reference_seed, relax)
    _check_space(tors, space)
    cart = make_energy(tors.molecule, kind, KT_300K if temperature is None else temperature,
                       regularize, alpha)
    return tors.energy(cart)
