"""Run the reward and value-estimator conformance suites over every first-party component.

Each suite is restricted to this distribution. The first-party rewards whose options have no
defaults get example options here, ``dps`` is exempt from the consistency check (its point-mass
posterior is biased by design), and the ``exact`` oracle gets its data law: a one-component
Gaussian mixture equal to the suite's Gaussian data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from mfm_data import GaussianMixture

from mfm_framework.testing import RewardConformance, ValueEstimatorConformance


class TestRewardConformance(RewardConformance):
    """The reward suite, over every first-party reward."""

    distribution = "mfm-framework"
    example_options: ClassVar[dict[str, dict[str, Any]]] = {
        "linear": {"a": (0.7, -1.3, 0.4), "b": 0.3},
        "quadratic": {"center": (1.0, -0.5, 2.0), "tau": 0.6},
        "gaussian-mixture": {"centers": ((1.0, 0.0, -1.0), (-2.0, 1.0, 0.5)), "tau": 0.8, "weights": (0.3, 1.2)},
    }


class TestValueEstimatorConformance(ValueEstimatorConformance):
    """The value-estimator suite, over every first-party value estimator."""

    distribution = "mfm-framework"
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
