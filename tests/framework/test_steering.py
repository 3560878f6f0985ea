"""The steered sampling engine reaches the exactly tilted law when b and grad V are exact.

Gaussian data ``N(m, s^2 I)`` (the exact Gaussian meta flow map gives the exact base drift) and a
quadratic reward: the tilted law and its marginals are Gaussian (tests/steering_helpers.py).
"""

from __future__ import annotations

import pytest
import torch

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext
from mfm_framework.steering import SteeredResult, steered_sample, unsteered_start
from tests.steering_helpers import (
    F64,
    BlackBoxReward,
    ExactGaussianValue,
    comp,
    exact_grad_value,
    gaussian_model,
    random_quadratic,
    tilted_moments,
)

DIM = 2
M, S = 0.5, 0.7


def moment_matched_start(reward, t: float, n: int, seed: int) -> torch.Tensor:
    """``n`` points of the tilted marginal at ``t`` whose sample mean and covariance are exact.

    The ODE flow of Gaussian laws is affine, so from such a start the final sample moments are
    exact up to the integrator's error alone (no Monte Carlo error).
    """
    m, cov = tilted_moments(reward, dim=DIM)
    mean, cov_t = t * m, t**2 * cov + (1 - t) ** 2 * torch.eye(DIM, dtype=F64)
    z = torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=F64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # identity sample covariance
    return mean + z @ torch.linalg.cholesky(cov_t).T


def setup(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    reward = random_quadratic(DIM, gen)
    ctx = SteeringContext(model=gaussian_model(dim=DIM, mean=M, std=S), reward=reward, generator=gen)
    return reward, ctx


def test_the_exact_ode_reaches_the_tilted_law():
    reward, ctx = setup(0)
    t_min, n = 0.01, 4000
    result = steered_sample(
        estimator=ExactGaussianValue(),
        integrator=comp("integrator", "heun"),
        context=ctx,
        x=moment_matched_start(reward, t_min, n, seed=1),
        times=uniform_grid(t_min, 1.0, 40, dtype=F64),
    )
    m, cov = tilted_moments(reward, dim=DIM)
    assert isinstance(result, SteeredResult) and result.samples.shape == (n, DIM)
    assert torch.allclose(result.samples.mean(0), m, atol=2e-3)
    assert torch.allclose(torch.cov(result.samples.T), cov, atol=2e-3)
    # the reward really moved the samples: the unsteered law is N(M, S^2 I)
    assert (m - M).abs().max() > 0.05
    assert not result.sde and not result.clamped and not result.renormalized
    assert result.cost.base_forwards == 2 * 40 and result.cost.reward_calls == 0


def test_the_exact_sde_reaches_the_tilted_law():
    reward, ctx = setup(0)
    t_min, n = 0.01, 20000
    result = steered_sample(
        estimator=ExactGaussianValue(),
        integrator=comp("integrator", "euler-maruyama"),
        context=ctx,
        x=moment_matched_start(reward, t_min, n, seed=2),
        times=uniform_grid(t_min, 1.0, 200, dtype=F64),
        sde=True,
    )
    m, cov = tilted_moments(reward, dim=DIM)
    se = (cov.diag() / n).sqrt()
    assert ((result.samples.mean(0) - m).abs() < 4 * se + 3e-3).all()  # MC error + O(h) weak error
    assert torch.allclose(torch.cov(result.samples.T), cov, atol=0.02)
    assert result.sde and result.drift_evaluations == 200


def test_sde_noise_comes_from_the_context_generator():
    reward, _ = setup(0)
    x = moment_matched_start(reward, 0.05, 16, seed=3)

    def run(seed):
        ctx = SteeringContext(model=gaussian_model(dim=DIM), reward=reward, generator=torch.Generator().manual_seed(seed))
        return steered_sample(
            estimator=ExactGaussianValue(), integrator=comp("integrator", "euler-maruyama"), context=ctx,
            x=x, times=uniform_grid(0.05, 1.0, 5, dtype=F64), sde=True,
        ).samples

    assert torch.equal(run(4), run(4)) and not torch.allclose(run(4), run(5))


def test_the_sde_drift_is_b_plus_g_score_plus_2_g_grad_v():
    """One Euler step without noise at the last grid point (noise_last_step off): the drift itself."""
    reward, ctx = setup(1)
    model = ctx.model
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(6), dtype=F64)
    t0, t1 = 0.3, 0.35
    em = comp("integrator", "euler-maruyama", noise_last_step=False)
    out = steered_sample(
        estimator=ExactGaussianValue(), integrator=em, context=ctx, x=x,
        times=torch.tensor([t0, t1], dtype=F64), sde=True,
    ).samples
    t = torch.full((6,), t0, dtype=F64)
    b = model.drift(t=t, x=x)
    g = (1 - t0) / t0
    want = x + (t1 - t0) * (2 * b - x / t0 + 2 * g * exact_grad_value(reward, t, x))  # MATH.md 6, linear
    assert torch.allclose(out, want, rtol=1e-10, atol=1e-12)


def test_unsteered_start_is_a_draw_of_the_marginal():
    model = gaussian_model(dim=DIM, mean=M, std=S)
    noise = torch.randn(20000, DIM, generator=torch.Generator().manual_seed(7), dtype=F64)
    t_min = 0.3
    x = unsteered_start(model=model, integrator=comp("integrator", "heun"), noise=noise, t_min=t_min, steps=20)
    se = ((t_min * S) ** 2 + (1 - t_min) ** 2) ** 0.5 / 20000**0.5
    assert ((x.mean(0) - t_min * M).abs() < 4 * se).all()
    assert torch.allclose(x.var(0), torch.full((DIM,), (t_min * S) ** 2 + (1 - t_min) ** 2, dtype=F64), rtol=0.04)
    assert unsteered_start(model=model, integrator=comp("integrator", "euler"), noise=noise, t_min=0.0, steps=3) is noise
    with pytest.raises(ValueError, match="t_min"):
        unsteered_start(model=model, integrator=comp("integrator", "euler"), noise=noise, t_min=1.0, steps=3)


def test_from_pure_noise_with_a_real_estimator():
    """End to end: unsteered start at a small t_min, then MFM-GF on the exact model: close to p_r."""
    reward, ctx = setup(2)
    t_min, n = 0.02, 2000
    noise = torch.randn(n, DIM, generator=torch.Generator().manual_seed(8), dtype=F64)
    x = unsteered_start(model=ctx.model, integrator=comp("integrator", "heun"), noise=noise, t_min=t_min, steps=4)
    result = steered_sample(
        estimator=comp("value-estimator", "mfm-gf", particles=64),
        integrator=comp("integrator", "euler"),
        context=ctx,
        x=x,
        times=uniform_grid(t_min, 1.0, 25, dtype=F64),
    )
    m, cov = tilted_moments(reward, dim=DIM)
    assert torch.allclose(result.samples.mean(0), m, atol=0.06)
    assert torch.allclose(torch.cov(result.samples.T), cov, atol=0.06)
    assert result.cost.nfe == 25 + 2 * 64 * 25


def test_clamping_is_reported():
    reward, ctx = setup(3)
    x = moment_matched_start(reward, 0.05, 8, seed=9)
    run = dict(estimator=ExactGaussianValue(), integrator=comp("integrator", "euler"), context=ctx, x=x)
    grid = uniform_grid(0.05, 1.0, 10, dtype=F64)
    free = steered_sample(**run, times=grid)
    loose = steered_sample(**run, times=grid, g_max=1e6)
    tight = steered_sample(**run, times=grid, g_max=1.0)
    assert not free.clamped and not loose.clamped and loose.g_max == 1e6
    assert torch.equal(free.samples, loose.samples)
    assert tight.clamped and not torch.allclose(tight.samples, free.samples)
    assert tight.flags()["clamped"] and tight.flags()["g_max"] == 1.0 and tight.flags()["t_min"] == pytest.approx(0.05)
    # t = 0 on the grid: g_t is infinite there, so a clamp is required
    with pytest.raises(ValueError, match="infinite at t = 0"):
        steered_sample(**run, times=uniform_grid(0.0, 1.0, 10, dtype=F64))
    at_zero = steered_sample(**run, times=uniform_grid(0.0, 1.0, 10, dtype=F64), g_max=50.0)
    assert at_zero.clamped and torch.isfinite(at_zero.samples).all()


def test_renormalisation_replaces_the_guidance_term_and_is_reported():
    reward, ctx = setup(4)
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(10), dtype=F64)
    t0, t1, kappa = 0.4, 0.5, 0.3
    result = steered_sample(
        estimator=ExactGaussianValue(), integrator=comp("integrator", "euler"), context=ctx, x=x,
        times=torch.tensor([t0, t1], dtype=F64), renormalize=kappa,
    )
    t = torch.full((6,), t0, dtype=F64)
    b = ctx.model.drift(t=t, x=x)
    gv = exact_grad_value(reward, t, x)
    want = x + (t1 - t0) * (b + kappa * b.norm(dim=1, keepdim=True) * gv / gv.norm(dim=1, keepdim=True))
    assert torch.allclose(result.samples, want, rtol=1e-10, atol=1e-12)
    assert result.renormalized and result.renormalize == kappa and result.flags()["renormalized"]

    class Flat(ExactGaussianValue):  # grad V = 0: the renormalised term is 0, not 0 / 0
        def grad_value(self, *, t, x, context):
            return torch.zeros_like(x)

    flat = steered_sample(
        estimator=Flat(), integrator=comp("integrator", "euler"), context=ctx, x=x,
        times=torch.tensor([t0, t1], dtype=F64), renormalize=kappa,
    )
    assert torch.allclose(flat.samples, x + (t1 - t0) * b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="kappa"):
        steered_sample(
            estimator=ExactGaussianValue(), integrator=comp("integrator", "euler"), context=ctx, x=x,
            times=torch.tensor([t0, t1], dtype=F64), renormalize=-1.0,
        )


def test_path_and_bad_inputs():
    reward, ctx = setup(5)
    x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(11), dtype=F64)
    run = dict(estimator=ExactGaussianValue(), context=ctx, x=x)
    result = steered_sample(**run, integrator=comp("integrator", "euler"), times=uniform_grid(0.1, 1.0, 4, dtype=F64), keep_path=True)
    assert result.path.shape == (5, 3, DIM) and torch.equal(result.path[-1], result.samples)
    assert torch.equal(result.path[0], x)
    with pytest.raises(ValueError, match="deterministic"):
        steered_sample(**run, integrator=comp("integrator", "euler"), times=uniform_grid(0.1, 1.0, 4, dtype=F64), sde=True)
    with pytest.raises(ValueError, match="increase"):
        steered_sample(**run, integrator=comp("integrator", "euler"), times=uniform_grid(1.0, 0.1, 4, dtype=F64))
    black = BlackBoxReward(torch.eye(DIM, dtype=F64), torch.zeros(DIM, dtype=F64))
    with pytest.raises(ValueError, match="not differentiable"):
        steered_sample(
            estimator=comp("value-estimator", "mfm-g"), integrator=comp("integrator", "euler"),
            context=SteeringContext(model=ctx.model, reward=black), x=x, times=uniform_grid(0.1, 1.0, 4, dtype=F64),
        )
