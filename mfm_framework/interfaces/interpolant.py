"""The Interpolant interface: a noise-to-data schedule and everything derived from it."""

from __future__ import annotations

import abc

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces._time import as_time, pad_time
from mfm_framework.interfaces.component import Component

__all__ = ["Interpolant", "GlassFusion"]


@attrs.frozen(kw_only=True)
class GlassFusion:
    """The context ``(t, x)`` and an inner state ``(s, y)`` fused into one observation.

    Attributes:
        t_star: fused time, shape of ``t`` and ``s`` broadcast (``[]`` or ``[B]``).
        x_star: fused state on the outer interpolant's scale at ``t_star``, shape ``[B, *D]``.
        snr: fused signal-to-noise ratio ``SNR* = snr_t + snrbar_s``, shape of ``t_star``.
    """

    t_star: Tensor
    x_star: Tensor
    snr: Tensor


class Interpolant(Component, abc.ABC):
    """A schedule ``x_t = alpha_t x_0 + beta_t x_1`` from noise (t = 0) to data (t = 1).

    Subclasses give ``alpha``, ``beta``, their time derivatives and ``time_from_snr``, the inverse
    of ``snr_t = beta_t^2 / alpha_t^2`` (monotone increasing). Everything else (interpolation, the
    conversions between velocity, denoiser and score, the GLASS fusion and the steering coefficient
    ``g_t``) is derived here once, following MATH.md sections 1, 3 and 6.

    Boundary conditions: ``alpha_0 = beta_1 = 1`` and ``alpha_1 = beta_0 = 0``.

    Shapes: schedule functions act elementwise on a time tensor of any shape. Methods that take a
    batch ``x`` of shape ``[B, *D]`` take times as a scalar or a tensor of shape ``[B]``.

    Cost: no network evaluations.
    """

    # ----------------------------------------------------------------- the schedule (abstract)
    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Noise coefficient ``alpha_t`` (1 at t = 0, 0 at t = 1)."""

    @abc.abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """Data coefficient ``beta_t`` (0 at t = 0, 1 at t = 1)."""

    @abc.abstractmethod
    def dalpha(self, t: Tensor) -> Tensor:
        """Time derivative of ``alpha_t``."""

    @abc.abstractmethod
    def dbeta(self, t: Tensor) -> Tensor:
        """Time derivative of ``beta_t``."""

    @abc.abstractmethod
    def time_from_snr(self, snr: Tensor) -> Tensor:
        """Inverse of :meth:`snr`: the time ``t`` with ``snr_t = snr``; maps 0 to 0 and inf to 1."""

    # ------------------------------------------------------------------------- derived
    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``beta_t^2 / alpha_t^2`` (``inf``, or very large in floating point, at t = 1)."""
        return self.beta(t) ** 2 / self.alpha(t) ** 2

    def _wronskian(self, t: Tensor) -> Tensor:
        # alpha_t dbeta_t - dalpha_t beta_t: positive on (0, 1] for a valid schedule (it may
        # vanish at t = 0, e.g. beta_t = t^p with p > 1), finite at both ends.
        return self.alpha(t) * self.dbeta(t) - self.dalpha(t) * self.beta(t)

    def interpolate(self, *, x_0: Tensor, x_1: Tensor, t: Tensor | float) -> Tensor:
        """``x_t = alpha_t x_0 + beta_t x_1``; ``x_0``, ``x_1`` of shape ``[B, *D]``."""
        t = pad_time(t, x_1)
        return self.alpha(t) * x_0 + self.beta(t) * x_1

    def velocity_target(self, *, x_0: Tensor, x_1: Tensor, t: Tensor | float) -> Tensor:
        """Conditional velocity ``dalpha_t x_0 + dbeta_t x_1`` (its mean given x_t is ``b_t``)."""
        t = pad_time(t, x_1)
        return self.dalpha(t) * x_0 + self.dbeta(t) * x_1

    def velocity_from_denoiser(self, *, t: Tensor | float, x: Tensor, denoiser: Tensor) -> Tensor:
        """``b_t(x) = dalpha_t (x - beta_t D) / alpha_t + dbeta_t D``; singular at t = 1."""
        t = pad_time(t, x)
        return (self.dalpha(t) * x + self._wronskian(t) * denoiser) / self.alpha(t)

    def denoiser_from_velocity(self, *, t: Tensor | float, x: Tensor, velocity: Tensor) -> Tensor:
        """``D_t(x) = (alpha_t b - dalpha_t x) / (alpha_t dbeta_t - dalpha_t beta_t)``; regular on (0, 1]."""
        t = pad_time(t, x)
        return (self.alpha(t) * velocity - self.dalpha(t) * x) / self._wronskian(t)

    def score_from_denoiser(self, *, t: Tensor | float, x: Tensor, denoiser: Tensor) -> Tensor:
        """``grad log p_t(x) = (beta_t D - x) / alpha_t^2``; singular at t = 1."""
        t = pad_time(t, x)
        return (self.beta(t) * denoiser - x) / self.alpha(t) ** 2

    def denoiser_from_score(self, *, t: Tensor | float, x: Tensor, score: Tensor) -> Tensor:
        """``D_t(x) = (alpha_t^2 score + x) / beta_t``; singular at t = 0."""
        t = pad_time(t, x)
        return (self.alpha(t) ** 2 * score + x) / self.beta(t)

    def velocity_from_score(self, *, t: Tensor | float, x: Tensor, score: Tensor) -> Tensor:
        """``b_t(x) = (dbeta_t / beta_t) x + alpha_t^2 (dbeta_t / beta_t - dalpha_t / alpha_t) score``."""
        t = pad_time(t, x)
        a, b = self.alpha(t), self.beta(t)
        return self.dbeta(t) / b * x + a * self._wronskian(t) / b * score

    def score_from_velocity(self, *, t: Tensor | float, x: Tensor, velocity: Tensor) -> Tensor:
        """Inverse of :meth:`velocity_from_score`; singular at t = 0 and t = 1."""
        denoiser = self.denoiser_from_velocity(t=t, x=x, velocity=velocity)
        return self.score_from_denoiser(t=t, x=x, denoiser=denoiser)

    def steering_coefficient(self, t: Tensor | float, *, max: float | None = None) -> Tensor:
        """``g_t = alpha_t (alpha_t dbeta_t / beta_t - dalpha_t)`` (MATH.md section 6).

        The coefficient of ``grad V_t`` in the exact steered ODE ``dx/dt = b_t + g_t grad V_t``.
        It is infinite at t = 0 (where ``grad V_0 = 0``) and 0 at t = 1; ``max`` clamps it.
        """
        t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not torch.is_tensor(t) else t
        beta = self.beta(t)
        g = self.alpha(t) * self._wronskian(t) / beta
        g = torch.where(beta == 0, torch.full_like(g, float("inf")), g)  # t = 0, even where W_0 = 0
        return g if max is None else g.clamp(max=max)

    def glass_fusion(
        self,
        *,
        t: Tensor | float,
        x: Tensor,
        s: Tensor | float,
        y: Tensor,
        inner: Interpolant | None = None,
    ) -> GlassFusion:
        """Fuse the context ``x_t = x`` and the inner state ``y_s = y`` (MATH.md section 3).

        Given ``x_1``, both are Gaussian observations of it; they fuse into one observation at the
        time ``t*`` with ``snr_{t*} = snr_t + snrbar_s`` and the state ``x* = beta_{t*} xhat``, so
        that ``p(x_1 | y_s = y, x_t = x) = p_{1|t*}(x_1 | x*)``. Computed in the form multiplied
        through by ``alpha_t^2 abar_s^2``, so both ends (t or s equal to 0 or 1) stay finite.

        Args:
            t: context time, scalar or ``[B]``.
            x: context state ``[B, *D]``.
            s: inner time, scalar or ``[B]``.
            y: inner state ``[B, *D]``.
            inner: the inner schedule ``(abar, bbar)``; defaults to this interpolant.

        Returns:
            :class:`GlassFusion` with ``t*``, ``x*`` and ``SNR*``. At t = 0 with the same inner and
            outer schedule it is ``(s, y)``.
        """
        inner = self if inner is None else inner
        t, s = as_time(t, x), as_time(s, y)
        a2, b = self.alpha(t) ** 2, self.beta(t)
        abar2, bbar = inner.alpha(s) ** 2, inner.beta(s)
        tiny = torch.finfo(x.dtype).tiny
        den = (b**2 * abar2 + bbar**2 * a2).clamp_min(tiny)
        snr = den / (a2 * abar2)  # inf where t = 1 or s = 1, which time_from_snr maps to 1
        t_star = self.time_from_snr(snr)
        xhat = (pad_time(b * abar2, x) * x + pad_time(bbar * a2, y) * y) / pad_time(den, x)
        # exact observations (alpha_t = 0 or abar_s = 0) decide alone; the context wins a tie
        exact_y = pad_time((abar2 == 0).to(x.dtype), y) > 0
        xhat = torch.where(exact_y, y / pad_time(torch.where(bbar == 0, torch.ones_like(bbar), bbar), y), xhat)
        exact_x = pad_time((a2 == 0).to(x.dtype), x) > 0
        xhat = torch.where(exact_x, x / pad_time(torch.where(b == 0, torch.ones_like(b), b), x), xhat)
        x_star = pad_time(self.beta(t_star), x) * xhat
        return GlassFusion(t_star=t_star, x_star=x_star, snr=snr)
