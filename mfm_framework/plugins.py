"""Plugin discovery (entry-point group ``mfm``) and the component registry.

First-party plugin packages and third-party ones are loaded the same way: every entry point of
the group ``mfm`` names a module (or an object) with ``@hookimpl`` functions. A plugin that fails
to import, or whose registration hook raises or returns something invalid, is recorded with its
error (``mfm plugins`` shows it) and contributes nothing; runs that do not need it are unaffected.

Environment switches:

- ``MFM_DISABLE_PLUGIN_AUTOLOAD=1``: do not load entry points (only ``MFM_PLUGINS``).
- ``MFM_PLUGINS=mod1,mod2``: import these modules and register them as plugins too.
- ``MFM_BLOCK_PLUGINS=name1,name2``: skip these plugins (entry-point or module names).
- ``MFM_TRACE_HOOKS=1``: trace every hook call to standard error.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from mfm_framework._version import __version__
from mfm_framework.errors import PluginConflictError, UnknownComponentError
from mfm_framework.hooks import PROJECT, LifecycleSpecs, RegistrationSpecs
from mfm_framework.kinds import KINDS, Kind

__all__ = [
    "ENTRY_POINT_GROUP",
    "ComponentEntry",
    "PluginInfo",
    "PluginSystem",
    "Registry",
    "default_plugin_system",
]

ENTRY_POINT_GROUP = "mfm"
ENV_DISABLE_AUTOLOAD = "MFM_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "MFM_PLUGINS"
ENV_BLOCK = "MFM_BLOCK_PLUGINS"
ENV_TRACE = "MFM_TRACE_HOOKS"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _format_error(exc: BaseException) -> str:
    """The exception line plus the innermost frame: enough to find the fault, short enough to list."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() + where


@attrs.define
class PluginInfo:
    """What is known of one plugin.

    Attributes:
        name: the plugin's name (entry-point name, or module name for ``MFM_PLUGINS``).
        distribution: the installed distribution that provides it (``"<in-process>"`` otherwise).
        version: the distribution's version, when known.
        module: what the entry point points at.
        status: ``"loaded"``, ``"failed"`` or ``"blocked"``.
        errors: what went wrong (import error, a raising or invalid registration hook).
        components: component names it registered, by kind plural.
    """

    name: str
    distribution: str
    version: str | None = None
    module: str | None = None
    status: str = "loaded"
    errors: list[str] = attrs.field(factory=list)
    components: dict[str, list[str]] = attrs.field(factory=dict)

    @property
    def label(self) -> str:
        """``plugin 'name' (distribution dist version)``, for messages."""
        dist = self.distribution + (f" {self.version}" if self.version else "")
        return f"plugin {self.name!r} (distribution {dist})"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ComponentEntry:
    """One registered component class and where it comes from."""

    kind: Kind
    name: str
    cls: type
    plugin: PluginInfo = attrs.field(eq=False)

    @property
    def distribution(self) -> str:
        return self.plugin.distribution


class Registry:
    """Component classes by kind and name, built from the plugins' registration hooks."""

    def __init__(self, plugins: list[PluginInfo]) -> None:
        self.plugins = plugins
        self._by_kind: dict[str, dict[str, ComponentEntry]] = {k.name: {} for k in KINDS}
        self.conflicts: list[str] = []

    def _add(self, entry: ComponentEntry) -> None:
        table = self._by_kind[entry.kind.name]
        other = table.get(entry.name)
        if other is not None:
            self.conflicts.append(
                f"{entry.kind.title} {entry.name!r} is registered twice: by {other.plugin.label} "
                f"and by {entry.plugin.label}; uninstall or block one of them "
                f"({ENV_BLOCK}=<plugin name>)"
            )
            return
        table[entry.name] = entry

    def components(self, kind: Kind) -> dict[str, ComponentEntry]:
        """All components of ``kind`` by name, sorted by name."""
        return dict(sorted(self._by_kind[kind.name].items()))

    def check(self) -> None:
        """Raise :class:`PluginConflictError` if two plugins registered one name in one kind."""
        if self.conflicts:
            raise PluginConflictError("\n".join(self.conflicts))

    @property
    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to load or register."""
        return [p for p in self.plugins if p.errors]

    def get(self, kind: Kind, name: str) -> ComponentEntry:
        """Look a component up.

        Raises:
            UnknownComponentError: naming the closest registered names, the plugins that provide
                this kind and the plugins that failed to load.
        """
        table = self._by_kind[kind.name]
        if name in table:
            return table[name]
        raise UnknownComponentError(self.unknown_message(kind, name))

    def unknown_message(self, kind: Kind, name: Any) -> str:
        table = self._by_kind[kind.name]
        head = f"unknown {kind.title} {name!r}"
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.4)
        if close:
            head += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        parts = [head]
        if table:
            providers: dict[str, list[str]] = {}
            for entry in table.values():
                providers.setdefault(entry.plugin.label, []).append(entry.name)
            parts.append(
                "installed:"
                + ";".join(f" {', '.join(sorted(names))} from {label}" for label, names in providers.items())
            )
        else:
            parts.append(f"no installed plugin provides {kind.a_title}")
        for failed in self.failures:
            parts.append(f"note: {failed.label} failed to load: {failed.errors[0]}")
        return " ".join(p if p.endswith(("?", ".")) else p + "." for p in parts)


class PluginSystem:
    """The pluggy plugin manager of mfm and the registry built from it.

    Build one with :meth:`load`; register extra plugins in-process with :meth:`register` (the same
    code path entry points take).
    """

    def __init__(self, *, trace: bool = False) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(RegistrationSpecs)
        self.pm.add_hookspecs(LifecycleSpecs)
        if trace:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        self.plugins: list[PluginInfo] = []
        self._registry: Registry | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        *,
        autoload: bool | None = None,
        modules: Iterable[str] | None = None,
        blocked: Iterable[str] | None = None,
        trace: bool | None = None,
    ) -> PluginSystem:
        """Discover plugins; arguments left ``None`` are read from the environment switches."""
        system = cls(trace=_env_flag(ENV_TRACE) if trace is None else trace)
        blocked_names = set(_env_list(ENV_BLOCK) if blocked is None else blocked)
        for name in blocked_names:
            system.pm.set_blocked(name)
        if autoload if autoload is not None else not _env_flag(ENV_DISABLE_AUTOLOAD):
            system._load_entry_points(blocked_names)
        for module in _env_list(ENV_PLUGINS) if modules is None else modules:
            if module in blocked_names:
                system.plugins.append(PluginInfo(name=module, distribution="<module>", module=module, status="blocked"))
                continue
            system._load(name=module, distribution="<module>", version=None, target=module, loader=lambda m=module: importlib.import_module(m))
        return system

    def _load_entry_points(self, blocked: set[str]) -> None:
        seen: set[tuple[str, str]] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "<unknown>"
            version = dist.version if dist is not None else None
            if ep.name in blocked:
                self.plugins.append(
                    PluginInfo(name=ep.name, distribution=dist_name, version=version, module=ep.value, status="blocked")
                )
                continue
            self._load(name=ep.name, distribution=dist_name, version=version, target=ep.value, loader=ep.load)

    def _load(self, *, name: str, distribution: str, version: str | None, target: str, loader: Any) -> None:
        info = PluginInfo(name=name, distribution=distribution, version=version, module=target)
        try:
            plugin = loader()
        except Exception as exc:  # a broken plugin must not break the others
            info.status = "failed"
            info.errors.append(f"import failed: {_format_error(exc)}")
            self.plugins.append(info)
            self._registry = None
            return
        self._register(plugin, info)

    def register(self, plugin: Any, *, name: str, distribution: str = "<in-process>", version: str | None = None) -> PluginInfo:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods) in-process.

        Returns the plugin's :class:`PluginInfo`; its ``errors`` say if it was rejected.
        """
        info = PluginInfo(name=name, distribution=distribution, version=version, module=getattr(plugin, "__name__", None))
        self._register(plugin, info)
        return info

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        self._registry = None
        self.plugins.append(info)
        if self.pm.has_plugin(info.name):
            other = next(p for p in self.plugins if p.name == info.name and p is not info)
            info.status = "failed"
            info.errors.append(f"a plugin named {info.name!r} is already registered by {other.label}")
            return
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            info.status = "failed"
            info.errors.append(f"registration failed: {_format_error(exc)}")
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            info.status = "failed"
            info.errors.append(f"{exc} (not an mfm hook: misspelt?)")

    # ------------------------------------------------------------------ the registry
    @property
    def registry(self) -> Registry:
        """Component classes by kind, collected from every loaded plugin (cached)."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        loaded = {p.name: p for p in self.plugins if p.status == "loaded"}
        for info in loaded.values():
            info.components = {}
        registry = Registry(self.plugins)
        for kind in KINDS:
            hook = getattr(self.pm.hook, kind.hook)
            for impl in hook.get_hookimpls():
                info = loaded.get(impl.plugin_name)
                if info is None:
                    continue
                others = [p for n, p in self.pm.list_name_plugin() if n != impl.plugin_name]
                try:
                    results = self.pm.subset_hook_caller(kind.hook, remove_plugins=others)()
                    classes = [cls for result in results for cls in (result or [])]
                except Exception as exc:
                    info.errors.append(f"{kind.hook}() raised: {_format_error(exc)}")
                    continue
                for cls in classes:
                    problem = _component_problem(kind, cls)
                    if problem:
                        info.errors.append(f"{kind.hook}() returned {cls!r}: {problem}")
                        continue
                    registry._add(ComponentEntry(kind=kind, name=cls.name, cls=cls, plugin=info))
                    info.components.setdefault(kind.plural, []).append(cls.name)
        return registry

    # ------------------------------------------------------------------ reporting
    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for lifecycle hooks: ``system.hook.mfm_run_start(run=...)``."""
        return self.pm.hook

    def to_json(self) -> dict[str, Any]:
        """Everything ``plugins.json`` and ``mfm plugins --json`` show."""
        registry = self.registry
        return {
            "mfm_framework": __version__,
            "plugins": [p.to_json() for p in self.plugins],
            "conflicts": list(registry.conflicts),
        }


def _component_problem(kind: Kind, cls: Any) -> str | None:
    """Why ``cls`` is not a valid component of ``kind``, or None."""
    base = kind.interface_class()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"not a subclass of {base.__module__}.{base.__qualname__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return f"its `name` must be a lower-case id like 'my-component', got {name!r}"
    if not attrs.has(getattr(cls, "Options", None)):
        return "its `Options` is not an attrs class"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"it is abstract (does not implement {missing})"
    return None


_DEFAULT: PluginSystem | None = None


def default_plugin_system() -> PluginSystem:
    """The process-wide plugin system, loaded once from the environment."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PluginSystem.load()
    return _DEFAULT
