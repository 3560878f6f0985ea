"""Run every conformance suite over every first-party component.

Each suite is restricted to this distribution, so a third-party plugin installed next to the
project (with its own conformance tests) cannot fail the project's suite. The first-party settings
live here: a labelled run of the data-source suite, example options for the rewards whose options
have no defaults, ``dps`` exempt from the consistency check (its point-mass posterior is biased by
design), and the ``exact`` oracle's data law (a one-component Gaussian mixture equal to the
suite's Gaussian data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from mfm_data import GaussianMixture

from mfm_framework.testing import (
    BackboneConformance,
    ComponentContract,
    ConsistencyLossConformance,
    DataSourceConformance,
    DiagonalTargetConformance,
    IntegratorConformance,
    InterpolantConformance,
    MetricConformance,
    RewardConformance,
    ValueEstimatorConformance,
)


class FirstParty:
    """Mixin restricting a suite to this distribution's components."""

    distribution = "mfm-framework"


class TestComponentContract(FirstParty, ComponentContract):
    """The component contract, over every first-party component of every kind."""


class TestInterpolantConformance(FirstParty, InterpolantConformance):
    """The interpolant suite, over every first-party interpolant."""


class TestIntegratorConformance(FirstParty, IntegratorConformance):
    """The integrator suite, over every first-party integrator."""


class TestBackboneConformance(FirstParty, BackboneConformance):
    """The backbone suite, over every first-party backbone."""


class TestConsistencyLossConformance(FirstParty, ConsistencyLossConformance):
    """The consistency-loss suite, over every first-party loss (default options)."""


class TestDiagonalTargetConformance(FirstParty, DiagonalTargetConformance):
    """The diagonal-target suite, over every first-party target."""


class TestDataSourceConformance(FirstParty, DataSourceConformance):
    """The data-source suite, over every first-party data source (default options)."""


class TestLabelledDataSourceConformance(FirstParty, DataSourceConformance):
    """The data-source suite on a labelled mixture (the label checks need ``num_classes``)."""

    only = ("gmm",)
    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {"gmm": {"preset": "ring-8", "labelled": True}}


class TestMetricConformance(FirstParty, MetricConformance):
    """The metric suite, over every first-party metric."""


class TestRewardConformance(FirstParty, RewardConformance):
    """The reward suite, over every first-party reward (example options for those without defaults)."""

    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "linear": {"a": (0.7, -1.3, 0.4), "b": 0.3},
        "quadratic": {"center": (1.0, -0.5, 2.0), "tau": 0.6},
        "gaussian-mixture": {"centers": ((1.0, 0.0, -1.0), (-2.0, 1.0, 0.5)), "tau": 0.8, "weights": (0.3, 1.2)},
    }


class TestValueEstimatorConformance(FirstParty, ValueEstimatorConformance):
    """The value-estimator suite, over every first-party value estimator."""

    biased = ("dps",)

    def make_data(self) -> GaussianMixture:
        """``N(mean 1, std^2 I)`` as a one-component Gaussian mixture (the ``exact`` oracle's data law)."""
        f64 = torch.float64
        return GaussianMixture.from_parameters(
            means=torch.full((1, self.dim), self.mean, dtype=f64),
            covariances=self.std**2 * torch.eye(self.dim, dtype=f64)[None],
            weights=torch.ones(1, dtype=f64),
            dtype=f64,
        )
