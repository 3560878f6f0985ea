"""The conformance suites fail on deliberately wrong components (and only on the checks they break)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mfm_framework.interfaces import Interpolant
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import PluginSystem
from mfm_framework.testing import ComponentContract, IntegratorConformance, InterpolantConformance

BROKEN_PATH = Path(__file__).with_name("broken_components.py")


def _load_broken() -> ModuleType:
    # By path, so it works under every pytest import mode.
    name = "mfm_test_broken_components"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BROKEN_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


broken = _load_broken()

SUITES = {
    "ComponentContract": ComponentContract,
    "InterpolantConformance": InterpolantConformance,
    "IntegratorConformance": IntegratorConformance,
}


@pytest.fixture(scope="module")
def broken_system() -> PluginSystem:
    """A fresh plugin system holding only the broken plugin."""
    system = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
    info = system.register(broken.BrokenPlugin(), name="mfm-broken", distribution=broken.DISTRIBUTION)
    assert info.status == "loaded" and not info.errors, info
    return system


def _expected() -> list[tuple[type, str, str]]:
    return [(cls, suite, check) for cls, checks in broken.EXPECTED_FAILURES.items() for suite, check in checks]


def test_broken_components_are_registered(broken_system: PluginSystem) -> None:
    registry = broken_system.registry
    assert not registry.failures
    assert set(registry.components(kind_by_name("interpolant"))) == {
        "wrong-dbeta",
        "wrong-inverse",
        "wrong-conversion",
        "no-docstring",
    }
    assert "fake-heun" in registry.components(kind_by_name("integrator"))


@pytest.mark.parametrize(
    ("component_cls", "suite", "check"), _expected(), ids=[f"{c.name}-{check}" for c, _, check in _expected()]
)
def test_suite_check_fails_on_broken_component(
    broken_system: PluginSystem, component_cls: type, suite: str, check: str
) -> None:
    """Each broken component, taken from the registry it was registered into, fails its checks."""
    kind = "interpolant" if issubclass(component_cls, Interpolant) else "integrator"
    registered = broken_system.registry.get(kind_by_name(kind), component_cls.name).cls
    assert registered is component_cls
    with pytest.raises(AssertionError):
        getattr(SUITES[suite](), check)(registered)


@pytest.mark.parametrize(
    ("component_cls", "suite", "check"),
    [
        (broken.WrongDbetaInterpolant, "InterpolantConformance", "test_time_from_snr_inverts_snr"),
        (broken.WrongInverseInterpolant, "InterpolantConformance", "test_derivatives_match_finite_differences"),
        (broken.FakeHeunIntegrator, "IntegratorConformance", "test_keep_path"),
        (broken.DoubleNoiseIntegrator, "IntegratorConformance", "test_sde_generator_reproducibility"),
    ],
    ids=["wrong-dbeta-inverse", "wrong-inverse-derivatives", "fake-heun-path", "double-noise-seed"],
)
def test_unrelated_checks_still_pass(component_cls: type, suite: str, check: str) -> None:
    """The checks are specific: a bug fails the checks about it, not every check."""
    getattr(SUITES[suite](), check)(component_cls)


def test_suite_selects_broken_components_by_distribution(broken_system: PluginSystem) -> None:
    class BrokenInterpolants(InterpolantConformance):
        distribution = broken.DISTRIBUTION

        def get_plugin_system(self) -> PluginSystem:
            return broken_system

    names = [entry.name for entry in BrokenInterpolants().component_entries()]
    assert names == ["no-docstring", "wrong-conversion", "wrong-dbeta", "wrong-inverse"]


def test_suites_fail_end_to_end_under_pytest(pytester: pytest.Pytester) -> None:
    """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
    pytester.makeconftest('pytest_plugins = ["mfm_framework.testing"]\n')
    pytester.makepyfile(
        test_third_party=f"""
        import importlib.util

        from mfm_framework.plugins import PluginSystem
        from mfm_framework.testing import ComponentContract, IntegratorConformance, InterpolantConformance

        spec = importlib.util.spec_from_file_location("third_party_broken", {str(BROKEN_PATH)!r})
        broken = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(broken)

        SYSTEM = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
        SYSTEM.register(broken.BrokenPlugin(), name="mfm-broken", distribution=broken.DISTRIBUTION)


        class Mine:
            distribution = broken.DISTRIBUTION

            def get_plugin_system(self):
                return SYSTEM


        class TestContract(Mine, ComponentContract):
            pass


        class TestInterpolants(Mine, InterpolantConformance):
            only = ("wrong-dbeta",)


        class TestIntegrators(Mine, IntegratorConformance):
            only = ("fake-heun", "miscounting")
        """
    )
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    passed, skipped, failed = recorder.listoutcomes()
    failed_ids = {report.nodeid.split("::", 1)[1] for report in failed}
    assert {
        "TestContract::test_has_docstring[interpolant:no-docstring]",
        "TestContract::test_options_is_frozen_attrs_class[integrator:mutable-options]",
        "TestInterpolants::test_derivatives_match_finite_differences[wrong-dbeta]",
        "TestIntegrators::test_order_on_closed_form_odes[fake-heun]",
        "TestIntegrators::test_nfe_counts_drift_evaluations[miscounting]",
    } <= failed_ids
    assert not any("wrong-inverse" in nodeid for nodeid in failed_ids), "only= must exclude other components"
    assert passed, "the checks a broken component does not break still pass"
