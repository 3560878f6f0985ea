"""First-party data sources: ``gmm`` (Gaussian mixtures with exact ground truth)."""

from mfm_data.gmm import GaussianMixture, GaussianMixtureOptions, GaussianMixturePosterior
from mfm_framework import hookimpl

__all__ = ["GaussianMixture", "GaussianMixtureOptions", "GaussianMixturePosterior", "mfm_data_sources"]


@hookimpl
def mfm_data_sources() -> list[type]:
    return [GaussianMixture]
