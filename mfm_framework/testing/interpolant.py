"""Conformance suite of the ``interpolant`` kind (MATH.md sections 1, 3 and 6)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mfm_framework.interfaces import Interpolant
from mfm_framework.testing._suite import ConformanceSuite, assert_close

__all__ = ["InterpolantConformance"]

F64 = torch.float64


def _pad(t: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` against ``like`` of shape ``[B, *D]``."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class InterpolantConformance(ConformanceSuite):
    """Checks an :class:`~mfm_framework.interfaces.Interpolant` against the formulas of MATH.md.

    All checks run in float64 on random inputs drawn from a generator seeded per check. The
    closed-form references use Gaussian data ``x_1 ~ N(m, s^2 I)``, for which the denoiser, the
    score, the velocity and the GLASS posterior mean are exact linear functions of the state.

    Attributes:
        batch: number of random points per check.
        shape: the per-sample data shape ``D`` of the batched checks.
        interior: the time interval random interior times are drawn from.
        fd_step: the step of the central finite differences.
    """

    kind = "interpolant"
    batch: ClassVar[int] = 64
    shape: ClassVar[tuple[int, ...]] = (3, 2)
    interior: ClassVar[tuple[float, float]] = (0.05, 0.95)
    fd_step: ClassVar[float] = 1e-5

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type) -> Interpolant:
        return component_cls()

    def _times(self, gen: torch.Generator, n: int | None = None, lo: float | None = None, hi: float | None = None) -> Tensor:
        lo = self.interior[0] if lo is None else lo
        hi = self.interior[1] if hi is None else hi
        return lo + (hi - lo) * torch.rand(self.batch if n is None else n, generator=gen, dtype=F64)

    def _states(self, gen: torch.Generator, scale: float = 1.0) -> Tensor:
        return scale * torch.randn(self.batch, *self.shape, generator=gen, dtype=F64)

    @staticmethod
    def _gaussian(ip: Interpolant, t: Tensor, x: Tensor, m: Tensor, s: float) -> dict[str, Tensor]:
        """Exact denoiser, score and velocity at ``(t, x)`` for data ``N(m, s^2 I)``."""
        a, b = _pad(ip.alpha(t), x), _pad(ip.beta(t), x)
        da, db = _pad(ip.dalpha(t), x), _pad(ip.dbeta(t), x)
        var = b**2 * s**2 + a**2  # per-coordinate variance of x_t
        resid = x - b * m
        denoiser = m + b * s**2 * resid / var  # E[x_1 | x_t = x]
        noise = a * resid / var  # E[x_0 | x_t = x]
        return {"denoiser": denoiser, "score": -resid / var, "velocity": da * noise + db * denoiser}

    # ------------------------------------------------------------------ the schedule
    def test_boundary_values(self, component_cls: type) -> None:
        """``alpha_0 = beta_1 = 1`` and ``alpha_1 = beta_0 = 0``."""
        ip = self.make_component(component_cls)
        for fn, at, want in (("alpha", 0.0, 1.0), ("alpha", 1.0, 0.0), ("beta", 0.0, 0.0), ("beta", 1.0, 1.0)):
            value = getattr(ip, fn)(torch.tensor(at, dtype=F64))
            assert_close(value, torch.tensor(want, dtype=F64), rtol=0, atol=1e-12, what=f"{ip.name}: {fn}({at}) must be {want}")

    def test_schedule_is_elementwise(self, component_cls: type) -> None:
        """The schedule functions keep the shape and dtype of any time tensor."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_schedule_is_elementwise")
        for shape in ((), (7,), (2, 3)):
            t = torch.rand(shape, generator=gen, dtype=F64)
            for fn in ("alpha", "beta", "dalpha", "dbeta", "snr"):
                out = getattr(ip, fn)(t)
                assert isinstance(out, Tensor) and out.shape == t.shape and out.dtype == F64, (
                    f"{ip.name}: {fn}(t) on t of shape {tuple(shape)} float64 returned "
                    f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))} {getattr(out, 'dtype', None)}"
                )
            out = ip.time_from_snr(ip.snr(t))
            assert isinstance(out, Tensor) and out.shape == t.shape and out.dtype == F64, (
                f"{ip.name}: time_from_snr keeps neither the shape {tuple(shape)} nor float64"
            )

    def test_derivatives_match_finite_differences(self, component_cls: type) -> None:
        """``dalpha`` and ``dbeta`` equal central finite differences at random interior t."""
        ip = self.make_component(component_cls)
        t = self._times(self.generator("test_derivatives_match_finite_differences"))
        h = self.fd_step
        for fn, dfn in (("alpha", "dalpha"), ("beta", "dbeta")):
            f, df = getattr(ip, fn), getattr(ip, dfn)
            fd = (f(t + h) - f(t - h)) / (2 * h)
            assert_close(df(t), fd, rtol=1e-6, atol=1e-7, what=f"{ip.name}: {dfn}(t) is not the derivative of {fn}(t)")

    def test_snr_is_monotone_increasing(self, component_cls: type) -> None:
        """``snr_t`` is 0 at t = 0 and strictly increasing on [0, 1]; ``alpha dbeta - dalpha beta > 0`` on (0, 1]."""
        ip = self.make_component(component_cls)
        t = torch.linspace(0, 1, 257, dtype=F64)
        snr = ip.snr(t)
        assert snr[0] == 0, f"{ip.name}: snr(0) must be 0, got {snr[0].item()}"
        steps = snr[1:] - snr[:-1]
        bad = (~(steps > 0)).nonzero().flatten()
        assert bad.numel() == 0, (
            f"{ip.name}: snr is not strictly increasing between t = {t[bad[0]].item():.4f} and "
            f"{t[bad[0] + 1].item():.4f} (snr {snr[bad[0]].item()!r} -> {snr[bad[0] + 1].item()!r})"
            if bad.numel()
            else ""
        )
        # Positive on (0, 1]: the conversions divide by it. At t = 0 a schedule may leave the noise
        # with zero speed (e.g. beta = t^p, p > 1), where the conversions are singular anyway.
        wronskian = (ip.alpha(t) * ip.dbeta(t) - ip.dalpha(t) * ip.beta(t))[1:]
        assert bool((wronskian > 0).all()), (
            f"{ip.name}: alpha dbeta - dalpha beta must be positive on (0, 1] (the conversions divide "
            f"by it); min {wronskian.min().item()!r} at t = {t[1:][wronskian.argmin()].item():.4f}"
        )

    def test_time_from_snr_inverts_snr(self, component_cls: type) -> None:
        """``time_from_snr(snr_t) = t`` on (0, 1), ``snr(time_from_snr(q)) = q``, 0 -> 0, inf -> 1."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_time_from_snr_inverts_snr")
        t = self._times(gen, lo=0.01, hi=0.99)
        assert_close(ip.time_from_snr(ip.snr(t)), t, rtol=0, atol=1e-10, what=f"{ip.name}: time_from_snr(snr(t)) != t")
        q = 10.0 ** (12 * torch.rand(self.batch, generator=gen, dtype=F64) - 6)
        assert_close(ip.snr(ip.time_from_snr(q)), q, rtol=1e-8, atol=0, what=f"{ip.name}: snr(time_from_snr(q)) != q")
        ends = ip.time_from_snr(torch.tensor([0.0, float("inf")], dtype=F64))
        assert_close(ends, torch.tensor([0.0, 1.0], dtype=F64), rtol=0, atol=1e-12, what=f"{ip.name}: time_from_snr must map 0 to 0 and inf to 1")

    # ------------------------------------------------------------------ batched maps
    def test_interpolate_and_velocity_target(self, component_cls: type) -> None:
        """``x_t = alpha x_0 + beta x_1`` and ``dalpha x_0 + dbeta x_1`` on ``[B, 3, 2]`` with times ``[B]``."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_interpolate_and_velocity_target")
        x_0, x_1 = self._states(gen), self._states(gen)
        t = self._times(gen, lo=0.0, hi=1.0)
        t[0], t[1] = 0.0, 1.0
        x_t = ip.interpolate(x_0=x_0, x_1=x_1, t=t)
        v_t = ip.velocity_target(x_0=x_0, x_1=x_1, t=t)
        want_x = torch.stack([ip.alpha(ti) * a + ip.beta(ti) * b for ti, a, b in zip(t, x_0, x_1)])
        want_v = torch.stack([ip.dalpha(ti) * a + ip.dbeta(ti) * b for ti, a, b in zip(t, x_0, x_1)])
        assert_close(x_t, want_x, rtol=1e-12, atol=1e-12, what=f"{ip.name}: interpolate with per-sample t")
        assert_close(v_t, want_v, rtol=1e-12, atol=1e-12, what=f"{ip.name}: velocity_target with per-sample t")
        assert_close(x_t[0], x_0[0], rtol=1e-12, atol=1e-12, what=f"{ip.name}: x_t at t = 0 must be x_0")
        assert_close(x_t[1], x_1[1], rtol=1e-12, atol=1e-12, what=f"{ip.name}: x_t at t = 1 must be x_1")
        # A Python float time applies to the whole batch.
        tf = torch.tensor(0.3, dtype=F64)
        assert_close(
            ip.interpolate(x_0=x_0, x_1=x_1, t=0.3), ip.alpha(tf) * x_0 + ip.beta(tf) * x_1,
            rtol=1e-12, atol=1e-12, what=f"{ip.name}: interpolate with a float time",
        )
        # The conditional velocity is the time derivative of the interpolation path.
        t = self._times(gen)
        h = self.fd_step
        fd = (ip.interpolate(x_0=x_0, x_1=x_1, t=t + h) - ip.interpolate(x_0=x_0, x_1=x_1, t=t - h)) / (2 * h)
        assert_close(
            ip.velocity_target(x_0=x_0, x_1=x_1, t=t), fd, rtol=1e-6, atol=1e-7,
            what=f"{ip.name}: velocity_target is not d/dt interpolate",
        )

    def test_conversion_round_trips(self, component_cls: type) -> None:
        """velocity <-> denoiser, score <-> denoiser and velocity <-> score invert each other."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_conversion_round_trips")
        t, x, d = self._times(gen), self._states(gen, 2.0), self._states(gen)
        tol = {"rtol": 1e-9, "atol": 1e-10}
        v = ip.velocity_from_denoiser(t=t, x=x, denoiser=d)
        assert_close(ip.denoiser_from_velocity(t=t, x=x, velocity=v), d, **tol, what=f"{ip.name}: denoiser -> velocity -> denoiser")
        sc = ip.score_from_denoiser(t=t, x=x, denoiser=d)
        assert_close(ip.denoiser_from_score(t=t, x=x, score=sc), d, **tol, what=f"{ip.name}: denoiser -> score -> denoiser")
        assert_close(ip.velocity_from_score(t=t, x=x, score=sc), v, **tol, what=f"{ip.name}: velocity_from_score disagrees with the route through the denoiser")
        assert_close(ip.score_from_velocity(t=t, x=x, velocity=v), sc, **tol, what=f"{ip.name}: score_from_velocity disagrees with the route through the denoiser")
        sc = self._states(gen)
        v = ip.velocity_from_score(t=t, x=x, score=sc)
        assert_close(ip.score_from_velocity(t=t, x=x, velocity=v), sc, **tol, what=f"{ip.name}: score -> velocity -> score")

    def test_conversions_match_gaussian_closed_form(self, component_cls: type) -> None:
        """For data ``N(m, s^2 I)`` the conversions map the exact denoiser to the exact velocity and score."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_conversions_match_gaussian_closed_form")
        m, s = torch.randn(self.shape, generator=gen, dtype=F64), 0.7
        t, x = self._times(gen), self._states(gen, 1.5)
        exact = self._gaussian(ip, t, x, m, s)
        tol = {"rtol": 1e-9, "atol": 1e-10}
        d, sc, v = exact["denoiser"], exact["score"], exact["velocity"]
        assert_close(ip.velocity_from_denoiser(t=t, x=x, denoiser=d), v, **tol, what=f"{ip.name}: velocity_from_denoiser(exact D) != exact velocity")
        assert_close(ip.score_from_denoiser(t=t, x=x, denoiser=d), sc, **tol, what=f"{ip.name}: score_from_denoiser(exact D) != exact score")
        assert_close(ip.denoiser_from_velocity(t=t, x=x, velocity=v), d, **tol, what=f"{ip.name}: denoiser_from_velocity(exact b) != exact D")
        assert_close(ip.denoiser_from_score(t=t, x=x, score=sc), d, **tol, what=f"{ip.name}: denoiser_from_score(exact score) != exact D")
        assert_close(ip.velocity_from_score(t=t, x=x, score=sc), v, **tol, what=f"{ip.name}: velocity_from_score(exact score) != exact velocity")
        assert_close(ip.score_from_velocity(t=t, x=x, velocity=v), sc, **tol, what=f"{ip.name}: score_from_velocity(exact b) != exact score")

    # ------------------------------------------------------------------ GLASS fusion
    def test_glass_fusion_at_t_zero_is_the_inner_state(self, component_cls: type) -> None:
        """With the context at t = 0 (no information) and ``inner = self``: ``t* = s``, ``x* = y``."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_glass_fusion_at_t_zero_is_the_inner_state")
        s, x, y = self._times(gen), self._states(gen), self._states(gen)
        for t in (torch.zeros(self.batch, dtype=F64), 0.0):
            fused = ip.glass_fusion(t=t, x=x, s=s, y=y)
            assert_close(fused.t_star, s, rtol=0, atol=1e-10, what=f"{ip.name}: t* must be s at t = 0")
            assert_close(fused.x_star, y, rtol=1e-9, atol=1e-10, what=f"{ip.name}: x* must be y at t = 0")

    def test_glass_fusion_at_s_zero_is_the_context(self, component_cls: type) -> None:
        """With the inner state at s = 0 (pure noise): ``t* = t``, ``x* = x``."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_glass_fusion_at_s_zero_is_the_context")
        t, x, y = self._times(gen), self._states(gen), self._states(gen)
        for s in (torch.zeros(self.batch, dtype=F64), 0.0):
            fused = ip.glass_fusion(t=t, x=x, s=s, y=y)
            assert_close(fused.t_star, t, rtol=0, atol=1e-10, what=f"{ip.name}: t* must be t at s = 0")
            assert_close(fused.x_star, x, rtol=1e-9, atol=1e-10, what=f"{ip.name}: x* must be x at s = 0")

    def test_glass_fusion_matches_gaussian_posterior(self, component_cls: type) -> None:
        """``D_{t*}(x*)`` is the posterior mean of ``x_1`` given both observations (Gaussian data).

        For ``x_1 ~ N(m, s^2 I)`` observed as ``x = alpha_t z + beta_t x_1`` and
        ``y = alpha_s eps + beta_s x_1`` (independent noises), precision weighting gives
        ``E[x_1 | x, y] = (m / s^2 + beta_t x / alpha_t^2 + beta_s y / alpha_s^2) / P`` with
        ``P = 1 / s^2 + snr_t + snr_s``; MATH.md section 3 says it equals ``D_{t*}(x*)``.
        """
        ip = self.make_component(component_cls)
        gen = self.generator("test_glass_fusion_matches_gaussian_posterior")
        m, sd = torch.randn(self.shape, generator=gen, dtype=F64), 0.8
        t, s = self._times(gen), self._times(gen)
        x, y = self._states(gen, 1.5), self._states(gen, 1.5)
        fused = ip.glass_fusion(t=t, x=x, s=s, y=y)
        assert fused.t_star.shape == t.shape and fused.x_star.shape == x.shape, (
            f"{ip.name}: glass_fusion returned t* {tuple(fused.t_star.shape)} and x* {tuple(fused.x_star.shape)} "
            f"for t {tuple(t.shape)} and x {tuple(x.shape)}"
        )
        snr = ip.snr(t) + ip.snr(s)
        assert_close(fused.snr, snr, rtol=1e-10, atol=0, what=f"{ip.name}: SNR* must be snr_t + snr_s")
        assert_close(ip.snr(fused.t_star), snr, rtol=1e-8, atol=0, what=f"{ip.name}: snr(t*) must be SNR*")
        a_t, b_t = _pad(ip.alpha(t), x), _pad(ip.beta(t), x)
        a_s, b_s = _pad(ip.alpha(s), y), _pad(ip.beta(s), y)
        precision = 1 / sd**2 + b_t**2 / a_t**2 + b_s**2 / a_s**2
        posterior_mean = (m / sd**2 + b_t * x / a_t**2 + b_s * y / a_s**2) / precision
        fused_mean = self._gaussian(ip, fused.t_star, fused.x_star, m, sd)["denoiser"]
        assert_close(fused_mean, posterior_mean, rtol=1e-8, atol=1e-9, what=f"{ip.name}: D_t*(x*) != E[x_1 | x_t = x, y_s = y]")

    def test_glass_fusion_at_the_ends(self, component_cls: type) -> None:
        """t = 1 gives ``(1, x)``, s = 1 gives ``(1, y)``, and every corner of [0, 1]^2 stays finite."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_glass_fusion_at_the_ends")
        u, x, y = self._times(gen), self._states(gen), self._states(gen)
        one = torch.ones(self.batch, dtype=F64)
        fused = ip.glass_fusion(t=one, x=x, s=u, y=y)
        assert_close(fused.t_star, one, rtol=0, atol=1e-12, what=f"{ip.name}: t* must be 1 at t = 1")
        assert_close(fused.x_star, x, rtol=1e-9, atol=1e-10, what=f"{ip.name}: x* must be x at t = 1")
        fused = ip.glass_fusion(t=u, x=x, s=one, y=y)
        assert_close(fused.t_star, one, rtol=0, atol=1e-12, what=f"{ip.name}: t* must be 1 at s = 1")
        assert_close(fused.x_star, y, rtol=1e-9, atol=1e-10, what=f"{ip.name}: x* must be y at s = 1")
        for t in (0.0, 1.0):
            for s in (0.0, 1.0):
                fused = ip.glass_fusion(t=t, x=x, s=s, y=y)
                finite = bool(torch.isfinite(fused.t_star).all()) and bool(torch.isfinite(fused.x_star).all())
                assert finite, f"{ip.name}: glass_fusion at t = {t}, s = {s} is not finite"

    # ------------------------------------------------------------------ steering
    def test_steering_coefficient(self, component_cls: type) -> None:
        """``g_t = alpha (alpha dbeta / beta - dalpha) > 0`` and ``b = (dbeta / beta) x + g_t score``."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_steering_coefficient")
        t = self._times(gen)
        a, b, da, db = ip.alpha(t), ip.beta(t), ip.dalpha(t), ip.dbeta(t)
        g = ip.steering_coefficient(t)
        assert_close(g, a * (a * db / b - da), rtol=1e-10, atol=0, what=f"{ip.name}: g_t != alpha (alpha dbeta / beta - dalpha)")
        assert bool((g > 0).all()), f"{ip.name}: g_t must be positive on (0, 1)"
        x, score = self._states(gen, 2.0), self._states(gen)
        velocity = ip.velocity_from_score(t=t, x=x, score=score)
        assert_close(velocity, _pad(db / b, x) * x + _pad(g, x) * score, rtol=1e-9, atol=1e-10, what=f"{ip.name}: b != (dbeta / beta) x + g_t score")
        g_one = ip.steering_coefficient(torch.tensor(1.0, dtype=F64))
        assert_close(g_one, torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-12, what=f"{ip.name}: g_1 must be 0")

    def test_steering_coefficient_clamps(self, component_cls: type) -> None:
        """``steering_coefficient(t, max=M) = min(g_t, M)``, and ``M`` at t = 0 where g is infinite."""
        ip = self.make_component(component_cls)
        gen = self.generator("test_steering_coefficient_clamps")
        t = torch.cat([torch.tensor([1e-8, 1e-4, 1e-2], dtype=F64), self._times(gen)])
        cap = 2.0
        g = ip.steering_coefficient(t)
        assert_close(ip.steering_coefficient(t, max=cap), torch.clamp(g, max=cap), rtol=0, atol=0, what=f"{ip.name}: max must clamp g_t")
        at_zero = ip.steering_coefficient(torch.tensor(0.0, dtype=F64), max=cap)
        assert_close(at_zero, torch.tensor(cap, dtype=F64), rtol=0, atol=0, what=f"{ip.name}: g_0 is infinite, so max={cap} must give {cap}")
