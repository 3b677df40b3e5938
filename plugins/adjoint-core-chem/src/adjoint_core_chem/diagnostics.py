"""Per-molecule quality diagnostics of generated conformers, and a training callback.

:func:`conformer_diagnostics` judges a set of conformers of one molecule against its RDKit
topology and a reference geometry (:func:`reference_geometry`: ETKDGv3 conformers minimised
with MMFF94, bond lengths and angles averaged over them):

* ``bond_mae`` (Å): mean absolute deviation of every bond length from the reference's, over
  bonds and conformers; ``angle_mae_deg``: the same for every bond angle ``i–j–k``;
* ``broken_bond_fraction``: fraction of conformers with at least one *broken bond*, a bond
  longer than ``(1 + BROKEN_BOND_TOLERANCE)`` or shorter than ``(1 − BROKEN_BOND_TOLERANCE)``
  times its reference length (:data:`BROKEN_BOND_TOLERANCE` = 0.25);
* ``clash_fraction``: fraction of conformers with at least one *clash*, two atoms three or
  more bonds apart closer than :data:`CLASH_FACTOR` (0.5) times the sum of their van der Waals
  radii (RDKit's periodic table);
* ``valid_fraction``: fraction with neither; ``energy_*``: MMFF94 energies (kcal/mol), median,
  mean, 10 % and 90 % quantiles, with the number of non-finite ones.

The same numbers for ETKDG's own conformers are the yardstick (``etkdg`` in
:func:`compare_with_etkdg`). :class:`DiagnosticsCallback` adds them for a few molecules to
the trainer's log rows every few epochs (with the energy quantiles of the molecule's replay
buffer), and :func:`plot_diagnostics` draws them over epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from .energy import MMFFEnergy
from .molecule import Molecule

__all__ = ["BROKEN_BOND_TOLERANCE", "CLASH_FACTOR", "reference_geometry",
           "conformer_diagnostics", "compare_with_etkdg", "DiagnosticsCallback",
           "plot_diagnostics"]

#: Relative bond-length deviation beyond which a bond counts as broken.
BROKEN_BOND_TOLERANCE = 0.25
#: Atoms three or more bonds apart clash below this fraction of the sum of their vdW radii.
CLASH_FACTOR = 0.5


def _topology(molecule: Molecule) -> dict[str, np.ndarray]:
    """Bonds ``(B, 2)``, angles ``(A, 3)``, clash pairs ``(P, 2)`` and their thresholds."""
    mol = molecule.mol
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    angles = []
    for atom in mol.GetAtoms():
        j = atom.GetIdx()
        nb = [a.GetIdx() for a in atom.GetNeighbors()]
        angles += [(nb[p], j, nb[q]) for p in range(len(nb)) for q in range(p + 1, len(nb))]
    dist = Chem.GetDistanceMatrix(mol)
    i, k = np.triu_indices(mol.GetNumAtoms(), 1)
    far = dist[i, k] >= 3
    pairs = np.stack([i[far], k[far]], 1)
    table = Chem.GetPeriodicTable()
    rvdw = np.array([table.GetRvdw(a.GetAtomicNum()) for a in mol.GetAtoms()])
    return {"bonds": bonds, "angles": np.asarray(angles, dtype=np.int64).reshape(-1, 3),
            "pairs": pairs, "clash_at": CLASH_FACTOR * (rvdw[pairs[:, 0]] + rvdw[pairs[:, 1]])}


def _lengths_angles(x: np.ndarray, topo: dict) -> tuple[np.ndarray, np.ndarray]:
    """Bond lengths ``(K, B)`` in Å and angles ``(K, A)`` in degrees of conformers ``x``."""
    b = topo["bonds"]
    lengths = np.linalg.norm(x[:, b[:, 0]] - x[:, b[:, 1]], axis=-1)
    a = topo["angles"]
    u = x[:, a[:, 0]] - x[:, a[:, 1]]
    v = x[:, a[:, 2]] - x[:, a[:, 1]]
    cos = (u * v).sum(-1) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1),
                                       1e-12)
    return lengths, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def reference_geometry(molecule: Molecule, n: int = 4, seed: int = 1,
                       max_iters: int = 500) -> dict[str, np.ndarray]:
    """Reference bond lengths (Å) and angles (degrees): mean over MMFF-minimised ETKDG conformers.

    Args:
        molecule: The molecule.
        n: ETKDGv3 conformers to minimise.
        seed: Embedding seed (positive).
        max_iters: MMFF minimiser iterations.

    Returns:
        ``{"bond_lengths": (B,), "angles_deg": (A,)}`` in the order of the RDKit topology.

    Raises:
        MoleculeError: MMFF cannot type the molecule; ValueError: embedding failed.
    """
    x = MMFFEnergy(molecule).minimize(molecule.embed(n, seed=seed), max_iters=max_iters)
    lengths, angles = _lengths_angles(x.double().numpy(), _topology(molecule))
    return {"bond_lengths": lengths.mean(0), "angles_deg": angles.mean(0)}


def conformer_diagnostics(molecule: Molecule, positions: torch.Tensor | np.ndarray,
                          reference: dict[str, np.ndarray] | None = None,
                          energies: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Geometry and energy diagnostics of conformers of one molecule (module docstring).

    Args:
        molecule: The molecule (explicit hydrogens, the conformers' atom order).
        positions: ``(K, N, 3)`` conformers in Å.
        reference: :func:`reference_geometry` of the molecule (computed when ``None``).
        energies: MMFF94 energies of the conformers in kcal/mol (computed when ``None``).

    Returns:
        ``n``, ``bond_mae``, ``bond_max``, ``angle_mae_deg``, ``broken_bond_fraction``,
        ``clash_fraction``, ``valid_fraction``, ``energy_median``, ``energy_mean``,
        ``energy_q10``, ``energy_q90``, ``energy_nonfinite`` (non-finite entries are left out
        of the energy statistics; NaN when none is finite).
    """
    x = torch.as_tensor(positions).detach().double().cpu()
    if x.ndim != 3 or x.shape[1:] != (molecule.n_atoms, 3):
        raise ValueError(f"molecule {molecule.name!r}: positions must have shape "
                         f"(K, {molecule.n_atoms}, 3), got {tuple(x.shape)}")
    ref = reference if reference is not None else reference_geometry(molecule)
    topo = _topology(molecule)
    xn = x.numpy()
    lengths, angles = _lengths_angles(xn, topo)
    dev = np.abs(lengths - ref["bond_lengths"])
    broken = (dev > BROKEN_BOND_TOLERANCE * ref["bond_lengths"]).any(1)
    p = topo["pairs"]
    if len(p):
        d = np.linalg.norm(xn[:, p[:, 0]] - xn[:, p[:, 1]], axis=-1)
        clash = (d < topo["clash_at"]).any(1)
    else:
        clash = np.zeros(len(xn), dtype=bool)
    e = (MMFFEnergy(molecule).energy(x) if energies is None else torch.as_tensor(energies))
    e = e.double().numpy()
    fin = e[np.isfinite(e)]

    def stat(f):
        return float(f(fin)) if fin.size else float("nan")

    return {
        "n": int(len(xn)),
        "bond_mae": float(dev.mean()) if dev.size else 0.0,
        "bond_max": float(dev.max()) if dev.size else 0.0,
        "angle_mae_deg": (float(np.abs(angles - ref["angles_deg"]).mean()) if angles.size
                          else 0.0),
        "broken_bond_fraction": float(broken.mean()),
        "clash_fraction": float(clash.mean()),
        "valid_fraction": float((~broken & ~clash).mean()),
        "energy_median": stat(np.median), "energy_mean": stat(np.mean),
        "energy_q10": stat(lambda v: np.quantile(v, 0.1)),
        "energy_q90": stat(lambda v: np.quantile(v, 0.9)),
        "energy_nonfinite": int((~np.isfinite(e)).sum()),
    }


def compare_with_etkdg(molecule: Molecule, positions: torch.Tensor | np.ndarray,
                       seed: int = 7) -> dict[str, dict[str, float]]:
    """:func:`conformer_diagnostics` of ``positions`` and of as many ETKDGv3 conformers.

    Returns:
        ``{"generated": {...}, "etkdg": {...}}`` against the same reference geometry.
    """
    ref = reference_geometry(molecule)
    k = int(torch.as_tensor(positions).shape[0])
    return {"generated": conformer_diagnostics(molecule, positions, ref),
            "etkdg": conformer_diagnostics(molecule, molecule.embed(k, seed=seed), ref)}


class DiagnosticsCallback:
    """``Trainer.fit`` callback: per-molecule diagnostics in the log rows every few epochs.

    Every ``every`` epochs (and never in between, so training cost is unchanged there) it
    samples ``n_samples`` conformers of each chosen target with the current network and adds
    to the epoch's row ``diag/<name>/<key>`` for every key of :func:`conformer_diagnostics`,
    plus ``diag/<name>/buffer_energy_median`` and ``…_q90`` of the target's replay buffer
    (the energies Adjoint Sampling stored; absent while the buffer has none, e.g. during the
    warm-up). Rows are the trainer's history rows, so the entries reach ``metrics.json``.

    Args:
        targets: Indices of the trainer's targets to follow (molecular targets whose
            ``info["molecule"]`` is the :class:`~adjoint_core_chem.molecule.Molecule`).
        every: Run every this many epochs (and on the first).
        n_samples: Conformers per target and check.
        n_sde_steps: Euler–Maruyama steps (default: the training value).
        seed: Seed of the sampling generator (the trainer's own stream is untouched).
    """

    def __init__(self, targets: Sequence[int] = (0,), every: int = 10, n_samples: int = 32,
                 n_sde_steps: int | None = None, seed: int = 0) -> None:
        if every < 1 or n_samples < 1:
            raise ValueError(f"DiagnosticsCallback needs every >= 1 and n_samples >= 1, got "
                             f"{every}, {n_samples}")
        self.targets = [int(i) for i in targets]
        self.every, self.n_samples, self.n_sde_steps = int(every), int(n_samples), n_sde_steps
        self.seed = int(seed)
        self._refs: dict[int, dict] = {}

    def __call__(self, trainer, row: dict) -> None:
        """Add the diagnostics to ``row`` when its epoch is due."""
        epoch = int(row["epoch"])
        if epoch != 1 and epoch % self.every:
            return
        for i in self.targets:
            tg = trainer.targets[i]
            mol = tg.info["molecule"]
            if i not in self._refs:
                self._refs[i] = reference_geometry(mol)
            gen = torch.Generator(device=trainer.device).manual_seed(self.seed + epoch)
            x = trainer.sample(self.n_samples, n_steps=self.n_sde_steps, generator=gen,
                               target=tg).cpu()
            stats = conformer_diagnostics(mol, x, self._refs[i])
            buf = tg.buffer.tensors() if len(tg.buffer) else {}
            if "energy" in buf:
                e = buf["energy"].double()
                e = e[e.isfinite()]
                if e.numel():
                    stats["buffer_energy_median"] = float(e.median())
                    stats["buffer_energy_q90"] = float(torch.quantile(e, 0.9))
            row.update({f"diag/{tg.name}/{k}": v for k, v in stats.items()})


def plot_diagnostics(history: Sequence[dict], path: str | Path,
                     keys: Sequence[str] = ("bond_mae", "energy_median", "valid_fraction")
                     ) -> Path:
    """Plot ``diag/<name>/<key>`` entries of log rows over epochs, one panel per key.

    Args:
        history: Log rows (``trainer.history`` or ``metrics.json``'s rows).
        path: Output image (PNG).
        keys: Diagnostic keys to draw; energies on a symmetric-log axis.

    Returns:
        The path written.

    Raises:
        ValueError: No row holds a diagnostics entry.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k.split("/")[1] for row in history for k in row if k.startswith("diag/")})
    if not names:
        raise ValueError("no diag/<molecule>/<key> entries in the rows; train with "
                         "DiagnosticsCallback")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name in names:
            col = f"diag/{name}/{key}"
            pts = [(r["epoch"], r[col]) for r in history if col in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name[:24])
            if key == "energy_median":
                bcol = f"diag/{name}/buffer_energy_median"
                bpts = [(r["epoch"], r[bcol]) for r in history if bcol in r]
                if bpts:
                    ax.plot(*zip(*bpts, strict=True), ls="--", label=f"{name[:18]} buffer")
        if key.startswith("energy"):
            ax.set_yscale("symlog")
        ax.set_xlabel("epoch")
        ax.set_title(key)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
