"""The reward and value-estimator suites fail on deliberately wrong components, with helpful messages.

The broken components (tests/plugins/broken_steering_components.py) are registered in a plugin
system of their own; each must fail the checks listed for it, with a message naming it and the
listed fragment, and pass the checks its bug does not concern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from mfm_estimators.exact import ExactValue
from mfm_estimators.posterior import DPS
from mfm_rewards import LinearReward

from mfm_framework.testing import (
    InterpolantConformance,
    RewardConformance,
    ValueEstimatorConformance,
)
from mfm_framework.testing.exact import LinearSchedule
from tests.plugins import broken_steering_components as broken
from tests.plugins.conformance_harness import PlantedBugs


class BrokenRewards(RewardConformance):
    """The reward suite with the broken rewards' example options."""

    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = broken.EXAMPLE_OPTIONS


class TestPlantedBugs(PlantedBugs):
    """The planted bugs of broken_steering_components.py."""

    broken = broken
    plugin = "BrokenSteeringPlugin"
    plugin_name = "mfm-broken-steering"
    suites: ClassVar[dict[str, type]] = {
        "RewardConformance": BrokenRewards,
        "ValueEstimatorConformance": ValueEstimatorConformance,
    }
    names_in_messages = True

    def broken_components(self) -> set[type]:
        return {*broken.BROKEN_REWARDS, *broken.BROKEN_ESTIMATORS}

    def test_suites_fail_end_to_end_under_pytest(self, pytester: pytest.Pytester) -> None:
        """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
        passed, failed_ids = self.run_third_party(
            pytester,
            ["RewardConformance", "ValueEstimatorConformance"],
            """
            class TestRewards(Mine, RewardConformance):
                only = ("column", "wrong-sign-gradient")
                example_options = broken.EXAMPLE_OPTIONS


            class TestEstimators(Mine, ValueEstimatorConformance):
                only = ("flipped-mfm-g", "leaky")
            """,
        )
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


def test_required_options_without_example_skip_with_the_name() -> None:
    with pytest.raises(pytest.skip.Exception, match=re.escape("reward 'linear' has required options ['a']")):
        RewardConformance().test_shape_and_dtype(LinearReward)
    with pytest.raises(pytest.skip.Exception, match="value estimator 'required-options' has required options"):
        ValueEstimatorConformance().test_shapes_dtypes_and_finite(broken.RequiredOptionsMFMG)

    class WithExample(ValueEstimatorConformance):
        example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {"required-options": {"particles": 8}}

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
