"""The esen plugin without fairchem-core: it registers, imports, and fails clearly when used.

These tests do not need fairchem-core; the one that simulates its absence runs in a
subprocess whose import system refuses ``fairchem``.
"""

import os
import subprocess
import sys
import textwrap

import adjoint_core_esen.plugin as plugin

from adjoint_core import Registry

_BLOCKED = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fairchem" or name.startswith("fairchem."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
    for key in [k for k in sys.modules if k == "fairchem" or k.startswith("fairchem.")]:
        del sys.modules[key]

    import adjoint_core_esen
    from adjoint_core import default_registry

    assert not adjoint_core_esen.fairchem_available()
    reg = default_registry()
    assert [f for f in reg.failures if f.plugin == "esen"] == [], reg.failures
    assert "esen" in reg.names("energy") and "egnn_bound" in reg.names("model")
    assert "lj13" in reg.names("energy")  # another plugin still works
    try:
        reg.build("energy", "esen", {"checkpoint": "model.pt", "atomic_numbers": [8, 1, 1]})
    except ImportError as exc:
        msg = str(exc)
        assert "fairchem-core" in msg and "adjoint-core[esen]" in msg, msg
        print("CLEAR-ERROR:", msg)
    else:
        raise AssertionError("building the esen energy without fairchem-core did not raise")
    """
)


def test_esen_registers_without_fairchem_and_errors_clearly():
    env = dict(os.environ, OMP_NUM_THREADS="1",
               ADJOINT_CORE_PLUGINS="esen,particles")
    res = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "CLEAR-ERROR:" in res.stdout


def test_esen_plugin_module_does_not_import_fairchem():
    code = ("import sys, adjoint_core_esen, adjoint_core_esen.plugin; "
            "print(any(m == 'fairchem' or m.startswith('fairchem.') for m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_esen_registers_names():
    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="esen")
    assert reg.failures == []
    assert reg.get("energy", "esen").plugin == "esen"
    assert reg.get("model", "egnn_bound").plugin == "esen"
