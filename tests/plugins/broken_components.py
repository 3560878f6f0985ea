"""Deliberately wrong components, to prove that the conformance suites catch real bugs.

Each class names the bug it carries; :data:`EXPECTED_FAILURES` lists, per component, suite checks
that must fail on it, and :data:`STILL_PASSING` checks that must not (the checks are specific).
:class:`BrokenPlugin` registers them all (through the ordinary hooks).
"""

from __future__ import annotations

import math

import attrs
import torch
from mfm_integrators import EulerIntegrator, EulerMaruyamaIntegrator, HeunIntegrator
from mfm_interpolants import LinearInterpolant, TrigonometricInterpolant
from torch import Tensor

from mfm_framework import hookimpl

__all__ = [
    "DISTRIBUTION",
    "EXPECTED_FAILURES",
    "STILL_PASSING",
    "BrokenPlugin",
    "DoubleNoiseIntegrator",
    "FakeHeunIntegrator",
    "GlobalRngIntegrator",
    "MiscountingIntegrator",
    "MutableOptionsIntegrator",
    "NoDocstringInterpolant",
    "WrongConversionInterpolant",
    "WrongDbetaInterpolant",
    "WrongInverseInterpolant",
]

DISTRIBUTION = "mfm-broken-components"


class WrongDbetaInterpolant(LinearInterpolant):
    """Linear schedule whose ``dbeta`` is 10% too large."""

    name = "wrong-dbeta"

    def dbeta(self, t: Tensor) -> Tensor:
        return torch.full_like(t, 1.1)


class WrongInverseInterpolant(TrigonometricInterpolant):
    """Trigonometric schedule whose ``time_from_snr`` forgets the square root."""

    name = "wrong-inverse"

    def time_from_snr(self, snr: Tensor) -> Tensor:
        return torch.atan(snr) * (2 / math.pi)


class WrongConversionInterpolant(LinearInterpolant):
    """Linear schedule with a sign error in the closed form ``b = (D - x) / (1 - t)``."""

    name = "wrong-conversion"

    def velocity_from_denoiser(self, *, t: Tensor | float, x: Tensor, denoiser: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim == 1 else t
        return (x - denoiser) / (1 - t)


class NoDocstringInterpolant(LinearInterpolant):
    name = "no-docstring"


class FakeHeunIntegrator(EulerIntegrator):
    """Explicit Euler that claims to be of order 2."""

    name = "fake-heun"
    order = 2


class MiscountingIntegrator(HeunIntegrator):
    """Heun's method that reports one drift evaluation a step instead of two."""

    name = "miscounting"

    def step(self, drift, *, t, x, t_next, diffusion, generator, last):  # type: ignore[no-untyped-def]
        x_next, _ = super().step(drift, t=t, t_next=t_next, x=x, diffusion=diffusion, generator=generator, last=last)
        return x_next, 1


class DoubleNoiseIntegrator(EulerMaruyamaIntegrator):
    """Euler-Maruyama with Brownian increments of variance ``2 |h|`` instead of ``|h|``."""

    name = "double-noise"

    def step(self, drift, *, t, x, t_next, diffusion, generator, last):  # type: ignore[no-untyped-def]
        if diffusion is not None:
            inner = diffusion

            def diffusion(*, t: Tensor, x: Tensor) -> Tensor:
                return math.sqrt(2) * inner(t=t, x=x)

        return super().step(drift, t=t, t_next=t_next, x=x, diffusion=diffusion, generator=generator, last=last)


class GlobalRngIntegrator(EulerMaruyamaIntegrator):
    """Euler-Maruyama that ignores the generator it is given and draws from the global one."""

    name = "global-rng"

    def step(self, drift, *, t, x, t_next, diffusion, generator, last):  # type: ignore[no-untyped-def]
        return super().step(drift, t=t, t_next=t_next, x=x, diffusion=diffusion, generator=None, last=last)


@attrs.define(kw_only=True)
class MutableOptions:
    """Options that forgot ``frozen``."""

    steps_hint: int = 1


class MutableOptionsIntegrator(EulerIntegrator):
    """Explicit Euler with a mutable options class."""

    name = "mutable-options"
    Options = MutableOptions


#: Per broken component: (suite, check) pairs that must raise ``AssertionError`` on it.
EXPECTED_FAILURES: dict[type, list[tuple[str, str]]] = {
    WrongDbetaInterpolant: [
        ("InterpolantConformance", "test_derivatives_match_finite_differences"),
        ("InterpolantConformance", "test_interpolate_and_velocity_target"),
    ],
    WrongInverseInterpolant: [
        ("InterpolantConformance", "test_time_from_snr_inverts_snr"),
        ("InterpolantConformance", "test_glass_fusion_at_t_zero_is_the_inner_state"),
        ("InterpolantConformance", "test_glass_fusion_matches_gaussian_posterior"),
    ],
    WrongConversionInterpolant: [
        ("InterpolantConformance", "test_conversion_round_trips"),
        ("InterpolantConformance", "test_conversions_match_gaussian_closed_form"),
    ],
    NoDocstringInterpolant: [("ComponentContract", "test_has_docstring"), ("ComponentContract", "test_summary_is_non_empty")],
    FakeHeunIntegrator: [
        ("IntegratorConformance", "test_order_on_closed_form_odes"),
        ("IntegratorConformance", "test_order_on_decreasing_grid"),
    ],
    MiscountingIntegrator: [("IntegratorConformance", "test_nfe_counts_drift_evaluations")],
    DoubleNoiseIntegrator: [
        ("IntegratorConformance", "test_sde_moments_on_fine_grid"),
        ("IntegratorConformance", "test_sde_weak_order"),
    ],
    GlobalRngIntegrator: [("IntegratorConformance", "test_sde_generator_reproducibility")],
    MutableOptionsIntegrator: [("ComponentContract", "test_options_is_frozen_attrs_class")],
}

#: Checks that must still pass on a broken component: each bug fails the checks about it only.
STILL_PASSING: list[tuple[type, str, str]] = [
    (WrongDbetaInterpolant, "InterpolantConformance", "test_time_from_snr_inverts_snr"),
    (WrongInverseInterpolant, "InterpolantConformance", "test_derivatives_match_finite_differences"),
    (FakeHeunIntegrator, "IntegratorConformance", "test_keep_path"),
    (DoubleNoiseIntegrator, "IntegratorConformance", "test_sde_generator_reproducibility"),
]


class BrokenPlugin:
    """A plugin registering every broken component through the ordinary hooks."""

    @hookimpl
    def mfm_interpolants(self) -> list[type]:
        return [WrongDbetaInterpolant, WrongInverseInterpolant, WrongConversionInterpolant, NoDocstringInterpolant]

    @hookimpl
    def mfm_integrators(self) -> list[type]:
        return [FakeHeunIntegrator, MiscountingIntegrator, DoubleNoiseIntegrator, GlobalRngIntegrator, MutableOptionsIntegrator]
