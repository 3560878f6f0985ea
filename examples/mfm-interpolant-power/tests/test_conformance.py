"""The ``power`` interpolant: mfm's conformance suites restricted to it, plus its closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from mfm_framework.kinds import kind_by_name
from mfm_framework.testing import ComponentContract, InterpolantConformance
from mfm_interpolant_power import PowerInterpolant, PowerOptions

F64 = torch.float64


class TestContract(ComponentContract):
    """Name, frozen keyword-only options, docstring, construction with default options."""

    only = ("power",)


class TestInterpolant(InterpolantConformance):
    """The interpolant suite (MATH.md sections 1, 3 and 6) at the default power p = 2."""

    only = ("power",)
    power = 2.0

    def make_component(self, component_cls):
        return component_cls(component_cls.Options(power=self.power))


class TestInterpolantCubic(TestInterpolant):
    """The same suite at p = 3."""

    power = 3.0


def test_registered_through_the_entry_point(mfm_plugin_system):
    entry = mfm_plugin_system.registry.get(kind_by_name("interpolant"), "power")
    assert entry.cls is PowerInterpolant
    assert entry.distribution == "mfm-interpolant-power"


def test_closed_forms_at_power_two():
    """p = 2: ``alpha = 1 - t^2``, ``beta = t^2``, snr = 1 at ``t = 1/sqrt(2)``, ``g_t = 2 (1 - t^2) / t``."""
    ip = PowerInterpolant(PowerOptions(power=2.0))
    t = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(ip.alpha(t), 1 - t * t)
    torch.testing.assert_close(ip.beta(t), t * t)
    torch.testing.assert_close(ip.dalpha(t), -2 * t)
    torch.testing.assert_close(ip.dbeta(t), 2 * t)
    snr = torch.tensor([0.0, 1.0, math.inf], dtype=F64)
    torch.testing.assert_close(ip.time_from_snr(snr), torch.tensor([0.0, 2**-0.5, 1.0], dtype=F64))
    inside = t[1:-1]
    torch.testing.assert_close(ip.steering_coefficient(inside), 2 * (1 - inside**2) / inside)
    torch.testing.assert_close(ip.steering_coefficient(t[:1], max=5.0), torch.tensor([5.0], dtype=F64))


@pytest.mark.parametrize("power", [0.5, 0.0, -1.0, math.inf, math.nan])
def test_powers_outside_one_to_inf_are_refused(power):
    with pytest.raises(ValueError, match="'power' must be"):
        PowerOptions(power=power)
