"""The Integrator interface: ODE/SDE integration over an explicit time grid."""

from __future__ import annotations

import abc
from typing import ClassVar, Protocol

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces.component import Component

__all__ = ["Integrator", "IntegrationResult", "Drift", "Diffusion"]


class Drift(Protocol):
    """A drift ``f(t, x)``: ``t`` of shape ``[B]``, ``x`` and the result of shape ``[B, *D]``."""

    def __call__(self, *, t: Tensor, x: Tensor) -> Tensor: ...


class Diffusion(Protocol):
    """A noise scale ``sigma(t, x)`` of ``dx = f dt + sigma dW``: a scalar, ``[B]`` or ``[B, *D]``."""

    def __call__(self, *, t: Tensor, x: Tensor) -> Tensor: ...


@attrs.frozen(kw_only=True)
class IntegrationResult:
    """What an integrator returns.

    Attributes:
        x: final state, ``[B, *D]``.
        times: the grid integrated over, ``[K + 1]``.
        path: the states on the grid, ``[K + 1, B, *D]`` (``path[0]`` is the initial state), or
            ``None`` unless ``keep_path`` was asked for.
        nfe: number of drift evaluations (per sample).
    """

    x: Tensor
    times: Tensor
    path: Tensor | None
    nfe: int


class Integrator(Component, abc.ABC):
    """Integrates ``dx = f(t, x) dt [+ sigma(t, x) dW]`` over an explicit, monotone time grid.

    Subclasses implement :meth:`step`; :meth:`integrate` validates the grid, loops, keeps the
    path on request and counts drift evaluations. There is never an implicit step count: the
    caller passes the grid (see :func:`mfm_framework.grids.uniform_grid`).

    Attributes:
        stochastic: True when the integrator integrates SDEs (takes ``diffusion``).
        order: order of convergence in the step size: the global order for ODEs, the weak order
            (of moments) for SDEs. The conformance suite checks it.
    """

    stochastic: ClassVar[bool] = False
    order: ClassVar[int] = 1

    @abc.abstractmethod
    def step(
        self,
        drift: Drift,
        *,
        t: Tensor,
        t_next: Tensor,
        x: Tensor,
        diffusion: Diffusion | None,
        generator: torch.Generator | None,
        last: bool,
    ) -> tuple[Tensor, int]:
        """Advance one step from ``t`` to ``t_next`` (both ``[B]``).

        Returns:
            The new state ``[B, *D]`` and the number of drift evaluations it took.
        """

    def integrate(
        self,
        drift: Drift,
        *,
        x: Tensor,
        times: Tensor,
        diffusion: Diffusion | None = None,
        generator: torch.Generator | None = None,
        keep_path: bool = False,
    ) -> IntegrationResult:
        """Integrate from ``times[0]`` to ``times[-1]``.

        Args:
            drift: ``f(*, t, x)``.
            x: initial state ``[B, *D]``.
            times: strictly monotone grid of ``K + 1 >= 2`` times (K steps).
            diffusion: ``sigma(*, t, x)`` for an SDE; only stochastic integrators take it.
            generator: random generator for the Brownian increments.
            keep_path: also return the states on the grid.

        Returns:
            :class:`IntegrationResult`.

        Raises:
            ValueError: for a malformed grid, or an SDE given to a deterministic integrator.
        """
        times = torch.as_tensor(times)
        if times.ndim != 1 or times.numel() < 2:
            raise ValueError(f"the time grid must be 1-D with at least 2 points, got shape {tuple(times.shape)}")
        steps = times[1:] - times[:-1]
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise ValueError("the time grid must be strictly monotone")
        if diffusion is not None and not self.stochastic:
            raise ValueError(
                f"integrator {self.name!r} is deterministic and cannot integrate an SDE "
                "(a diffusion was given); choose a stochastic integrator (`mfm ls integrators`)"
            )
        times = times.to(device=x.device, dtype=x.dtype)
        batch = x.shape[0]
        path = [x] if keep_path else None
        nfe = 0
        n = times.numel() - 1
        for k in range(n):
            t = times[k].expand(batch)
            t_next = times[k + 1].expand(batch)
            x, used = self.step(
                drift, t=t, t_next=t_next, x=x, diffusion=diffusion, generator=generator, last=k == n - 1
            )
            nfe += used
            if path is not None:
                path.append(x)
        return IntegrationResult(
            x=x, times=times, path=torch.stack(path) if path is not None else None, nfe=nfe
        )
