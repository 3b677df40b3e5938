"""adjoint_core.testing: each helper passes on good components and names what breaks."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from adjoint_core import (
    MLP,
    Energy,
    EuclideanSpace,
    GaussianEnergy,
    GeometricSchedule,
    LinearSchedule,
    Model,
    PeriodicMLP,
    PeriodicSpace,
    TorsionalSpace,
    VonMisesEnergy,
)
from adjoint_core.problem.energy import external_energy
from adjoint_core.testing import (
    SYMMETRIES,
    assert_energy_gradient,
    assert_energy_invariant,
    assert_equivariant,
    check_energy_contract,
    check_model_contract,
    check_space_contract,
    random_orthogonal,
)

DT = torch.float64


def _gaussian(d=3):
    cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=DT)[:d, :d]
    return GaussianEnergy(torch.linspace(-1.0, 1.0, d), cov)


def _von_mises(d=3, box=2 * math.pi):
    return VonMisesEnergy(torch.linspace(0.5, 2.0, d), torch.linspace(-1.0, 1.0, d),
                          torch.full((d,), box))


def _states(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


class PairEnergy(Energy):
    """Harmonic springs between all pairs: invariant under E(d) and permutations."""

    def __init__(self, n=4, d=3):
        super().__init__((n, d))

    def _energy(self, x):
        diff = x[:, :, None] - x[:, None, :]
        r2 = diff.square().sum(-1)
        return 0.25 * (r2 - 1.0).square().sum((1, 2))


class PairModel(Model):
    """``u_i = Σ_j φ(t, |x_i − x_j|²) (x_i − x_j)``: E(d)- and permutation-equivariant."""

    def __init__(self, hidden=8):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, t, x, context=None):
        diff = x[:, :, None] - x[:, None, :]
        r2 = diff.square().sum(-1, keepdim=True)
        tt = t.to(x.dtype)[:, None, None, None].expand_as(r2)
        return (self.phi(torch.cat([tt, r2], -1)) * diff).sum(2)


def _pair_model(seed=0, cls=PairModel):
    torch.manual_seed(seed)
    return cls().double()


def _mlp(dim, seed=0, cls=MLP, **kw):
    """A float64 MLP with a non-zero last layer (it is zero-initialised)."""
    torch.manual_seed(seed)
    model = cls(dim=dim, hidden=16, n_layers=2, **kw).double()
    with torch.no_grad():
        model.net[-1].weight.normal_(0.0, 0.3)
    return model


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("energy, shape", [
    (_gaussian(), (5, 3)),
    (GaussianEnergy(torch.zeros(8), torch.eye(8) * 0.7, event_shape=(4, 2)), (3, 4, 2)),
    (_von_mises(), (4, 3)),
    (PairEnergy(), (3, 4, 3)),
])
def test_energy_gradient_passes_on_exact_gradients(energy, shape):
    x = _states(*shape, seed=1).float()  # converted to float64 inside
    fd = assert_energy_gradient(energy, x)
    assert fd.shape == shape and fd.dtype == DT
    assert torch.allclose(fd, energy.grad(x.double()), rtol=1e-6, atol=1e-6)
    fd_dir = assert_energy_gradient(energy, x, directions=3)
    assert fd_dir.shape == (shape[0], 3)


class WrongGradient(GaussianEnergy):
    """The gradient of coordinate 1 is 10 % too large."""

    def _energy_and_grad(self, x):
        e, g = super()._energy_and_grad(x)
        g = g.clone()
        g[:, 1] *= 1.1
        return e, g


def test_energy_gradient_names_the_wrong_coordinate():
    base = _gaussian()
    bad = WrongGradient(base.mean, base.cov)
    x = _states(4, 3, seed=2)
    with pytest.raises(AssertionError, match=r"grad does not match central finite differences "
                       r"coordinate-wise.*worst at sample \d, coordinate 1: got .* expected"):
        assert_energy_gradient(bad, x)
    with pytest.raises(AssertionError, match=r"along 2 random direction\(s\).*direction \d"):
        assert_energy_gradient(bad, x, directions=2)
    with pytest.raises(ValueError, match=r"states of shape \(batch, 3\)"):
        assert_energy_gradient(base, torch.zeros(2, 4))


def test_energy_gradient_of_an_external_code():
    """An energy computed outside torch (here numpy) with its own gradient, via external_energy."""

    class NumpyQuartic(Energy):
        def __init__(self):
            super().__init__((2,))

        @staticmethod
        def _compute(x):
            a = x.numpy()
            return (torch.from_numpy((a**4).sum(-1) + a[:, 0] * a[:, 1]),
                    torch.from_numpy(4 * a**3 + a[:, ::-1]))

        def _energy(self, x):
            return external_energy(x, self._compute)

        def _energy_and_grad(self, x):
            return self._compute(x)

    e = NumpyQuartic()
    assert_energy_gradient(e, _states(5, 2, seed=3))
    check_energy_contract(e, EuclideanSpace(dim=2), _states(3, 2, seed=4))


# ---------------------------------------------------------------------------- invariance
def test_energy_invariance_passes_for_pair_energy_and_periodic_von_mises():
    x = _states(4, 4, 3, seed=5)
    worst = assert_energy_invariant(PairEnergy(), x, symmetries=SYMMETRIES[:4], gradient=True,
                                    n_trials=2, rtol=1e-10, atol=1e-10)
    assert set(worst) == {"rotation", "reflection", "translation", "permutation",
                          "rotation gradient", "reflection gradient", "translation gradient",
                          "permutation gradient"}
    assert max(worst.values()) < 1e-9
    # the box comes from energy.box when not given
    worst = assert_energy_invariant(_von_mises(), _states(6, 3, seed=6),
                                    symmetries=("periodic",), gradient=True)
    assert set(worst) == {"periodic", "periodic gradient"}


class FieldEnergy(PairEnergy):
    """Pair springs plus a uniform field along axis 0: invariant under permutations only."""

    def _energy(self, x):
        return super()._energy(x) + x[..., 0].sum(-1)


class TaggedEnergy(PairEnergy):
    """Pair springs plus an extra spring between particles 0 and 1: not permutation-invariant."""

    def _energy(self, x):
        return super()._energy(x) + (x[:, 0] - x[:, 1]).square().sum(-1)


class FixedAxisGradient(PairEnergy):
    """Correct energy, but the gradient has a constant component along axis 0."""

    def _energy_and_grad(self, x):
        e, g = super()._energy_and_grad(x)
        return e, g + torch.tensor([1.0, 0.0, 0.0], dtype=g.dtype) * (x[..., :1] ** 2)


def test_energy_invariance_failures_name_the_symmetry():
    x = _states(4, 4, 3, seed=7)
    with pytest.raises(AssertionError, match=r"FieldEnergy.*not invariant under rotation: "
                       r"E\(g·x\) vs E\(x\).*worst at sample \d"):
        assert_energy_invariant(FieldEnergy(), x, symmetries=("rotation",))
    assert_energy_invariant(FieldEnergy(), x, symmetries=("permutation",))
    with pytest.raises(AssertionError, match=r"not invariant under permutation \[.*\]"):
        assert_energy_invariant(TaggedEnergy(), x, symmetries=("translation", "permutation"))
    with pytest.raises(AssertionError, match="does not transform as a vector under rotation"):
        assert_energy_invariant(FixedAxisGradient(), x, symmetries=("rotation",), gradient=True,
                                rtol=1e-9, atol=1e-9)
    # a box that is not the energy's period
    with pytest.raises(AssertionError, match="not invariant under periodic"):
        assert_energy_invariant(_von_mises(), _states(6, 3, seed=8), symmetries=("periodic",),
                                box=1.0)


def test_energy_invariance_argument_errors():
    with pytest.raises(ValueError, match="acts on particles"):
        assert_energy_invariant(_gaussian(), _states(2, 3), symmetries=("rotation",))
    with pytest.raises(ValueError, match="needs the box"):
        assert_energy_invariant(PairEnergy(), _states(2, 4, 3), symmetries=("periodic",))
    with pytest.raises(ValueError, match="unknown symmetry 'rotations'"):
        assert_energy_invariant(PairEnergy(), _states(2, 4, 3), symmetries=("rotations",))


# ---------------------------------------------------------------------------- equivariance
def test_equivariance_passes_for_an_equivariant_model():
    space = EuclideanSpace(5, 3, mean_free=True)
    worst = assert_equivariant(_pair_model(), space, n_trials=2, rtol=1e-10, atol=1e-10)
    assert set(worst) == {"rotation", "permutation", "translation"}  # defaults of the space
    assert_equivariant(_pair_model(), space, symmetries=("reflection",), rtol=1e-10,
                       atol=1e-10)
    # a periodic network on a torus: the default symmetry is the periodic one
    worst = assert_equivariant(_mlp(3, cls=PeriodicMLP, box=2 * math.pi), TorsionalSpace(3))
    assert set(worst) == {"periodic"}


class BiasedPairModel(PairModel):
    """Scales the output of each particle by its own gain: breaks permutation only."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(5, 1))

    def forward(self, t, x, context=None):
        return (1.0 + self.gain.to(x.dtype)) * super().forward(t, x, context)


class AnchoredPairModel(PairModel):
    """Adds ``0.1 x``: rotation- and permutation-equivariant, not translation-invariant."""

    def forward(self, t, x, context=None):
        return super().forward(t, x, context) + 0.1 * x


def test_equivariance_failures_name_the_symmetry():
    space = EuclideanSpace(5, 3, mean_free=True)
    mlp = _mlp(15)
    with pytest.raises(AssertionError, match=r"MLP is not equivariant under rotation: "
                       r"u\(t, g·x\) vs g·u\(t, x\).*worst at sample \d+, coordinate \(\d, \d\)"):
        assert_equivariant(mlp, space)
    torch.manual_seed(1)
    biased = BiasedPairModel().double()
    assert_equivariant(biased, space, symmetries=("rotation", "translation"), rtol=1e-10,
                       atol=1e-10)
    with pytest.raises(AssertionError, match="not equivariant under permutation"):
        assert_equivariant(biased, space)
    with pytest.raises(AssertionError, match="not equivariant under translation"):
        assert_equivariant(AnchoredPairModel().double(), space)
    # raw coordinates are not periodic
    with pytest.raises(AssertionError, match="not equivariant under periodic"):
        assert_equivariant(_mlp(3), PeriodicSpace(box=2.0, dim=3))
    box = PeriodicSpace(box=[3.0, 4.0], n_particles=5, spatial_dim=2)
    with pytest.raises(AssertionError, match="under translation.*shifted states are not "
                       "wrapped"):
        assert_equivariant(_mlp(10), box, symmetries=("translation",))


def test_equivariance_refuses_vacuous_and_impossible_checks():
    space = EuclideanSpace(4, 2, mean_free=True)
    zero = MLP(dim=8, hidden=8, n_layers=1)  # zero-initialised last layer
    with pytest.raises(AssertionError, match="exactly zero on every input"):
        assert_equivariant(zero, space)
    with pytest.raises(ValueError, match="no particle layout"):
        assert_equivariant(_mlp(3), EuclideanSpace(dim=3))
    with pytest.raises(ValueError, match="'rotation' acts on particles"):
        assert_equivariant(_mlp(3, cls=PeriodicMLP, box=2 * math.pi), TorsionalSpace(3),
                           symmetries=("rotation",))
    with pytest.raises(ValueError, match="needs the box"):
        assert_equivariant(_pair_model(), space, symmetries=("periodic",))
    with pytest.raises(ValueError, match="n_trials must be >= 1, got 0"):
        assert_equivariant(_pair_model(), space, n_trials=0)


def test_equivariance_with_given_inputs_and_a_context():
    class Scaled(PairModel):
        def forward(self, t, x, context=None):
            return context["scale"] * super().forward(t, x)

    torch.manual_seed(0)
    model = Scaled().double()
    x = _states(3, 4, 2, seed=9)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=DT)
    worst = assert_equivariant(model, EuclideanSpace(4, 2), t, x, {"scale": 2.0},
                               symmetries=("rotation", "permutation", "translation"),
                               rtol=1e-10, atol=1e-10)
    assert all(v < 1e-10 for v in worst.values())


def test_random_orthogonal():
    for d in (1, 2, 3):
        for reflection in (False, True):
            q = random_orthogonal(d, reflection=reflection,
                                  generator=torch.Generator().manual_seed(d))
            assert torch.allclose(q @ q.T, torch.eye(d, dtype=DT), atol=1e-12)
            assert float(torch.linalg.det(q)) == pytest.approx(-1.0 if reflection else 1.0)


# ---------------------------------------------------------------------------- energy contract
@pytest.mark.parametrize("energy, space", [
    (_gaussian(), EuclideanSpace(dim=3)),
    (GaussianEnergy(torch.zeros(8), torch.eye(8), event_shape=(4, 2)),
     EuclideanSpace(4, 2, mean_free=True)),
    (_von_mises(box=3.0), PeriodicSpace(box=3.0, dim=3)),
    (_von_mises(), TorsionalSpace(3)),
    (PairEnergy(), EuclideanSpace(4, 3, mean_free=True)),
])
def test_energy_contract_passes_on_core_energies(energy, space):
    check_energy_contract(energy, space)
    check_energy_contract(energy, space, space.project(_states(3, *space.event_shape)))


class BatchDependent(GaussianEnergy):
    """Centres each batch on its own mean: the energy of a state depends on its batch."""

    def _energy(self, x):
        return super()._energy(x - x.mean(0, keepdim=True))


class Uncounted(GaussianEnergy):
    def energy(self, x):
        return self._energy(x)


class InPlace(GaussianEnergy):
    def _energy(self, x):
        e = super()._energy(x)
        if not x.requires_grad:
            x.mul_(1.0)
            x[0, 0] += 1.0
        return e


class Detached(GaussianEnergy):
    def _energy(self, x):
        return super()._energy(x.detach())

    def _energy_and_grad(self, x):
        return super()._energy(x), (x - self.mean.to(x)) @ self.precision.to(x)


class Column(GaussianEnergy):
    def _energy(self, x):
        return super()._energy(x)[:, None]


def test_energy_contract_failures():
    g = _gaussian()
    space = EuclideanSpace(dim=3)

    def make(cls):
        return cls(g.mean, g.cov)

    with pytest.raises(AssertionError, match=r"batch dependence: the energy of state 0 alone "
                       r"differs from row 0 of the batch.*worst at sample 0"):
        check_energy_contract(make(BatchDependent), space)
    with pytest.raises(AssertionError, match=r"energy\(x\) on a batch of 4 states must add 4 to "
                       r"n_evaluations, it added 0"):
        check_energy_contract(make(Uncounted), space)
    with pytest.raises(AssertionError, match="modified its input states in place"):
        check_energy_contract(make(InPlace), space)
    with pytest.raises(AssertionError, match=r"energy\(x\) is not differentiable.*"
                       r"external_energy"):
        check_energy_contract(make(Detached), space)
    with pytest.raises(AssertionError, match=r"returned shape \(4, 1\) for 4 states"):
        check_energy_contract(make(Column), space)
    with pytest.raises(AssertionError, match=r"event_shape \(3,\) differs from the space's"):
        check_energy_contract(g, EuclideanSpace(dim=4))
    with pytest.raises(AssertionError, match="not an adjoint_core.Energy"):
        check_energy_contract(lambda x: x.sum(-1), space)
    with pytest.raises(ValueError, match="at least 2 states"):
        check_energy_contract(g, space, _states(1, 3))


# ---------------------------------------------------------------------------- model contract
@pytest.mark.parametrize("model, space", [
    (MLP(dim=3, hidden=16, n_layers=2), EuclideanSpace(dim=3)),  # zero-initialised is fine
    (_mlp(8), EuclideanSpace(4, 2, mean_free=True)),
    (_mlp(3, cls=PeriodicMLP, box=2 * math.pi), TorsionalSpace(3)),
    (_mlp(10, cls=PeriodicMLP, box=[3.0, 4.0]), PeriodicSpace(box=[3.0, 4.0], n_particles=5,
                                                             spatial_dim=2)),
    (_pair_model(), EuclideanSpace(5, 3, mean_free=True)),
])
def test_model_contract_passes_on_core_models(model, space):
    check_model_contract(model, space)


class BatchNormed(MLP):
    def forward(self, t, x, context=None):
        out = super().forward(t, x, context)
        return out - out.mean(0, keepdim=True)


class RawCoordinates(MLP):
    """An MLP that accepts any space, even a periodic one it cannot represent."""

    def check_space(self, space):
        pass


class Frozen(Model):
    def forward(self, t, x, context=None):
        return torch.sin(x)


class NoGraph(MLP):
    def forward(self, t, x, context=None):
        with torch.no_grad():
            return super().forward(t, x, context)


class Transposed(PairModel):
    def forward(self, t, x, context=None):
        return super().forward(t, x, context).mT


class Opaque:
    """Not a tensor or plain Python value: refused by torch.load(weights_only=True)."""


class ExtraState(MLP):
    def get_extra_state(self):
        return Opaque()

    def set_extra_state(self, state):
        pass


def test_model_contract_failures():
    flat = EuclideanSpace(dim=3)
    with pytest.raises(AssertionError, match=r"check_space refused the space: MLP\(dim=4\) "
                       r"does not fit"):
        check_model_contract(MLP(dim=4, hidden=8, n_layers=1), flat)
    with pytest.raises(AssertionError, match=r"batch dependence: the output for sample 0 alone "
                       r"differs from row 0 of the batch"):
        check_model_contract(_mlp(3, cls=BatchNormed), flat)
    with pytest.raises(AssertionError, match="not equivariant under periodic"):
        check_model_contract(_mlp(3, cls=RawCoordinates), PeriodicSpace(box=2.0, dim=3))
    with pytest.raises(AssertionError, match="no trainable parameters"):
        check_model_contract(Frozen(), flat)
    with pytest.raises(AssertionError, match="does not depend on any parameter"):
        check_model_contract(_mlp(3, cls=NoGraph), flat)
    with pytest.raises(AssertionError, match=r"weights_only=True"):
        check_model_contract(_mlp(3, cls=ExtraState), flat)
    with pytest.raises(AssertionError, match=r"output shape \(4, 4, 2\) differs from the "
                       r"states' \(4, 2, 4\)"):
        check_model_contract(_pair_model(cls=Transposed), EuclideanSpace(2, 4))


# ---------------------------------------------------------------------------- space contract
@pytest.mark.parametrize("space, schedule", [
    (EuclideanSpace(dim=3), GeometricSchedule(0.01, 2.0)),
    (EuclideanSpace(4, 2, mean_free=True), LinearSchedule(1.5)),
    (EuclideanSpace(3, 3), GeometricSchedule(0.001, 1.0)),
    (PeriodicSpace(box=[3.0, 4.0], n_particles=5, spatial_dim=2), GeometricSchedule(0.01, 1.0)),
    (PeriodicSpace(box=2.0, dim=3, n_images=12), GeometricSchedule(0.01, 3.0)),
    (TorsionalSpace(3), GeometricSchedule(math.pi / 100, math.pi)),
])
def test_space_contract_passes_on_core_spaces(space, schedule):
    check_space_contract(space, schedule)


class HalfProject(EuclideanSpace):
    def project(self, x):
        return 0.5 * x


class WideBridge(EuclideanSpace):
    def bridge_sample(self, x1, t, schedule, generator=None):
        lam, std = schedule.bridge_coefficients(t)
        eps = self.noise(x1.shape[0], generator, x1.device, x1.dtype)
        return self.project(lam.view(-1, 1) * x1 + 2.0 * std.view(-1, 1) * eps)


class OffsetBridge(EuclideanSpace):
    def bridge_sample(self, x1, t, schedule, generator=None):
        return super().bridge_sample(x1, t, schedule, generator) + 1.0 - t.view(-1, 1)


class WrongScore(EuclideanSpace):
    def base_score(self, x1, schedule):
        return -2.0 * super().base_score(x1, schedule)


class WrongDim(EuclideanSpace):
    @property
    def dim(self):
        return math.prod(self.event_shape)


class GlobalNoise(EuclideanSpace):
    def noise(self, batch, generator=None, device=None, dtype=torch.float32):
        return torch.randn((batch, *self.event_shape), device=device, dtype=dtype)


def test_space_contract_failures():
    sched = GeometricSchedule(0.01, 2.0)
    with pytest.raises(AssertionError, match=r"project is not idempotent.*worst at sample \d"):
        check_space_contract(HalfProject(dim=3), sched)
    with pytest.raises(AssertionError, match=r"bridge_sample at t=0.25: variance ≠ "
                       r"σ_bridge\(t\)².*5 standard errors"):
        check_space_contract(WideBridge(dim=3), sched)
    with pytest.raises(AssertionError, match="bridge_sample at t=0 is not the origin"):
        check_space_contract(OffsetBridge(dim=3), sched)
    with pytest.raises(AssertionError, match="base_score does not match central finite "
                       "differences of base_log_prob"):
        check_space_contract(WrongScore(dim=3), sched)
    with pytest.raises(AssertionError, match=r"dim = 8 but the tangent projection has rank 6"):
        check_space_contract(WrongDim(4, 2, mean_free=True), sched)
    with pytest.raises(AssertionError, match="noise.. is not reproducible"):
        check_space_contract(GlobalNoise(dim=3), sched)
    # too few images for a wide base process: the wrapped bridge has the wrong moments
    with pytest.raises(AssertionError, match=r"bridge_sample at t=0.25 \(wrapped bridge\)"):
        check_space_contract(PeriodicSpace(box=1.0, dim=2, n_images=0),
                             GeometricSchedule(0.01, 1.0))


def test_testing_is_not_imported_with_the_package():
    code = ("import sys, adjoint_core; assert 'adjoint_core.testing' not in sys.modules; "
            "import adjoint_core.testing; assert 'pytest' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
