"""NaN/inf energies or gradients must not poison training: dropped and counted, or an error."""

import pytest
import torch

from adjoint_core import MLP, AdjointSampler, Energy, EuclideanSpace, GeometricSchedule
from adjoint_core.training.trainer import NonFiniteEnergyError


class SometimesNaN(Energy):
    """0.5|x|^2, but NaN where x_0 > 1 and +inf where x_0 < -1.5."""

    def __init__(self):
        super().__init__((2,))

    def _energy(self, x):
        e = 0.5 * x.pow(2).sum(-1)
        e = torch.where(x[:, 0] > 1.0, torch.full_like(e, float("nan")), e)
        return torch.where(x[:, 0] < -1.5, torch.full_like(e, float("inf")), e)


def _sampler(policy):
    torch.manual_seed(0)
    return AdjointSampler(SometimesNaN(), EuclideanSpace(dim=2), GeometricSchedule(0.01, 1.5),
                          MLP(2, hidden=16, n_layers=1),
                          settings=dict(n_epochs=3, samples_per_epoch=200,
                                        grad_steps_per_epoch=5, train_batch_size=64,
                                        n_sde_steps=10, nonfinite=policy))


def test_drop_policy_counts_and_keeps_training_finite():
    s = _sampler("drop")
    rows = s.fit()
    dropped = s.counters["nonfinite_dropped"]
    assert dropped > 0
    assert len(s.buffer) == 3 * 200 - dropped
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["nonfinite_dropped"] == dropped
    for p in s.model.parameters():
        assert torch.isfinite(p).all()
    assert torch.isfinite(s.buffer.tensors()["adjoint"]).all()


def test_raise_policy_names_epoch_and_count():
    s = _sampler("raise")
    with pytest.raises(NonFiniteEnergyError, match=r"epoch 0: \d+ of 200 samples have a non-fin"):
        s.fit()


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="nonfinite"):
        _sampler("ignore")
