"""Deliberately wrong rewards and value estimators, to prove the steering conformance suites catch real bugs.

Each class names the bug it carries; :data:`EXPECTED_FAILURES` lists, per component, the suite
checks that must fail on it and a fragment of the message each failure must show, and
:data:`STILL_PASSING` checks that must not fail (the checks are specific).
:class:`BrokenSteeringPlugin` registers them all (through the ordinary hooks).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from mfm_estimators.posterior import DPS, MFMGradient, MFMGradientFree
from mfm_rewards import QuadraticReward
from torch import Tensor

from mfm_framework import hookimpl
from mfm_framework.interfaces import ExpQuadraticMixture, SteeringContext
from mfm_framework.interfaces._time import pad_time
from mfm_framework.model import batch_times

__all__ = [
    "DISTRIBUTION",
    "EXAMPLE_OPTIONS",
    "EXPECTED_FAILURES",
    "STILL_PASSING",
    "BrokenSteeringPlugin",
]

DISTRIBUTION = "mfm-broken-steering"


# --------------------------------------------------------------------------- rewards
# All are the first-party quadratic reward r = -scale |x - c|^2 / (2 tau^2) with one bug.


class _FlipGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward."""

    @staticmethod
    def forward(ctx: Any, r: Tensor) -> Tensor:  # type: ignore[override]
        return r.view_as(r)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


class WrongSignGradientReward(QuadraticReward):
    """Quadratic reward whose autograd gradient has the wrong sign (the values are right)."""

    name = "wrong-sign-gradient"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return _FlipGradient.apply(super().__call__(x_1, cond=cond))


class DetachedReward(QuadraticReward):
    """Quadratic reward that detaches its output while declaring ``is_differentiable = True``."""

    name = "detached"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return super().__call__(x_1, cond=cond).detach()


class ColumnReward(QuadraticReward):
    """Quadratic reward returning ``[B, 1]`` instead of ``[B]``."""

    name = "column"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return super().__call__(x_1, cond=cond)[:, None]


class Float64Reward(QuadraticReward):
    """Quadratic reward that always returns float64."""

    name = "float64"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return super().__call__(x_1.double(), cond=cond)


class OverflowReward(QuadraticReward):
    """``r = exp(|x|^2 / 2)``: infinite in float32 far from the origin."""

    name = "overflow"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return (0.5 * x_1.square().sum(-1)).exp()


class NoisyReward(QuadraticReward):
    """Quadratic reward plus fresh noise at every call."""

    name = "noisy"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        r = super().__call__(x_1, cond=cond)
        return r + 1e-3 * torch.randn_like(r)


class InPlaceReward(QuadraticReward):
    """Quadratic reward that clamps its input in place."""

    name = "in-place"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        if not x_1.requires_grad:
            x_1.clamp_(-1.0, 1.0)
        return super().__call__(x_1, cond=cond)


class TrainableReward(QuadraticReward):
    """Quadratic reward whose centre is a parameter that requires grad (it would be trained)."""

    name = "trainable"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.center = torch.nn.Parameter(torch.tensor(self.options.center, dtype=torch.float64))

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        k = self.options.scale / (2 * self.options.tau**2)
        return -k * (x_1 - self.center.to(x_1.dtype)).square().sum(-1)


class WrongClosedFormReward(QuadraticReward):
    """Quadratic reward whose closed form has the centre's sign flipped (``h = -scale c / tau^2``)."""

    name = "wrong-closed-form"

    def closed_form(self) -> ExpQuadraticMixture:
        form = super().closed_form()
        return ExpQuadraticMixture(precision=form.precision, shift=-form.shift, log_scale=form.log_scale)


class OffsetClosedFormReward(QuadraticReward):
    """Not a bug: a closed form off by an additive constant (the suite allows it)."""

    name = "offset-closed-form"

    def closed_form(self) -> ExpQuadraticMixture:
        form = super().closed_form()
        return ExpQuadraticMixture(precision=form.precision, shift=form.shift, log_scale=form.log_scale + 3.0)


class ScaleIgnoredReward(QuadraticReward):
    """Quadratic reward that ignores its ``scale`` option."""

    name = "scale-ignored"

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return super().__call__(x_1, cond=cond) / self.options.scale


BROKEN_REWARDS: tuple[type, ...] = (
    WrongSignGradientReward,
    DetachedReward,
    ColumnReward,
    Float64Reward,
    OverflowReward,
    NoisyReward,
    InPlaceReward,
    TrainableReward,
    WrongClosedFormReward,
    OffsetClosedFormReward,
    ScaleIgnoredReward,
)

#: Example options of the broken rewards (the quadratic reward's ``center`` is required).
EXAMPLE_OPTIONS: dict[str, dict[str, Any]] = {cls.name: {"center": (1.0, -0.5, 2.0), "tau": 0.8} for cls in BROKEN_REWARDS}


# --------------------------------------------------------------------------- value estimators


class FlippedSignMFMG(MFMGradient):
    """MFM-G whose gradient has the wrong sign."""

    name = "flipped-mfm-g"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return -super().grad_value(t=t, x=x, context=context)


class FlippedSignDPS(DPS):
    """DPS whose gradient has the wrong sign (exempt from the consistency check, caught anyway)."""

    name = "flipped-dps"

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        drift, grad = super().drift_and_grad_value(t=t, x=x, context=context)
        return drift, -grad


class MissingFactorMFMGF(MFMGradientFree):
    """MFM-GF without the factor ``beta_t / alpha_t^2``."""

    name = "missing-factor-mfm-gf"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        interp = context.model.interpolant
        t_ = batch_times(t, x.shape[0], x)
        return super().grad_value(t=t, x=x, context=context) / pad_time(interp.beta(t_) / interp.alpha(t_) ** 2, x)


class NoLogNMFMG(MFMGradient):
    """MFM-G whose value forgets ``- log N`` (``logsumexp_i r_i`` instead of the log of a mean)."""

    name = "no-log-n"

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return super().value(t=t, x=x, context=context) + torch.log(torch.tensor(float(self.options.particles)))


def _log_sum_exp_reward(est: MFMGradient, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
    """``sum_b logsumexp_i r(x_1^(b,i))`` over ``est``'s posterior draws at ``(t, x)``: what MFM-G differentiates."""
    draws = est.draws(t=t, x=x, context=context)
    n = draws.shape[1]
    r = context.reward(draws.reshape(-1, *draws.shape[2:])).reshape(-1, n)
    return torch.logsumexp(r, dim=1).sum()


class LeakyMFMG(MFMGradient):
    """MFM-G that calls ``.backward()``: the gradient also reaches the model's and the reward's parameters."""

    name = "leaky"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            _log_sum_exp_reward(self, t=t, x=x_, context=context).backward()
        return x_.grad


class AttachedMFMG(MFMGradient):
    """MFM-G returning a gradient that is still attached to a graph (``create_graph=True``)."""

    name = "attached"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_log_sum_exp_reward(self, t=t, x=x_, context=context), [x_], create_graph=True)
        return grad


class NoGradFragileMFMG(MFMGradient):
    """MFM-G that forgets ``torch.enable_grad()``: it fails under the engine's ``torch.no_grad()``."""

    name = "no-grad-fragile"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        x_ = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_log_sum_exp_reward(self, t=t, x=x_, context=context), [x_])
        return grad


class GlobalRngMFMG(MFMGradient):
    """MFM-G drawing its posterior noise from the global generator instead of ``context.generator``."""

    name = "global-rng-mfm-g"

    def draws(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        n = self.options.particles
        eps = torch.randn((x.shape[0], n, *x.shape[1:]), dtype=x.dtype)
        return context.model.sample_posterior(t=t, x=x, n=n, cond=context.cond, eps=eps)


class DishonestMFMG(MFMGradient):
    """MFM-G that declares ``requires_differentiable_reward = False`` (it back-propagates through the reward)."""

    name = "dishonest"
    requires_differentiable_reward = False


class WrongDriftMFMGF(MFMGradientFree):
    """MFM-GF whose ``drift_and_grad_value`` returns the denoiser ``D_t(x)`` as the drift."""

    name = "wrong-drift"

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            denoised = context.model.denoise(t=t, x=x, cond=context.cond)
        return denoised, self.grad_value(t=t, x=x, context=context)


class HalfGradientInDriftMFMGF(MFMGradientFree):
    """MFM-GF whose ``drift_and_grad_value`` returns half the gradient of ``grad_value``."""

    name = "half-gradient-in-drift"

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        drift, grad = super().drift_and_grad_value(t=t, x=x, context=context)
        return drift, 0.5 * grad


class InPlaceMFMGF(MFMGradientFree):
    """MFM-GF that clamps ``x`` in place."""

    name = "in-place-x"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        if not x.requires_grad:
            x.clamp_(-1.0, 1.0)
        return super().grad_value(t=t, x=x, context=context)


class Float64MFMGF(MFMGradientFree):
    """MFM-GF whose gradient is always float64."""

    name = "float64-mfm-gf"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return super().grad_value(t=t, x=x, context=context).double()


class ColumnValueMFMGF(MFMGradientFree):
    """MFM-GF whose value is ``[B, 1]`` instead of ``[B]``."""

    name = "column-value"

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return super().value(t=t, x=x, context=context)[:, None]


@attrs.frozen(kw_only=True)
class _NeedsOptions:
    """Options without defaults."""

    particles: int
    posterior_steps: int = 1


class RequiredOptionsMFMG(MFMGradient):
    """Not a bug: MFM-G whose options have a required field (the suite needs example options)."""

    name = "required-options"
    Options = _NeedsOptions


BROKEN_ESTIMATORS: tuple[type, ...] = (
    FlippedSignMFMG,
    FlippedSignDPS,
    MissingFactorMFMGF,
    NoLogNMFMG,
    LeakyMFMG,
    AttachedMFMG,
    NoGradFragileMFMG,
    GlobalRngMFMG,
    DishonestMFMG,
    WrongDriftMFMGF,
    HalfGradientInDriftMFMGF,
    InPlaceMFMGF,
    Float64MFMGF,
    ColumnValueMFMGF,
    RequiredOptionsMFMG,
)

R, E = "RewardConformance", "ValueEstimatorConformance"

#: Per broken component: (suite, check, fragment of the failure message) that must fail on it.
EXPECTED_FAILURES: dict[type, list[tuple[str, str, str]]] = {
    WrongSignGradientReward: [(R, "test_gradient_matches_finite_differences", "central finite differences")],
    DetachedReward: [(R, "test_gradient_matches_finite_differences", "declares is_differentiable = True")],
    ColumnReward: [(R, "test_shape_and_dtype", "returned shape (16, 1), expected (16,)")],
    Float64Reward: [(R, "test_shape_and_dtype", "on torch.float32 inputs returned torch.float64")],
    OverflowReward: [(R, "test_finite_values", "are not finite on torch.float32 inputs of spread 10.0")],
    NoisyReward: [(R, "test_deterministic_without_side_effects", "is not deterministic")],
    InPlaceReward: [(R, "test_deterministic_without_side_effects", "modified its input in place")],
    TrainableReward: [(R, "test_no_gradient_to_reward_parameters", "holds tensors that require grad: center")],
    WrongClosedFormReward: [(R, "test_closed_form_matches_values", "is not constant over 16 inputs")],
    ScaleIgnoredReward: [
        (R, "test_scale_multiplies_reward", "scale 1.0 -> 2.5 must multiply r by 2.5"),
    ],
    FlippedSignMFMG: [
        (E, "test_consistent_with_closed_form", "off the closed form, relative"),
        (E, "test_linear_reward_gradient", "off the closed form (d mu / d x) w"),
    ],
    FlippedSignDPS: [
        (E, "test_linear_reward_gradient", "ratio grad / exact (first coordinate) is [-1.0"),
    ],
    MissingFactorMFMGF: [
        (E, "test_consistent_with_closed_form", "ratio |got| / |exact|"),
        (E, "test_linear_reward_gradient", "off the closed form"),
    ],
    NoLogNMFMG: [(E, "test_consistent_with_closed_form", "off the closed form at t =")],
    LeakyMFMG: [(E, "test_gradients_reach_x_only", "gave .grad to model.backbone.gain, reward.c")],
    AttachedMFMG: [(E, "test_shapes_dtypes_and_finite", "grad_value must be detached")],
    NoGradFragileMFMG: [(E, "test_works_under_no_grad", "fails under an outer torch.no_grad()")],
    GlobalRngMFMG: [(E, "test_reproducible_with_context_generator", "same context.generator seed")],
    DishonestMFMG: [(E, "test_gradient_free_with_black_box_reward", "declares requires_differentiable_reward = False")],
    WrongDriftMFMGF: [(E, "test_drift_and_grad_value", "must return the base drift")],
    HalfGradientInDriftMFMGF: [(E, "test_drift_and_grad_value", "the gradient of drift_and_grad_value differs from grad_value")],
    InPlaceMFMGF: [(E, "test_gradients_reach_x_only", "modified x in place")],
    Float64MFMGF: [(E, "test_shapes_dtypes_and_finite", "grad_value returned torch.float64 for torch.float32")],
    ColumnValueMFMGF: [(E, "test_shapes_dtypes_and_finite", "value returned (6, 1), expected (6,)")],
}

#: Checks that must still pass on a broken component: each bug fails the checks about it only.
STILL_PASSING: list[tuple[type, str, str]] = [
    (WrongSignGradientReward, R, "test_shape_and_dtype"),
    (WrongSignGradientReward, R, "test_closed_form_matches_values"),
    (WrongSignGradientReward, R, "test_scale_multiplies_reward"),
    (OffsetClosedFormReward, R, "test_closed_form_matches_values"),
    (TrainableReward, R, "test_gradient_matches_finite_differences"),
    (FlippedSignMFMG, E, "test_shapes_dtypes_and_finite"),
    (FlippedSignMFMG, E, "test_gradients_reach_x_only"),
    (FlippedSignMFMG, E, "test_reproducible_with_context_generator"),
    (FlippedSignDPS, E, "test_drift_and_grad_value"),
    (LeakyMFMG, E, "test_consistent_with_closed_form"),
    (MissingFactorMFMGF, E, "test_gradient_free_with_black_box_reward"),
    (DishonestMFMG, E, "test_consistent_with_closed_form"),
    (NoLogNMFMG, E, "test_linear_reward_gradient"),
    (WrongDriftMFMGF, E, "test_consistent_with_closed_form"),
]


class BrokenSteeringPlugin:
    """A plugin registering every broken reward and value estimator through the ordinary hooks."""

    @hookimpl
    def mfm_rewards(self) -> list[type]:
        return list(BROKEN_REWARDS)

    @hookimpl
    def mfm_value_estimators(self) -> list[type]:
        return list(BROKEN_ESTIMATORS)
