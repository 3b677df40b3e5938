"""Write the offline intersphinx inventories of torch, numpy and the Python standard library.

The docs build must not need the network (CI reaches only the package registries), so the
``objects.inv`` files that intersphinx would download are generated here, from the installed
packages, and committed next to this script. Each entry points at the page where the official
documentation of that project describes the object (its URL layout, checked by hand for the
object kinds listed below); only the objects the documentation can refer to are listed
(public classes, functions and methods of the modules in ``*_MODULES``).

Re-run after upgrading torch or numpy (or to add a module)::

    .venv/bin/python docs/_inventories/make_inventories.py
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent

TORCH_MODULES = [
    "torch", "torch.nn", "torch.nn.functional", "torch.optim", "torch.optim.lr_scheduler",
    "torch.linalg", "torch.autograd", "torch.nn.parallel", "torch.utils.data",
    "torch.distributed", "torch.distributions", "torch.func", "torch.random",
]
NUMPY_MODULES = ["numpy", "numpy.linalg", "numpy.random", "numpy.typing"]
PYTHON_MODULES = [
    "abc", "argparse", "collections", "collections.abc", "contextlib", "copy", "dataclasses",
    "enum", "functools", "gzip", "importlib", "importlib.metadata", "inspect", "io", "itertools",
    "json", "logging", "math", "os", "os.path", "pathlib", "random", "re", "shutil", "subprocess",
    "sys", "tempfile", "time", "types", "typing", "warnings",
]

Entry = tuple[str, str, str]  # (name, "py:role", uri relative to the project's base URL)


def _public(module: object, use_dir: bool = False) -> Iterator[tuple[str, object]]:
    names = None if use_dir else getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    for name in names:
        try:
            yield name, getattr(module, name)
        except AttributeError:
            continue


def _role(obj: object) -> str | None:
    if inspect.isclass(obj):
        return "py:exception" if issubclass(obj, BaseException) else "py:class"
    if callable(obj):
        return "py:function"
    if inspect.ismodule(obj):
        return None
    return "py:data"


def _members(cls: type) -> Iterator[tuple[str, str]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, "py:attribute"
        elif callable(value) or inspect.ismethoddescriptor(value):
            yield name, "py:method"


def collect(modules: list[str], uri: Callable[[str, str, str], str],
            use_dir: bool = False) -> list[Entry]:
    """Entries for every public object of ``modules``; ``uri(module, qualname, role)``.

    Classes are also listed under their defining path (``torch.nn.modules.module.Module``),
    which is how type hints and base classes name them; the members of ``typing`` are listed
    as ``py:data`` too (Sphinx refers to ``typing.Any`` and friends with that role).
    """
    out: dict[tuple[str, str], str] = {}
    for modname in modules:
        module = importlib.import_module(modname)
        out[(modname, "py:module")] = uri(modname, "", "py:module")
        for name, obj in _public(module, use_dir):
            role = _role(obj)
            if role is None:
                continue
            full = f"{modname}.{name}"
            target = uri(modname, name, role)
            out.setdefault((full, role), target)
            if modname == "typing":
                out.setdefault((full, "py:data"), target)
            if inspect.isclass(obj):
                real = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
                if real != full and not real.startswith("builtins."):
                    out.setdefault((real, role), target)
                for mname, mrole in _members(obj):
                    out.setdefault((f"{full}.{mname}", mrole),
                                   uri(modname, f"{name}.{mname}", mrole))
    return [(name, role, u) for (name, role), u in sorted(out.items())]


def torch_uri(mod: str, qual: str, role: str) -> str:
    """Page of the PyTorch documentation describing ``mod.qual``."""
    full = f"{mod}.{qual}" if qual else mod
    head = qual.split(".")[0]
    if role == "py:module":
        return {"torch": "torch.html#module-torch"}.get(mod, f"{mod.replace('torch.', '')}.html"
                                                          f"#module-{mod}")
    if mod == "torch" and head == "Tensor":
        return f"generated/{full}.html#{full}" if "." in qual else "tensors.html#torch.Tensor"
    if mod == "torch" and head in ("device", "dtype", "layout", "memory_format"):
        return f"tensor_attributes.html#{full}"
    if mod == "torch" and head == "Size":
        return f"size.html#{full}"
    pages = {"torch.distributed": "distributed", "torch.utils.data": "data",
             "torch.distributions": "distributions", "torch.autograd": "autograd",
             "torch.random": "random"}
    if mod in pages:
        page = pages[mod]
        return f"{page}.html#{full}"
    cls = f"{mod}.{head}"
    return f"generated/{cls}.html#{full}"


def numpy_uri(mod: str, qual: str, role: str) -> str:
    """Page of the NumPy reference describing ``mod.qual``."""
    full = f"{mod}.{qual}" if qual else mod
    head = qual.split(".")[0]
    if role == "py:module":
        return {"numpy": "reference/index.html#module-numpy",
                "numpy.random": "reference/random/index.html#module-numpy.random",
                "numpy.typing": "reference/typing.html#module-numpy.typing"}.get(
            mod, f"reference/routines.{mod.split('.')[-1]}.html#module-{mod}")
    if mod == "numpy.typing":
        return f"reference/typing.html#{full}"
    if mod == "numpy.random":
        if head in ("Generator", "default_rng"):
            return f"reference/random/generator.html#{full}"
        return f"reference/random/generated/{mod}.{head}.html#{full}"
    return f"reference/generated/{mod}.{head}.html#{full}"


_BUILTIN_TYPES = {"bool", "bytes", "bytearray", "complex", "dict", "float", "frozenset", "int",
                  "list", "memoryview", "object", "range", "set", "slice", "str", "tuple", "type"}


def python_uri(mod: str, qual: str, role: str) -> str:
    """Page of the Python library reference describing ``mod.qual``."""
    full = f"{mod}.{qual}" if qual else mod
    if mod == "builtins":
        head = qual.split(".")[0]
        if role == "py:exception":
            return f"library/exceptions.html#{qual}"
        page = "stdtypes" if head in _BUILTIN_TYPES and head not in ("object", "type") \
            else "functions"
        return f"library/{page}.html#{qual}"
    page = mod if mod != "os.path" else "os.path"
    if role == "py:module":
        return f"library/{page}.html#module-{mod}"
    return f"library/{page}.html#{full}"


def builtin_entries() -> list[Entry]:
    """Entries for the builtin types, functions and exceptions (unqualified names)."""
    out = []
    for name in dir(builtins):
        if name.startswith("_"):
            continue
        obj = getattr(builtins, name)
        role = _role(obj)
        if role in ("py:class", "py:function", "py:exception"):
            out.append((name, role, python_uri("builtins", name, role)))
    for name in ("Ellipsis", "NotImplemented", "None", "True", "False"):
        out.append((name, "py:data", f"library/constants.html#{name}"))
    return out


def write(path: Path, project: str, version: str, entries: list[Entry]) -> None:
    """Write a version-2 Sphinx inventory."""
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    lines = []
    for name, role, uri in entries:
        if uri.endswith("#" + name):
            uri = uri[: -len(name)] + "$"
        lines.append(f"{name} {role} 1 {uri} -\n")
    path.write_bytes(header + zlib.compress("".join(lines).encode()))
    print(f"{path.name}: {len(entries)} entries")


def main() -> None:
    """Regenerate the three inventories next to this script."""
    import numpy
    import torch

    write(HERE / "torch.inv", "PyTorch", torch.__version__.split("+")[0],
          collect(TORCH_MODULES, torch_uri))
    write(HERE / "numpy.inv", "NumPy", numpy.__version__, collect(NUMPY_MODULES, numpy_uri))
    import sys

    write(HERE / "python.inv", "Python", f"{sys.version_info.major}.{sys.version_info.minor}",
          builtin_entries() + collect(PYTHON_MODULES, python_uri, use_dir=True))


if __name__ == "__main__":
    main()
