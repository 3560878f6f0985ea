"""The meta flow map: a backbone and two interpolants, with the maps and samplers built on them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mfm_framework.interfaces import Backbone, Interpolant
from mfm_framework.interfaces._time import as_time, pad_time

__all__ = ["MetaFlowMap", "batch_times"]


def batch_times(t: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Times as a ``[batch]`` tensor on ``like``'s device and dtype (scalars are broadcast)."""
    t = as_time(t, like)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"times must be a scalar or of shape [{batch}], got {tuple(t.shape)}")
    return t


class MetaFlowMap(nn.Module):
    """A meta flow map ``X_{s,u}(y; t, x) = y + (u - s) v_{s,u}(y; t, x)`` (MATH.md section 2).

    For every context ``(t, x)``, ``X_{0,1}(eps; t, x)`` with ``eps ~ N(0, I)`` is a draw of the
    posterior ``p(x_1 | x_t = x)``; at ``t = 0`` (context ``x = 0``) it is an ordinary flow map of
    the data, whose diagonal ``v_{t,t}(x; 0, 0)`` is the base velocity ``b_t(x)``.

    Args:
        backbone: the network for ``v``.
        interpolant: the outer schedule of contexts ``x_t = alpha_t x_0 + beta_t x_1``.
        inner: the inner schedule from fresh noise to the posterior (default: ``interpolant``).

    Shapes: times are scalars or ``[B]``; states ``[B, *D]``; ``cond`` is ``[B]`` labels or None.
    Cost: every call of :meth:`velocity`, :meth:`jump`, :meth:`drift`, :meth:`denoise` or
    :meth:`flow` is 1 NFE; :meth:`sample_posterior` with ``steps = K`` costs K NFE per draw.

    Counting: every method reaches the network through one entry point, which reports each call to
    :attr:`ledger` when one is attached (see :meth:`mfm_framework.ledger.CostLedger.attach`):
    :meth:`drift`, :meth:`denoise` and :meth:`flow` as the ``"base"`` model (the ``t = 0``
    slice), :meth:`velocity`, :meth:`jump` and :meth:`sample_posterior` as the ``"mfm"``.

    Attributes:
        ledger: the cost ledger that counts network calls, or ``None`` (the default: no counting).
    """

    def __init__(self, backbone: Backbone, interpolant: Interpolant, inner: Interpolant | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.interpolant = interpolant
        self.inner = interpolant if inner is None else inner
        self.ledger: Any = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.backbone.data_shape

    def velocity(
        self, *, s: Tensor | float, u: Tensor | float, y: Tensor, t: Tensor | float, x: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Average velocity ``v_{s,u}(y; t, x)``, ``[B, *D]``. 1 NFE."""
        return self._network(s=s, u=u, y=y, t=t, x=x, cond=cond, role="mfm")

    def jump(
        self, *, s: Tensor | float, u: Tensor | float, y: Tensor, t: Tensor | float, x: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """The flow map ``X_{s,u}(y; t, x) = y + (u - s) v_{s,u}(y; t, x)``, ``[B, *D]``. 1 NFE."""
        return self._jump(s=s, u=u, y=y, t=t, x=x, cond=cond, role="mfm")

    def _network(
        self,
        *,
        s: Tensor | float,
        u: Tensor | float,
        y: Tensor,
        t: Tensor | float,
        x: Tensor,
        cond: Tensor | None,
        role: str,
    ) -> Tensor:
        """The single entry point to the backbone: ``v_{s,u}(y; t, x)``, reported to the ledger as ``role``."""
        batch = y.shape[0]
        v = self.backbone(
            y=y, s=batch_times(s, batch, y), u=batch_times(u, batch, y), t=batch_times(t, batch, y), x=x, cond=cond
        )
        if self.ledger is not None:
            self.ledger.record_forward(role, v)
        return v

    def _jump(
        self,
        *,
        s: Tensor | float,
        u: Tensor | float,
        y: Tensor,
        t: Tensor | float,
        x: Tensor,
        cond: Tensor | None,
        role: str,
    ) -> Tensor:
        batch = y.shape[0]
        s_, u_ = batch_times(s, batch, y), batch_times(u, batch, y)
        return y + pad_time(u_ - s_, y) * self._network(s=s_, u=u_, y=y, t=t, x=x, cond=cond, role=role)

    def sample_posterior(
        self,
        *,
        t: Tensor | float,
        x: Tensor,
        n: int,
        steps: int = 1,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """``n`` i.i.d. draws of ``p(x_1 | x_t = x)`` per context, differentiable in ``x``.

        Chains ``X_{s_k, s_k+1}`` over the uniform inner grid ``0 = s_0 < ... < s_K = 1`` from
        fresh noise ``eps`` (MATH.md section 5).

        Args:
            t: context times, scalar or ``[B]``.
            x: contexts ``[B, *D]``.
            n: draws per context.
            steps: inner steps K.
            cond: labels ``[B]`` or None.
            generator: for ``eps``.
            eps: the noise ``[B, n, *D]`` to use instead of drawing it.

        Returns:
            ``[B, n, *D]``. Cost: ``K`` NFE per draw (``B * n * K`` network rows).
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        batch, shape = x.shape[0], x.shape[1:]
        t_rep = batch_times(t, batch, x).repeat_interleave(n)
        x_rep = x.repeat_interleave(n, dim=0)
        cond_rep = cond.repeat_interleave(n) if cond is not None else None
        if eps is None:
            eps = torch.randn((batch * n, *shape), generator=generator, device=x.device, dtype=x.dtype)
        else:
            eps = eps.reshape(batch * n, *shape)
        grid = torch.linspace(0, 1, steps + 1, device=x.device, dtype=x.dtype)
        y = eps
        for k in range(steps):
            y = self.jump(s=grid[k], u=grid[k + 1], y=y, t=t_rep, x=x_rep, cond=cond_rep)
        return y.reshape(batch, n, *shape)

    def drift(self, *, t: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Base velocity ``b_t(x) = v_{t,t}(x; 0, 0)`` (the ``t = 0`` slice), ``[B, *D]``. 1 NFE."""
        zero = torch.zeros_like(x)
        return self._network(s=t, u=t, y=x, t=0.0, x=zero, cond=cond, role="base")

    def denoise(self, *, t: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Denoiser ``D_t(x) = E[x_1 | x_t = x]`` from the base velocity, ``[B, *D]``. 1 NFE."""
        batch = x.shape[0]
        t_ = batch_times(t, batch, x)
        return self.interpolant.denoiser_from_velocity(t=t_, x=x, velocity=self.drift(t=t_, x=x, cond=cond))

    def flow(self, *, s: Tensor | float, u: Tensor | float, y: Tensor, cond: Tensor | None = None) -> Tensor:
        """The unconditional flow map ``X_{s,u}(y; 0, 0)`` of the data, ``[B, *D]``. 1 NFE."""
        return self._jump(s=s, u=u, y=y, t=0.0, x=torch.zeros_like(y), cond=cond, role="base")
