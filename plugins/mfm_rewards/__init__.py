"""First-party rewards: ``linear``, ``quadratic``, ``gaussian-likelihood``, ``gaussian-mixture``."""

from mfm_framework import hookimpl
from mfm_rewards.rewards import (
    REWARDS,
    GaussianLikelihoodReward,
    GaussianLikelihoodRewardOptions,
    GaussianMixtureReward,
    GaussianMixtureRewardOptions,
    LinearReward,
    LinearRewardOptions,
    QuadraticReward,
    QuadraticRewardOptions,
)

__all__ = [
    "GaussianLikelihoodReward",
    "GaussianLikelihoodRewardOptions",
    "GaussianMixtureReward",
    "GaussianMixtureRewardOptions",
    "LinearReward",
    "LinearRewardOptions",
    "QuadraticReward",
    "QuadraticRewardOptions",
    "REWARDS",
    "mfm_rewards",
]


@hookimpl
def mfm_rewards() -> list[type]:
    return list(REWARDS)
