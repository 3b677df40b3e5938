"""Known-answer tests for adjoint_core.evaluation.metrics (fast: small sample sizes)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation
from scipy.stats import special_ortho_group

from adjoint_core.evaluation import metrics as M


# --------------------------------------------------------------------------- helpers
def _cloud(rng: np.random.Generator, n_particles: int = 13, dim: int = 3) -> np.ndarray:
    return rng.standard_normal((n_particles, dim))


def _transform(
    x: np.ndarray,
    rng: np.random.Generator,
    rotate: bool = True,
    reflect: bool = False,
    permute: bool = True,
    translate: bool = True,
) -> np.ndarray:
    """Apply a random rotation / reflection / permutation / translation to one config."""
    n_particles, dim = x.shape
    y = x.copy()
    if rotate:
        y = y @ special_ortho_group.rvs(dim, random_state=rng)
    if reflect:
        y = y * np.r_[np.ones(dim - 1), -1.0]
    if permute:
        y = y[rng.permutation(n_particles)]
    if translate:
        y = y + rng.normal(scale=3.0, size=dim)
    return y


def _papers_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Line-by-line re-implementation of AS-lib/DEM ``dist_point_clouds`` for one pair."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    dist = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)
    _, col = linear_sum_assignment(dist)
    reordered = y[col]
    u, _, vt = np.linalg.svd(x.T @ reordered)  # H = A_c^T B_c
    rot = vt.T @ u.T  # R = V U^T, no determinant correction
    return float(np.linalg.norm(x - reordered @ rot))


def _exact_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Global min over all permutations and O(d) by explicit enumeration (small N)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    best = np.inf
    for perm in itertools.permutations(range(len(x))):
        yp = y[list(perm)]
        u, _, vt = np.linalg.svd(yp.T @ x)
        best = min(best, float(np.linalg.norm(x - yp @ (u @ vt))))
    return best


# --------------------------------------------------------------------------- energy / raw W2
def test_energy_w2_of_shift_equals_shift():
    rng = np.random.default_rng(0)
    e = rng.normal(size=2000)
    assert M.energy_w2(e + 2.5, e) == pytest.approx(2.5, abs=1e-9)
    assert M.energy_w2(torch.tensor(e - 0.75), e) == pytest.approx(0.75, abs=1e-9)
    assert M.energy_w2(e, e) == pytest.approx(0.0, abs=1e-12)


def test_energy_w2_gaussians_closed_form():
    rng = np.random.default_rng(1)
    m1, s1, m2, s2 = 0.3, 1.0, -1.2, 2.5
    a = rng.normal(m1, s1, size=200_000)
    b = rng.normal(m2, s2, size=150_000)  # different sizes are allowed
    expected = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    assert M.energy_w2(a, b) == pytest.approx(expected, abs=0.03)


def test_euclidean_w2_2d_gaussians_closed_form():
    rng = np.random.default_rng(2)
    n = 1500
    m1, s1 = np.array([0.0, 0.0]), np.array([1.0, 1.0])
    m2, s2 = np.array([3.0, -1.0]), np.array([2.0, 0.5])
    a = m1 + s1 * rng.standard_normal((n, 2))
    b = m2 + s2 * rng.standard_normal((n, 2))
    expected = math.sqrt(np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2))
    assert M.euclidean_w2(a, b) == pytest.approx(expected, abs=0.12)


def test_euclidean_w2_1d_gaussians_closed_form():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.5, size=(1200, 1))
    b = rng.normal(-0.5, 1.5, size=(1000, 1))
    expected = math.sqrt(1.5**2 + 1.0**2)
    assert M.euclidean_w2(a, b) == pytest.approx(expected, abs=0.06)
    # the 1-D exact OT must agree with the sorted-matching solver
    assert M.euclidean_w2(a, b) == pytest.approx(M.energy_w2(a[:, 0], b[:, 0]), abs=1e-6)


def test_euclidean_w2_identical_sets_is_zero():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 4, 2))
    assert M.euclidean_w2(x, x) == pytest.approx(0.0, abs=1e-9)
    assert M.euclidean_w2(torch.tensor(x), np.concatenate([x, x])) == pytest.approx(0.0, abs=1e-9)
    shifted = x + 0.5  # every one of the 8 coordinates moves by 0.5
    assert M.euclidean_w2(x, shifted) == pytest.approx(0.5 * math.sqrt(8), abs=1e-9)


# --------------------------------------------------------------------------- kernels
def test_assign_matches_scipy():
    rng = np.random.default_rng(5)
    cost = rng.random((300, 9, 9))
    # make some matrices diagonal-dominant so that the argmin fast paths are exercised
    cost[:100] += 5.0 * (1.0 - np.eye(9))
    cost[100:150] = np.swapaxes(cost[100:150], 1, 2) + 5.0 * (1.0 - np.eye(9))[:, ::-1]
    perm = M._assign(cost.copy())
    for b in range(len(cost)):
        assert sorted(perm[b]) == list(range(9))
        rows, cols = linear_sum_assignment(cost[b])
        assert cost[b, np.arange(9), perm[b]].sum() == pytest.approx(cost[b, rows, cols].sum())


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_polar_is_optimal_orthogonal_factor(dim):
    rng = np.random.default_rng(6)
    c = rng.standard_normal((500, dim, dim))
    c[:5, :, -1] = 0.0  # singular matrices take the SVD fallback (d = 3)
    rot = M._polar(c)
    eye = np.broadcast_to(np.eye(dim), rot.shape)
    assert np.allclose(np.swapaxes(rot, 1, 2) @ rot, eye, atol=1e-10)
    nuclear = np.linalg.svd(c, compute_uv=False).sum(-1)
    assert np.allclose(np.einsum("bij,bij->b", rot, c), nuclear, atol=1e-10)


# --------------------------------------------------------------------------- geometric distance
@pytest.mark.parametrize("n_particles,dim", [(13, 3), (4, 2), (8, 2)])
def test_invariant_distance_is_invariant(n_particles, dim):
    rng = np.random.default_rng(7)
    for _ in range(5):
        x = _cloud(rng, n_particles, dim)
        for reflect in (False, True):
            y = _transform(x, rng, reflect=reflect)
            assert M.aligned_distance(x, y, protocol="invariant") < 1e-5
    x = _cloud(rng, n_particles, dim)
    assert M.aligned_distance(x, x + 4.0, protocol="invariant") < 1e-8  # translation
    perm = rng.permutation(n_particles)
    assert M.aligned_distance(x, x[perm], protocol="invariant") < 1e-8  # permutation


@pytest.mark.parametrize("n_particles,dim", [(13, 3), (4, 2)])
def test_papers_distance_permutation_and_small_rotation(n_particles, dim):
    rng = np.random.default_rng(8)
    x = _cloud(rng, n_particles, dim)
    y = _transform(x, rng, rotate=False)  # permutation + translation
    assert M.aligned_distance(x, y, protocol="papers") < 1e-8
    if dim == 3:
        small = Rotation.from_rotvec(np.deg2rad(5.0) * np.array([0.3, -0.5, 0.8])).as_matrix()
    else:
        t = np.deg2rad(5.0)
        small = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    y = (x @ small)[rng.permutation(n_particles)]
    assert M.aligned_distance(x, y, protocol="papers") < 1e-8


def test_papers_distance_not_invariant_to_large_rotation():
    rng = np.random.default_rng(9)
    x = _cloud(rng, 13, 3)  # LJ-13-like: 13 particles in 3-D
    big = Rotation.from_rotvec(2.5 * np.array([0.6, 0.0, 0.8])).as_matrix()
    y = x @ big
    papers = M.aligned_distance(x, y, protocol="papers")
    invariant = M.aligned_distance(x, y, protocol="invariant")
    assert papers > 0.1
    assert invariant < 1e-5


@pytest.mark.parametrize("n_particles,dim", [(13, 3), (4, 2)])
def test_papers_protocol_matches_reference_implementation(n_particles, dim):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, n_particles, dim)) + 1.0  # not mean-free on purpose
    y = rng.standard_normal((7, n_particles, dim))
    dist = M.aligned_distance_matrix(x, torch.tensor(y), protocol="papers")
    ref = np.array([[_papers_reference(a, b) for b in y] for a in x])
    assert dist.shape == (6, 7)
    assert np.allclose(dist, ref, atol=1e-8)


def test_brute_force_invariant_is_exact_global_minimum():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 4, 2))
    y = rng.standard_normal((5, 4, 2))
    dist = M.aligned_distance_matrix(x, y, protocol="invariant")
    ref = np.array([[_exact_reference(a, b) for b in y] for a in x])
    assert np.allclose(dist, ref, atol=1e-7)
    x3 = rng.standard_normal((3, 5, 3))
    y3 = rng.standard_normal((3, 5, 3))
    dist3 = M.aligned_distance_matrix(x3, y3, protocol="invariant")
    ref3 = np.array([[_exact_reference(a, b) for b in y3] for a in x3])
    assert np.allclose(dist3, ref3, atol=1e-7)


@pytest.mark.parametrize("n_particles,dim", [(13, 3), (4, 2), (9, 2)])
def test_invariant_never_exceeds_papers(n_particles, dim):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((15, n_particles, dim))
    y = rng.standard_normal((12, n_particles, dim))
    papers = M.aligned_distance_matrix(x, y, protocol="papers")
    invariant = M.aligned_distance_matrix(x, y, protocol="invariant")
    assert np.all(invariant <= papers + 1e-12)
    assert invariant.mean() < papers.mean()  # strictly better on average


def test_flattened_input_and_single_pair():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 13, 3))
    y = rng.standard_normal((4, 13, 3))
    full = M.aligned_distance_matrix(x, y, protocol="invariant")
    flat = M.aligned_distance_matrix(x.reshape(5, -1), y.reshape(4, -1), "invariant", dim=3)
    assert np.array_equal(full, flat)
    assert M.aligned_distance(x[1], y[2], protocol="invariant") == pytest.approx(full[1, 2])


def test_parallel_matches_serial():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((150, 4, 2))
    y = rng.standard_normal((150, 4, 2))  # 22500 pairs: above the pool threshold
    serial = M.aligned_distance_matrix(x, y, protocol="papers", n_jobs=1)
    parallel = M.aligned_distance_matrix(x, y, protocol="papers", n_jobs=2)
    assert np.array_equal(serial, parallel)
    x13 = rng.standard_normal((45, 13, 3))  # 2025 pairs: above the search pool threshold
    y13 = rng.standard_normal((45, 13, 3))
    serial = M.aligned_distance_matrix(x13, y13, protocol="invariant", n_jobs=1)
    parallel = M.aligned_distance_matrix(x13, y13, "invariant", n_jobs=2, progress=True)
    assert np.array_equal(serial, parallel)


# --------------------------------------------------------------------------- geometric W2
@pytest.mark.parametrize("n_particles,dim", [(13, 3), (4, 2)])
def test_geometric_w2_of_transformed_copy_is_zero(n_particles, dim):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((25, n_particles, dim))
    y = np.stack([_transform(c, rng, reflect=bool(k % 2)) for k, c in enumerate(x)])
    y = y[rng.permutation(len(y))]  # sample order is irrelevant too
    assert M.geometric_w2(x, y, protocol="invariant") < 1e-5
    assert M.geometric_w2(x, y, protocol="papers") > 0.1


def test_geometric_w2_identical_sets_and_unequal_sizes():
    rng = np.random.default_rng(16)
    x = rng.standard_normal((20, 13, 3))
    assert M.geometric_w2(x, x, protocol="papers") < 1e-6
    assert M.geometric_w2(x, np.concatenate([x, x]), protocol="invariant") < 1e-6


def test_geometric_w2_scaled_copy_dw4():
    # exact answer: aligned distance between x and 2x is |x| for N <= 6 (global optimum),
    # and the OT between {x_k} and {2 x_k} is not larger than the diagonal matching
    rng = np.random.default_rng(17)
    x = rng.standard_normal((10, 4, 2))
    x -= x.mean(axis=1, keepdims=True)
    w2 = M.geometric_w2(x, 2.0 * x, protocol="invariant")
    diag = math.sqrt(np.mean(np.sum(x**2, axis=(1, 2))))
    assert 0.0 < w2 <= diag + 1e-9


# --------------------------------------------------------------------------- distances
def test_interatomic_distances_known_configuration():
    square = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    d = M.interatomic_distances(square)
    assert d.shape == (1, 6)
    assert np.allclose(np.sort(d[0]), [1, 1, 1, 1, math.sqrt(2), math.sqrt(2)])
    flat = M.interatomic_distances(torch.tensor(square.reshape(1, 8)), dim=2)
    assert np.allclose(flat, d)


def test_distance_w2_known_answers():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((50, 13, 3))
    y = np.stack([_transform(c, rng, reflect=True) for c in x])
    assert M.distance_w2(x, y) == pytest.approx(0.0, abs=1e-9)
    # scaling every configuration by 2 doubles every distance: W2 = sqrt(mean(d^2))
    d = M.interatomic_distances(x).reshape(-1)
    assert M.distance_w2(x, 2.0 * x) == pytest.approx(math.sqrt(np.mean(d**2)), rel=1e-9)


# --------------------------------------------------------------------------- path ESS
def test_path_ess_known_answers():
    n = 1000
    assert M.path_ess(np.zeros(n)) == pytest.approx(1.0)
    assert M.path_ess(np.full(n, 1234.5)) == pytest.approx(1.0)  # constant offset cancels
    dominant = np.full(n, -60.0)
    dominant[3] = 0.0
    assert M.path_ess(dominant) == pytest.approx(1.0 / n, rel=1e-6)
    assert M.path_ess(torch.tensor([0.0, 0.0, -np.inf, -np.inf])) == pytest.approx(0.5)
    # (Σw)² / (n Σw²) for w = (1, 2, 3, 4) is 100 / 120
    assert M.path_ess(np.log([1.0, 2.0, 3.0, 4.0]) + 800.0) == pytest.approx(100 / 120)
    value = M.path_ess(np.random.default_rng(19).normal(scale=3.0, size=n))
    assert 1.0 / n <= value <= 1.0


# --------------------------------------------------------------------------- validation
def test_input_validation():
    x = np.zeros((3, 4, 2))
    with pytest.raises(ValueError, match="protocol"):
        M.geometric_w2(x, x, protocol="exact")
    with pytest.raises(ValueError, match="non-finite"):
        M.energy_w2([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="dim"):
        M.aligned_distance_matrix(x.reshape(3, 8), x.reshape(3, 8))
    with pytest.raises(ValueError, match="shapes differ"):
        M.aligned_distance_matrix(x, np.zeros((3, 5, 2)))
    with pytest.raises(ValueError):
        M.path_ess([])
    with pytest.raises(ValueError):
        M.path_ess([-np.inf, -np.inf])


def test_random_orthogonal_starts_cover_both_components():
    mats = M._random_orthogonal(3, 4, seed=0)
    assert np.allclose(np.linalg.det(mats), [1, -1, 1, -1])
    assert np.array_equal(mats, M._random_orthogonal(3, 4, seed=0))
    rng = np.random.default_rng(20)
    x = rng.standard_normal((6, 13, 3))
    y = rng.standard_normal((5, 13, 3))
    # refining every start makes extra random starts a superset of candidates
    base = M.aligned_distance_matrix(x, y, "invariant", n_refine=8)
    more = M.aligned_distance_matrix(x, y, "invariant", n_random_starts=4, n_refine=12)
    assert np.all(more <= base)
    assert np.all(base <= M.aligned_distance_matrix(x, y, "invariant") + 1e-12)
