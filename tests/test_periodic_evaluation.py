"""Evaluation on periodic spaces: torus W2, g(r) comparison, minimum-image plots, model checks.

Known answers: a translated point cloud has W2 equal to the translation (also across the
wrap, where the Euclidean W2 is nearly a box length); a sample set against itself has zero
distance; minimum-image distances never exceed ``√d · L / 2``.
"""

import math

import numpy as np
import pytest
import torch

from adjoint_core import EuclideanSpace, PeriodicSpace
from adjoint_core.app.run import evaluate_samples
from adjoint_core.evaluation import metrics
from adjoint_core.evaluation.plotting import plot_pair_distances
from adjoint_core.problem.models import MLP


class _PairEnergy:
    """A soft periodic pair energy (minimum image): only ``energy`` is used by the metrics."""

    def __init__(self, box: float) -> None:
        self.box = box

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
        d = x[:, i] - x[:, j]
        d = d - self.box * torch.round(d / self.box)
        return torch.exp(-d.pow(2).sum(-1)).sum(-1)


def test_periodic_w2_of_a_translated_cloud_across_the_wrap():
    rng = np.random.default_rng(0)
    a = -math.pi + 0.05 + 0.2 * rng.random((300, 2))  # a small cloud just right of -π
    b = a - 0.3
    b = b - 2 * math.pi * np.round(b / (2 * math.pi))  # wrapped: now just left of +π
    assert metrics.euclidean_w2(a, b) > 5.0  # the raw distance sees the box length
    w2 = metrics.euclidean_w2(a, b, box=2 * math.pi)
    assert w2 == pytest.approx(0.3 * math.sqrt(2), abs=1e-9)
    # per-coordinate periods; a period-shifted copy is at distance 0
    shifted = a + np.array([2 * math.pi, -4 * math.pi])
    assert metrics.euclidean_w2(a, shifted, box=[2 * math.pi, 2 * math.pi]) == \
        pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("box", [0.0, -1.0, [1.0, 2.0, 3.0], float("nan")])
def test_periodic_w2_rejects_bad_boxes(box):
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="box must be"):
        metrics.euclidean_w2(x, x, box=box)


def test_evaluate_samples_on_a_periodic_particle_box_compares_g_of_r():
    box = 3.0
    space = PeriodicSpace(box, n_particles=6, spatial_dim=3)
    g = torch.Generator().manual_seed(0)
    ref = (torch.rand(4000, 6, 3, generator=g) - 0.5) * box
    same = (torch.rand(2000, 6, 3, generator=g) - 0.5) * box
    clumped = 0.2 * (torch.rand(2000, 6, 3, generator=g) - 0.5) * box
    energy = _PairEnergy(box)
    near = evaluate_samples(same, ref, energy, space, n_samples=2000)
    far = evaluate_samples(clumped, ref, energy, space, n_samples=2000)
    assert not any(k.startswith("geometric_w2") for k in near)  # rotations are not symmetries
    # same distribution: small (g(r) is noisy in the first bins); clumped: far off
    assert near["pair_distance_w2"] < 0.02 and near["rdf_mean_abs_diff"] < 0.3
    assert far["pair_distance_w2"] > 0.5 and far["rdf_mean_abs_diff"] > 5.0
    assert far["energy_w2"] > 10 * near["energy_w2"]


def test_evaluate_samples_on_a_flat_torus_uses_the_periodic_w2():
    space = PeriodicSpace(2 * math.pi, dim=2)
    g = torch.Generator().manual_seed(1)
    ref = -math.pi + 0.05 + 0.2 * torch.rand(500, 2, generator=g)
    gen = space.project(ref - 0.3)
    out = evaluate_samples(gen, ref, _FlatEnergy(), space, n_samples=500)
    assert "euclidean_w2" not in out
    # the same 500 points, translated by 0.3 per coordinate (subset order does not matter)
    assert out["periodic_w2"] == pytest.approx(0.3 * math.sqrt(2), abs=1e-5)


class _FlatEnergy:
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x).sum(-1)


def test_pair_distance_plot_uses_minimum_image(tmp_path, monkeypatch):
    seen = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    real_hist = matplotlib.axes.Axes.hist

    def spy(self, values, *args, **kwargs):
        seen.append(np.asarray(values))
        return real_hist(self, values, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", spy)
    box = 2.0
    x = (np.random.default_rng(0).random((50, 5, 3)) - 0.5) * box
    plot_pair_distances(x, x, tmp_path / "p.png", box=(box, box, box))
    assert (tmp_path / "p.png").is_file() and len(seen) == 2
    assert max(v.max() for v in seen) <= math.sqrt(3) * box / 2 + 1e-9
    seen.clear()
    plot_pair_distances(x, None, tmp_path / "raw.png")
    assert seen[0].max() > math.sqrt(3) * box / 2  # raw distances span the whole box


def test_plain_mlp_rejects_periodic_spaces():
    model = MLP(dim=4, hidden=8, n_layers=1)
    model.check_space(EuclideanSpace(dim=4))
    with pytest.raises(ValueError, match="mlp_periodic"):
        model.check_space(PeriodicSpace(1.0, dim=4))
