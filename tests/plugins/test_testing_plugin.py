"""The pytest plugin ``mfm_framework.testing``: import cost, fixture, selection of components."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import mfm_framework.testing as testing
from mfm_framework.kinds import KINDS, kind_by_name
from mfm_framework.plugins import PluginSystem, default_plugin_system
from mfm_framework.testing._suite import parse_names, select_components

# Arguments of the in-process pytest runs: no cache files, and no hypothesis plugin (when
# installed, its terminal summary adds seconds to every in-process run).
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def test_plugin_import_is_light() -> None:
    """What pytest imports (the plugin module) does not import torch; the suites load on access."""
    code = textwrap.dedent(
        """
        import sys
        import mfm_framework.testing as t
        assert "torch" not in sys.modules, "importing the plugin imported torch"
        assert callable(t.pytest_addoption) and callable(t.mfm_plugin_system)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_resolve() -> None:
    for name in testing.__all__:
        assert getattr(testing, name) is not None
    with pytest.raises(AttributeError):
        testing.NoSuchSuite  # noqa: B018


def test_fixture_is_the_default_plugin_system(mfm_plugin_system: PluginSystem) -> None:
    assert mfm_plugin_system is default_plugin_system()


def test_parse_names() -> None:
    assert parse_names(None) is None
    assert parse_names(" , ") is None
    assert parse_names("linear, euler,interpolant:trigonometric") == {"linear", "euler", "interpolant:trigonometric"}
    assert parse_names(["heun"]) == {"heun"}


def test_select_components_filters() -> None:
    registry = default_plugin_system().registry
    interpolant, integrator = kind_by_name("interpolant"), kind_by_name("integrator")

    def names(**kwargs: object) -> list[str]:
        return [f"{e.kind.name}:{e.name}" for e in select_components(registry, KINDS, **kwargs)]  # type: ignore[arg-type]

    everything = names()
    assert {"interpolant:linear", "interpolant:trigonometric", "integrator:euler", "integrator:heun"} <= set(everything)
    assert names(only=("trigonometric", "heun")) == ["interpolant:trigonometric", "integrator:heun"]
    # a bare name matches it in every kind ("linear" is an interpolant and a reward)
    assert names(only=("linear",)) == ["interpolant:linear", "reward:linear"]
    assert names(names={"interpolant:linear", "euler"}) == ["interpolant:linear", "integrator:euler"]
    assert names(only=("linear",), names={"heun"}) == []
    # Distribution names compare after PEP 503 normalisation.
    assert names(distribution="mfm_framework") == everything
    assert names(distribution="MFM.Framework", only=("euler",)) == ["integrator:euler"]
    assert names(distribution="someone-else") == []
    assert [e.name for e in select_components(registry, (interpolant, integrator), only=("heun",))] == ["heun"]


def _suite_module(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["mfm_framework.testing"]\n')
    pytester.makepyfile(
        test_suites="""
        from mfm_framework.testing import ComponentContract, IntegratorConformance, InterpolantConformance


        class TestInterpolants(InterpolantConformance):
            pass


        class TestIntegrators(IntegratorConformance):
            only = ("euler",)


        class TestNobody(InterpolantConformance):
            distribution = "not-installed"


        class TestContract(ComponentContract):
            pass
        """
    )


def _ids(nodeids: list[str]) -> dict[str, set[str]]:
    """The component ids in suite test node ids (``file::Class::test[id]``), by test class."""
    ids: dict[str, set[str]] = {}
    for nodeid in nodeids:
        _, cls, test = nodeid.split("::")
        ids.setdefault(cls, set()).add(test.split("[", 1)[1][:-1])
    return ids


def test_suite_parametrisation(pytester: pytest.Pytester) -> None:
    """Each suite runs over its kind's components; ``only`` and ``distribution`` restrict one suite."""
    _suite_module(pytester)
    items, _ = pytester.inline_genitems(*INNER_ARGS)
    ids = _ids([item.nodeid for item in items])
    assert ids["TestInterpolants"] == {"linear", "trigonometric"}
    assert {"interpolant:linear", "integrator:euler-maruyama"} <= ids["TestContract"]
    # only=("euler",); its stochastic-only checks have no component and report "none" (skipped).
    assert ids["TestIntegrators"] == {"euler", "none"}
    assert ids["TestNobody"] == {"none"}


def test_components_option_and_empty_selection(pytester: pytest.Pytester) -> None:
    """``--mfm-components`` restricts every suite; an empty selection is one skip with the reason."""
    _suite_module(pytester)
    recorder = pytester.inline_run(
        "--mfm-components=trigonometric,integrator:heun", "-k", "boundary or docstring or keep_path", *INNER_ARGS
    )
    passed, skipped, failed = recorder.listoutcomes()
    assert not failed
    ran = _ids([report.nodeid for report in passed])
    assert ran == {
        "TestInterpolants": {"trigonometric"},
        "TestContract": {"interpolant:trigonometric", "integrator:heun"},
    }
    reasons = {report.nodeid.split("::")[1]: report.longrepr[2] for report in skipped}  # type: ignore[index]
    assert set(reasons) == {"TestIntegrators", "TestNobody"}
    assert "no registered integrator matches TestIntegrators" in reasons["TestIntegrators"]
    assert "--mfm-components=integrator:heun,trigonometric" in reasons["TestIntegrators"]
    assert "distribution='not-installed'" in reasons["TestNobody"]
