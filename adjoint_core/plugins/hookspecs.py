"""Hook specifications of the ``adjoint_core`` plugin system (pluggy).

A plugin is a module (or object) listed under the ``adjoint_core`` entry-point group whose
functions, decorated with :data:`hookimpl`, return ``{name: factory}`` dictionaries. A factory
is a class or function called with the keyword parameters of a config section; if it has a
parameter named ``space`` the already-built state space is passed in, and likewise ``energy``
(so a model can size itself from the space and an energy can check it).

Example ``pyproject.toml`` of a third-party plugin::

    [project.entry-points.adjoint_core]
    my_energies = "my_package.plugin"

and ``my_package/plugin.py``::

    from adjoint_core import hookimpl

    @hookimpl
    def register_energies():
        return {"my_energy": MyEnergy}
"""

from __future__ import annotations

import argparse

import pluggy

#: Name of the pluggy project and of the entry-point group plugins register under.
PROJECT = "adjoint_core"
#: Decorator marking the hook specifications below.
hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementations (``@hookimpl def register_energies()``).
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "hookspec", "hookimpl", "PROJECT", "KINDS",
    # the hook specifications: what a plugin may implement
    "register_energies", "register_spaces", "register_schedules", "register_models",
    "register_buffers", "register_problems", "register_objectives", "register_references",
    "register_commands",
]

#: Component kinds, the hook that registers each, and the config section naming it.
KINDS = {
    "energy": "register_energies",
    "space": "register_spaces",
    "schedule": "register_schedules",
    "model": "register_models",
    "buffer": "register_buffers",
    "problem": "register_problems",
    "objective": "register_objectives",
    "reference": "register_references",
}


@hookspec
def register_energies() -> dict:
    """Return ``{name: factory}`` of :class:`~adjoint_core.Energy` factories."""


@hookspec
def register_spaces() -> dict:
    """Return ``{name: factory}`` of :class:`~adjoint_core.StateSpace` factories."""


@hookspec
def register_schedules() -> dict:
    """Return ``{name: factory}`` of :class:`~adjoint_core.NoiseSchedule` factories."""


@hookspec
def register_models() -> dict:
    """Return ``{name: factory}`` of :class:`~adjoint_core.Model` factories."""


@hookspec
def register_buffers() -> dict:
    """Return ``{name: factory}`` of :class:`~adjoint_core.Buffer` factories."""


@hookspec
def register_problems() -> dict:
    """Return ``{name: factory}`` of problems (several targets, e.g. one per molecule).

    A factory returns a :class:`~adjoint_core.problem.target.Problem`; it is called with the
    parameters of the config's ``problem:`` section and may declare ``make_buffer`` to receive
    a zero-argument function that builds one replay buffer of the config's ``buffer:`` section
    (one per target).
    """


@hookspec
def register_objectives() -> dict:
    """Return ``{name: factory}`` of training objectives (algorithms).

    A factory returns an :class:`~adjoint_core.training.objectives.base.Objective`; it is
    called with the parameters of the config's ``algorithm:`` section (``{name: ..., **params}``),
    and may declare ``make_model`` to receive a zero-argument function that builds another
    network of the config's ``model:`` section (e.g. ASBS's corrector).
    """


@hookspec
def register_references() -> dict:
    """Return ``{name: source}`` of reference sample sets, for ``eval.reference: NAME``.

    A source is the path of an ``.npy`` file of shape ``(N, prod(event_shape))`` (``str`` or
    :class:`os.PathLike`), or a callable without arguments that returns such an array. Ship
    the files as package data and return their installed paths, e.g.
    ``{"my_system_val": importlib.resources.files("my_package") / "data" / "val.npy"}``;
    :func:`adjoint_core.app.run.load_reference` resolves a registered name before a file path,
    and ``adjoint-core plugins`` lists the names (kind ``reference``).
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``adjoint-core`` command line.

    Call ``subparsers.add_parser(name, help=...)``, add the arguments and set
    ``parser.set_defaults(func=run)`` where ``run(args) -> int`` returns the exit status.
    A plugin whose hook raises (or whose command name clashes with another) is reported by
    ``adjoint-core plugins`` and the other commands still work.

    Args:
        subparsers: The ``argparse`` sub-parser collection of ``adjoint-core``.
    """
