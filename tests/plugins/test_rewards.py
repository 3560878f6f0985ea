"""The first-party rewards: values against independent formulas, closed forms against the calls, options.

Values are checked in float64 on fresh random inputs against formulas written out here (with
``torch.distributions`` for the Gaussian densities), and each closed form
``logsumexp_j(c_j - x^T P_j x / 2 + h_j^T x)`` against the reward's own ``__call__``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from mfm_framework.interfaces import ExpQuadraticMixture, Reward
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import default_plugin_system
from mfm_rewards import (
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

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(b: int, d: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    return spread * torch.randn(b, d, generator=gen(seed), dtype=F64)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# Each case: (reward, independent reference formula r(x) [B, D] -> [B]).
def _cases() -> list[tuple[str, Reward, object]]:
    a, c3 = (0.7, -1.3, 0.4), (1.0, -0.5, 2.0)
    big_a = ((1.0, 0.5, -0.2), (0.3, -1.0, 0.8))
    y = (0.4, -1.1)
    centers = ((1.0, 0.0, -1.0), (-2.0, 1.0, 0.5), (0.0, 2.0, 1.0))
    nu = (0.2, 0.5, 1.3)

    def mixture(x: torch.Tensor, cs, weights, tau: float, scale: float) -> torch.Tensor:
        comps = [MultivariateNormal(torch.tensor(c, dtype=F64), tau**2 * torch.eye(len(c), dtype=F64)) for c in cs]
        logs = torch.stack([math.log(w) + n.log_prob(x) for w, n in zip(weights, comps)], -1)
        return scale * logs.logsumexp(-1)

    return [
        ("linear", LinearReward(LinearRewardOptions(a=a, b=0.3, scale=1.7)),
         lambda x: 1.7 * (x @ torch.tensor(a, dtype=F64) + 0.3)),
        ("quadratic", QuadraticReward(QuadraticRewardOptions(center=c3, tau=0.6, scale=2.5)),
         lambda x: -2.5 * ((x - torch.tensor(c3, dtype=F64)) ** 2).sum(-1) / (2 * 0.36)),
        ("gaussian-likelihood", GaussianLikelihoodReward(GaussianLikelihoodRewardOptions(A=big_a, y=y, sigma=0.5, scale=0.8)),
         lambda x: -0.8 * ((torch.tensor(y, dtype=F64) - x @ torch.tensor(big_a, dtype=F64).T) ** 2).sum(-1) / (2 * 0.25)),
        ("gaussian-mixture", GaussianMixtureReward(GaussianMixtureRewardOptions(centers=centers, tau=0.8, weights=nu)),
         lambda x: mixture(x, centers, nu, 0.8, 1.0)),
        ("gaussian-mixture-one-scaled", GaussianMixtureReward(GaussianMixtureRewardOptions(centers=(c3,), tau=1.5, scale=3.0)),
         lambda x: mixture(x, (c3,), (1.0,), 1.5, 3.0)),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("label", "reward", "reference"), CASES, ids=IDS)
def test_value_matches_independent_formula(label: str, reward: Reward, reference) -> None:
    x = points(64, 3, seed=sum(map(ord, label)))
    r = reward(x)
    assert r.shape == (64,) and r.dtype == F64
    close(r, reference(x))


@pytest.mark.parametrize(("label", "reward", "reference"), CASES, ids=IDS)
def test_closed_form_matches_call(label: str, reward: Reward, reference) -> None:
    form = reward.closed_form()
    assert isinstance(form, ExpQuadraticMixture)
    x = points(64, 3, seed=1 + sum(map(ord, label)), spread=3.0)
    # The form written out by hand (not via ExpQuadraticMixture.reward), term by term.
    quad = torch.stack(
        [form.log_scale[j] - 0.5 * ((x @ form.precision[j]) * x).sum(-1) + x @ form.shift[j] for j in range(form.num_terms)],
        -1,
    )
    close(quad.logsumexp(-1), reward(x), tol=1e-9)
    close(form.reward(x), reward(x), tol=1e-9)


@pytest.mark.parametrize(("label", "reward", "reference"), CASES, ids=IDS)
def test_gradient_and_float32(label: str, reward: Reward, reference) -> None:
    assert reward.is_differentiable
    x = points(16, 3, seed=7).requires_grad_(True)
    (g,) = torch.autograd.grad(reward(x).sum(), x)
    (g_ref,) = torch.autograd.grad(reference(x).sum(), x)
    close(g, g_ref, tol=1e-9)
    x32 = x.detach().float()
    r32 = reward(x32)
    assert r32.dtype == torch.float32 and r32.shape == (16,)
    torch.testing.assert_close(r32, reference(x.detach()).float(), rtol=1e-4, atol=1e-4)


def test_gaussian_likelihood_defaults_are_the_paper_task() -> None:
    reward = GaussianLikelihoodReward()
    assert reward.options.A == ((1.2, -0.8),) and reward.options.y == (-1.0,) and reward.options.sigma == 0.2
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-0.5, 0.5]], dtype=F64)
    expected = -((-1.0 - (1.2 * x[:, 0] - 0.8 * x[:, 1])) ** 2) / (2 * 0.04)
    close(reward(x), expected)
    form = reward.closed_form()
    a = torch.tensor([[1.2, -0.8]], dtype=F64)
    close(form.precision[0], a.T @ a / 0.04)
    close(form.shift[0], -a[0] / 0.04)
    close(form.log_scale, torch.tensor([-1.0 / 0.08], dtype=F64))


def test_gaussian_mixture_far_from_centres_is_finite() -> None:
    reward = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=((0.0, 0.0), (1.0, 1.0)), tau=0.1))
    x = torch.tensor([[50.0, -40.0]], dtype=F64)
    r = reward(x)
    assert torch.isfinite(r).all()
    # Far away the nearer centre dominates: r ~ log(1/2) - |x - c|^2 / (2 tau^2) - log(2 pi tau^2).
    near = math.log(0.5) - (49.0**2 + 41.0**2) / (2 * 0.01) - math.log(2 * math.pi * 0.01)
    assert abs(r.item() - near) < 1e-6


def test_mixture_with_scale_has_no_closed_form() -> None:
    several = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=((0.0, 0.0), (1.0, 1.0)), scale=2.0))
    assert several.closed_form() is None
    assert GaussianMixtureReward(GaussianMixtureRewardOptions(centers=((0.0, 0.0), (1.0, 1.0)))).closed_form() is not None


def test_default_weights_are_uniform() -> None:
    centers = ((0.0, 1.0), (2.0, -1.0), (1.0, 1.0), (3.0, 0.0))
    plain = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=centers, tau=0.5))
    explicit = GaussianMixtureReward(GaussianMixtureRewardOptions(centers=centers, tau=0.5, weights=(0.25,) * 4))
    x = points(8, 2, seed=3)
    close(plain(x), explicit(x))


@pytest.mark.parametrize(("label", "reward", "reference"), CASES, ids=IDS)
def test_wrong_dimension_is_a_clear_error(label: str, reward: Reward, reference) -> None:
    with pytest.raises(ValueError, match=rf"'{reward.name}' reward takes x_1 of shape \[B, 3\].*got \(4, 2\)"):
        reward(torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        reward(torch.zeros(3, dtype=F64))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LinearRewardOptions(a=()), "'a' must be a non-empty array"),
        (lambda: LinearRewardOptions(a=(1.0, float("nan"))), "'a' must be a non-empty array of finite numbers"),
        (lambda: LinearRewardOptions(a=(1.0,), scale=0.0), "'scale' must be a finite number > 0"),
        (lambda: LinearRewardOptions(a=(1.0,), scale=-1.0), "'scale' must be a finite number > 0"),
        (lambda: QuadraticRewardOptions(center=(0.0,), tau=0.0), "'tau' must be a finite number > 0"),
        (lambda: QuadraticRewardOptions(center=(0.0,), tau=float("inf")), "'tau' must be a finite number > 0"),
        (lambda: GaussianLikelihoodRewardOptions(sigma=-0.2), "'sigma' must be a finite number > 0"),
        (lambda: GaussianLikelihoodRewardOptions(A=((1.0, 2.0), (3.0,)), y=(0.0, 0.0)), "'A' rows must all have the same length"),
        (lambda: GaussianLikelihoodRewardOptions(A=((1.0, 2.0),), y=(0.0, 1.0)), "'y' has 2 entries but 'A' has 1 rows"),
        (lambda: GaussianLikelihoodRewardOptions(A=()), "'A' must be a non-empty array of arrays"),
        (lambda: GaussianMixtureRewardOptions(centers=((0.0, 0.0),), weights=(1.0, 2.0)), "'weights' has 2 entries but there are 1 'centers'"),
        (lambda: GaussianMixtureRewardOptions(centers=((0.0, 0.0),), weights=(0.0,)), "'weights' must be a non-empty array of finite numbers > 0"),
        (lambda: GaussianMixtureRewardOptions(centers=((0.0, 0.0), (1.0,))), "'centers' rows must all have the same length"),
        (lambda: GaussianMixtureRewardOptions(centers=((0.0, 0.0),), tau=-1.0), "'tau' must be a finite number > 0"),
    ],
)
def test_bad_options_are_clear_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_lists_become_tuples() -> None:
    options = GaussianLikelihoodRewardOptions(A=[[1.0, 0.0], [0.0, 1.0]], y=[0.5, 0.5])
    assert options.A == ((1.0, 0.0), (0.0, 1.0)) and options.y == (0.5, 0.5)
    hash(options)


def test_registered_under_their_names() -> None:
    registry = default_plugin_system().registry
    components = registry.components(kind_by_name("reward"))
    for cls in REWARDS:
        assert components[cls.name].cls is cls
    assert {cls.name for cls in REWARDS} == {"linear", "quadratic", "gaussian-likelihood", "gaussian-mixture"}


def test_exp_quadratic_mixture_validates_shapes() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        ExpQuadraticMixture(precision=torch.zeros(2, 3, 3), shift=torch.zeros(1, 3), log_scale=torch.zeros(2))
    with pytest.raises(ValueError, match=r"precision \[J, D, D\]"):
        ExpQuadraticMixture(precision=torch.zeros(3, 3), shift=torch.zeros(1, 3), log_scale=torch.zeros(1))
    form = QuadraticReward(QuadraticRewardOptions(center=(1.0, 2.0))).closed_form()
    with pytest.raises(ValueError, match="single-term"):
        ExpQuadraticMixture(
            precision=form.precision.expand(2, 2, 2), shift=form.shift.expand(2, 2), log_scale=form.log_scale.expand(2)
        ).scaled(2.0)
    x = points(5, 2, seed=11)
    close(form.scaled(3.0).reward(x), 3.0 * form.reward(x))
