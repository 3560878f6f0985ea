"""Behaviour of the first-party integrators beyond the conformance suite: steps and options."""

from __future__ import annotations

import torch
from mfm_integrators import EulerIntegrator, EulerMaruyamaIntegrator, HeunIntegrator
from mfm_integrators.steppers import EulerMaruyamaOptions, HeunOptions
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.testing import IntegratorConformance

F64 = torch.float64


def _drift(*, t: Tensor, x: Tensor) -> Tensor:
    return torch.cos(t)[:, None] * x - x**2


def _x0() -> Tensor:
    return torch.randn(6, 2, generator=torch.Generator().manual_seed(7), dtype=F64)


class _TimeLog:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, *, t: Tensor, x: Tensor) -> Tensor:
        self.times.append(float(t[0]))
        return _drift(t=t, x=x)


def test_euler_step() -> None:
    x0 = _x0()
    times = torch.tensor([0.2, 0.45], dtype=F64)
    result = EulerIntegrator().integrate(_drift, x=x0, times=times)
    t = times[:1].expand(6)
    torch.testing.assert_close(result.x, x0 + 0.25 * _drift(t=t, x=x0), rtol=1e-15, atol=1e-15)
    assert result.nfe == 1


def test_heun_step() -> None:
    x0 = _x0()
    times = torch.tensor([0.2, 0.45], dtype=F64)
    result = HeunIntegrator().integrate(_drift, x=x0, times=times)
    t0, t1 = times[0].expand(6), times[1].expand(6)
    f0 = _drift(t=t0, x=x0)
    f1 = _drift(t=t1, x=x0 + 0.25 * f0)
    torch.testing.assert_close(result.x, x0 + 0.125 * (f0 + f1), rtol=1e-15, atol=1e-15)
    assert result.nfe == 2


def test_heun_euler_last_step_never_evaluates_the_final_time() -> None:
    x0, steps = _x0(), 5
    times = uniform_grid(0.0, 1.0, steps, dtype=F64)
    log = _TimeLog()
    result = HeunIntegrator(HeunOptions(euler_last_step=True)).integrate(log, x=x0, times=times, keep_path=True)
    assert 1.0 not in log.times and max(log.times) < 1.0
    assert result.nfe == 2 * steps - 1 == len(log.times)
    # The last step is plain Euler from the previous grid point.
    t_last = times[-2].expand(6)
    torch.testing.assert_close(result.x, result.path[-2] + (times[-1] - times[-2]) * _drift(t=t_last, x=result.path[-2]))
    # The default evaluates the final time.
    log = _TimeLog()
    result = HeunIntegrator().integrate(log, x=x0, times=times)
    assert log.times[-1] == 1.0 and result.nfe == 2 * steps


def test_euler_maruyama_noise_last_step_false_returns_the_drift_only_step() -> None:
    x0 = torch.zeros(500, 2, dtype=F64)
    times = uniform_grid(0.0, 1.0, 4, dtype=F64)
    sigma = lambda *, t, x: torch.full_like(t, 0.7)  # noqa: E731
    quiet = EulerMaruyamaIntegrator(EulerMaruyamaOptions(noise_last_step=False))
    result = quiet.integrate(_drift, x=x0, times=times, diffusion=sigma, generator=torch.Generator().manual_seed(1), keep_path=True)
    before = result.path[-2]
    assert before.std() > 0.1  # the earlier steps were noisy
    drift_only = before + 0.25 * _drift(t=times[-2].expand(500), x=before)
    torch.testing.assert_close(result.x, drift_only, rtol=1e-15, atol=1e-15)
    noisy = EulerMaruyamaIntegrator().integrate(
        _drift, x=x0, times=times, diffusion=sigma, generator=torch.Generator().manual_seed(1), keep_path=True
    )
    torch.testing.assert_close(noisy.path[-2], before, rtol=0, atol=0)  # same noise until the last step
    assert (noisy.x - drift_only).abs().max() > 0.1


def test_euler_maruyama_without_diffusion_is_euler() -> None:
    x0, times = _x0(), uniform_grid(0.0, 1.0, 9, dtype=F64)
    em = EulerMaruyamaIntegrator().integrate(_drift, x=x0, times=times, generator=torch.Generator().manual_seed(0))
    euler = EulerIntegrator().integrate(_drift, x=x0, times=times)
    assert torch.equal(em.x, euler.x) and em.nfe == euler.nfe == 9


class TestHeunWithEulerLastStep(IntegratorConformance):
    """Heun's euler_last_step option keeps the conformance of Heun (a single Euler step is O(h^2))."""

    only = ("heun",)

    def make_component(self, component_cls: type) -> HeunIntegrator:
        return component_cls(HeunOptions(euler_last_step=True))


class TestEulerMaruyamaWithoutLastNoise(IntegratorConformance):
    """Euler-Maruyama with noise_last_step=False keeps weak order 1."""

    only = ("euler-maruyama",)

    def make_component(self, component_cls: type) -> EulerMaruyamaIntegrator:
        return component_cls(EulerMaruyamaOptions(noise_last_step=False))
