"""The backbone, consistency-loss, diagonal-target, data-source and metric suites fail on
deliberately wrong components (tests/plugins/broken_kind_components.py), with messages that say
what is wrong, and only on the checks about the bug.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import PluginSystem
from mfm_framework.testing import (
    BackboneConformance,
    ConsistencyLossConformance,
    DataSourceConformance,
    DiagonalTargetConformance,
    MetricConformance,
)

BROKEN_PATH = Path(__file__).with_name("broken_kind_components.py")


def _load_broken() -> ModuleType:
    # By path, so it works under every pytest import mode.
    name = "mfm_test_broken_kind_components"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BROKEN_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


broken = _load_broken()

SUITES = {
    "BackboneConformance": BackboneConformance,
    "ConsistencyLossConformance": ConsistencyLossConformance,
    "DiagonalTargetConformance": DiagonalTargetConformance,
    "DataSourceConformance": DataSourceConformance,
    "MetricConformance": MetricConformance,
}


@pytest.fixture(scope="module")
def broken_system() -> PluginSystem:
    """A fresh plugin system holding only the broken plugin."""
    system = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
    info = system.register(broken.BrokenKindsPlugin(), name="mfm-broken-kinds", distribution=broken.DISTRIBUTION)
    assert info.status == "loaded" and not info.errors, info
    return system


def _expected() -> list[tuple[type, str, str]]:
    return [(cls, suite, check) for cls, checks in broken.EXPECTED_FAILURES.items() for suite, check in checks]


def test_every_broken_component_is_registered(broken_system: PluginSystem) -> None:
    registered = {
        entry.cls
        for suite in SUITES.values()
        for entry in broken_system.registry.components(kind_by_name(suite.kind)).values()
    }
    assert not broken_system.registry.failures
    assert registered == set(broken.EXPECTED_FAILURES)


@pytest.mark.parametrize(
    ("component_cls", "suite", "check"), _expected(), ids=[f"{c.name}-{check}" for c, _, check in _expected()]
)
def test_suite_check_fails_on_broken_component(broken_system: PluginSystem, component_cls: type, suite: str, check: str) -> None:
    """Each broken component, taken from the registry it was registered into, fails its checks."""
    registered = broken_system.registry.get(kind_by_name(SUITES[suite].kind), component_cls.name).cls
    assert registered is component_cls
    with pytest.raises(AssertionError):
        getattr(SUITES[suite](), check)(registered)


@pytest.mark.parametrize(
    ("component_cls", "suite", "check"), broken.STILL_PASSING, ids=[f"{c.name}-{check}" for c, _, check in broken.STILL_PASSING]
)
def test_unrelated_checks_still_pass(component_cls: type, suite: str, check: str) -> None:
    """The checks are specific: a bug fails the checks about it, not every check."""
    getattr(SUITES[suite](), check)(component_cls)


@pytest.mark.parametrize(
    ("component_cls", "suite", "check", "phrases"),
    [
        (broken.FusedAttentionBackbone, "BackboneConformance", "test_jvp_matches_finite_differences", ["supports_jvp", "scaled_dot_product_attention"]),
        (broken.SqueezingBackbone, "BackboneConformance", "test_output_shape_and_dtype", ["batch 1", "batch dimension"]),
        (broken.UnusedParameterBackbone, "BackboneConformance", "test_gradients_reach_every_parameter", ["gate", "DDP"]),
        (broken.IgnoresContextTimeBackbone, "BackboneConformance", "test_depends_on_every_input", ["['t']"]),
        (broken.WrongTangentEulerianLoss, "ConsistencyLossConformance", "test_zero_on_the_exact_map", ["must vanish", "consistency"]),
        (broken.ContextDriftMeanFlowLoss, "ConsistencyLossConformance", "test_exact_map_is_stationary", ["expected gradient", "standard error"]),
        (broken.UndeclaredJvpLoss, "ConsistencyLossConformance", "test_runs_without_forward_mode", ["requires_jvp = True"]),
        (broken.UnconditionalTeacher, "DiagonalTargetConformance", "test_unbiased_for_the_exact_drift", ["t = 0.3", "exact conditional drift"]),
        (broken.AttachedDataTarget, "DiagonalTargetConformance", "test_shape_dtype_and_detached", ["detached"]),
        (broken.GlobalRngMixture, "DataSourceConformance", "test_batches_reproducible_per_seed", ["generator"]),
        (broken.OneBasedLabels, "DataSourceConformance", "test_batches_shape_and_labels", ["outside [0, num_classes = 3)"]),
        (broken.UnsortedSW2, "MetricConformance", "test_noise_floor_below_shifted_laws", ["not near 0", "same law"]),
        (broken.GlobalRngSW2, "MetricConformance", "test_generator_reproducibility", ["global random state"]),
    ],
    ids=lambda value: getattr(value, "name", None) if isinstance(value, type) else "",
)
def test_failure_messages_say_what_is_wrong(component_cls: type, suite: str, check: str, phrases: list[str]) -> None:
    with pytest.raises(AssertionError) as info:
        getattr(SUITES[suite](), check)(component_cls)
    message = str(info.value)
    assert component_cls.name in message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in the failure message:\n{message}"


def test_required_options_without_example_skip_naming_the_component() -> None:
    class NeedsOptions(MetricConformance):
        pass

    class Required(broken.GlobalRngSW2):
        """An SW2 whose options have a required field."""

        name = "required-options"

        @__import__("attrs").frozen(kw_only=True)
        class Options:
            projections: int

    with pytest.raises(pytest.skip.Exception, match=r"component 'required-options' \(Required\) has required options \['projections'\]"):
        NeedsOptions().test_finite_scalar(Required)

    class WithExample(MetricConformance):
        example_options = {"required-options": {"projections": 8}}  # noqa: RUF012

    assert WithExample().make_component(Required).options.projections == 8


def test_suites_fail_end_to_end_under_pytest(pytester: pytest.Pytester) -> None:
    """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
    pytester.makeconftest('pytest_plugins = ["mfm_framework.testing"]\n')
    pytester.makepyfile(
        test_third_party=f"""
        import importlib.util

        from mfm_framework.plugins import PluginSystem
        from mfm_framework.testing import DataSourceConformance, MetricConformance

        spec = importlib.util.spec_from_file_location("third_party_broken_kinds", {str(BROKEN_PATH)!r})
        broken = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(broken)

        SYSTEM = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
        SYSTEM.register(broken.BrokenKindsPlugin(), name="mfm-broken-kinds", distribution=broken.DISTRIBUTION)


        class Mine:
            distribution = broken.DISTRIBUTION

            def get_plugin_system(self):
                return SYSTEM


        class TestData(Mine, DataSourceConformance):
            only = ("same-on-every-rank",)


        class TestMetrics(Mine, MetricConformance):
            only = ("in-place-energy", "unsorted-sw2")
        """
    )
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    passed, _, failed = recorder.listoutcomes()
    failed_ids = {report.nodeid.split("::", 1)[1] for report in failed}
    assert failed_ids == {
        "TestData::test_ranks_get_disjoint_data[same-on-every-rank]",
        "TestMetrics::test_inputs_unchanged[in-place-energy]",
        "TestMetrics::test_noise_floor_below_shifted_laws[unsorted-sw2]",
        "TestMetrics::test_row_order_does_not_matter[unsorted-sw2]",
    }
    assert len(passed) == 4 + 7, "the checks a broken component does not break still pass"
