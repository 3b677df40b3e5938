"""Training objectives: what each algorithm supplies to the common trainer.

:class:`~adjoint_core.training.objectives.base.Objective` is the interface;
the core's objectives are Adjoint Sampling (``"adjoint"``), the Adjoint Schrödinger Bridge
Sampler (``"asbs"``), iDEM (``"idem"``) and the bridge-matching warm-up. They register through
the same ``register_objectives`` hook as a third party's (:mod:`adjoint_core.plugins.builtins`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["builtin_objectives"]


def builtin_objectives() -> dict[str, Callable]:
    """``{name: class}`` of the core's objectives that need no constructor arguments."""
    from adjoint_core.training.objectives.adjoint_sampling import AdjointSampling
    from adjoint_core.training.objectives.idem import IDEM

    return {"adjoint": AdjointSampling, "idem": IDEM}
