"""Run the backbone, consistency-loss, diagonal-target, data-source and metric suites over every
first-party component of their kinds (restricted to this distribution, as test_conformance.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from mfm_framework.testing import (
    BackboneConformance,
    ConsistencyLossConformance,
    DataSourceConformance,
    DiagonalTargetConformance,
    MetricConformance,
)


class TestBackboneConformance(BackboneConformance):
    """The backbone suite, over every first-party backbone."""

    distribution = "mfm-framework"


class TestConsistencyLossConformance(ConsistencyLossConformance):
    """The consistency-loss suite, over every first-party loss (default options)."""

    distribution = "mfm-framework"


class TestDiagonalTargetConformance(DiagonalTargetConformance):
    """The diagonal-target suite, over every first-party target."""

    distribution = "mfm-framework"


class TestDataSourceConformance(DataSourceConformance):
    """The data-source suite, over every first-party data source (default options)."""

    distribution = "mfm-framework"


class TestLabelledDataSourceConformance(DataSourceConformance):
    """The data-source suite on a labelled mixture (the label checks need ``num_classes``)."""

    distribution = "mfm-framework"
    only = ("gmm",)
    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {"gmm": {"preset": "ring-8", "labelled": True}}


class TestMetricConformance(MetricConformance):
    """The metric suite, over every first-party metric."""

    distribution = "mfm-framework"
