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
    "register_buffers", "register_metrics", "register_commands",
]

#: Component kinds, the hook that registers each, and the config section naming it.
KINDS = {
    "energy": "register_energies",
    "space": "register_spaces",
    "schedule": "register_schedules",
    "model": "register_models",
    "buffer": "register_buffers",
    "metric": "register_metrics",
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
def register_metrics() -> dict:
    """Return ``{name: callable}`` of sample-quality metrics ``f(samples, reference, **kw)``."""


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
