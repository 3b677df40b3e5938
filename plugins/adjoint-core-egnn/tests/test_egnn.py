"""Tests of the EGNN control model and its plugin registration."""

from __future__ import annotations

import importlib.metadata as im

import adjoint_core_egnn
import pytest
import torch
import torch.nn.functional as F
from adjoint_core_egnn import EGNN, egnn, fully_connected_edges
from adjoint_core_egnn import plugin as egnn_plugin

from adjoint_core.plugins.registry import ConfigError, Registry
from adjoint_core.problem.models import Model
from adjoint_core.problem.spaces import EuclideanSpace
from adjoint_core.testing import assert_equivariant, check_model_contract

DT = torch.float64


def _model(n=5, d=3, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden", 24)
    kw.setdefault("n_layers", 3)
    model = EGNN(n, d, **kw).to(DT)
    # The papers' init makes the coordinate weights tiny (Xavier gain 1e-3), so the untrained
    # output is ~1e-3 and mostly linear. Enlarge them so the tests probe a non-trivial function.
    with torch.no_grad():
        for layer in model.layers:
            layer.coord_out.weight.normal_(0.0, 0.5)
    return model


def _inputs(batch=6, n=5, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g, dtype=DT) * 1.5
    t = torch.rand(batch, generator=g, dtype=DT)
    return t, x


def _sym_atol(out):
    """Absolute tolerance of the symmetry checks: 1e-11 of the output's largest component.

    (The former hand-written checks allowed 1e-10 of the transformed output's largest
    component, which is at most sqrt(d) < 10 times larger.)
    """
    return 1e-11 * out.abs().max().item()


def _close(a, b, tol=1e-10):
    scale = max(a.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item()


def reference_egnn(model: EGNN, t, x, node_types=None):
    """Dense, unfactored transcription of the EGNN equations with the model's parameters."""
    b, n, d = x.shape
    feat = t.to(x.dtype)[:, None, None].expand(b, n, 1)
    if model.time_embedding is not None:
        feat = model.time_embedding(t.to(x.dtype))[:, None, :].expand(b, n, -1)
    if node_types is not None:
        feat = torch.cat([feat, F.one_hot(node_types, model.n_node_types).to(x.dtype)], -1)
    h = model.embed(feat)
    x0 = x
    a = (x0[:, :, None] - x0[:, None, :]).square().sum(-1, keepdim=True)  # (b, i, j, 1)
    off = ~torch.eye(n, dtype=torch.bool)
    for layer in model.layers:
        diff = x[:, :, None] - x[:, None, :]  # x_i - x_j
        r = diff.square().sum(-1, keepdim=True)
        hi = h[:, :, None].expand(b, n, n, -1)
        hj = h[:, None, :].expand(b, n, n, -1)
        m = F.silu(layer.edge_in(torch.cat([hi, hj, r, a], -1)))
        m = F.silu(layer.edge_out(m))
        if layer.att is not None:
            m = m * torch.sigmoid(layer.att(m))
        phi = layer.coord_out(F.silu(layer.coord_hidden(m)))
        if layer.use_tanh:
            phi = torch.tanh(phi) * layer.coords_range
        w = off[None, :, :, None].to(x.dtype)
        x = x + (w * diff / (torch.sqrt(r + 1e-8) + 1.0) * phi).sum(2)
        if layer.node_mlp is not None:
            h = h + layer.node_mlp(torch.cat([h, (w * m).sum(2)], -1))
    out = x - x0
    return out - out.mean(1, keepdim=True)


# ---------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection_equivariance(d, reflect):
    model = _model(5, d)
    t, x = _inputs(n=5, d=d)
    out = model(t, x)
    assert out.shape == x.shape
    assert out.abs().max() > 1e-3
    assert_equivariant(model, EuclideanSpace(5, d, mean_free=True), t, x,
                       symmetries=("reflection" if reflect else "rotation",), n_trials=2,
                       rtol=0.0, atol=_sym_atol(out))


@pytest.mark.parametrize("d", [2, 3])
def test_translation_invariance(d):
    model = _model(4, d)
    t, x = _inputs(n=4, d=d)
    assert_equivariant(model, EuclideanSpace(4, d, mean_free=True), t, x,
                       symmetries=("translation",), translation_scale=5.0, rtol=0.0,
                       atol=_sym_atol(model(t, x)))


@pytest.mark.parametrize("d", [2, 3])
def test_permutation_equivariance(d):
    model = _model(6, d)
    t, x = _inputs(n=6, d=d)
    assert_equivariant(model, EuclideanSpace(6, d, mean_free=True), t, x,
                       symmetries=("permutation",), n_trials=2, rtol=0.0,
                       atol=_sym_atol(model(t, x)))


def test_model_contract():
    space = EuclideanSpace(5, 3, mean_free=True)
    check_model_contract(_model(5, 3), space)
    check_model_contract(_model(5, 3, n_node_types=2, time_dim=4), space,
                         context={"node_types": torch.tensor([0, 1, 1, 0, 1])})
    torch.manual_seed(0)
    check_model_contract(EGNN(5, 3, hidden=16, n_layers=2), space)  # float32, papers' init


@pytest.mark.parametrize("d", [2, 3])
def test_output_is_mean_free_and_matches_reference(d):
    model = _model(5, d)
    t, x = _inputs(n=5, d=d)
    out = model(t, x)
    assert out.mean(dim=1).abs().max().item() < 1e-12
    _close(out, reference_egnn(model, t, x), tol=1e-9)


def test_default_model_float32_matches_reference_and_depends_on_time():
    torch.manual_seed(0)
    model = EGNN(13, 3)  # the papers' size: hidden 128, 5 layers, attention, tanh
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 13, 3, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = model(t, x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.isfinite(out).all()
    with torch.no_grad():
        ref = reference_egnn(model.double(), t.double(), x.double()).float()
    # float32 vs float64: the error is relative to the output scale (~1e-3 at the papers' init)
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()
    model.float()
    assert not torch.allclose(model(torch.full((3,), 0.2), x), model(torch.full((3,), 0.8), x))


def test_fourier_time_embedding_option():
    model = _model(4, 2, time_dim=8)
    t, x = _inputs(n=4, d=2)
    _close(model(t, x), reference_egnn(model, t, x), tol=1e-9)
    assert not torch.allclose(model(t, x), model(1.0 - t, x))


def test_options_without_attention_or_tanh():
    for kw in ({"attention": False}, {"tanh": False}, {"attention": False, "tanh": False}):
        model = _model(4, 3, **kw)
        t, x = _inputs(n=4, d=3)
        _close(model(t, x), reference_egnn(model, t, x), tol=1e-9)
        assert_equivariant(model, EuclideanSpace(4, 3, mean_free=True), t, x,
                           symmetries=("reflection",), rtol=0.0, atol=_sym_atol(model(t, x)))
    assert _model(4, 3, attention=False).layers[0].att is None


def test_tanh_bounds_coordinate_update():
    # With tanh, |Δx_i| <= Σ_layers Σ_j |x_i - x_j|/(|x_i - x_j| + 1) · range/n_layers
    # < (N - 1) · range, so the centred output is below 2 (N - 1) · range.
    n, rng = 5, 2.0
    bounded = _model(n, 3, coords_range=rng)
    free = _model(n, 3, coords_range=rng, tanh=False)
    free.load_state_dict(bounded.state_dict())
    with torch.no_grad():
        for model in (bounded, free):
            for layer in model.layers:
                layer.coord_out.weight.mul_(1e3)
    t, x = _inputs(n=n, d=3)
    assert bounded(t, x).norm(dim=-1).max().item() < 2 * (n - 1) * rng
    assert free(t, x).norm(dim=-1).max().item() > 2 * (n - 1) * rng


# ---------------------------------------------------------------------------- node types
def test_node_types_change_output_and_stay_equivariant():
    n, d = 6, 3
    model = _model(n, d, n_node_types=3)
    t, x = _inputs(n=n, d=d)
    types = torch.tensor([[0, 1, 2, 0, 1, 2]] * x.shape[0])
    other = torch.tensor([[2, 2, 1, 0, 0, 1]] * x.shape[0])
    out = model(t, x, {"node_types": types})
    assert not torch.allclose(out, model(t, x, {"node_types": other}), atol=1e-6)
    _close(out, reference_egnn(model, t, x, types), tol=1e-9)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    _close(model(t, x[:, perm], {"node_types": types[:, perm]}), out[:, perm])
    # permuting the particles but not their types is a different input
    assert not torch.allclose(model(t, x[:, perm], {"node_types": types}), out[:, perm],
                              atol=1e-6)
    # rotations and translations leave the types alone (permutations must move them: above)
    assert_equivariant(model, EuclideanSpace(n, d, mean_free=True), t, x, {"node_types": types},
                       symmetries=("rotation", "translation"), rtol=0.0, atol=_sym_atol(out))
    # one type row is broadcast over the batch
    _close(model(t, x, {"node_types": types[0]}), out, tol=0.0)


def test_node_type_errors():
    model = _model(4, 2, n_node_types=2)
    t, x = _inputs(n=4, d=2)
    with pytest.raises(ValueError, match="node_types"):
        model(t, x)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model(t, x, {"node_types": torch.tensor([0, 1, 2, 0])})
    with pytest.raises(ValueError, match="shape"):
        model(t, x, {"node_types": torch.zeros(x.shape[0], 5, dtype=torch.long)})
    with pytest.raises(ValueError, match="integer"):
        model(t, x, {"node_types": torch.zeros(4)})


# ---------------------------------------------------------------------------- training
def test_gradients_reach_every_parameter():
    model = _model(5, 3, n_node_types=2, time_dim=4)
    t, x = _inputs(n=5, d=3)
    types = torch.randint(0, 2, (x.shape[0], 5), generator=torch.Generator().manual_seed(0))
    loss = (model(t, x, {"node_types": types}) - torch.randn_like(x)).square().sum()
    loss.backward()
    params = dict(model.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_wrt_input_is_finite_for_coincident_particles():
    model = _model(4, 3)
    t, x = _inputs(n=4, d=3)
    x = x.clone()
    x[:, 1] = x[:, 0]
    x.requires_grad_(True)
    model(t, x).square().sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------- graph & speed paths
def test_fully_connected_edges_layout():
    ei = fully_connected_edges(3, 4)
    assert ei.shape == (2, 3 * 4 * 3) and ei.dtype == torch.long
    src, dst = ei
    assert (src != dst).all()
    assert ((src // 4) == (dst // 4)).all()  # no edges between graphs
    assert torch.equal(dst, torch.arange(12).repeat_interleave(3))  # grouped by receiver
    pairs = {(int(a), int(b)) for a, b in zip(src, dst, strict=True)}
    assert len(pairs) == ei.shape[1]


def test_edge_index_is_cached_per_batch_size():
    model = _model(4, 2)
    e1 = model._full_edges(5, torch.device("cpu"))
    assert model._full_edges(5, torch.device("cpu")) is e1
    assert model._full_edges(6, torch.device("cpu")).shape[1] == 6 * 12


def test_chunked_and_scatter_paths_agree():
    t, x = _inputs(batch=11, n=5, d=3)
    base = _model(5, 3, max_chunk_edges=0)
    out = base(t, x)
    for kw in ({"max_chunk_edges": 20}, {"max_chunk_edges": 45}, {"max_chunk_edges": None},
               {"cutoff": 1e6}):
        other = _model(5, 3, **kw)
        other.load_state_dict(base.state_dict())
        _close(other(t, x), out, tol=1e-12)
    assert base._graphs_per_chunk(11, torch.device("cpu")) == 11
    assert _model(5, 3, max_chunk_edges=45)._graphs_per_chunk(11, torch.device("cpu")) == 2
    assert _model(5, 3, max_chunk_edges=3)._graphs_per_chunk(11, torch.device("cpu")) == 1


def test_cutoff_separates_distant_clusters():
    n, d = 6, 3
    model = _model(n, d, cutoff=4.0)
    g = torch.Generator().manual_seed(7)
    a = torch.rand(2, 3, d, generator=g, dtype=DT)  # two small clusters, 100 apart
    b = torch.rand(2, 3, d, generator=g, dtype=DT) + 100.0
    t = torch.tensor([0.3, 0.7], dtype=DT)
    out = model(t, torch.cat([a, b], 1))
    b2 = b.clone()
    b2[:, 0] += 0.3  # move a particle in the far cluster
    out2 = model(t, torch.cat([a, b2], 1))
    # the near cluster's raw update is unchanged; only the common centring shift differs
    delta = (out2 - out)[:, :3]
    assert (delta - delta[:, :1]).abs().max().item() < 1e-12 * out.abs().max().item()
    assert not torch.allclose(out2[:, 3:], out[:, 3:])
    # without a cut-off the far cluster does interact
    full = _model(n, d)
    full.load_state_dict(model.state_dict())
    d_full = (full(t, torch.cat([a, b2], 1)) - full(t, torch.cat([a, b], 1)))[:, :3]
    assert (d_full - d_full[:, :1]).abs().max() > 1e-9
    # a cut-off below every distance leaves no edges: no update at all
    lonely = _model(n, d, cutoff=1e-3)
    out0 = lonely(t, torch.cat([a, b], 1))
    assert torch.equal(out0, torch.zeros_like(out0))


# ---------------------------------------------------------------------------- space & registry
def test_check_space():
    model = EGNN(4, 2, hidden=8, n_layers=1)
    assert isinstance(model, Model)
    model.check_space(EuclideanSpace(4, 2, mean_free=True))
    with pytest.raises(ValueError, match="particle state space"):
        model.check_space(EuclideanSpace(dim=8))
    with pytest.raises(ValueError, match=r"particle shape \(5, 2\)"):
        model.check_space(EuclideanSpace(5, 2, mean_free=True))


def test_bad_shapes_and_parameters():
    model = EGNN(4, 2, hidden=8, n_layers=1)
    with pytest.raises(ValueError, match=r"\(batch, 4, 2\)"):
        model(torch.rand(3), torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match="3 entries"):
        model(torch.rand(3), torch.randn(2, 4, 2))
    for kw in ({"n_particles": 1}, {"hidden": 0}, {"n_layers": 0}, {"coords_range": 0.0},
               {"cutoff": -1.0}, {"time_dim": 3}, {"n_node_types": -1},
               {"max_chunk_edges": -5}):
        args = {"n_particles": 4, "spatial_dim": 2} | kw
        with pytest.raises(ValueError):
            EGNN(**args)


def test_scalar_time_is_broadcast():
    model = _model(4, 2)
    _, x = _inputs(n=4, d=2)
    _close(model(torch.tensor(0.4, dtype=DT), x), model(torch.full((x.shape[0],), 0.4,
                                                                    dtype=DT), x), tol=0.0)


def test_factory_reads_particle_shape():
    model = egnn(EuclideanSpace(13, 3, mean_free=True), hidden=16, n_layers=2)
    assert (model.n_particles, model.spatial_dim, model.hidden, model.n_layers) == (13, 3, 16, 2)
    with pytest.raises(ValueError, match="particle state space"):
        egnn(EuclideanSpace(dim=8))


def test_registry_builds_egnn_by_name():
    reg = Registry(load_entry_points=False)
    reg.add_plugin(egnn_plugin, name="egnn")
    assert not reg.failures
    assert "egnn" in reg.names("model")
    space = EuclideanSpace(4, 2, mean_free=True)
    model = reg.build("model", "egnn", {"hidden": 32}, space=space)
    assert isinstance(model, EGNN)
    assert (model.n_particles, model.spatial_dim, model.hidden) == (4, 2, 32)
    out = model(torch.rand(3), space.noise(3))
    assert out.shape == (3, 4, 2)
    built = reg.build("model", "egnn", {"n_layers": 2, "cutoff": 3.0, "n_node_types": 2},
                      space=space)
    assert built.cutoff == 3.0 and len(built.layers) == 2
    with pytest.raises(ConfigError, match="particle state space"):
        reg.build("model", "egnn", {"hidden": 32}, space=EuclideanSpace(dim=8))
    with pytest.raises(ConfigError, match="model.hiden"):
        reg.build("model", "egnn", {"hiden": 32}, space=space)
    with pytest.raises(ConfigError, match="model.hidden"):
        reg.build("model", "egnn", {"hidden": "wide"}, space=space)


def test_entry_point_declared():
    try:
        dist = im.distribution("adjoint-core-egnn")
    except im.PackageNotFoundError:
        pytest.skip("adjoint-core-egnn is not installed")
    eps = [ep for ep in dist.entry_points if ep.group == "adjoint_core"]
    assert [(ep.name, ep.value) for ep in eps] == [("egnn", "adjoint_core_egnn.plugin")]
    assert eps[0].load() is egnn_plugin
    assert dist.version == adjoint_core_egnn.__version__
