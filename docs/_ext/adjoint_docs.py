"""Sphinx extension of the adjoint-core docs: API pages, docstring coverage, CLI help, benchmarks.

* :func:`discover_packages` finds the packages to document: the core (``adjoint_core``) and
  every plugin under ``plugins/*/src/*/``, so a new plugin directory appears in the API
  reference without editing the docs.
* :func:`write_api_pages` writes one page per package and module into ``docs/api/_generated``
  (rebuilt on every build, not committed). Objects re-exported by a package (``__all__`` of its
  ``__init__``) are documented once, under the package's name; autodoc records the defining
  module's name as the canonical alias, so references to either name resolve.
* :func:`undocumented` lists public objects without documentation (module docstrings, objects
  of ``__all__`` — classes, functions and data with a ``#:`` comment —, and the public methods
  and properties of public classes). The build emits one warning per object, so with ``-W``
  an undocumented public object fails the build; ``tests/test_docs.py`` checks the same list.
* The ``cli-help`` directive inserts the ``--help`` text of ``adjoint-core`` and of every
  sub-command (including those added by plugins), so the CLI reference cannot drift.
* The benchmark tables are regenerated from ``bench/results/*.json`` by ``bench/table.py`` on
  every build into ``docs/_generated/bench_synthetic.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API_OUT = DOCS / "api" / "_generated"
GEN_OUT = DOCS / "_generated"

logger = logging.getLogger(__name__)

#: Heavy optional third-party modules that plugins import; those not installed are mocked
#: (``autodoc_mock_imports``) so the docs build without them.
OPTIONAL_MODULES = ["fairchem", "tblite", "rdkit", "torch_geometric", "torch_scatter",
                    "torch_cluster", "e3nn", "ase"]


def missing_optional_modules() -> list[str]:
    """The names of :data:`OPTIONAL_MODULES` that cannot be imported here."""
    import importlib.util

    out = []
    for name in OPTIONAL_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


# ---------------------------------------------------------------------------- discovery
def discover_packages(root: Path = ROOT) -> list[tuple[str, str]]:
    """``(distribution, package)`` of the core and of every plugin under ``plugins/``.

    Args:
        root: Repository root.

    Returns:
        The core first, then the plugins sorted by directory name.
    """
    found = [("adjoint-core", "adjoint_core")]
    for init in sorted(root.glob("plugins/*/src/*/__init__.py")):
        found.append((init.parents[2].name, init.parent.name))
    return found


def iter_modules(package: str) -> Iterator[ModuleType]:
    """Import ``package`` and yield it and all of its public submodules (depth first)."""
    pkg = importlib.import_module(package)
    yield pkg
    if not hasattr(pkg, "__path__"):
        return
    for info in sorted(pkgutil.walk_packages(pkg.__path__, prefix=package + "."),
                       key=lambda i: i.name):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        yield importlib.import_module(info.name)


def public_names(module: ModuleType) -> list[str]:
    """``__all__`` of ``module``, or its public classes and functions defined there."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if not (n.startswith("__") and n.endswith("__"))]
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                getattr(obj, "__module__", None) == module.__name__:
            out.append(name)
    return out


def _is_hookimpl(obj: object) -> bool:
    """A pluggy hook implementation of ours (documented by its hook specification)."""
    return hasattr(obj, "adjoint_core_impl")


def _reexported(package: ModuleType) -> set[int]:
    """``id`` of the classes and functions a package re-exports in its ``__all__``."""
    ids = set()
    for name in getattr(package, "__all__", []):
        obj = getattr(package, name, None)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            ids.add(id(obj))
    return ids


# ---------------------------------------------------------------------------- docstring check
def _attr_docs(module: ModuleType) -> set[str]:
    try:
        analyzer = ModuleAnalyzer.for_module(module.__name__)
        return {name for (scope, name) in analyzer.find_attr_docs() if scope == ""}
    except Exception:
        return set()


def undocumented(packages: list[str]) -> list[str]:
    """Dotted names of public objects without documentation in ``packages``.

    Checked: each module's docstring; each name of ``__all__`` (or, without ``__all__``, each
    public class and function defined in the module): a docstring for classes and functions,
    a ``#:`` comment or docstring for data; and each public method and property defined in a
    public class (a docstring inherited from a base class counts, as autodoc shows it).
    Hook implementations (``@hookimpl``) are exempt: their hook specification documents them.

    Args:
        packages: Importable package names.

    Returns:
        Sorted dotted names, empty when everything is documented.
    """
    missing: set[str] = set()
    for package in packages:
        for module in iter_modules(package):
            if not (module.__doc__ or "").strip():
                missing.add(f"{module.__name__} (module docstring)")
            data_docs = None
            for name in public_names(module):
                obj = getattr(module, name, None)
                full = f"{module.__name__}.{name}"
                if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    if _is_hookimpl(obj):
                        continue
                    home = getattr(obj, "__module__", None) or ""
                    if home.split(".")[0] == package.split(".")[0]:
                        full = f"{home}.{obj.__qualname__}"  # once, where it is defined
                    if not (inspect.getdoc(obj) or "").strip():
                        missing.add(full)
                    if inspect.isclass(obj):
                        missing.update(_undocumented_members(obj, full))
                elif inspect.ismodule(obj):
                    continue
                else:
                    if data_docs is None:
                        data_docs = _attr_docs(module)
                    home = _defining_module(module, name)
                    if name not in data_docs and name not in _attr_docs(home):
                        missing.add(full)
    return sorted(missing)


def _defining_module(module: ModuleType, name: str) -> ModuleType:
    """The submodule that assigns a data object (its ``#:`` comment lives there)."""
    if not hasattr(module, "__path__"):
        return module
    for sub in iter_modules(module.__name__):
        if sub is not module and vars(sub).get(name, _MISSING) is getattr(module, name) and \
                _assigns(sub, name):
            return sub
    return module


_MISSING = object()


def _assigns(module: ModuleType, name: str) -> bool:
    """Whether ``module``'s source assigns ``name`` at top level (rather than importing it)."""
    import ast

    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def _undocumented_members(cls: type, full: str) -> Iterator[str]:
    home = sys.modules.get(cls.__module__)
    home_file = getattr(home, "__file__", None)
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        code = getattr(value, "__code__", None)
        if code is not None and home_file and code.co_filename != home_file:
            # Code generated into the class by a third-party base (e.g. PyG's MessagePassing
            # writes ``collect`` from a template once an instance exists): not our API.
            continue
        if isinstance(value, property) or inspect.isfunction(value):
            doc = inspect.getdoc(getattr(cls, name, value)) if not isinstance(value, property) \
                else value.__doc__
            if not doc:
                for base in cls.__mro__[1:]:
                    inherited = base.__dict__.get(name)
                    if inherited is not None and getattr(inherited, "__doc__", None):
                        doc = inherited.__doc__
                        break
            if not (doc or "").strip():
                yield f"{full}.{name}"


# ---------------------------------------------------------------------------- API pages
def _title(text: str) -> str:
    return f"{text}\n{'=' * len(text)}\n"


def write_api_pages(packages: list[tuple[str, str]], out: Path = API_OUT) -> list[str]:
    """Write the API reference pages; return the package page names for the index toctree.

    Every object is documented once, in the page of the module that defines it; the package
    page lists what the package re-exports (``__all__``) with links to those entries, and
    references to the re-exported names resolve to them (see :func:`resolve_alias`).

    Args:
        packages: ``(distribution, package)`` pairs from :func:`discover_packages`.
        out: Output directory (stale ``.rst`` pages are removed).
    """
    out.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    index = []
    for dist, package in packages:
        modules = list(iter_modules(package))
        pkg = modules[0]
        subs = [m.__name__ for m in modules[1:]]
        own, exported = [], []
        for name in public_names(pkg):
            obj = getattr(pkg, name, None)
            home = _home_module(pkg, name, obj)
            if home is None or home == package:
                own.append(name)
            else:
                exported.append((name, f"{home}.{name}", _role_of(obj)))
        members = f"   :members: {', '.join(own)}\n   :show-inheritance:\n" if own else ""
        body = [_title(f"{package} ({dist})"), f".. automodule:: {package}\n{members}"]
        if exported:
            rows = "".join(f"   * - ``{package}.{name}``\n     - :{role}:`{target}`\n"
                           for name, target, role in exported)
            body.append(".. rubric:: Exported names\n\n.. list-table::\n   :header-rows: 1\n\n"
                        "   * - name\n     - documented as\n" + rows)
        if subs:
            body.append(".. rubric:: Modules\n\n.. toctree::\n   :maxdepth: 1\n\n"
                        + "".join(f"   {s}\n" for s in subs))
        pages[package] = "\n".join(body)
        index.append(package)
        for module in modules[1:]:
            pages[module.__name__] = "\n".join([
                _title(module.__name__),
                f".. automodule:: {module.__name__}\n   :members:\n   :show-inheritance:\n"])
    for stale in out.glob("*.rst"):
        if stale.stem not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = out / f"{name}.rst"
        if not path.exists() or path.read_text() != text:  # keep mtimes for incremental builds
            path.write_text(text)
    return index


def _role_of(obj: object) -> str:
    if inspect.isclass(obj):
        return "py:exc" if issubclass(obj, BaseException) else "py:class"
    if inspect.isfunction(obj):
        return "py:func"
    return "py:data"


def _home_module(package: ModuleType, name: str, obj: object) -> str | None:
    """Name of the module whose page documents ``package.name``."""
    if inspect.isclass(obj) or inspect.isfunction(obj):
        home = getattr(obj, "__module__", None)
        if home and home.startswith(package.__name__ + ".") and \
                getattr(obj, "__qualname__", "") == name:
            return home
        return package.__name__
    return _defining_module(package, name).__name__


def alias_map(packages: list[str]) -> dict[str, str]:
    """``{exported name: documented name}`` for every re-export of ``packages``."""
    out = {}
    for package in packages:
        pkg = importlib.import_module(package)
        for name in public_names(pkg):
            home = _home_module(pkg, name, getattr(pkg, name, None))
            if home and home != package:
                out[f"{package}.{name}"] = f"{home}.{name}"
    return out


# ---------------------------------------------------------------------------- CLI help
def cli_help_texts() -> list[tuple[str, str]]:
    """``(command, --help text)`` of ``adjoint-core`` and each of its sub-commands."""
    import os

    from adjoint_core.app import cli

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"  # argparse wraps to the terminal: fix the width for the docs
    try:
        parser = cli.build_parser()
        parser.prog = "adjoint-core"
        out = [("adjoint-core", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    sub.prog = f"adjoint-core {name}"
                    out.append((f"adjoint-core {name}", sub.format_help()))
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out


class CliHelp(SphinxDirective):
    """``.. cli-help::`` — one section per command with its ``--help`` text."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build the sections."""
        result: list[nodes.Node] = []
        with contextlib.redirect_stderr(io.StringIO()):
            texts = cli_help_texts()
        for command, text in texts:
            section = nodes.section(ids=[nodes.make_id(command)])
            section += nodes.title(text=command)
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            section += block
            self.state.document.note_implicit_target(section)
            result.append(section)
        return result


# ---------------------------------------------------------------------------- benchmarks
def write_bench_tables(out: Path = GEN_OUT) -> None:
    """Regenerate the synthetic-benchmark table from ``bench/results`` via ``bench/table.py``."""
    out.mkdir(parents=True, exist_ok=True)
    script = ROOT / "bench" / "table.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        logger.warning("bench/table.py failed (exit %d), the benchmark table is empty:\n%s",
                       proc.returncode, proc.stderr[-2000:], type="adjoint_docs",
                       subtype="bench")
    text = proc.stdout
    path = out / "bench_synthetic.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ---------------------------------------------------------------------------- references
class _State:
    packages: tuple[str, ...] = ()
    aliases: dict[str, str] = {}  # noqa: RUF012
    extension_points: set[int] = set()  # noqa: RUF012


def _extension_points(packages: list[str]) -> set[int]:
    """``id`` of the private methods that their class docstring names (``:meth:`_name```).

    Those are the methods a subclass implements (e.g. ``Energy._energy``); they are
    documented although their names start with an underscore.
    """
    out = set()
    for package in packages:
        for module in iter_modules(package):
            for name in public_names(module):
                cls = getattr(module, name, None)
                if not inspect.isclass(cls):
                    continue
                doc = cls.__doc__ or ""
                for mname, value in vars(cls).items():
                    if mname.startswith("_") and not mname.startswith("__") and \
                            f":meth:`{mname}`" in doc and inspect.isfunction(value) and \
                            value.__doc__:
                        out.add(id(value))
    return out


def _skip_member(app: Sphinx, what: str, name: str, obj: object, skip: bool,
                 options: object) -> bool | None:
    if id(obj) in _State.extension_points:
        return False
    return None


def _object(name: str) -> object | None:
    """Import the object at a dotted path, or ``None``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def resolve_alias(name: str, aliases: dict[str, str]) -> str:
    """Rewrite an exported name (or a member of one) to its documented name."""
    for exported, documented in aliases.items():
        if name == exported or name.startswith(exported + "."):
            return documented + name[len(exported):]
    return name


def _missing_reference(app: Sphinx, env: object, node: nodes.Element,
                       contnode: nodes.Element) -> nodes.Node | None:
    """Resolve references to re-exported names, instance attributes and private objects.

    A reference still unresolved after this handler fails the build (``nitpicky`` + ``-W``).
    """
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    objects = env.get_domain("py").objects  # type: ignore[attr-defined]
    target = node["reftarget"].lstrip(".~")
    mod, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if mod:
        candidates.append(f"{mod}.{target}")
        if cls:
            candidates.append(f"{mod}.{cls}.{target}")
    ours = tuple(p + "." for p in _State.packages)

    def link(name: str) -> nodes.Node:
        entry = objects[name]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id,
                            contnode, name)

    for cand in candidates:
        full = resolve_alias(cand, _State.aliases)
        if full in objects:
            return link(full)
    if mod and "." not in target:  # a name the current module imported (``Path``, ``Tensor``)
        obj = getattr(sys.modules.get(mod), target, None)
        real = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if real in objects:
                return link(real)
            from sphinx.ext import intersphinx

            retry = node.deepcopy()
            retry["reftarget"] = real
            found = intersphinx.missing_reference(app, env, retry, contnode)
            if found is not None:
                return found
    short = [n for n in objects if n.startswith(ours) and n.endswith("." + target)]
    if len(short) == 1:
        return link(short[0])
    for cand in candidates:
        full = resolve_alias(cand, _State.aliases)
        if not full.startswith(ours):
            continue
        owner, _, attr = full.rpartition(".")
        if owner in objects and attr and (attr.startswith("_") or _has_attribute(owner, attr)):
            return link(owner)  # an instance attribute or private helper: its class's entry
        if any(p.startswith("_") and not p.startswith("__") for p in full.split(".")):
            return contnode  # private, deliberately undocumented: plain text
        if _is_typevar(full):
            return contnode
    return None


def _has_attribute(owner: str, attr: str) -> bool:
    cls = _object(owner)
    if not inspect.isclass(cls):
        return False
    if hasattr(cls, attr):
        return True
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return f"self.{attr} " in src or f"self.{attr}=" in src or f"self.{attr}:" in src


def _is_typevar(name: str) -> bool:
    import typing

    return isinstance(_object(name), typing.TypeVar)


def _foreign_inherited_doc(app: Sphinx, what: str, name: str, obj: object, options: object,
                           lines: list[str]) -> None:
    """Replace a docstring inherited from torch (e.g. ``forward``) by a link to the original.

    Its cross-references are relative to torch's own docs and would not resolve here.
    """
    if what != "method" or getattr(obj, "__doc__", None) is not None:
        return  # documented here, or not a method
    owner = _object(name.rpartition(".")[0])
    attr = name.rpartition(".")[2]
    if not inspect.isclass(owner) or attr in vars(owner) and vars(owner)[attr].__doc__:
        return
    for base in owner.__mro__[1:]:
        if attr in vars(base):
            if not base.__module__.startswith(_State.packages):
                public = "torch.nn.Module" if base.__module__ == "torch.nn.modules.module" \
                    else f"{base.__module__}.{base.__qualname__}"
                lines[:] = [f"Implements :meth:`{public}.{attr}` (see its documentation)."]
            return


def _wrap_napoleon(app: Sphinx) -> None:
    """Keep napoleon away from data and attribute docstrings.

    Their ``#:`` comments are prose, not Google's ``type: text`` (the type comes from the
    annotation).
    """
    listeners = app.events.listeners.get("autodoc-process-docstring", [])
    for listener in list(listeners):
        handler = listener.handler
        if getattr(handler, "__module__", "") != "sphinx.ext.napoleon":
            continue
        app.disconnect(listener.id)

        def wrapped(app: Sphinx, what: str, name: str, obj: object, options: object,
                    lines: list[str], _h=handler) -> None:
            if what not in ("data", "attribute"):
                _h(app, what, name, obj, options, lines)

        # re-connected after sphinx-autodoc-typehints: keep running before it, as napoleon did
        app.connect("autodoc-process-docstring", wrapped, priority=listener.priority - 1)


# ---------------------------------------------------------------------------- hooks
def _builder_inited(app: Sphinx) -> None:
    from sphinx.ext.autodoc.mock import mock

    packages = discover_packages()
    names = [p for _, p in packages]
    with mock(app.config.autodoc_mock_imports):
        write_api_pages(packages)
        missing = undocumented(names)
        _State.packages = tuple(names)
        _State.aliases = alias_map(names)
        _State.extension_points = _extension_points(names)
    _wrap_napoleon(app)
    write_bench_tables()
    for name in missing:
        logger.warning("undocumented public object: %s", name, type="adjoint_docs",
                       subtype="undocumented")


def setup(app: Sphinx) -> dict:
    """Register the hooks and the ``cli-help`` directive."""
    app.connect("builder-inited", _builder_inited)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _foreign_inherited_doc, priority=400)
    app.connect("missing-reference", _missing_reference)
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
