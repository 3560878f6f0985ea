"""The posterior-based value estimators (mfm-g, mfm-gf, dps, glass-mc) against closed forms.

Gaussian data ``N(m, s^2 I)`` with exact posterior draws (the exact Gaussian meta flow map) and a
quadratic reward make ``V`` and ``grad V`` closed form (tests/steering_helpers.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from mfm_framework.interfaces import SteeringContext
from mfm_framework.steering import check_compatible
from tests.steering_helpers import (
    F64,
    BlackBoxReward,
    comp,
    exact_grad_value,
    exact_value,
    gaussian_model,
    random_quadratic,
    tiny_model,
)

DIM = 3


def contexts(seed: int, batch: int = 12, *, t_lo: float = 0.1, t_hi: float = 0.7):
    gen = torch.Generator().manual_seed(seed)
    t = t_lo + (t_hi - t_lo) * torch.rand(batch, generator=gen, dtype=F64)
    x = torch.randn(batch, DIM, generator=gen, dtype=F64)
    return t, x, random_quadratic(DIM, gen)


def context(model, reward, seed: int = 1) -> SteeringContext:
    return SteeringContext(model=model, reward=reward, generator=torch.Generator().manual_seed(seed))


def rms(a, b) -> float:
    return float((a - b).pow(2).mean().sqrt())


def test_estimators_are_registered_with_their_options():
    for name in ("mfm-g", "mfm-gf", "dps", "glass-mc"):
        est = comp("value-estimator", name)
        assert est.name == name and est.summary()
    assert comp("value-estimator", "mfm-g").requires_differentiable_reward
    assert not comp("value-estimator", "mfm-gf").requires_differentiable_reward
    assert comp("value-estimator", "dps").requires_differentiable_reward
    assert comp("value-estimator", "glass-mc").requires_differentiable_reward
    with pytest.raises(ValueError, match="particles"):
        comp("value-estimator", "mfm-g", particles=0)
    with pytest.raises(ValueError, match="steps"):
        comp("value-estimator", "glass-mc", steps=0)


@pytest.mark.parametrize("name", ["mfm-g", "mfm-gf"])
def test_gradient_estimators_are_consistent(name):
    """With exact posterior draws, the error falls like 1/sqrt(N) towards the exact grad V."""
    model = gaussian_model(dim=DIM)
    errors = {}
    for n in (16, 4096):
        errs = []
        for seed in range(3):
            t, x, reward = contexts(seed)
            est = comp("value-estimator", name, particles=n)
            exact = exact_grad_value(reward, t, x)
            got = est.grad_value(t=t, x=x, context=context(model, reward, 10 + seed))
            errs.append(rms(got, exact) / rms(exact, 0 * exact))  # relative
        errors[n] = sum(errs) / len(errs)
    assert errors[4096] < errors[16] / 6  # 1/sqrt(N) predicts 16
    assert errors[4096] < 0.06


@pytest.mark.parametrize("name", ["mfm-g", "mfm-gf"])
def test_values_are_consistent(name):
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(3)
    est = comp("value-estimator", name, particles=8192)
    value = est.value(t=t, x=x, context=context(model, reward))
    assert value.shape == (12,)
    assert torch.allclose(value, exact_value(reward, t, x), atol=0.05)


def test_mfm_gf_is_the_posterior_identity_on_its_own_draws():
    """grad V = (beta_t / alpha_t^2)(E_r[x_1|x] - E[x_1|x]) with both expectations over the same draws."""
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(4)
    n = 32
    est = comp("value-estimator", "mfm-gf", particles=n)
    got = est.grad_value(t=t, x=x, context=context(model, reward, seed=7))
    eps = torch.randn(12, n, DIM, generator=torch.Generator().manual_seed(7), dtype=F64)
    draws = model.sample_posterior(t=t, x=x, n=n, eps=eps)
    w = torch.softmax(reward(draws.reshape(-1, DIM)).reshape(12, n), dim=1)
    tilted_mean = (w[:, :, None] * draws).sum(1)
    want = (t / (1 - t) ** 2)[:, None] * (tilted_mean - draws.mean(1))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_mfm_g_is_the_reweighted_pathwise_gradient_on_its_own_draws():
    """For the exact map X = mu(x) + c eps: grad = sum_i w_i (d mu / dx) grad r(x_1^i), w = softmax r."""
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(5)
    n = 32
    got = comp("value-estimator", "mfm-g", particles=n).grad_value(t=t, x=x, context=context(model, reward, seed=8))
    eps = torch.randn(12, n, DIM, generator=torch.Generator().manual_seed(8), dtype=F64)
    draws = model.sample_posterior(t=t, x=x, n=n, eps=eps)
    r = reward(draws.reshape(-1, DIM)).reshape(12, n)
    grad_r = -torch.einsum("ij,bnj->bni", reward.a, draws - reward.c.detach())
    s2, a2 = 0.7**2, (1 - t) ** 2
    dmu = (t * s2 / (a2 + t**2 * s2))[:, None]
    want = dmu * (torch.softmax(r, dim=1)[:, :, None] * grad_r).sum(1)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_mfm_g_with_several_posterior_steps_matches_one_step_on_an_exact_map():
    """An exact flow map composes: K inner steps give the same draws (and gradient) as one."""
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(6)
    one = comp("value-estimator", "mfm-g", particles=8).grad_value(t=t, x=x, context=context(model, reward, 3))
    three = comp("value-estimator", "mfm-g", particles=8, posterior_steps=3).grad_value(
        t=t, x=x, context=context(model, reward, 3)
    )
    assert torch.allclose(one, three, rtol=1e-9, atol=1e-10)


def test_glass_mc_converges_in_steps_and_particles():
    """Exact base denoiser: GLASS draws are exact up to Euler's O(1/S) error."""
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(7, batch=8)
    exact = exact_grad_value(reward, t, x)
    coarse = comp("value-estimator", "glass-mc", particles=2048, steps=4).grad_value(t=t, x=x, context=context(model, reward))
    fine = comp("value-estimator", "glass-mc", particles=2048, steps=16).grad_value(t=t, x=x, context=context(model, reward))
    assert rms(fine, exact) < 0.5 * rms(coarse, exact)
    assert rms(fine, exact) < 0.15 * rms(exact, 0 * exact)
    value = comp("value-estimator", "glass-mc", particles=2048, steps=16).value(t=t, x=x, context=context(model, reward))
    assert torch.allclose(value, exact_value(reward, t, x), rtol=0.08, atol=0.05)  # Euler bias too


def test_dps_is_the_gradient_of_the_reward_of_the_denoiser():
    """Central finite differences of r(D_t(x)) through a real network."""
    model = tiny_model(dim=DIM)
    gen = torch.Generator().manual_seed(9)
    reward = random_quadratic(DIM, gen)
    t = 0.1 + 0.8 * torch.rand(5, generator=gen, dtype=F64)
    x = torch.randn(5, DIM, generator=gen, dtype=F64)
    dps = comp("value-estimator", "dps")
    ctx = context(model, reward)
    grad = dps.grad_value(t=t, x=x, context=ctx)
    h = 1e-6
    fd = torch.zeros_like(x)
    for j in range(DIM):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (dps.value(t=t, x=x + e, context=ctx) - dps.value(t=t, x=x - e, context=ctx)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # the drift it hands the engine is the model's own base drift, from the same forward
    drift, grad2 = dps.drift_and_grad_value(t=t, x=x, context=ctx)
    assert torch.allclose(drift, model.drift(t=t, x=x)) and torch.equal(grad, grad2)
    assert torch.allclose(dps.value(t=t, x=x, context=ctx), reward(model.denoise(t=t, x=x)))


@pytest.mark.parametrize("name", ["mfm-g", "mfm-gf", "dps", "glass-mc"])
def test_gradients_reach_x_only(name):
    """No parameter of the model or the reward gets a .grad, and no requires_grad flag changes."""
    model = tiny_model(dim=DIM)
    gen = torch.Generator().manual_seed(11)
    reward = random_quadratic(DIM, gen)
    params = [*model.parameters(), reward.c]
    flags = [p.requires_grad for p in params]
    assert all(flags)
    t = 0.2 + 0.6 * torch.rand(4, generator=gen, dtype=F64)
    x = torch.randn(4, DIM, generator=gen, dtype=F64)
    est = comp("value-estimator", name, **({} if name == "dps" else {"particles": 3}))
    ctx = context(model, reward)
    grad = est.grad_value(t=t, x=x, context=ctx)
    with torch.no_grad():  # also under the engine's no_grad
        grad_ng = est.grad_value(t=t, x=x, context=ctx)
    value = est.value(t=t, x=x, context=ctx)
    assert grad.shape == x.shape and grad_ng.shape == x.shape and value.shape == (4,)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not grad.requires_grad and not value.requires_grad
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == flags
    assert not x.requires_grad


def test_estimators_use_the_context_generator():
    model = gaussian_model(dim=DIM)
    t, x, reward = contexts(12)
    est = comp("value-estimator", "mfm-g", particles=4)
    a = est.grad_value(t=t, x=x, context=context(model, reward, seed=5))
    b = est.grad_value(t=t, x=x, context=context(model, reward, seed=5))
    c = est.grad_value(t=t, x=x, context=context(model, reward, seed=6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_labels_are_repeated_per_draw():
    seen = []

    class LabelledReward(BlackBoxReward):
        def __call__(self, x_1, *, cond=None):
            seen.append(cond)
            return super().__call__(x_1, cond=cond)

    model = gaussian_model(dim=DIM)
    gen = torch.Generator().manual_seed(13)
    reward = LabelledReward(torch.eye(DIM, dtype=F64), torch.zeros(DIM, dtype=F64))
    cond = torch.tensor([0, 2])
    ctx = SteeringContext(model=model, reward=reward, generator=gen, cond=cond)
    comp("value-estimator", "mfm-gf", particles=3).grad_value(t=torch.full((2,), 0.5, dtype=F64), x=torch.zeros(2, DIM, dtype=F64), context=ctx)
    assert torch.equal(seen[-1], torch.tensor([0, 0, 0, 2, 2, 2]))


def test_a_black_box_reward_needs_a_gradient_free_estimator():
    reward = BlackBoxReward(torch.eye(DIM, dtype=F64), torch.zeros(DIM, dtype=F64))
    for name in ("mfm-g", "dps", "glass-mc"):
        with pytest.raises(ValueError, match=f"value estimator '{name}'.*'test-black-box' is not differentiable"):
            check_compatible(comp("value-estimator", name), reward)
        with pytest.raises(ValueError, match="not differentiable"):  # classes work too (spec validation)
            check_compatible(type(comp("value-estimator", name)), BlackBoxReward)
    check_compatible(comp("value-estimator", "mfm-gf"), reward)
    # and the gradient-free estimator is consistent with it
    model = gaussian_model(dim=DIM)
    t, x, _ = contexts(14)
    got = comp("value-estimator", "mfm-gf", particles=4096).grad_value(t=t, x=x, context=context(model, reward))
    assert rms(got, exact_grad_value(reward, t, x)) < 0.02
    assert math.isfinite(float(got.sum()))
