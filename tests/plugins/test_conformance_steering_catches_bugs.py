"""The reward and value-estimator suites fail on deliberately wrong components, with helpful messages.

The broken components (tests/plugins/broken_steering_components.py) are registered in a plugin
system of their own; each must fail the checks listed for it, with the listed message fragment,
and pass the checks its bug does not concern.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from mfm_estimators.exact import ExactValue
from mfm_estimators.posterior import DPS
from mfm_rewards import LinearReward

from mfm_framework.interfaces import Reward
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import PluginSystem
from mfm_framework.testing import (
    InterpolantConformance,
    RewardConformance,
    ValueEstimatorConformance,
)
from mfm_framework.testing.exact import LinearSchedule

BROKEN_PATH = Path(__file__).with_name("broken_steering_components.py")


def _load_broken() -> ModuleType:
    # By path, so it works under every pytest import mode.
    name = "mfm_test_broken_steering_components"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BROKEN_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


broken = _load_broken()


class BrokenRewards(RewardConformance):
    """The reward suite with the broken rewards' example options."""

    example_options: ClassVar[dict[str, dict[str, Any]]] = broken.EXAMPLE_OPTIONS


SUITES = {"RewardConformance": BrokenRewards, "ValueEstimatorConformance": ValueEstimatorConformance}


@pytest.fixture(scope="module")
def broken_system() -> PluginSystem:
    """A fresh plugin system holding only the broken steering plugin."""
    system = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
    info = system.register(broken.BrokenSteeringPlugin(), name="mfm-broken-steering", distribution=broken.DISTRIBUTION)
    assert info.status == "loaded" and not info.errors, info
    return system


def _expected() -> list[tuple[type, str, str, str]]:
    return [(cls, *case) for cls, cases in broken.EXPECTED_FAILURES.items() for case in cases]


def test_broken_components_are_registered(broken_system: PluginSystem) -> None:
    registry = broken_system.registry
    assert not registry.failures
    assert set(registry.components(kind_by_name("reward"))) == {cls.name for cls in broken.BROKEN_REWARDS}
    assert set(registry.components(kind_by_name("value-estimator"))) == {cls.name for cls in broken.BROKEN_ESTIMATORS}


@pytest.mark.parametrize(
    ("component_cls", "suite", "check", "fragment"), _expected(), ids=[f"{c.name}-{check}" for c, _, check, _ in _expected()]
)
def test_suite_check_fails_on_broken_component(
    broken_system: PluginSystem, component_cls: type, suite: str, check: str, fragment: str
) -> None:
    """Each broken component, taken from the registry, fails its checks with a message naming it and the bug."""
    kind = "reward" if issubclass(component_cls, Reward) else "value-estimator"
    registered = broken_system.registry.get(kind_by_name(kind), component_cls.name).cls
    assert registered is component_cls
    with pytest.raises(AssertionError) as info:
        getattr(SUITES[suite](), check)(registered)
    message = str(info.value)
    assert repr(component_cls.name) in message, message
    assert fragment in message, message


@pytest.mark.parametrize(
    ("component_cls", "suite", "check"),
    [
        (broken.WrongSignGradientReward, "RewardConformance", "test_shape_and_dtype"),
        (broken.WrongSignGradientReward, "RewardConformance", "test_closed_form_matches_values"),
        (broken.WrongSignGradientReward, "RewardConformance", "test_scale_multiplies_reward"),
        (broken.OffsetClosedFormReward, "RewardConformance", "test_closed_form_matches_values"),
        (broken.TrainableReward, "RewardConformance", "test_gradient_matches_finite_differences"),
        (broken.FlippedSignMFMG, "ValueEstimatorConformance", "test_shapes_dtypes_and_finite"),
        (broken.FlippedSignMFMG, "ValueEstimatorConformance", "test_gradients_reach_x_only"),
        (broken.FlippedSignMFMG, "ValueEstimatorConformance", "test_reproducible_with_context_generator"),
        (broken.FlippedSignDPS, "ValueEstimatorConformance", "test_drift_and_grad_value"),
        (broken.LeakyMFMG, "ValueEstimatorConformance", "test_consistent_with_closed_form"),
        (broken.MissingFactorMFMGF, "ValueEstimatorConformance", "test_gradient_free_with_black_box_reward"),
        (broken.DishonestMFMG, "ValueEstimatorConformance", "test_consistent_with_closed_form"),
        (broken.NoLogNMFMG, "ValueEstimatorConformance", "test_linear_reward_gradient"),
        (broken.WrongDriftMFMGF, "ValueEstimatorConformance", "test_consistent_with_closed_form"),
    ],
    ids=lambda v: v.name if isinstance(v, type) else v,
)
def test_unrelated_checks_still_pass(component_cls: type, suite: str, check: str) -> None:
    """The checks are specific: a bug fails the checks about it, not every check."""
    getattr(SUITES[suite](), check)(component_cls)


def test_required_options_without_example_skip_with_the_name() -> None:
    with pytest.raises(pytest.skip.Exception, match=re.escape("reward 'linear' has required options ['a']")):
        RewardConformance().test_shape_and_dtype(LinearReward)
    with pytest.raises(pytest.skip.Exception, match="value estimator 'required-options' has required options"):
        ValueEstimatorConformance().test_shapes_dtypes_and_finite(broken.RequiredOptionsMFMG)

    class WithExample(ValueEstimatorConformance):
        example_options: ClassVar[dict[str, dict[str, Any]]] = {"required-options": {"particles": 8}}

    WithExample().test_shapes_dtypes_and_finite(broken.RequiredOptionsMFMG)


def test_an_oracle_without_data_is_skipped_with_the_reason() -> None:
    """The base suite gives no data law: ``exact`` cannot run and says how to give it one."""
    with pytest.raises(pytest.skip.Exception, match=r"'exact' raised ValueError.*make_data\(\)"):
        ValueEstimatorConformance().test_consistent_with_closed_form(ExactValue)


def test_dps_needs_its_exemption() -> None:
    """DPS really is biased on the quadratic reward (its point mass misses (I + c2 A)^-1), hence ``biased``."""
    with pytest.raises(AssertionError, match="value estimator 'dps': grad V is"):
        ValueEstimatorConformance().test_consistent_with_closed_form(DPS)

    class Exempt(ValueEstimatorConformance):
        biased = ("dps",)

    with pytest.raises(pytest.skip.Exception, match="biased by design"):
        Exempt().test_consistent_with_closed_form(DPS)


def test_the_suites_linear_schedule_is_an_interpolant() -> None:
    """The test double behind the suite's contexts passes the interpolant suite."""
    suite = InterpolantConformance()
    checks = [name for name in dir(suite) if name.startswith("test_")]
    assert len(checks) > 10
    for name in checks:
        getattr(suite, name)(LinearSchedule)


def test_suites_fail_end_to_end_under_pytest(pytester: pytest.Pytester) -> None:
    """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
    pytester.makeconftest('pytest_plugins = ["mfm_framework.testing"]\n')
    pytester.makepyfile(
        test_third_party=f"""
        import importlib.util

        from mfm_framework.plugins import PluginSystem
        from mfm_framework.testing import RewardConformance, ValueEstimatorConformance

        spec = importlib.util.spec_from_file_location("third_party_broken_steering", {str(BROKEN_PATH)!r})
        broken = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(broken)

        SYSTEM = PluginSystem.load(autoload=False, modules=[], blocked=[], trace=False)
        SYSTEM.register(broken.BrokenSteeringPlugin(), name="mfm-broken-steering", distribution=broken.DISTRIBUTION)


        class Mine:
            distribution = broken.DISTRIBUTION

            def get_plugin_system(self):
                return SYSTEM


        class TestRewards(Mine, RewardConformance):
            only = ("column", "wrong-sign-gradient")
            example_options = broken.EXAMPLE_OPTIONS


        class TestEstimators(Mine, ValueEstimatorConformance):
            only = ("flipped-mfm-g", "leaky")
        """
    )
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    passed, _skipped, failed = recorder.listoutcomes()
    failed_ids = {report.nodeid.split("::", 1)[1] for report in failed}
    assert {
        "TestRewards::test_shape_and_dtype[column]",
        "TestRewards::test_gradient_matches_finite_differences[wrong-sign-gradient]",
        "TestEstimators::test_consistent_with_closed_form[flipped-mfm-g]",
        "TestEstimators::test_linear_reward_gradient[flipped-mfm-g]",
        "TestEstimators::test_gradients_reach_x_only[leaky]",
    } <= failed_ids
    assert not any("noisy" in nodeid or "dishonest" in nodeid for nodeid in failed_ids), "only= must exclude other components"
    assert "TestRewards::test_shape_and_dtype[wrong-sign-gradient]" not in failed_ids
    assert passed, "the checks a broken component does not break still pass"
