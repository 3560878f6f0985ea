"""The backbone, consistency-loss, diagonal-target, data-source and metric suites fail on
deliberately wrong components (tests/plugins/broken_kind_components.py), with messages that say
what is wrong, and only on the checks about the bug.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest

from mfm_framework.testing import (
    BackboneConformance,
    ConsistencyLossConformance,
    DataSourceConformance,
    DiagonalTargetConformance,
    MetricConformance,
)
from tests.plugins import broken_kind_components as broken
from tests.plugins.conformance_harness import PlantedBugs, assert_check_fails


class TestPlantedBugs(PlantedBugs):
    """The planted bugs of broken_kind_components.py."""

    broken = broken
    plugin = "BrokenKindsPlugin"
    plugin_name = "mfm-broken-kinds"
    suites: ClassVar[dict[str, type]] = {
        "BackboneConformance": BackboneConformance,
        "ConsistencyLossConformance": ConsistencyLossConformance,
        "DiagonalTargetConformance": DiagonalTargetConformance,
        "DataSourceConformance": DataSourceConformance,
        "MetricConformance": MetricConformance,
    }

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
    def test_failure_messages_say_what_is_wrong(self, component_cls: type, suite: str, check: str, phrases: list[str]) -> None:
        assert_check_fails(self.suites[suite](), check, component_cls, [component_cls.name, *phrases])

    def test_suites_fail_end_to_end_under_pytest(self, pytester: pytest.Pytester) -> None:
        """A third party's test module runs the suites over its (broken) plugin and sees the failures."""
        passed, failed_ids = self.run_third_party(
            pytester,
            ["DataSourceConformance", "MetricConformance"],
            """
            class TestData(Mine, DataSourceConformance):
                only = ("same-on-every-rank",)


            class TestMetrics(Mine, MetricConformance):
                only = ("in-place-energy", "unsorted-sw2")
            """,
        )
        assert failed_ids == {
            "TestData::test_ranks_get_disjoint_data[same-on-every-rank]",
            "TestMetrics::test_inputs_unchanged[in-place-energy]",
            "TestMetrics::test_noise_floor_below_shifted_laws[unsorted-sw2]",
            "TestMetrics::test_row_order_does_not_matter[unsorted-sw2]",
        }
        assert len(passed) == 4 + 7, "the checks a broken component does not break still pass"


def test_required_options_without_example_skip_naming_the_component() -> None:
    class NeedsOptions(MetricConformance):
        pass

    class Required(broken.GlobalRngSW2):
        """An SW2 whose options have a required field."""

        name = "required-options"

        @attrs.frozen(kw_only=True)
        class Options:
            projections: int

    with pytest.raises(pytest.skip.Exception, match=r"component 'required-options' \(Required\) has required options \['projections'\]"):
        NeedsOptions().test_finite_scalar(Required)

    class WithExample(MetricConformance):
        example_options = {"required-options": {"projections": 8}}  # noqa: RUF012

    assert WithExample().make_component(Required).options.projections == 8
