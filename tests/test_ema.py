"""Exponential moving average of the control network (``train.ema_decay``)."""

import torch

from adjoint_core import AdjointSampler, EuclideanSpace, GeometricSchedule
from adjoint_core.problem.gaussian import GaussianEnergy
from adjoint_core.problem.models import MLP


def _sampler(ema_decay, seed=0):
    torch.manual_seed(seed)
    space = EuclideanSpace(dim=2)
    settings = {"samples_per_epoch": 32, "grad_steps_per_epoch": 5, "train_batch_size": 16,
                "n_sde_steps": 10, "lr": 1e-2, "ema_decay": ema_decay}
    return AdjointSampler(GaussianEnergy(torch.zeros(2), torch.eye(2)), space,
                          GeometricSchedule(0.01, 2.0), MLP(2, hidden=16, n_layers=2),
                          settings=settings, seed=seed)


def test_ema_follows_the_closed_form_average():
    s = _sampler(0.9)
    s.collect(32)
    s.train_step()  # the first update starts the average at the current weights
    avg = {k: v.detach().clone() for k, v in s.model.named_parameters()}
    for _ in range(4):
        s.train_step()
        for k, v in s.model.named_parameters():
            avg[k] = 0.9 * avg[k] + 0.1 * v.detach()
    ema = dict(s.ema_model.module.named_parameters())
    for k, v in avg.items():
        torch.testing.assert_close(ema[k], v, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ema[k], dict(s.model.named_parameters())[k])


def test_simulation_uses_the_average_and_training_the_raw_model():
    s = _sampler(0.99)
    s.fit(2)
    assert s.sampling_model is s.ema_model.module
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    x_ema = s.sample(8, generator=gen())
    s.ema_model.module.load_state_dict(s.model.state_dict())
    x_raw = s.sample(8, generator=gen())
    assert not torch.allclose(x_ema, x_raw)  # the average really drove the first simulation
    plain = _sampler(None)
    assert plain.ema_model is None and plain.sampling_model is plain.model
    assert "ema" not in plain.state_dict()


def test_ema_is_saved_and_restored():
    s = _sampler(0.95)
    s.fit(2)
    state = s.state_dict()
    t = _sampler(0.95, seed=1)
    t.load_state_dict(state)
    for a, b in zip(s.ema_model.parameters(), t.ema_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(s.sample(6, generator=gen()), t.sample(6, generator=gen()))
