"""Run every conformance suite over every first-party component."""

from __future__ import annotations

from mfm_framework.testing import ComponentContract, IntegratorConformance, InterpolantConformance


class TestComponentContract(ComponentContract):
    """The component contract, over every registered component of every kind."""


class TestInterpolantConformance(InterpolantConformance):
    """The interpolant suite, over every registered interpolant."""


class TestIntegratorConformance(IntegratorConformance):
    """The integrator suite, over every registered integrator."""
