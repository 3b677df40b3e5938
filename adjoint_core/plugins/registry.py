"""Component registry: resolves names in configs to factories contributed by plugins.

Plugins are found through the ``adjoint_core`` entry-point group (read with
:mod:`importlib.metadata`) and registered in a :class:`pluggy.PluginManager`. The core's own
components come through the same path (its entry point ``core = adjoint_core.plugins.builtins``).
A plugin that raises on import or inside a hook is recorded in :attr:`Registry.failures`
(name, distribution, error) and the others still load.

The environment variable ``ADJOINT_CORE_PLUGINS`` (comma-separated entry-point names) restricts
which entry points are loaded; ``core`` is always loaded.
"""

from __future__ import annotations

import importlib.metadata as im
import inspect
import os
import re
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy
import pydantic

from adjoint_core.plugins import hookspecs
from adjoint_core.plugins.hookspecs import KINDS, PROJECT

__all__ = ["Registry", "ComponentEntry", "PluginFailure", "default_registry", "ConfigError",
           "show_value", "is_resource_error"]


class ConfigError(ValueError):
    """A config, argument or component parameter is invalid.

    The message is one line ``<field or argument>: <value>: <what is allowed>`` (several
    problems are joined by semicolons); the command line prints it as ``error: <message>``.
    """


def show_value(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for an error message, shortened to about ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_resource_error(exc: BaseException) -> bool:
    """Whether a factory's exception means its parameters cannot work on this machine.

    Memory that cannot be allocated and numbers out of range are; any other exception of a
    factory is a bug and keeps its traceback.
    """
    if isinstance(exc, (MemoryError, OverflowError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "size calculation overflow"))


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str

    @property
    def target(self) -> str:
        """Dotted path of the factory; for a reference registered as a file, the file's path."""
        if isinstance(self.factory, (str, os.PathLike)):
            return str(self.factory)
        return f"{self.factory.__module__}.{getattr(self.factory, '__qualname__', self.factory)}"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    distribution: str
    error: str


class Registry:
    """Name → factory tables for every component kind (see :data:`hookspecs.KINDS`).

    Args:
        load_entry_points: Load the installed ``adjoint_core`` entry points now.
    """

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, ComponentEntry]] = {k: {} for k in KINDS}
        self.failures: list[PluginFailure] = []
        self._distributions: dict[str, str] = {}
        if load_entry_points:
            self.load_entry_points()

    # ------------------------------------------------------------------ loading
    def load_entry_points(self, group: str = PROJECT) -> None:
        """Import every entry point of ``group`` and register its hooks."""
        allow = os.environ.get("ADJOINT_CORE_PLUGINS")
        allowed = None if not allow else {s.strip() for s in allow.split(",")} | {"core"}
        for ep in sorted(im.entry_points(group=group), key=lambda e: (e.name != "core", e.name)):
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not stop the others
                self._fail(ep.name, dist, exc)
                continue
            self.add_plugin(plugin, name=ep.name, distribution=dist)

    def add_plugin(self, plugin: object, name: str, distribution: str = "<in-process>") -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` functions).

        Args:
            plugin: Object carrying hook implementations.
            name: Plugin name (shown by ``adjoint-core plugins``).
            distribution: Distribution it came from.
        """
        self._distributions[name] = distribution
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self._fail(name, distribution, exc)
            return
        for kind, hook in KINDS.items():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    table = impl.function() or {}
                except Exception as exc:
                    self._fail(name, distribution, exc)
                    continue
                for cname, factory in table.items():
                    self.register(kind, cname, factory, plugin=name, distribution=distribution)

    def record_failure(self, plugin_name: str, exc: BaseException) -> None:
        """Record that a registered plugin failed later (e.g. while adding CLI commands)."""
        self._fail(plugin_name, self._distributions.get(plugin_name, "<unknown>"), exc)

    def _fail(self, name: str, dist: str, exc: BaseException) -> None:
        failure = PluginFailure(name, dist, f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        warnings.warn(f"adjoint_core plugin {name!r} ({dist}) failed to load: {failure.error}",
                      RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ tables
    def register(
        self, kind: str, name: str, factory: Callable[..., Any], plugin: str = "<in-process>",
        distribution: str = "<in-process>",
    ) -> None:
        """Register ``factory`` under ``name`` for component ``kind``.

        Raises:
            ValueError: Unknown kind, or the name is already taken by another plugin.
        """
        if kind not in self._entries:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {sorted(KINDS)}")
        old = self._entries[kind].get(name)
        if old is not None and old.factory is not factory:
            raise ValueError(
                f"{kind} {name!r} from plugin {plugin!r} clashes with the one from "
                f"{old.plugin!r} ({old.distribution})"
            )
        self._entries[kind][name] = ComponentEntry(kind, name, factory, plugin, distribution)

    def names(self, kind: str) -> list[str]:
        """Sorted registered names of ``kind``."""
        return sorted(self._entries[kind])

    def entries(self) -> list[ComponentEntry]:
        """All registered components, sorted by kind then name."""
        return [e for k in KINDS for _, e in sorted(self._entries[k].items())]

    def get(self, kind: str, name: str) -> ComponentEntry:
        """Look up a component; unknown names list the registered ones."""
        if kind not in self._entries:
            raise ConfigError(f"unknown component kind {kind!r}; kinds are {sorted(KINDS)}")
        try:
            return self._entries[kind][name]
        except KeyError:
            hint = ""
            if self.failures:
                hint = "; plugins that failed to load: " + ", ".join(
                    f"{f.plugin} ({f.error})" for f in self.failures)
            raise ConfigError(
                f"{kind}.name: {name!r}: unknown {kind} {name!r}; registered: "
                f"{', '.join(self.names(kind)) or '(none)'}{hint}"
            ) from None

    def build(self, kind: str, name: str, params: dict | None = None, **inject: Any) -> Any:
        """Instantiate a component with validated parameters.

        Parameters are validated against the factory's signature and type hints (pydantic);
        ``inject`` supplies objects such as ``space=`` to factories that declare them.

        Raises:
            ConfigError: Naming the field (``kind.param``), the value and the reason.
        """
        entry = self.get(kind, name)
        params = dict(params or {})
        fields = _signature_fields(entry.factory)
        if fields is not None:
            for key, obj in inject.items():
                if key in fields and key not in params:
                    params[key] = obj
            for key in params:
                if key not in fields:
                    allowed = [p for p in fields if p not in inject]
                    raise ConfigError(
                        f"{kind}.{key}: {show_value(params[key])}: unknown parameter for {kind} "
                        f"{name!r}; allowed: {', '.join(allowed) or '(none)'}"
                    )
            model = pydantic.create_model(
                f"{name}_params",
                __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid",
                                               allow_inf_nan=False),
                **fields,
            )
            try:
                checked = model.model_validate(params)
            except pydantic.ValidationError as exc:
                msgs = []
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    msgs.append(f"{kind}.{loc}: {show_value(err.get('input'))}: {err['msg']} "
                                f"(parameter of {kind} {name!r})")
                raise ConfigError("; ".join(msgs)) from None
            params = {k: getattr(checked, k) for k in params}
        try:
            return entry.factory(**params)
        except ConfigError:  # the component's own message already names the field
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(_rejected(kind, name, params, inject, exc)) from exc
        except Exception as exc:
            if not is_resource_error(exc):
                raise
            raise ConfigError(_rejected(kind, name, params, inject, exc,
                                        " (too large for this machine?)")) from exc


def _rejected(kind: str, name: str, params: dict, inject: dict, exc: BaseException,
              note: str = "") -> str:
    """``kind.param: value: <the factory's message>`` for the parameters the message names."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    named = [k for k in params if k not in inject and re.search(rf"\b{re.escape(k)}\b", text)]
    if named:
        fields = ", ".join(f"{kind}.{k}" for k in named)
        values = ", ".join(show_value(params[k]) for k in named)
    else:
        fields, values = kind, repr(name)
    return f"{fields}: {values}: {kind} {name!r} rejected its parameters: {text}{note}"


def _signature_fields(factory: Callable[..., Any]) -> dict[str, tuple[Any, Any]] | None:
    """``{param: (annotation, default)}`` of a factory's keyword parameters, or ``None``."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    fields = {}
    for pname, p in sig.parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints.get(pname, Any), default)
    return fields


_DEFAULT: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """The process-wide registry of installed plugins (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = Registry()
    return _DEFAULT
