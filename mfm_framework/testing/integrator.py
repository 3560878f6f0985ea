"""Conformance suite of the ``integrator`` kind: convergence orders on closed-form ODEs and SDEs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import Tensor

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import Integrator
from mfm_framework.testing._suite import ConformanceSuite, applies_to, assert_close

__all__ = ["IntegratorConformance", "LinearODE", "ORNSTEIN_UHLENBECK", "TEST_ODES"]

F64 = torch.float64


def _pad(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


@attrs.frozen(kw_only=True)
class LinearODE:
    """A linear ODE ``dx/dt = f(t, x)`` with a closed-form flow, for convergence checks.

    Attributes:
        name: shown in failure messages.
        drift: ``f(*, t, x)`` with ``t`` of shape ``[B]`` and ``x`` of shape ``[B, *D]``.
        flow: the exact solution map ``(x, t0, t1) -> x(t1)`` given ``x(t0) = x``.
        shape: the per-sample shape ``D``.
        span: the interval ``(t0, t1)`` integrated over.
    """

    name: str
    drift: Callable[..., Tensor]
    flow: Callable[[Tensor, float, float], Tensor]
    shape: tuple[int, ...]
    span: tuple[float, float]


def _cos_drift(*, t: Tensor, x: Tensor) -> Tensor:
    return _pad(torch.cos(t), x) * x


def _rotation_drift(*, t: Tensor, x: Tensor) -> Tensor:
    return torch.stack([-x[..., 1], x[..., 0]], dim=-1)


def _rotation_flow(x: Tensor, t0: float, t1: float) -> Tensor:
    c, s = math.cos(t1 - t0), math.sin(t1 - t0)
    return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], dim=-1)


#: The ODEs of the order checks: a time-varying scalar growth rate and a rotation.
TEST_ODES: tuple[LinearODE, ...] = (
    LinearODE(
        name="dx/dt = cos(t) x",
        drift=_cos_drift,
        flow=lambda x, t0, t1: x * math.exp(math.sin(t1) - math.sin(t0)),
        shape=(2,),
        span=(0.25, 1.75),
    ),
    LinearODE(
        name="dx/dt = [[0, -1], [1, 0]] x",
        drift=_rotation_drift,
        flow=_rotation_flow,
        shape=(3, 2),
        span=(0.0, 2.0),
    ),
)


@attrs.frozen(kw_only=True)
class OrnsteinUhlenbeck:
    """``dx = -theta x dt + sigma dW`` from ``x(0) = x0`` to time ``horizon``, with exact moments."""

    theta: float = 2.0
    sigma: float = 1.0
    x0: float = 2.0
    horizon: float = 1.0

    def drift(self, *, t: Tensor, x: Tensor) -> Tensor:
        return -self.theta * x

    def diffusion(self, *, t: Tensor, x: Tensor) -> Tensor:
        return torch.full_like(t, self.sigma)

    @property
    def mean(self) -> float:
        return self.x0 * math.exp(-self.theta * self.horizon)

    @property
    def variance(self) -> float:
        return self.sigma**2 / (2 * self.theta) * (1 - math.exp(-2 * self.theta * self.horizon))


#: The SDE of the weak-order checks.
ORNSTEIN_UHLENBECK = OrnsteinUhlenbeck()


@attrs.frozen
class _Moments:
    mean: float
    variance: float
    se_mean: float
    se_variance: float


class _Recorder:
    """A drift wrapper that counts its calls and records contract violations of its arguments."""

    def __init__(self, drift: Callable[..., Tensor], like: Tensor, times: Tensor) -> None:
        self.drift, self.like, self.calls = drift, like, 0
        self.times: list[Tensor] = []
        self.problems: list[str] = []
        self.lo, self.hi = float(times.min()), float(times.max())

    def __call__(self, *, t: Tensor, x: Tensor) -> Tensor:
        self.calls += 1
        self.times.append(t.detach().clone())
        batch = self.like.shape[0]
        if t.shape != (batch,):
            self.problems.append(f"t of shape {tuple(t.shape)}, expected ({batch},)")
        if t.dtype != self.like.dtype:
            self.problems.append(f"t of dtype {t.dtype}, expected {self.like.dtype}")
        if x.shape != self.like.shape or x.dtype != self.like.dtype:
            self.problems.append(f"x of shape {tuple(x.shape)} {x.dtype}, expected {tuple(self.like.shape)} {self.like.dtype}")
        if t.numel() and (float(t.min()) < self.lo - 1e-12 or float(t.max()) > self.hi + 1e-12):
            self.problems.append(f"t = {t.min().item()}..{t.max().item()} outside the grid [{self.lo}, {self.hi}]")
        return self.drift(t=t, x=x)


def _is_stochastic(component_cls: type) -> bool:
    return bool(getattr(component_cls, "stochastic", False))


class IntegratorConformance(ConformanceSuite):
    """Checks an :class:`~mfm_framework.interfaces.Integrator`: orders, grids, paths, NFE, SDE moments.

    Deterministic integrators must converge at their declared ``order`` (observed order within
    ``order_band``) on closed-form linear ODEs, forward and backward in time. Stochastic
    integrators must converge at least that fast on the same ODEs without a diffusion, and their
    moments on an Ornstein-Uhlenbeck SDE must converge at the declared weak ``order``.

    The SDE checks are designed so that Monte Carlo noise is far below the bias they measure:
    the weak-order check compares the bias at ``K`` and ``2K`` steps (``sde_order_steps``) with
    ``sde_paths`` paths, and skips (with the numbers) when a scheme is so accurate that the
    bias is not resolved; the fine-grid check asks for the exact moments within
    ``sde_fine_se`` standard errors at ``sde_fine_steps`` steps, where the bias of a weak
    order-1 scheme is below one standard error.

    Attributes:
        order_steps: step counts of the ODE order check (each double the previous).
        order_band: tolerated distance between observed and declared order.
        sde_paths: paths of the weak-order check.
        sde_order_steps: the coarse and fine step counts ``(K, 2K)`` of the weak-order check.
        sde_resolution: a moment's order is assessed only if its bias at ``2K`` exceeds this many
            standard errors.
        sde_fine_paths: paths of the fine-grid moment check.
        sde_fine_steps: steps of the fine-grid moment check.
        sde_fine_se: tolerated error of the fine-grid moments, in standard errors.
    """

    kind = "integrator"
    order_steps: ClassVar[tuple[int, ...]] = (16, 32, 64)
    order_band: ClassVar[float] = 0.3
    sde_paths: ClassVar[int] = 300_000
    sde_order_steps: ClassVar[tuple[int, int]] = (8, 16)
    sde_resolution: ClassVar[float] = 20.0
    sde_fine_paths: ClassVar[int] = 20_000
    sde_fine_steps: ClassVar[int] = 256
    sde_fine_se: ClassVar[float] = 5.0

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> Integrator:
        return component_cls()

    def _x0(self, ode: LinearODE, tag: str, batch: int = 5) -> Tensor:
        return torch.randn(batch, *ode.shape, generator=self.generator(tag), dtype=F64)

    def _ode_errors(self, integrator: Integrator, ode: LinearODE, *, backward: bool) -> list[float]:
        t0, t1 = ode.span[::-1] if backward else ode.span
        x_start = self._x0(ode, ode.name)
        if backward:  # start from the exact end state and integrate back to the start
            x_start, target = ode.flow(x_start, *ode.span), x_start
        else:
            target = ode.flow(x_start, t0, t1)
        errors = []
        for steps in self.order_steps:
            result = integrator.integrate(ode.drift, x=x_start, times=uniform_grid(t0, t1, steps, dtype=F64))
            errors.append((result.x - target).abs().max().item())
        return errors

    def _check_order(self, component_cls: type, *, backward: bool) -> None:
        integrator = self.make_component(component_cls)
        declared = component_cls.order
        stochastic = _is_stochastic(component_cls)
        for ode in TEST_ODES:
            errors = self._ode_errors(integrator, ode, backward=backward)
            orders = [math.log2(e0 / e1) if e0 > 0 and e1 > 0 else float("nan") for e0, e1 in zip(errors, errors[1:])]
            report = (
                f"{integrator.name} (declared order {declared}) on {ode.name}, "
                f"{'backward' if backward else 'forward'} over {ode.span}: errors "
                + ", ".join(f"K={k}: {e:.3e}" for k, e in zip(self.order_steps, errors))
                + "; observed orders "
                + ", ".join(f"{p:.2f}" for p in orders)
            )
            assert all(e == e and e < 1.0 for e in errors), f"{report}: does not converge"
            for p in orders:
                if stochastic:
                    # The ODE order of an SDE scheme can exceed its weak order; it must not fall short.
                    assert p >= declared - self.order_band, f"{report}: below the declared order"
                else:
                    assert abs(p - declared) <= self.order_band, f"{report}: not the declared order"

    def _ou_moments(
        self,
        integrator: Integrator,
        *,
        paths: int,
        steps: int,
        tag: str,
        diffusion: Callable[..., Tensor] | None = None,
    ) -> _Moments:
        ou = ORNSTEIN_UHLENBECK
        x = torch.full((paths, 1), ou.x0, dtype=F64)
        result = integrator.integrate(
            ou.drift,
            x=x,
            times=uniform_grid(0.0, ou.horizon, steps, dtype=F64),
            diffusion=ou.diffusion if diffusion is None else diffusion,
            generator=self.generator(tag),
        )
        samples = result.x.flatten()
        mean = samples.mean()
        centred = samples - mean
        variance = centred.square().sum() / (paths - 1)
        fourth = centred.pow(4).mean()
        return _Moments(
            mean=mean.item(),
            variance=variance.item(),
            se_mean=math.sqrt(variance.item() / paths),
            se_variance=math.sqrt(max(fourth.item() - variance.item() ** 2, 0.0) / paths),
        )

    # ------------------------------------------------------------------ ODE checks
    def test_order_on_closed_form_odes(self, component_cls: type) -> None:
        """``log2(err(K) / err(2K))`` is the declared order (at least it, for stochastic integrators)."""
        self._check_order(component_cls, backward=False)

    def test_order_on_decreasing_grid(self, component_cls: type) -> None:
        """Integrating backward (a decreasing grid) from the exact end state converges the same way."""
        self._check_order(component_cls, backward=True)

    def test_decreasing_grid_retraces_forward_solution(self, component_cls: type) -> None:
        """Forward then backward on a fine grid returns to the start, and ``times`` is the grid."""
        integrator = self.make_component(component_cls)
        ode = TEST_ODES[0]
        x0 = self._x0(ode, "test_decreasing_grid_retraces_forward_solution")
        forward = uniform_grid(*ode.span, 256, dtype=F64)
        backward = forward.flip(0)
        there = integrator.integrate(ode.drift, x=x0, times=forward)
        back = integrator.integrate(ode.drift, x=there.x, times=backward)
        assert_close(back.times, backward, rtol=0, atol=0, what=f"{integrator.name}: result.times must be the (decreasing) grid")
        assert_close(back.x, x0, rtol=0, atol=0.05 * x0.abs().max().item(), what=f"{integrator.name}: forward then backward on 256 steps does not return to the start")

    def test_keep_path(self, component_cls: type) -> None:
        """``keep_path`` gives ``[K + 1, B, *D]`` with ``path[0] = x0`` and ``path[-1] = x``."""
        integrator = self.make_component(component_cls)
        ode = TEST_ODES[1]
        x0 = self._x0(ode, "test_keep_path", batch=4)
        steps = 7
        times = uniform_grid(*ode.span, steps, dtype=F64)
        result = integrator.integrate(ode.drift, x=x0, times=times, keep_path=True)
        assert result.path is not None, f"{integrator.name}: keep_path=True returned no path"
        assert result.path.shape == (steps + 1, *x0.shape), (
            f"{integrator.name}: path of shape {tuple(result.path.shape)}, expected {(steps + 1, *x0.shape)}"
        )
        assert torch.equal(result.path[0], x0), f"{integrator.name}: path[0] must be the initial state"
        assert torch.equal(result.path[-1], result.x), f"{integrator.name}: path[-1] must be the final state"
        assert result.x.dtype == F64 and result.x.shape == x0.shape, f"{integrator.name}: result.x must keep the shape and dtype of x"
        assert_close(result.times, times, rtol=0, atol=0, what=f"{integrator.name}: result.times must be the grid")
        plain = integrator.integrate(ode.drift, x=x0, times=times)
        assert plain.path is None, f"{integrator.name}: path must be None without keep_path"
        assert torch.equal(plain.x, result.x), f"{integrator.name}: keep_path must not change the result"

    def test_nfe_counts_drift_evaluations(self, component_cls: type) -> None:
        """``nfe`` is a positive int equal to the number of drift calls, with or without a diffusion."""
        integrator = self.make_component(component_cls)
        ode = TEST_ODES[0]
        x0 = self._x0(ode, "test_nfe_counts_drift_evaluations")
        cases: list[dict[str, Any]] = [{}]
        if _is_stochastic(component_cls):
            cases.append({"diffusion": ORNSTEIN_UHLENBECK.diffusion, "generator": self.generator("nfe")})
        for steps in (1, 7):
            times = uniform_grid(*ode.span, steps, dtype=F64)
            for kwargs in cases:
                recorder = _Recorder(ode.drift, x0, times)
                result = integrator.integrate(recorder, x=x0, times=times, **kwargs)
                assert isinstance(result.nfe, int) and result.nfe > 0, f"{integrator.name}: nfe must be a positive int, got {result.nfe!r}"
                assert result.nfe == recorder.calls, (
                    f"{integrator.name}: reported nfe {result.nfe} but the drift was called {recorder.calls} times "
                    f"({steps} steps{', with a diffusion' if kwargs else ''})"
                )

    def test_drift_arguments(self, component_cls: type) -> None:
        """The drift gets ``t`` of shape ``[B]`` inside the grid and ``x`` of shape ``[B, *D]``, same dtype."""
        integrator = self.make_component(component_cls)
        ode = TEST_ODES[1]
        x0 = self._x0(ode, "test_drift_arguments", batch=3)
        for times in (uniform_grid(*ode.span, 5, dtype=F64), uniform_grid(*ode.span[::-1], 5, dtype=F64)):
            recorder = _Recorder(ode.drift, x0, times)
            integrator.integrate(recorder, x=x0, times=times)
            assert not recorder.problems, f"{integrator.name}: the drift was called with " + "; ".join(sorted(set(recorder.problems)))

    def test_rejects_malformed_grids(self, component_cls: type) -> None:
        """Non-monotone, repeated, single-point, empty and 2-D grids raise ``ValueError``."""
        integrator = self.make_component(component_cls)
        x0 = torch.ones(2, 2, dtype=F64)
        grids = {
            "non-monotone": [0.0, 0.5, 0.3, 1.0],
            "repeated time": [0.0, 0.5, 0.5, 1.0],
            "one point": [0.0],
            "empty": [],
            "2-D": [[0.0, 1.0]],
        }
        for what, grid in grids.items():
            try:
                integrator.integrate(_cos_drift, x=x0, times=torch.tensor(grid, dtype=F64))
            except ValueError:
                continue
            raise AssertionError(f"{integrator.name}: a {what} grid {grid} did not raise ValueError")

    @applies_to(lambda cls: not _is_stochastic(cls), "a deterministic integrator (stochastic = False)")
    def test_deterministic_rejects_diffusion(self, component_cls: type) -> None:
        """A deterministic integrator raises ``ValueError`` when given a diffusion."""
        integrator = self.make_component(component_cls)
        x0 = torch.ones(2, 1, dtype=F64)
        try:
            integrator.integrate(
                ORNSTEIN_UHLENBECK.drift, x=x0, times=uniform_grid(0, 1, 4, dtype=F64), diffusion=ORNSTEIN_UHLENBECK.diffusion
            )
        except ValueError:
            return
        raise AssertionError(f"{integrator.name} is deterministic but accepted a diffusion instead of raising ValueError")

    # ------------------------------------------------------------------ SDE checks
    @applies_to(_is_stochastic, "a stochastic integrator (stochastic = True)")
    def test_sde_weak_order(self, component_cls: type) -> None:
        """On Ornstein-Uhlenbeck, the bias of the mean and variance shrinks at the declared weak order."""
        integrator = self.make_component(component_cls)
        ou, declared = ORNSTEIN_UHLENBECK, component_cls.order
        coarse, fine = self.sde_order_steps
        exact = {"mean": ou.mean, "variance": ou.variance}
        runs = [self._ou_moments(integrator, paths=self.sde_paths, steps=k, tag=f"test_sde_weak_order-{k}") for k in (coarse, fine)]
        assessed = []
        for moment in ("mean", "variance"):
            e0, e1 = (getattr(run, moment) - exact[moment] for run in runs)
            se1 = getattr(runs[1], f"se_{moment}")
            report = (
                f"{integrator.name} (declared weak order {declared}), OU {moment}: bias {e0:.3e} at K={coarse}, "
                f"{e1:.3e} at K={fine} (Monte Carlo standard error {se1:.1e}, {self.sde_paths} paths)"
            )
            if abs(e1) < self.sde_resolution * se1:
                continue  # the bias is not resolved against the Monte Carlo noise
            observed = math.log2(abs(e0) / abs(e1))
            assessed.append(moment)
            assert abs(observed - declared) <= self.order_band, f"{report}: observed weak order {observed:.2f}"
        if not assessed:
            pytest.skip(
                f"{integrator.name}: the OU bias at K={fine} is below {self.sde_resolution} standard errors "
                f"({self.sde_paths} paths); set sde_order_steps or sde_paths to measure its weak order"
            )

    @applies_to(_is_stochastic, "a stochastic integrator (stochastic = True)")
    def test_sde_moments_on_fine_grid(self, component_cls: type) -> None:
        """On a fine grid the OU mean and variance match the exact ones within a few standard errors."""
        integrator = self.make_component(component_cls)
        ou = ORNSTEIN_UHLENBECK
        run = self._ou_moments(integrator, paths=self.sde_fine_paths, steps=self.sde_fine_steps, tag="test_sde_moments_on_fine_grid")
        for moment, exact in (("mean", ou.mean), ("variance", ou.variance)):
            value, se = getattr(run, moment), getattr(run, f"se_{moment}")
            assert abs(value - exact) <= self.sde_fine_se * se, (
                f"{integrator.name}: OU {moment} {value:.5f} after {self.sde_fine_steps} steps, exact {exact:.5f} "
                f"(standard error {se:.1e}, {self.sde_fine_paths} paths): off by {abs(value - exact) / se:.1f} standard errors"
            )

    @applies_to(_is_stochastic, "a stochastic integrator (stochastic = True)")
    def test_sde_generator_reproducibility(self, component_cls: type) -> None:
        """The same generator seed gives identical samples; another seed gives other samples."""
        integrator = self.make_component(component_cls)
        ou = ORNSTEIN_UHLENBECK
        x0 = torch.full((64, 2), ou.x0, dtype=F64)
        times = uniform_grid(0.0, ou.horizon, 8, dtype=F64)

        def sample(seed: int) -> Tensor:
            gen = torch.Generator().manual_seed(seed)
            return integrator.integrate(ou.drift, x=x0, times=times, diffusion=ou.diffusion, generator=gen).x

        first = sample(1)
        torch.rand(())  # move the global generator on: it must not matter
        assert torch.equal(first, sample(1)), f"{integrator.name}: the same generator seed gave different samples"
        assert not torch.equal(first, sample(2)), f"{integrator.name}: different generator seeds gave the same samples"

    @applies_to(_is_stochastic, "a stochastic integrator (stochastic = True)")
    def test_sde_diffusion_shapes(self, component_cls: type) -> None:
        """A diffusion given as a scalar, ``[B]`` or ``[B, *D]`` tensor gives the same samples."""
        integrator = self.make_component(component_cls)
        x0 = torch.randn(16, 3, 2, generator=self.generator("test_sde_diffusion_shapes"), dtype=F64)
        times = uniform_grid(0.0, 1.0, 6, dtype=F64)
        forms = {
            "scalar": lambda *, t, x: 0.5 + 0.1 * t[0],
            "[B]": lambda *, t, x: 0.5 + 0.1 * t,
            "[B, *D]": lambda *, t, x: (0.5 + 0.1 * _pad(t, x)).expand_as(x),
        }
        samples = {
            what: integrator.integrate(
                ORNSTEIN_UHLENBECK.drift, x=x0, times=times, diffusion=sigma, generator=torch.Generator().manual_seed(3)
            ).x
            for what, sigma in forms.items()
        }
        for what in ("[B]", "[B, *D]"):
            assert_close(samples[what], samples["scalar"], rtol=1e-12, atol=1e-12, what=f"{integrator.name}: a {what} diffusion differs from the scalar one")

    @applies_to(_is_stochastic, "a stochastic integrator (stochastic = True)")
    def test_sde_without_diffusion_is_an_ode_solver(self, component_cls: type) -> None:
        """With ``diffusion=None`` (or a zero diffusion) the result is deterministic and solves the ODE."""
        integrator = self.make_component(component_cls)
        ode = TEST_ODES[0]
        x0 = self._x0(ode, "test_sde_without_diffusion_is_an_ode_solver")
        times = uniform_grid(*ode.span, 64, dtype=F64)
        runs = {
            seed: integrator.integrate(ode.drift, x=x0, times=times, generator=torch.Generator().manual_seed(seed)).x
            for seed in (1, 2)
        }
        assert torch.equal(runs[1], runs[2]), f"{integrator.name}: diffusion=None results depend on the generator"
        plain = integrator.integrate(ode.drift, x=x0, times=times).x
        assert torch.equal(plain, runs[1]), f"{integrator.name}: diffusion=None results depend on passing a generator"
        zero = integrator.integrate(
            ode.drift, x=x0, times=times, diffusion=lambda *, t, x: torch.zeros_like(t), generator=torch.Generator().manual_seed(1)
        ).x
        assert_close(zero, plain, rtol=1e-12, atol=1e-12, what=f"{integrator.name}: a zero diffusion must give the ODE solution")
        exact = ode.flow(x0, *ode.span)
        assert (plain - exact).abs().max().item() < 0.1 * exact.abs().max().item(), (
            f"{integrator.name}: diffusion=None on 64 steps is far from the exact ODE solution"
        )
