"""Run every conformance suite over every first-party component.

Each suite is restricted to this distribution, so a third-party plugin installed next to the
project (with its own conformance tests) cannot fail the project's suite.
"""

from __future__ import annotations

from mfm_framework.testing import ComponentContract, IntegratorConformance, InterpolantConformance


class TestComponentContract(ComponentContract):
    """The component contract, over every first-party component of every kind."""

    distribution = "mfm-framework"


class TestInterpolantConformance(InterpolantConformance):
    """The interpolant suite, over every first-party interpolant."""

    distribution = "mfm-framework"


class TestIntegratorConformance(IntegratorConformance):
    """The integrator suite, over every first-party integrator."""

    distribution = "mfm-framework"
