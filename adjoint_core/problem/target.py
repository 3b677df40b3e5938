"""A target of training: one energy on one state space, its model context and its replay buffer.

A *problem* is a sequence of targets. Sampling one Boltzmann density is the one-target case;
amortized conformer generation trains one network over many molecules, each a target with its
own energy, space (its atom count), model context (its graph) and buffer. The trainer
(:class:`~adjoint_core.training.trainer.Trainer`) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from adjoint_core.problem.buffer import Buffer
from adjoint_core.problem.energy import Energy
from adjoint_core.problem.spaces import StateSpace

__all__ = ["Target", "Problem"]


@dataclass(eq=False)
class Target:
    """One energy, its state space, the model's context for it and its replay buffer.

    Attributes:
        energy: Target energy ``E``; its ``event_shape`` equals the space's.
        space: State space of the samples.
        buffer: Replay buffer of this target's training rows.
        context: Passed to the model as a third argument, ``model(t, x, context)``, when not
            ``None`` (e.g. a molecular graph); ``None``: the model is called as ``model(t, x)``.
        name: Label in logs and errors (e.g. a molecule's name).
        data: Optional sampler of reference states ``data(n, seed) -> (n, *event_shape)``
            (e.g. RDKit ETKDG conformers), used by objectives that learn from data, such as
            the bridge-matching warm-up; ``None`` when the target has none.
        info: Free-form metadata (e.g. the SMILES); not used by training.
    """

    energy: Energy
    space: StateSpace
    buffer: Buffer
    context: Any = None
    name: str = "target"
    data: Callable[[int, int], torch.Tensor] | None = None
    info: dict | None = None

    def __post_init__(self) -> None:
        if tuple(self.energy.event_shape) != tuple(self.space.event_shape):
            raise ValueError(
                f"target {self.name!r}: energy {self.energy!r} has event shape "
                f"{tuple(self.energy.event_shape)} but the state space {self.space!r} has "
                f"{tuple(self.space.event_shape)} (wrong particle count or dimension?)"
            )

    def call(self, model: torch.nn.Module, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``model`` at times ``t`` ``(b,)`` and states ``x`` ``(b, *event_shape)``."""
        if self.context is None:
            return model(t, x)
        return model(t, x, self.context)

    def control(self, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor],
                                                          torch.Tensor]:
        """The control ``u(t, x)`` of this target under ``model`` (for the SDE simulation)."""
        return lambda t, x: self.call(model, t, x)


@dataclass(eq=False)
class Problem:
    """The targets of a training run, and how to make a new target of the same kind.

    Built by a ``problem`` factory of a plugin (``register_problems`` hook) from a config's
    ``problem:`` section, e.g. one target per molecule of a SMILES file.

    Attributes:
        targets: The training targets (at least one).
        make_target: Build a target for a new input with the problem's settings (e.g. a
            molecule from a SMILES string, to sample it with a trained model); ``None`` when
            the problem cannot (its ``targets`` are all there is).
        info: Free-form metadata recorded with the run (e.g. molecules that were skipped).
    """

    targets: list[Target]
    make_target: Callable[..., Target] | None = None
    info: dict | None = None
