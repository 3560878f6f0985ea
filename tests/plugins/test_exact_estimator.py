"""The ``exact`` oracle value estimator: the exact steered drift, clear errors, no side effects."""

from __future__ import annotations

import types

import pytest
import torch

from mfm_data import GaussianMixture, GaussianMixtureOptions
from mfm_estimators.exact import EXACT_ESTIMATORS, ExactValue, ExactValueOptions
from mfm_framework.interfaces import SteeringContext, ValueEstimator
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import default_plugin_system
from mfm_framework.rewards import WeightedReward
from mfm_rewards import (
    GaussianLikelihoodReward,
    GaussianMixtureReward,
    GaussianMixtureRewardOptions,
    LinearReward,
    LinearRewardOptions,
    QuadraticReward,
    QuadraticRewardOptions,
)

F64 = torch.float64
RICH = dict(
    preset="custom",
    means=((-2.0, 1.0), (1.5, 2.0), (0.5, -2.0)),
    covariances=(((0.6, 0.25), (0.25, 0.4)), ((0.3, -0.1), (-0.1, 0.8)), ((1.0, 0.0), (0.0, 0.2))),
    weights=(0.2, 0.5, 0.3),
)


def interpolant(name: str):
    return default_plugin_system().registry.get(kind_by_name("interpolant"), name).cls()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


class FakeModel:
    """Stands in for the meta flow map: an outer interpolant and a base drift that counts its calls."""

    def __init__(self, interp) -> None:
        self.interpolant = interp
        self.drift_calls = 0

    def drift(self, *, t, x, cond=None):
        self.drift_calls += 1
        return torch.full_like(x, 7.0)


def rewards() -> dict[str, object]:
    quadratic = QuadraticReward(QuadraticRewardOptions(center=(1.0, -1.0), tau=0.7, scale=1.5))
    mixture = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=((1.5, 1.0), (-1.0, -1.5)), tau=0.6))
    return {
        "linear": LinearReward(LinearRewardOptions(a=(0.8, -0.5), scale=1.3)),
        "quadratic": quadratic,
        "gaussian-likelihood": GaussianLikelihoodReward(),
        "gaussian-mixture": mixture,
        "weighted-sum": WeightedReward([(0.5, quadratic), (1.0, mixture)]),
    }


def inputs(seed: int, b: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    t = 0.02 + 0.96 * torch.rand(b, generator=gen(seed), dtype=F64)
    x = 2.5 * torch.randn(b, 2, generator=gen(seed + 1), dtype=F64)
    return t, x


def test_registered_and_declared() -> None:
    assert EXACT_ESTIMATORS == (ExactValue,)
    entry = default_plugin_system().registry.get(kind_by_name("value-estimator"), "exact")
    assert entry.cls is ExactValue and issubclass(ExactValue, ValueEstimator)
    assert ExactValue.requires_differentiable_reward is False
    with pytest.raises(ValueError, match="'exact_drift' must be true or false"):
        ExactValueOptions(exact_drift=1)


@pytest.mark.parametrize("name", ["linear", "trigonometric"])
@pytest.mark.parametrize("kind", list(rewards()))
def test_exact_steered_drift(kind: str, name: str) -> None:
    """``b_t + g_t grad_value`` is the velocity of the tilted mixture (to 1e-8), under no_grad."""
    data, interp = GaussianMixture(GaussianMixtureOptions(**RICH), dtype=F64), interpolant(name)
    reward = rewards()[kind]
    context = SteeringContext(model=FakeModel(interp), reward=reward, data=data)
    estimator = ExactValue()
    t, x = inputs(sum(map(ord, kind + name)))
    with torch.no_grad():  # the steering engine runs under no_grad
        grad = estimator.grad_value(t=t, x=x, context=context)
        value = estimator.value(t=t, x=x, context=context)
    assert grad.shape == x.shape and grad.dtype == F64 and not grad.requires_grad
    assert value.shape == (24,)
    close(value, data.log_value(t=t, x=x, form=reward.closed_form(), interpolant=interp), 1e-12)
    steered = data.velocity(t=t, x=x, interpolant=interp) + interp.steering_coefficient(t)[:, None] * grad
    close(steered, data.tilted(reward.closed_form()).velocity(t=t, x=x, interpolant=interp), 1e-8)
    assert grad.abs().max() > 0.05  # a zero or wrong-sign gradient would fail above


def test_gradient_flows_to_x_only_and_leaves_x_alone() -> None:
    data, interp = GaussianMixture(GaussianMixtureOptions(**RICH), dtype=F64), interpolant("linear")
    context = SteeringContext(model=FakeModel(interp), reward=GaussianLikelihoodReward(), data=data)
    t, x = inputs(3, b=6)
    x.requires_grad_(True)
    grad = ExactValue().grad_value(t=t, x=x, context=context)
    assert x.grad is None and x.requires_grad and not grad.requires_grad
    # against central finite differences of the value
    eps, fd = 1e-6, torch.zeros_like(grad)
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = eps
        v = lambda z: ExactValue().value(t=t, x=z, context=context)  # noqa: E731
        fd[:, i] = (v(x.detach() + e) - v(x.detach() - e)) / (2 * eps)
    close(grad, fd, 1e-6)


def test_exact_drift_option() -> None:
    data, interp = GaussianMixture(GaussianMixtureOptions(**RICH), dtype=F64), interpolant("trigonometric")
    reward = rewards()["quadratic"]
    model = FakeModel(interp)
    context = SteeringContext(model=model, reward=reward, data=data)
    t, x = inputs(5)
    drift, grad = ExactValue(ExactValueOptions(exact_drift=True)).drift_and_grad_value(t=t, x=x, context=context)
    assert model.drift_calls == 0
    close(drift, data.velocity(t=t, x=x, interpolant=interp), 0)
    close(drift + interp.steering_coefficient(t)[:, None] * grad, data.tilted(reward.closed_form()).velocity(t=t, x=x, interpolant=interp), 1e-8)
    drift, _ = ExactValue().drift_and_grad_value(t=t, x=x, context=context)  # the model's drift by default
    assert model.drift_calls == 1 and (drift == 7.0).all()


def test_the_oracle_never_calls_the_model_up_to_t_1() -> None:
    """With ``exact_drift`` the steering engine's drift is exact on the whole grid, ``g_t = 0`` at t = 1 too."""
    from mfm_framework.steering import steered_sample

    data, interp = GaussianMixture(GaussianMixtureOptions(**RICH), dtype=F64), interpolant("linear")
    reward = rewards()["gaussian-likelihood"]
    model = FakeModel(interp)
    context = SteeringContext(model=model, reward=reward, data=data, generator=gen(3))
    x = torch.randn(16, 2, generator=gen(4), dtype=F64)
    heun = default_plugin_system().registry.get(kind_by_name("integrator"), "heun").cls()
    times = torch.tensor([0.6, 1.0], dtype=F64)
    result = steered_sample(estimator=ExactValue(ExactValueOptions(exact_drift=True)), integrator=heun, context=context, x=x, times=times)
    assert model.drift_calls == 0 and result.cost.base_forwards == 0
    tilted = data.tilted(reward.closed_form())
    first = tilted.velocity(t=times[:1].expand(16), x=x, interpolant=interp)
    guess = x + 0.4 * first
    last = data.velocity(t=times[1:].expand(16), x=guess, interpolant=interp)  # g_1 = 0: the base drift alone
    close(result.samples, x + 0.2 * (first + last), 1e-10)


def test_clear_errors() -> None:
    data, interp = GaussianMixture(GaussianMixtureOptions(**RICH), dtype=F64), interpolant("linear")
    t, x = inputs(6, b=3)
    estimator = ExactValue()
    no_form = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=((0.0, 0.0), (1.0, 1.0)), scale=2.0))
    context = SteeringContext(model=FakeModel(interp), reward=no_form, data=data)
    with pytest.raises(ValueError, match="reward 'gaussian-mixture' has none"):
        estimator.grad_value(t=t, x=x, context=context)
    with pytest.raises(ValueError, match="reward 'gaussian-mixture' has none"):
        estimator.value(t=t, x=x, context=context)
    reward = GaussianLikelihoodReward()
    context = SteeringContext(model=FakeModel(interp), reward=reward)
    with pytest.raises(ValueError, match="no data source \\(context.data is None\\)"):
        estimator.grad_value(t=t, x=x, context=context)
    opaque = types.SimpleNamespace(name="shards")
    context = SteeringContext(model=FakeModel(interp), reward=reward, data=opaque)
    with pytest.raises(ValueError, match="data source 'shards', which has no exact tilts.*'gaussian-likelihood'"):
        estimator.value(t=t, x=x, context=context)
    context = SteeringContext(model=None, reward=reward, data=data)
    with pytest.raises(ValueError, match="context.model.interpolant"):
        estimator.value(t=t, x=x, context=context)
