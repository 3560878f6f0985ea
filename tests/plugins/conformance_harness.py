"""The harness of the planted-bug tests: proof that the conformance suites catch real bugs.

A module of broken components (``tests/plugins/broken_*components.py``) declares

- ``DISTRIBUTION``, the distribution its components are registered under, and a plugin class
  that registers them through the ordinary hooks;
- ``EXPECTED_FAILURES``: per broken component, the ``(suite, check)`` or
  ``(suite, check, message fragment)`` cases that must raise ``AssertionError`` on it;
- ``STILL_PASSING``: ``(component, suite, check)`` cases that must pass (a bug fails the checks
  about it, not every check).

A test class subclasses :class:`PlantedBugs`, names the module, its plugin and the suites, and
inherits one test per fact above; :meth:`PlantedBugs.run_third_party` runs the suites end to end,
as a third party's test module does, in a ``pytester`` run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from mfm_framework.kinds import KINDS
from mfm_framework.plugins import PluginSystem

__all__ = ["PlantedBugs", "assert_check_fails"]


def assert_check_fails(suite: Any, check: str, component_cls: type, fragments: Iterable[str] = ()) -> str:
    """``suite.check(component_cls)`` raises ``AssertionError`` whose message holds every fragment.

    Returns:
        The failure message.
    """
    with pytest.raises(AssertionError) as info:
        getattr(suite, check)(component_cls)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the failure message:\n{message}"
    return message


def _case_id(component_cls: type, check: str) -> str:
    return f"{component_cls.name}-{check}"


class PlantedBugs:
    """Base of a planted-bug test class (not collected itself: its name does not start with ``Test``).

    Attributes:
        broken: the module of broken components.
        plugin: the name of its plugin class.
        plugin_name: the name the plugin is registered under.
        suites: the suite classes, by the names ``EXPECTED_FAILURES`` and ``STILL_PASSING`` use.
        names_in_messages: whether every failure message must name the component (``repr`` of its name).
    """

    broken: ClassVar[ModuleType]
    plugin: ClassVar[str]
    plugin_name: ClassVar[str]
    suites: ClassVar[dict[str, type]]
    names_in_messages: ClassVar[bool] = False

    def broken_components(self) -> set[type]:
        """Every component the plugin registers: those of ``EXPECTED_FAILURES`` by default."""
        return set(self.broken.EXPECTED_FAILURES)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise the failure cases and the still-passing cases (pytest calls this)."""
        if metafunc.function.__name__ == "test_suite_check_fails_on_broken_component":
            cases = [
                (cls, suite, check, tuple(fragments))
                for cls, checks in self.broken.EXPECTED_FAILURES.items()
                for suite, check, *fragments in checks
            ]
            metafunc.parametrize(
                ("component_cls", "suite", "check", "fragments"), cases, ids=[_case_id(c, check) for c, _, check, _ in cases]
            )
        elif metafunc.function.__name__ == "test_unrelated_checks_still_pass":
            cases = self.broken.STILL_PASSING
            metafunc.parametrize(("component_cls", "suite", "check"), cases, ids=[_case_id(c, check) for c, _, check in cases])

    @pytest.fixture(scope="class")
    def broken_system(self) -> PluginSystem:
        """A fresh plugin system holding only the broken plugin."""
        system = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
        plugin = getattr(self.broken, self.plugin)()
        info = system.register(plugin, name=self.plugin_name, distribution=self.broken.DISTRIBUTION)
        assert info.status == "loaded" and not info.errors, info
        return system

    def test_every_broken_component_is_registered(self, broken_system: PluginSystem) -> None:
        registry = broken_system.registry
        assert not registry.failures
        registered = {entry.cls for kind in KINDS for entry in registry.components(kind).values()}
        assert registered == self.broken_components()

    def test_suite_check_fails_on_broken_component(
        self, broken_system: PluginSystem, component_cls: type, suite: str, check: str, fragments: tuple[str, ...]
    ) -> None:
        """Each broken component, taken from the registry it was registered into, fails its checks."""
        registry = broken_system.registry
        name = component_cls.name
        registered = [entries[name].cls for kind in KINDS if name in (entries := registry.components(kind))]
        assert registered == [component_cls]
        if self.names_in_messages:
            fragments = (repr(name), *fragments)
        assert_check_fails(self.suites[suite](), check, registered[0], fragments)

    def test_unrelated_checks_still_pass(self, component_cls: type, suite: str, check: str) -> None:
        """The checks are specific: a bug fails the checks about it, not every check."""
        getattr(self.suites[suite](), check)(component_cls)

    def run_third_party(self, pytester: pytest.Pytester, suites: Sequence[str], classes: str) -> tuple[list, set[str]]:
        """Run ``classes`` (suite subclasses over the broken plugin) as a third party's test module does.

        The module loads the broken module by path, registers its plugin in a plugin system
        ``SYSTEM`` and defines a mixin ``Mine`` (the broken distribution, ``SYSTEM``) for ``classes``.

        Returns:
            The passed reports and the ids (``Class::test[component]``) of the failed tests.
        """
        path = Path(self.broken.__file__)
        pytester.makeconftest('pytest_plugins = ["mfm_framework.testing"]\n')
        header = f"""\
import importlib.util

from mfm_framework.plugins import PluginSystem
from mfm_framework.testing import {", ".join(suites)}

spec = importlib.util.spec_from_file_location("third_party_{path.stem}", {str(path)!r})
broken = importlib.util.module_from_spec(spec)
spec.loader.exec_module(broken)

SYSTEM = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
SYSTEM.register(broken.{self.plugin}(), name={self.plugin_name!r}, distribution=broken.DISTRIBUTION)


class Mine:
    distribution = broken.DISTRIBUTION

    def get_plugin_system(self):
        return SYSTEM


"""
        pytester.makepyfile(test_third_party=header + textwrap.dedent(classes))
        recorder = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
        passed, _, failed = recorder.listoutcomes()
        return passed, {report.nodeid.split("::", 1)[1] for report in failed}
