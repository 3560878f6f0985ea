"""The machinery shared by the conformance suites: component selection and parametrisation."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import pytest
import torch

from mfm_framework.kinds import KINDS, Kind, kind_by_name
from mfm_framework.plugins import ComponentEntry, PluginSystem, Registry, default_plugin_system

__all__ = [
    "COMPONENT_ARG",
    "ConformanceSuite",
    "applies_to",
    "assert_close",
    "parse_names",
    "select_components",
]

#: The argument every suite check takes: the component class under test.
COMPONENT_ARG = "component_cls"

_APPLIES_TO = "_mfm_applies_to"

F = TypeVar("F", bound=Callable[..., Any])


def parse_names(value: str | Iterable[str] | None) -> frozenset[str] | None:
    """Parse ``"a, b,kind:c"`` (or an iterable of names) into a set; ``None`` or empty -> ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = frozenset(item.strip() for item in items if item.strip())
    return names or None


def _canonical_distribution(name: str) -> str:
    # PEP 503 normalisation: "mfm_framework" and "MFM.Framework" both name "mfm-framework".
    return re.sub(r"[-_.]+", "-", name).lower()


def _matches(entry: ComponentEntry, names: Iterable[str]) -> bool:
    wanted = set(names)
    return entry.name in wanted or f"{entry.kind.name}:{entry.name}" in wanted


def select_components(
    registry: Registry,
    kinds: Sequence[Kind],
    *,
    only: Iterable[str] = (),
    distribution: str | None = None,
    names: Iterable[str] | None = None,
) -> list[ComponentEntry]:
    """The registered components of ``kinds`` that pass every filter, by kind then name.

    Args:
        registry: where the components are registered.
        kinds: the kinds to draw from.
        only: if non-empty, keep these names only (``"name"`` or ``"kind:name"``).
        distribution: if given, keep the components of this installed distribution only
            (compared after PEP 503 normalisation).
        names: the ``--mfm-components`` selection, same syntax as ``only``; ``None`` keeps all.
    """
    only = (only,) if isinstance(only, str) else tuple(only)
    entries = []
    for kind in kinds:
        for entry in registry.components(kind).values():
            if only and not _matches(entry, only):
                continue
            if names is not None and not _matches(entry, names):
                continue
            if distribution is not None and _canonical_distribution(entry.distribution) != _canonical_distribution(
                distribution
            ):
                continue
            entries.append(entry)
    return entries


def applies_to(predicate: Callable[[type], bool], reason: str) -> Callable[[F], F]:
    """Run one suite check only over the components for which ``predicate(component_cls)`` holds.

    Args:
        predicate: decides from the component class, e.g. ``lambda cls: cls.stochastic``.
        reason: what the check requires, shown when no selected component qualifies.
    """

    def decorate(func: F) -> F:
        setattr(func, _APPLIES_TO, (predicate, reason))
        return func

    return decorate


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str) -> None:
    """``torch.testing.assert_close`` (same shape and dtype) with ``what`` heading the message."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda detail: f"{what}\n{detail}")


class ConformanceSuite:
    """Base of the conformance suites: parametrises ``component_cls`` over registered components.

    Subclass a concrete suite (not this class) in a test module. Pytest calls
    :meth:`pytest_generate_tests` for each test of the class; every test that takes
    ``component_cls`` runs once per selected component, with the component's name as its id.

    Attributes:
        kind: the kind whose components the suite checks (``None``: every kind).
        only: if non-empty, check only these component names (``"name"`` or ``"kind:name"``).
        distribution: if given, check only the components of this installed distribution.
        seed: base seed of the per-test random generators.

    Override :meth:`make_component` to check a component with non-default options, and
    :meth:`get_plugin_system` to check the registry of another
    :class:`~mfm_framework.plugins.PluginSystem` (e.g. one with plugins registered in-process).
    """

    kind: ClassVar[str | None] = None
    only: ClassVar[tuple[str, ...]] = ()
    distribution: ClassVar[str | None] = None
    seed: ClassVar[int] = 0

    # ------------------------------------------------------------------ selection
    def get_plugin_system(self) -> PluginSystem:
        """The plugin system whose registry is checked; override to check another one."""
        return default_plugin_system()

    def kinds(self) -> tuple[Kind, ...]:
        """The kinds this suite runs over."""
        return KINDS if self.kind is None else (kind_by_name(self.kind),)

    def component_entries(self, names: Iterable[str] | None = None) -> list[ComponentEntry]:
        """The registered components this suite checks, given the ``--mfm-components`` names."""
        registry = self.get_plugin_system().registry
        return select_components(
            registry, self.kinds(), only=self.only, distribution=self.distribution, names=parse_names(names)
        )

    def component_id(self, entry: ComponentEntry) -> str:
        """The test id of one component: its name, or ``kind:name`` in a suite over every kind."""
        return entry.name if self.kind is not None else f"{entry.kind.name}:{entry.name}"

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise ``component_cls`` over the selected components (pytest calls this)."""
        if COMPONENT_ARG not in metafunc.fixturenames:
            return
        names = parse_names(metafunc.config.getoption("mfm_components", default=None))
        entries = self.component_entries(names)
        requirement = getattr(metafunc.function, _APPLIES_TO, None)
        if requirement is not None:
            entries = [entry for entry in entries if requirement[0](entry.cls)]
        if entries:
            metafunc.parametrize(COMPONENT_ARG, [entry.cls for entry in entries], ids=[self.component_id(e) for e in entries])
            return
        metafunc.parametrize(
            COMPONENT_ARG,
            [pytest.param(None, marks=pytest.mark.skip(reason=self._empty_reason(names, requirement)), id="none")],
        )

    def _empty_reason(self, names: frozenset[str] | None, requirement: tuple[Callable, str] | None) -> str:
        what = "component" if self.kind is None else kind_by_name(self.kind).title
        filters = []
        if self.only:
            filters.append(f"only={self.only!r}")
        if self.distribution is not None:
            filters.append(f"distribution={self.distribution!r}")
        if names is not None:
            filters.append(f"--mfm-components={','.join(sorted(names))}")
        if requirement is not None:
            filters.append(f"requires: {requirement[1]}")
        reason = f"no registered {what} matches {type(self).__name__}"
        if filters:
            reason += f" ({'; '.join(filters)})"
        failures = self.get_plugin_system().registry.failures
        if failures:
            reason += "; plugins that failed to load: " + "; ".join(f"{p.label}: {p.errors[0]}" for p in failures)
        return reason

    # ------------------------------------------------------------------ helpers for the checks
    def make_component(self, component_cls: type) -> Any:
        """Build the component under test with default options; override to pass options."""
        return component_cls()

    def generator(self, tag: str) -> torch.Generator:
        """A CPU generator seeded from :attr:`seed` and ``tag`` (use the test's name)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(tag.encode()))
