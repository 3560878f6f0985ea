"""Conformance suites for mfm components, as a pytest plugin.

Enable the plugin in a ``conftest.py`` at the top of your tests and subclass the suites in a test
module; pytest then runs every check of a suite once per registered component of its kind::

    # conftest.py
    pytest_plugins = ["mfm_framework.testing"]

    # test_conformance.py
    from mfm_framework.testing import ComponentContract, InterpolantConformance

    class TestContract(ComponentContract):
        distribution = "mfm-my-plugin"   # only my distribution's components

    class TestInterpolants(InterpolantConformance):
        pass

Suites (one per kind that has one):

- ``ComponentContract``: the component contract, over every kind;
- ``InterpolantConformance``: ``interpolant``;
- ``IntegratorConformance``: ``integrator``;
- ``RewardConformance``: ``reward`` (rewards with required options need ``example_options``);
- ``ValueEstimatorConformance``: ``value-estimator``, on closed-form Gaussian contexts
  (``biased`` lists estimators exempt from the consistency check; ``make_data`` gives exact
  oracles their data law);
- ``BackboneConformance``: ``backbone`` (``data_shapes`` per name for backbones of other shapes);
- ``ConsistencyLossConformance``: ``consistency-loss``, on the exact flow map of Gaussian data;
- ``DiagonalTargetConformance``: ``diagonal-target``, against the exact conditional drift;
- ``DataSourceConformance``: ``data-source``;
- ``MetricConformance``: ``metric`` (``shapes`` per name for metrics of other sample shapes).

The suites that build components with options (reward, value-estimator and the five above) take
``example_options`` per component name; a component whose options have required fields and no
example is skipped, with a message naming it.

Selecting components:

- ``--mfm-components=NAME1,NAME2`` on the command line restricts every suite to these component
  names (``KIND:NAME``, e.g. ``interpolant:linear``, names one component of one kind);
- a suite's class attributes ``only = ("name", ...)`` and ``distribution = "dist-name"`` restrict
  that suite;
- a suite whose selection is empty reports one skipped test, with the reason, instead of erroring.

Each check is a plain method taking ``component_cls``, so a check can also be called directly, e.g.
``InterpolantConformance().test_boundary_values(MyInterpolant)`` raises ``AssertionError`` when
the component is wrong. A suite subclass can override ``make_component(component_cls)`` to check
non-default options, and ``get_plugin_system()`` to check another plugin system's registry.
The session fixture ``mfm_plugin_system`` is the process-wide plugin system.

This module is what pytest imports; it stays light (no torch). The suites are imported on first
access of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from mfm_framework.plugins import PluginSystem
    from mfm_framework.testing._suite import ConformanceSuite, applies_to, select_components
    from mfm_framework.testing.backbone import BackboneConformance
    from mfm_framework.testing.contract import ComponentContract
    from mfm_framework.testing.data import DataSourceConformance
    from mfm_framework.testing.estimator import ValueEstimatorConformance
    from mfm_framework.testing.integrator import IntegratorConformance
    from mfm_framework.testing.interpolant import InterpolantConformance
    from mfm_framework.testing.loss import ConsistencyLossConformance
    from mfm_framework.testing.metric import MetricConformance
    from mfm_framework.testing.reward import RewardConformance
    from mfm_framework.testing.target import DiagonalTargetConformance

__all__ = [
    "BackboneConformance",
    "ComponentContract",
    "ConformanceSuite",
    "ConsistencyLossConformance",
    "DataSourceConformance",
    "DiagonalTargetConformance",
    "IntegratorConformance",
    "InterpolantConformance",
    "MetricConformance",
    "RewardConformance",
    "ValueEstimatorConformance",
    "applies_to",
    "mfm_plugin_system",
    "pytest_addoption",
    "select_components",
]

#: The command-line option (and its ``config.getoption`` destination) that selects components.
OPTION = "--mfm-components"
OPTION_DEST = "mfm_components"

_LAZY = {
    "BackboneConformance": "mfm_framework.testing.backbone",
    "ComponentContract": "mfm_framework.testing.contract",
    "ConformanceSuite": "mfm_framework.testing._suite",
    "ConsistencyLossConformance": "mfm_framework.testing.loss",
    "DataSourceConformance": "mfm_framework.testing.data",
    "DiagonalTargetConformance": "mfm_framework.testing.target",
    "IntegratorConformance": "mfm_framework.testing.integrator",
    "InterpolantConformance": "mfm_framework.testing.interpolant",
    "MetricConformance": "mfm_framework.testing.metric",
    "RewardConformance": "mfm_framework.testing.reward",
    "ValueEstimatorConformance": "mfm_framework.testing.estimator",
    "applies_to": "mfm_framework.testing._suite",
    "select_components": "mfm_framework.testing._suite",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--mfm-components=NAME1,NAME2``."""
    group = parser.getgroup("mfm", "mfm component conformance suites")
    group.addoption(
        OPTION,
        dest=OPTION_DEST,
        default=None,
        metavar="NAME1,NAME2",
        help=(
            "run the mfm conformance suites over these components only: comma-separated "
            "component names, or KIND:NAME (e.g. interpolant:linear) for one kind"
        ),
    )


@pytest.fixture(scope="session")
def mfm_plugin_system() -> PluginSystem:
    """The process-wide :class:`~mfm_framework.plugins.PluginSystem` (entry points and environment)."""
    from mfm_framework.plugins import default_plugin_system

    return default_plugin_system()
