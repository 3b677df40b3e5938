"""The parts of a sampling problem: energies, state spaces, noise schedules, models, buffers.

Each interface (:class:`~adjoint_core.problem.energy.Energy`,
:class:`~adjoint_core.problem.spaces.StateSpace`,
:class:`~adjoint_core.problem.schedules.NoiseSchedule`,
:class:`~adjoint_core.problem.models.Model`, :class:`~adjoint_core.problem.buffer.Buffer`) lives
in its own module beside the core's concrete implementations; :mod:`~adjoint_core.problem.target`
groups one energy, space, context and buffer into a target of training.
"""
