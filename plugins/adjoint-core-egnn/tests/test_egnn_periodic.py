"""EGNN with minimum-image edges on a periodic box."""

from __future__ import annotations

import pytest
import torch
from adjoint_core_egnn import EGNN, egnn

from adjoint_core.plugins.registry import Registry
from adjoint_core.problem.spaces import EuclideanSpace, PeriodicSpace
from adjoint_core.testing import assert_equivariant, check_model_contract

DT = torch.float64
BOX = [3.0, 4.0]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden", 24)
    kw.setdefault("n_layers", 3)
    kw.setdefault("box", BOX)
    model = EGNN(5, 2, **kw).to(DT)
    with torch.no_grad():  # non-trivial coordinate updates (see test_egnn.py)
        for layer in model.layers:
            layer.coord_out.weight.normal_(0.0, 0.5)
    return model


def _inputs(batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 5, 2, generator=g, dtype=DT) - 0.5) * torch.tensor(BOX, dtype=DT)
    return torch.rand(batch, generator=g, dtype=DT), x


@pytest.mark.parametrize("cutoff", [None, 1.4])
def test_invariant_to_box_shifts_and_translations(cutoff):
    model = _model(cutoff=cutoff)
    t, x = _inputs()
    out = model(t, x)
    assert out.abs().max() > 1e-3  # non-trivial output
    # images x + kL, unwrapped translations, permutations (tolerances of torch.allclose)
    space = PeriodicSpace(box=BOX, n_particles=5, spatial_dim=2)
    assert_equivariant(model, space, t, x, symmetries=("periodic", "translation", "permutation"),
                       n_trials=2, rtol=1e-5, atol=1e-10)
    check_model_contract(model, space)


def test_minimum_image_edges_differ_from_plain_ones():
    periodic = _model()
    plain = _model(box=None)
    t, x = _inputs()
    x = x.clone()
    x[:, 0] = torch.tensor([1.45, 1.9], dtype=DT)  # near a corner: its nearest image wraps
    x[:, 1] = torch.tensor([-1.45, -1.9], dtype=DT)
    assert not torch.allclose(periodic(t, x), plain(t, x), atol=1e-6)
    # with a huge box the minimum image is the plain difference
    big = _model(box=[1e6, 1e6])
    assert torch.allclose(big(t, x), plain(t, x), atol=1e-8)


def test_check_space_and_factory_read_the_box():
    space = PeriodicSpace(box=BOX, n_particles=5, spatial_dim=2)
    model = egnn(space, hidden=8, n_layers=2)
    assert model.box.tolist() == BOX
    model.check_space(space)
    with pytest.raises(ValueError, match="box"):
        model.check_space(PeriodicSpace(box=[3.0, 4.5], n_particles=5, spatial_dim=2))
    with pytest.raises(ValueError, match="non-periodic"):
        model.check_space(EuclideanSpace(5, 2, mean_free=True))
    with pytest.raises(ValueError, match="box"):
        EGNN(5, 2, hidden=8, n_layers=2).check_space(space)
    with pytest.raises(ValueError, match="box"):
        egnn(space, hidden=8, n_layers=2, box=[3.0, 5.0])
    with pytest.raises(ValueError, match="box"):
        EGNN(5, 2, box=[1.0, 2.0, 3.0])
    # the box is not part of the state dict: checkpoints of plain EGNNs stay compatible
    assert "box" not in model.state_dict()


def test_registry_builds_periodic_egnn():
    import adjoint_core_egnn.plugin as plugin

    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="egnn")
    space = PeriodicSpace(box=2.5, n_particles=4, spatial_dim=3)
    model = reg.build("model", "egnn", {"hidden": 8, "n_layers": 2}, space=space)
    assert model.box.tolist() == [2.5, 2.5, 2.5]
    t = torch.rand(3)
    x = space.project(torch.randn(3, 4, 3) * 3)
    assert model(t, x).shape == (3, 4, 3)


def test_sampler_loop_on_a_periodic_box():
    """One short epoch: states stay in the box, adjoints use the wrapped-normal base score."""
    from adjoint_core_particles import lj_periodic

    from adjoint_core import AdjointSampler, GeometricSchedule, ReplayBuffer
    from adjoint_core.training.adjoint import clip_per_particle

    torch.manual_seed(0)
    space = PeriodicSpace(box=4.0, n_particles=6, spatial_dim=2)
    energy = lj_periodic(cutoff=1.9, space=space)
    sched = GeometricSchedule(0.001, 3.0)
    sampler = AdjointSampler(energy, space, sched, egnn(space, hidden=16, n_layers=2),
                             ReplayBuffer(256),
                             settings=dict(n_epochs=1, samples_per_epoch=32, n_sde_steps=10,
                                           grad_steps_per_epoch=3, train_batch_size=16,
                                           max_grad_norm=10.0), seed=0)
    sampler.fit()
    x = sampler.sample(64)
    assert (x.abs() <= 2.0).all()
    rows = sampler.buffer.sample(8, torch.Generator().manual_seed(0))
    x1 = rows["x1"]
    want = clip_per_particle(energy.grad(x1) / energy.temperature, 10.0, (6, 2)) \
        + space.base_score(x1, sched)
    assert torch.allclose(rows["adjoint"], want, atol=1e-4)
    assert sampler.counters["energy_evals"] == 32 and sampler.counters["grad_steps"] == 3
