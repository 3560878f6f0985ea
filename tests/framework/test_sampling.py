"""MetaFlowMap and the samplers, checked on an exact Gaussian meta flow map (closed forms)."""

from __future__ import annotations

import pytest
import torch

from mfm_framework.grids import uniform_grid
from mfm_framework.kinds import kind_by_name
from mfm_framework.model import MetaFlowMap
from mfm_framework.plugins import default_plugin_system
from mfm_framework.sampling import glass_posterior, kernel_sample, ode_sample
from mfm_framework.testing.exact import GaussianFlowMapBackbone, GaussianFlowMapOptions

REG = default_plugin_system().registry
M, S, DIM = 0.5, 0.7, 2


def comp(kind, name, **options):
    cls = REG.get(kind_by_name(kind), name).cls
    return cls(cls.Options(**options))


def exact_model(interp="linear", **options) -> MetaFlowMap:
    outer, inner = comp("interpolant", interp), comp("interpolant", "linear")
    backbone = GaussianFlowMapBackbone(GaussianFlowMapOptions(mean=M, std=S, **options), data_shape=(DIM,))
    return MetaFlowMap(backbone.bind(interpolant=outer, inner=inner), outer, inner).double()


def posterior_moments(model, t, x):
    a2, b = model.interpolant.alpha(t) ** 2, model.interpolant.beta(t)
    den = a2 + b**2 * S**2
    return (a2 * M + b * S**2 * x) / den, S**2 * a2 / den


@pytest.mark.parametrize("interp", ["linear", "trigonometric"])
@pytest.mark.parametrize("steps", [1, 3])
def test_posterior_draws_have_the_exact_moments(interp, steps):
    model = exact_model(interp)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)
    x = torch.randn(3, DIM, generator=gen, dtype=torch.float64)
    n = 20000
    draws = model.sample_posterior(t=t, x=x, n=n, steps=steps, generator=gen)
    assert draws.shape == (3, n, DIM)
    mean, var = posterior_moments(model, t[:, None], x)
    se = (var / n).sqrt()
    assert ((draws.mean(1) - mean).abs() < 4 * se).all()
    assert torch.allclose(draws.var(1), var.expand(3, DIM), rtol=0.05)


def test_posterior_draws_are_differentiable_in_the_context():
    model = exact_model()
    x = torch.randn(2, DIM, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(2, 5, DIM, dtype=torch.float64)
    draws = model.sample_posterior(t=0.5, x=x, n=5, eps=eps)
    draws.sum().backward()
    # X_{0,1}(eps; t, x) = mu(x) + (c / 1) eps: d mu / dx = beta s^2 / den per coordinate, 5 draws
    a2, b = 0.25, 0.5
    assert torch.allclose(x.grad, torch.full_like(x, 5 * b * S**2 / (a2 + b**2 * S**2)))


def test_drift_and_denoiser_are_the_unconditional_slice():
    model = exact_model()
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(6, generator=gen, dtype=torch.float64) * 0.9
    x = torch.randn(6, DIM, generator=gen, dtype=torch.float64)
    # exact unconditional denoiser of N(M, S^2): posterior mean at context (t, x)
    mean, _ = posterior_moments(model, t[:, None], x)
    assert torch.allclose(model.denoise(t=t, x=x), mean)
    velocity = model.interpolant.velocity_from_denoiser(t=t, x=x, denoiser=mean)
    assert torch.allclose(model.drift(t=t, x=x), velocity)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_kernel_sampler_hits_the_data_law(steps):
    model = exact_model()
    samples = kernel_sample(model, n=40000, steps=steps, generator=torch.Generator().manual_seed(2))
    assert samples.shape == (40000, DIM)
    assert torch.allclose(samples.mean(0), torch.full((DIM,), M, dtype=torch.float64), atol=4 * S / 200)
    assert torch.allclose(samples.std(0), torch.full((DIM,), S, dtype=torch.float64), rtol=0.03)


def test_kernel_sampler_with_a_wrong_map_misses():
    model = exact_model(shift=0.3)
    samples = kernel_sample(model, n=20000, steps=1, generator=torch.Generator().manual_seed(2))
    assert (samples.mean(0) - M).abs().min() > 0.25


def test_ode_sampler_on_the_t0_drift():
    model = exact_model()
    result = ode_sample(model, n=20000, integrator=comp("integrator", "heun"), times=uniform_grid(0, 1, 16, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    assert result.nfe == 32
    assert torch.allclose(result.x.mean(0), torch.full((DIM,), M, dtype=torch.float64), atol=0.03)
    assert torch.allclose(result.x.std(0), torch.full((DIM,), S, dtype=torch.float64), rtol=0.03)


def test_glass_posterior_converges_to_the_exact_posterior():
    model = exact_model()
    gen = torch.Generator().manual_seed(4)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    x = torch.randn(2, DIM, generator=gen, dtype=torch.float64)
    mean, var = posterior_moments(model, t[:, None], x)
    errors = []
    for steps in (2, 64):
        draws = glass_posterior(
            denoiser=lambda tt, xx: model.denoise(t=tt, x=xx),
            interpolant=model.interpolant,
            inner=model.inner,
            t=t,
            x=x,
            n=20000,
            steps=steps,
            integrator=comp("integrator", "euler"),
            generator=gen,
        )
        errors.append((draws.var(1) - var).abs().max().item() + (draws.mean(1) - mean).abs().max().item())
    assert errors[1] < 0.02 < errors[0]


def test_steps_must_be_positive():
    model = exact_model()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.sample_posterior(t=0.5, x=torch.zeros(1, DIM, dtype=torch.float64), n=2, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        kernel_sample(model, n=2, steps=0)
