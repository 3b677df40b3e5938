"""TorsionNet: one score per torsion, invariant to rotations/translations, periodic in τ."""

import pytest
import torch
from adjoint_core_torsion import TorsionNet, torsion_net

from adjoint_core import EuclideanSpace, TorsionalSpace
from adjoint_core.testing import assert_equivariant, check_model_contract, random_orthogonal

chem_torsion = pytest.importorskip("adjoint_core_chem.torsion")
molecule = pytest.importorskip("adjoint_core_chem.molecule")

DT = torch.float64


@pytest.fixture(scope="module")
def tors():
    mol = molecule.mol_from_smiles("CC(=O)NC[C@H](O)c1ccc(CCCl)cc1")
    return chem_torsion.MoleculeTorsions.from_molecule(mol, seed=0, relax=False)


def _net(tors, pair: bool, seed: int = 0) -> TorsionNet:
    torch.manual_seed(seed)
    ctx = tors.context()
    net = TorsionNet(ctx["atom_features"].shape[1],
                     ctx["pair_features"].shape[-1] if pair else 0, hidden=32, n_layers=2)
    with torch.no_grad():  # a non-trivial read-out (it is zero-initialised)
        net.readout[-1].weight.normal_(0, 0.3)
        net.readout[-1].bias.normal_(0, 0.3)
    return net.double()


def test_shapes_zero_init_and_registry(tors):
    ctx = tors.context()
    k = tors.n_torsions
    net = torsion_net(TorsionalSpace(k), n_atom_features=ctx["atom_features"].shape[1])
    tau = tors.space().uniform(5, torch.Generator().manual_seed(0))
    out = net(torch.rand(5), tau, ctx)
    assert out.shape == (5, k) and torch.equal(out, torch.zeros(5, k))  # base process
    with pytest.raises(ValueError, match="torsional space"):
        net.check_space(EuclideanSpace(4, 3, mean_free=True))
    with pytest.raises(ValueError, match="context"):
        net(torch.rand(5), tau, None)
    with pytest.raises(ValueError, match=rf"\(batch, {k}\)"):
        net(torch.rand(5), tau[:, :2], ctx)
    from adjoint_core_torsion import plugin

    from adjoint_core.plugins.registry import Registry

    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="torsion")
    built = reg.build("model", "torsion_net", {"n_atom_features": 20, "hidden": 8},
                      space=TorsionalSpace(3))
    assert isinstance(built, TorsionNet)


@pytest.mark.parametrize("pair", [False, True])
def test_invariant_to_rotation_translation_and_periodic(tors, pair):
    net = _net(tors, pair)
    ctx = tors.context()
    b, k = 4, tors.n_torsions
    tau = tors.space().uniform(b, torch.Generator().manual_seed(1), dtype=DT)
    t = torch.rand(b, dtype=DT)
    out = net(t, tau, ctx)
    assert out.abs().max() > 1e-3
    rot = random_orthogonal(3, generator=torch.Generator().manual_seed(2))  # proper rotation
    shift = torch.tensor([3.0, -1.0, 7.5], dtype=DT)
    moved = {**ctx, "to_cartesian": lambda x: tors.positions(x) @ rot.T + shift}
    assert torch.allclose(net(t, tau, moved), out, atol=1e-9)
    # periodic in every torsion: u(t, τ + 2πk) = u(t, τ) (tolerances of torch.allclose)
    assert_equivariant(net, tors.space(), t, tau, ctx, symmetries=("periodic",), n_trials=2,
                       rtol=1e-5, atol=1e-8, seed=3)
    # permuting the torsions (context and state together) permutes the scores
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(4))
    pctx = {**ctx, "torsion_index": ctx["torsion_index"][perm],
            "to_cartesian": lambda x: tors.positions(x[:, torch.argsort(perm)])}
    assert torch.allclose(net(t, tau[:, perm], pctx), out[:, perm], atol=1e-9)


@pytest.mark.parametrize("pair", [False, True])
def test_model_contract(tors, pair):
    check_model_contract(_net(tors, pair), tors.space(), context=tors.context())
    torch.manual_seed(0)
    ctx = tors.context()
    fresh = torsion_net(tors.space(), n_atom_features=ctx["atom_features"].shape[1])
    check_model_contract(fresh, tors.space(), context=ctx)  # zero-initialised read-out


def test_sees_handedness_and_trains(tors):
    """The mirror conformation (all τ negated, geometry reflected) gets a different score,
    and a few Adam steps fit a torsion-dependent target (the network is trainable)."""
    net = _net(tors, True)
    ctx = tors.context()
    tau = tors.space().uniform(8, torch.Generator().manual_seed(5), dtype=DT)
    t = torch.full((8,), 0.5, dtype=DT)
    mirror = {**ctx, "to_cartesian": lambda x: -tors.positions(-x)}
    assert not torch.allclose(net(t, -tau, mirror), net(t, tau, ctx), atol=1e-3)
    target = torch.sin(tau) * 3.0
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (net(t, tau, ctx) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0], losses[::10]
