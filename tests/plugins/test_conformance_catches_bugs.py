"""The interpolant, integrator and contract suites fail on deliberately wrong components
(tests/plugins/broken_components.py), and only on the checks they break.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from mfm_framework.plugins import PluginSystem
from mfm_framework.testing import (
    ComponentContract,
    IntegratorConformance,
    InterpolantConformance,
)
from tests.plugins import broken_components as broken
from tests.plugins.conformance_harness import PlantedBugs


class TestPlantedBugs(PlantedBugs):
    """The planted bugs of broken_components.py."""

    broken = broken
    plugin = "BrokenPlugin"
    plugin_name = "mfm-broken"
    suites: ClassVar[dict[str, type]] = {
        "ComponentContract": ComponentContract,
        "InterpolantConformance": InterpolantConformance,
        "IntegratorConformance": IntegratorConformance,
    }

    def test_suite_selects_broken_components_by_distribution(self, broken_system: PluginSystem) -> None:
        class BrokenInterpolants(InterpolantConformance):
            distribution = broken.DISTRIBUTION

            def get_plugin_system(self) -> PluginSystem:
                return broken_system

        names = [entry.name for entry in BrokenInterpolants().component_entries()]
        assert names == ["no-docstring", "wrong-conversion", "wrong-dbeta", "wrong-inverse"]

    def test_suites_fail_end_to_end_under_pytest(self, pytester: pytest.Pytester) -> None:
        """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
        passed, failed_ids = self.run_third_party(
            pytester,
            ["ComponentContract", "IntegratorConformance", "InterpolantConformance"],
            """
            class TestContract(Mine, ComponentContract):
                pass


            class TestInterpolants(Mine, InterpolantConformance):
                only = ("wrong-dbeta",)


            class TestIntegrators(Mine, IntegratorConformance):
                only = ("fake-heun", "miscounting")
            """,
        )
        assert {
            "TestContract::test_has_docstring[interpolant:no-docstring]",
            "TestContract::test_options_is_frozen_attrs_class[integrator:mutable-options]",
            "TestInterpolants::test_derivatives_match_finite_differences[wrong-dbeta]",
            "TestIntegrators::test_order_on_closed_form_odes[fake-heun]",
            "TestIntegrators::test_nfe_counts_drift_evaluations[miscounting]",
        } <= failed_ids
        assert not any("wrong-inverse" in nodeid for nodeid in failed_ids), "only= must exclude other components"
        assert passed, "the checks a broken component does not break still pass"
