"""First-party value estimators: ``mfm-g``, ``mfm-gf``, ``dps``, ``glass-mc`` and the ``exact`` oracle."""

from mfm_framework import hookimpl
from mfm_estimators.exact import EXACT_ESTIMATORS
from mfm_estimators.posterior import POSTERIOR_ESTIMATORS

__all__ = ["EXACT_ESTIMATORS", "POSTERIOR_ESTIMATORS", "mfm_value_estimators"]


@hookimpl
def mfm_value_estimators() -> list[type]:
    return [*POSTERIOR_ESTIMATORS, *EXACT_ESTIMATORS]
