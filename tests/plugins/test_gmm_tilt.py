"""Exact tilts of the ``gmm`` data source by closed-form rewards (MATH.md sections 6 and 8).

Checked in float64 against computations that do not share the tilt algebra:

- the tilted law ``p_1 exp(r) / Z`` against numerical integration of ``p_1 exp(r)`` on a 2-D grid;
- the exact value ``V_t(x)`` against Monte Carlo over exact posterior draws (a few standard errors);
- the tilted marginals against ``p_t exp(V_t) / Z`` pointwise;
- the key identity: the exact steered drift ``b_t + g_t grad V_t`` (data velocity, the interpolant's
  steering coefficient, autograd of ``V_t``) equals the velocity of the tilted mixture, to 1e-8,
  on fresh random inputs, for both interpolants, every reward kind and a weighted sum.
"""

from __future__ import annotations

import math

import pytest
import torch

from mfm_data import GaussianMixture, GaussianMixtureOptions
from mfm_framework.interfaces import ExactData, ExpQuadraticMixture, Reward, TiltableData
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import default_plugin_system
from mfm_framework.rewards import WeightedReward
from mfm_rewards import (
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
INTERPOLANTS = ["linear", "trigonometric"]
Z = 5.0  # Monte Carlo tolerance in standard errors

RICH = dict(
    preset="custom",
    means=((-2.0, 1.0), (1.5, 2.0), (0.5, -2.0)),
    covariances=(((0.6, 0.25), (0.25, 0.4)), ((0.3, -0.1), (-0.1, 0.8)), ((1.0, 0.0), (0.0, 0.2))),
    weights=(0.2, 0.5, 0.3),
)
FULL3 = dict(
    preset="custom",
    means=((0.5, -1.0, 1.0), (-1.0, 1.0, 0.0)),
    covariances=(
        ((1.0, 0.3, -0.2), (0.3, 0.5, 0.1), (-0.2, 0.1, 0.8)),
        ((0.4, -0.15, 0.05), (-0.15, 0.9, 0.3), (0.05, 0.3, 0.6)),
    ),
    weights=(0.4, 0.6),
)


def gmm(options: dict) -> GaussianMixture:
    return GaussianMixture(GaussianMixtureOptions(**options), dtype=F64)


def interpolant(name: str):
    return default_plugin_system().registry.get(kind_by_name("interpolant"), name).cls()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def rewards(d: int) -> dict[str, Reward]:
    """One reward of each kind in ``d`` = 2 or 3 dimensions, and a weighted sum of three of them."""
    if d == 2:
        linear = LinearReward(LinearRewardOptions(a=(0.8, -0.5), b=0.2, scale=1.3))
        quadratic = QuadraticReward(QuadraticRewardOptions(center=(1.0, -1.0), tau=0.7, scale=1.5))
        likelihood = GaussianLikelihoodReward()  # the paper's 2-D task
        mixture = GaussianMixtureReward(
            GaussianMixtureRewardOptions(centers=((1.5, 1.0), (-1.0, -1.5)), tau=0.6, weights=(0.3, 0.7))
        )
    else:
        linear = LinearReward(LinearRewardOptions(a=(0.5, -0.3, 0.8), b=-0.4, scale=1.2))
        quadratic = QuadraticReward(QuadraticRewardOptions(center=(1.0, 0.0, -1.0), tau=0.8, scale=2.0))
        likelihood = GaussianLikelihoodReward(
            GaussianLikelihoodRewardOptions(A=((1.0, 0.5, -0.2), (0.3, -1.0, 0.8)), y=(0.4, -1.1), sigma=0.5)
        )
        mixture = GaussianMixtureReward(
            GaussianMixtureRewardOptions(centers=((1.0, 0.0, -1.0), (-1.0, 1.0, 0.5)), tau=0.7, weights=(0.6, 0.9))
        )
    weighted = WeightedReward([(0.5, quadratic), (1.0, mixture), (0.7, linear)])
    return {
        "linear": linear,
        "quadratic": quadratic,
        "gaussian-likelihood": likelihood,
        "gaussian-mixture": mixture,
        "weighted-sum": weighted,
    }


KINDS = list(rewards(2))


def form_of(reward: Reward) -> ExpQuadraticMixture:
    form = reward.closed_form()
    assert form is not None
    return form


def grid(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    ticks = torch.linspace(lo, hi, n, dtype=F64)
    return torch.cartesian_prod(ticks, ticks), (ticks[1] - ticks[0]).item() ** 2


# --------------------------------------------------------------------------- the tilted law


@pytest.mark.parametrize("kind", KINDS)
def test_tilted_law_against_grid_integration(kind: str) -> None:
    g = gmm(RICH)
    reward = rewards(2)[kind]
    form = form_of(reward)
    x, cell = grid(-10.0, 10.0, 801)
    log_unnorm = g.log_prob(x) + reward(x)  # log p_1 + r, from the reward's own __call__
    log_z = log_unnorm.logsumexp(0) + math.log(cell)
    close(g.log_partition(form), log_z, tol=1e-8)

    tilted = g.tilted(form)
    assert isinstance(tilted, GaussianMixture) and tilted.num_components == g.num_components * form.num_terms
    assert tilted.dtype == F64 and tilted.data_shape == (2,)
    probe = 3.0 * torch.randn(500, 2, generator=gen(1), dtype=F64)
    close(tilted.log_prob(probe), g.log_prob(probe) + reward(probe) - log_z, tol=1e-8)

    p = (log_unnorm - log_z).exp() * cell
    mean = (p[:, None] * x).sum(0)
    cov = (p[:, None, None] * (x - mean)[:, :, None] * (x - mean)[:, None, :]).sum(0)
    close(tilted.mean, mean, tol=1e-8)
    close(tilted.covariance, cov, tol=1e-8)


def test_tilted_samples_have_the_tilted_moments() -> None:
    g = gmm(RICH)
    tilted = g.tilted(form_of(rewards(2)["weighted-sum"]))
    x = tilted.sample(40_000, generator=gen(2)).x_1
    assert x.shape == (40_000, 2) and x.dtype == F64
    se = x.std(0) / math.sqrt(x.shape[0])
    assert (se < 0.01).all()
    assert ((x.mean(0) - tilted.mean).abs() < Z * se).all()
    # and not the untilted mean (the check can fail)
    assert ((x.mean(0) - g.mean).abs() > 20 * se).any()


def test_tilting_twice_is_tilting_by_the_sum() -> None:
    g = gmm(RICH)
    rs = rewards(2)
    f1, f2 = form_of(rs["quadratic"]), form_of(rs["gaussian-mixture"])
    both = form_of(WeightedReward([(1.0, rs["quadratic"]), (1.0, rs["gaussian-mixture"])]))
    twice, once = g.tilted(f1).tilted(f2), g.tilted(both)
    probe = 3.0 * torch.randn(300, 2, generator=gen(3), dtype=F64)
    close(twice.log_prob(probe), once.log_prob(probe), tol=1e-9)
    assert isinstance(twice, TiltableData) and isinstance(twice, ExactData)


def test_linear_reward_shifts_each_component_by_s_a() -> None:
    """Tilting N(mu, S) by exp(a.x) gives N(mu + S a, S) with weight ~ pi exp(a.mu + a^T S a / 2)."""
    g = gmm(RICH)
    a = torch.tensor([0.8, -0.5], dtype=F64) * 1.3
    tilted = g.tilted(form_of(rewards(2)["linear"]))
    mu, s, pi = g.means, g.covariances, g.weights
    close(tilted.means, mu + torch.einsum("kij,j->ki", s, a), tol=1e-12)
    close(tilted.covariances, s, tol=1e-12)
    w = pi * torch.exp(mu @ a + 0.5 * torch.einsum("i,kij,j->k", a, s, a))
    close(tilted.weights, w / w.sum(), tol=1e-12)


def test_from_parameters_round_trip() -> None:
    g = gmm(FULL3)
    h = GaussianMixture.from_parameters(means=g.means, covariances=g.covariances, weights=3 * g.weights, dtype=F64)
    close(h.means, g.means, tol=0)
    close(h.covariances, g.covariances, tol=0)
    close(h.weights, g.weights, tol=1e-15)
    with pytest.raises(ValueError, match="means \\[K, d\\], covariances \\[K, d, d\\]"):
        GaussianMixture.from_parameters(means=g.means, covariances=g.covariances[:, :2], weights=g.weights)


def test_errors() -> None:
    g = gmm(RICH)
    diverging = ExpQuadraticMixture(
        precision=-3.0 * torch.eye(2, dtype=F64)[None], shift=torch.zeros(1, 2, dtype=F64), log_scale=torch.zeros(1, dtype=F64)
    )
    with pytest.raises(ValueError, match="E\\[exp r\\] is infinite"):
        g.tilted(diverging)
    with pytest.raises(ValueError, match="3-dimensional but the gmm data are 2-dimensional"):
        g.tilted(form_of(rewards(3)["quadratic"]))
    with pytest.raises(ValueError, match="3-dimensional but the gmm data are 2-dimensional"):
        g.log_value(t=0.5, x=torch.zeros(1, 2, dtype=F64), form=form_of(rewards(3)["quadratic"]), interpolant=interpolant("linear"))
    with pytest.raises(TypeError, match="ExpQuadraticMixture"):
        g.tilted(rewards(2)["quadratic"])  # the reward itself, not its closed form
    # A diverging expectation is +inf (not a silent finite number): at t = 0 the posterior is p_1.
    v = g.log_value(t=0.0, x=torch.zeros(2, 2, dtype=F64), form=diverging, interpolant=interpolant("linear"))
    assert torch.isinf(v).all() and (v > 0).all()


# --------------------------------------------------------------------------- the exact value


@pytest.mark.parametrize("name", INTERPOLANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_value_against_monte_carlo(kind: str, name: str) -> None:
    g, reward, interp = gmm(RICH), rewards(2)[kind], interpolant(name)
    form = form_of(reward)
    n, b = 40_000, 4
    t = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=F64)
    # Contexts from the tilted marginals, where the posterior and the reward overlap (so the
    # importance weights exp r are not degenerate and the Monte Carlo error is small).
    x_1 = g.tilted(form).sample(b, generator=gen(4)).x_1
    x = interp.alpha(t)[:, None] * torch.randn(b, 2, generator=gen(5), dtype=F64) + interp.beta(t)[:, None] * x_1
    v = g.log_value(t=t, x=x, form=form, interpolant=interp)
    assert v.shape == (b,) and v.dtype == F64
    draws = g.posterior_sample(t=t, x=x, n=n, interpolant=interp, generator=gen(6))
    r = reward(draws.reshape(b * n, 2)).reshape(b, n)
    w = (r - r.amax(1, keepdim=True)).exp()  # exp r up to a factor per context
    mc = r.amax(1) + w.mean(1).log()
    se = w.std(1) / w.mean(1) / math.sqrt(n)  # delta method for log of a mean
    assert (se < 0.03).all(), se
    assert ((v - mc).abs() < Z * se + 1e-12).all(), (v, mc, se)


@pytest.mark.parametrize("name", INTERPOLANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_tilted_marginals_are_p_t_exp_v(kind: str, name: str) -> None:
    """``p^r_t(x) = p_t(x) exp(V_t(x)) / Z``: the tilted marginals against the value, pointwise."""
    g, interp = gmm(RICH), interpolant(name)
    form = form_of(rewards(2)[kind])
    tilted, log_z = g.tilted(form), g.log_partition(form)
    t = 0.02 + 0.96 * torch.rand(64, generator=gen(7), dtype=F64)
    x = 2.5 * torch.randn(64, 2, generator=gen(8), dtype=F64)
    v = g.log_value(t=t, x=x, form=form, interpolant=interp)
    close(tilted.marginal_log_prob(t=t, x=x, interpolant=interp), g.marginal_log_prob(t=t, x=x, interpolant=interp) + v - log_z, 1e-9)


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_value_at_the_ends(name: str) -> None:
    g, interp = gmm(RICH), interpolant(name)
    for kind, reward in rewards(2).items():
        form = form_of(reward)
        x = 2.0 * torch.randn(16, 2, generator=gen(9), dtype=F64)
        v0 = g.log_value(t=torch.zeros(16, dtype=F64), x=x, form=form, interpolant=interp)
        close(v0, g.log_partition(form).expand(16), 1e-10)
        v1 = g.log_value(t=torch.ones(16, dtype=F64), x=x, form=form, interpolant=interp)
        close(v1, reward(x), 1e-9)  # the posterior at t = 1 is a point mass at x
        assert kind  # (parametrised by reward kind inside the loop)


# --------------------------------------------------------------------------- the key identity


@pytest.mark.parametrize("name", INTERPOLANTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [RICH, FULL3], ids=["rich-2d", "full-3d"])
def test_exact_steered_drift_is_the_tilted_velocity(kind: str, name: str, options: dict) -> None:
    g, interp = gmm(options), interpolant(name)
    d = g.data_shape[0]
    form = form_of(rewards(d)[kind])
    tilted = g.tilted(form)
    seed = sum(map(ord, kind + name)) + d
    t = 0.02 + 0.96 * torch.rand(32, generator=gen(seed), dtype=F64)
    x = 2.5 * torch.randn(32, d, generator=gen(seed + 1), dtype=F64)

    xx = x.clone().requires_grad_(True)
    v = g.log_value(t=t, x=xx, form=form, interpolant=interp)
    (grad_v,) = torch.autograd.grad(v.sum(), xx)
    base = g.velocity(t=t, x=x, interpolant=interp)
    gt = interp.steering_coefficient(t)
    steered = base + gt[:, None] * grad_v
    target = tilted.velocity(t=t, x=x, interpolant=interp)
    close(steered, target, tol=1e-8)

    # The steering term matters here, so a missing term or a wrong sign would fail.
    assert (gt[:, None] * grad_v).abs().max() > 0.1
    assert (base - target).abs().max() > 0.1
    assert (base - gt[:, None] * grad_v - target).abs().max() > 0.1


def test_log_value_keeps_the_dtype_of_x() -> None:
    g = GaussianMixture(GaussianMixtureOptions(**RICH))  # float32 samples
    form = form_of(rewards(2)["gaussian-likelihood"])
    x = torch.randn(5, 2, generator=gen(10)).requires_grad_(True)
    v = g.log_value(t=torch.full((5,), 0.5), x=x, form=form, interpolant=interpolant("linear"))
    assert v.dtype == torch.float32 and v.shape == (5,)
    (grad,) = torch.autograd.grad(v.sum(), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
