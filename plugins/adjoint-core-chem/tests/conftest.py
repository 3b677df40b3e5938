"""Shared fixtures of the chemistry plugin's tests."""

from __future__ import annotations

import copy

import pytest

#: A molecular run small enough to train in a second or two: two molecules, a tiny
#: preconditioned network, two warm-up epochs then one Adjoint Sampling epoch.
TINY_RUN = {
    "seed": 0,
    "problem": {"name": "molecules", "smiles": ["CCO", "CCCN"]},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 1.0},
    "model": {"name": "molecular_egnn", "hidden": 8, "n_layers": 2, "time_dim": 4,
              "precondition": True, "data_scale": 0.5},
    "buffer": {"name": "fifo", "capacity": 16},
    "train": {"n_epochs": 3, "warmup_epochs": 2, "targets_per_epoch": 2, "samples_per_epoch": 4,
              "grad_steps_per_epoch": 3, "targets_per_step": 2, "train_batch_size": 4,
              "n_sde_steps": 6, "max_grad_norm": 150.0},
}


@pytest.fixture(scope="session")
def tiny_run_config() -> dict:
    """A fresh copy of :data:`TINY_RUN` (a run config dict)."""
    return copy.deepcopy(TINY_RUN)
