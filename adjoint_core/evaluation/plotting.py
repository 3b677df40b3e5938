"""Plots written by ``adjoint-core train`` into ``RUN_DIR/plots`` (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adjoint_core.problem.periodic import pair_distances

__all__ = ["plot_run", "plot_energy_histogram", "plot_loss", "plot_samples_2d"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: list[dict], path: Path) -> None:
    """Training loss and buffer energy per epoch.

    The energy panel shows the median where the history has it: robust to the few overlapping
    particle configurations whose energies dominate a mean.
    """
    if not history:
        return
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].semilogy(ep, [r["loss"] for r in history])
    ax[0].set(xlabel="epoch", ylabel="adjoint-matching loss")
    stat = "median" if all("buffer_energy_median" in r for r in history) else "mean"
    ax[1].plot(ep, [r[f"buffer_energy_{stat}"] for r in history])
    ax[1].set(xlabel="epoch", ylabel=f"{stat} energy in buffer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_energy_histogram(e_gen: np.ndarray, e_ref: np.ndarray | None, path: Path,
                          title: str = "") -> None:
    """Histogram of sample energies against the reference energies."""
    pool = e_gen if e_ref is None else np.concatenate([e_gen, e_ref])
    pool = pool[np.isfinite(pool)]
    if not pool.size:  # no finite energy to show (e.g. a diverged sampler): no plot
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lo, hi = np.percentile(pool, [0.5, 99.5])
    bins = np.linspace(lo, hi, 60)
    if e_ref is not None:
        ax.hist(e_ref, bins=bins, density=True, alpha=0.5, label="reference")
    ax.hist(e_gen, bins=bins, density=True, histtype="step", lw=2, label="adjoint sampler")
    ax.set(xlabel="energy", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples_2d(x: np.ndarray, energy, path: Path, reference: np.ndarray | None = None,
                    log_density_range: float = 40.0) -> None:
    """Samples of a 2-D target over the filled contours of its log-density.

    The view is the box of the reference samples (or, without a reference, of the central 98 %
    of the samples) plus a 10 % margin; samples outside it are counted in the title. Log-density
    levels below ``max - log_density_range`` are not drawn, so the modes stay visible for
    energies with a steep far field (e.g. GMM-40).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    box_pts = reference if reference is not None and len(reference) else x
    lo, hi = np.percentile(box_pts, 1, axis=0), np.percentile(box_pts, 99, axis=0)
    if reference is not None and len(reference):
        lo, hi = reference.min(0), reference.max(0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 240), np.linspace(lo[1], hi[1], 240))
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], -1), dtype=torch.float32)
    with torch.no_grad():
        logp = (-energy._energy(grid) / energy.temperature).numpy().reshape(gx.shape)
    top = float(np.nanmax(logp))
    levels = np.linspace(top - log_density_range, top, 25)
    cs = ax.contourf(gx, gy, np.clip(logp, levels[0], None), levels=levels, cmap="Blues")
    fig.colorbar(cs, ax=ax, shrink=0.8, label="log density (unnormalised)")
    inside = np.all((x >= lo) & (x <= hi), axis=1)
    ax.scatter(x[inside, 0], x[inside, 1], s=2, c="C3", alpha=0.5, label="samples")
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]),
           title=f"samples over log-density ({int((~inside).sum())} of {len(x)} outside view)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pair_distances(x: np.ndarray, reference: np.ndarray | None, path: Path,
                        box: tuple[float, ...] | None = None) -> None:
    """Histogram of interparticle distances (particle systems), samples vs reference.

    Args:
        x: Samples ``(M, N, d)``.
        reference: Reference samples ``(M', N, d)`` or ``None``.
        path: Output image.
        box: Box lengths ``(d,)`` of a periodic space: distances are then minimum-image.
    """
    plt = _plt()

    def dists(a: np.ndarray) -> np.ndarray:
        return pair_distances(torch.as_tensor(a, dtype=torch.float64), box).ravel().numpy()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    dg = dists(x)
    bins = np.linspace(0, np.percentile(dg, 99.5) * 1.1, 80)
    if reference is not None:
        ax.hist(dists(reference), bins=bins, density=True, alpha=0.5, label="reference")
    ax.hist(dg, bins=bins, density=True, histtype="step", lw=2, label="adjoint sampler")
    ax.set(xlabel="interparticle distance", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(out: Path, sampler, record: dict, reference: torch.Tensor | None,
             samples: torch.Tensor | None = None, n: int = 2000) -> None:
    """Write every plot of a run into ``out/plots``."""
    plots = Path(out) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_loss(sampler.history, plots / "loss.png")
    if samples is None:
        gen = torch.Generator(device=sampler.device).manual_seed(sampler.seed + 12345)
        samples = sampler.sample(n, generator=gen)
    x = samples.detach().cpu()
    with torch.no_grad():
        e_gen = sampler.energy.energy(x).double().numpy()
        ref = None if reference is None else reference[: x.shape[0]]
        e_ref = None if ref is None else sampler.energy.energy(ref).double().numpy()
    e_gen = e_gen[np.isfinite(e_gen)]
    plot_energy_histogram(e_gen, e_ref, plots / "energy_hist.png", title=type(sampler.energy)
                          .__name__)
    if sampler.space.particle_shape is not None:
        plot_pair_distances(x.numpy(), None if ref is None else ref.numpy(),
                            plots / "pair_distances.png", box=getattr(sampler.space, "box", None))
    elif tuple(sampler.space.event_shape) == (2,):
        plot_samples_2d(x.numpy(), sampler.energy, plots / "samples_2d.png",
                        None if ref is None else ref.numpy())
