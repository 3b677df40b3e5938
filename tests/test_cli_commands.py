"""Plugins add sub-commands to ``adjoint-core`` through the ``register_commands`` hook."""

import argparse

import pytest

from adjoint_core import hookimpl
from adjoint_core.app.cli import main
from adjoint_core.plugins import registry as registry_mod


class _HelloPlugin:
    @hookimpl
    def register_commands(self, subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 3)


class _BrokenPlugin:
    @hookimpl
    def register_commands(self, subparsers: argparse._SubParsersAction) -> None:
        raise RuntimeError("cannot add my command")


@pytest.fixture
def registry(monkeypatch):
    reg = registry_mod.Registry(load_entry_points=True)
    monkeypatch.setattr(registry_mod, "_DEFAULT", reg, raising=False)
    monkeypatch.setattr("adjoint_core.app.cli.default_registry", lambda refresh=False: reg)
    return reg


def test_plugin_command_runs(registry, capsys):
    registry.add_plugin(_HelloPlugin(), name="hello_plugin")
    assert main(["hello", "--name", "chemists"]) == 3
    assert "hello chemists" in capsys.readouterr().out


def test_broken_command_hook_is_reported_and_cli_still_works(registry, capsys):
    registry.add_plugin(_BrokenPlugin(), name="broken_cmd", distribution="broken-dist")
    with pytest.warns(RuntimeWarning, match="broken_cmd"):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "broken_cmd" in out and "cannot add my command" in out and "broken-dist" in out
