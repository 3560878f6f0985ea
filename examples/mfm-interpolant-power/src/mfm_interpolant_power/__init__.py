"""A power-law interpolant for mfm, shipped as a third-party plugin.

Installing this distribution registers the interpolant ``power`` through the entry-point group
``mfm``; a run spec selects it with ``[model.interpolant]`` ``kind = "power"``.
"""

from __future__ import annotations

import math

import attrs
from torch import Tensor

from mfm_framework import hookimpl
from mfm_framework.interfaces import Interpolant

__all__ = ["PowerInterpolant", "PowerOptions", "mfm_interpolants"]


@attrs.frozen(kw_only=True)
class PowerOptions:
    """Options of :class:`PowerInterpolant` (the keys of its spec table).

    Attributes:
        power: the exponent ``p``, finite and >= 1. ``p = 1`` is the linear schedule; ``p > 1``
            keeps more noise for longer. (``p < 1`` is refused: its velocity ``p t^(p-1)`` is
            infinite at t = 0.)
    """

    power: float = attrs.field(default=2.0, validator=[attrs.validators.ge(1), attrs.validators.lt(math.inf)])


class PowerInterpolant(Interpolant):
    """Power-law schedule ``alpha_t = 1 - t^p``, ``beta_t = t^p`` (``p = 1`` is linear).

    ``snr_t = t^(2p) / (1 - t^p)^2``, so ``sqrt(snr) = t^p / (1 - t^p)`` and
    ``time_from_snr(q) = (sqrt(q) / (1 + sqrt(q)))^(1/p)``; the steering coefficient is
    ``g_t = p (1 - t^p) / t``. For ``p > 1`` the path leaves the noise with zero speed
    (``dbeta_0 = 0``), so a velocity at exactly t = 0 carries no information about the data.

    Shapes: the schedule methods act elementwise on a time tensor of any shape and return that
    shape; the methods inherited from ``Interpolant`` document their own.

    Cost: no network evaluations (0 NFE).
    """

    name = "power"
    Options = PowerOptions

    @property
    def power(self) -> float:
        """The exponent ``p``."""
        return self.options.power

    def alpha(self, t: Tensor) -> Tensor:
        """Noise coefficient ``alpha_t = 1 - t^p``.

        Args:
            t: times in [0, 1], any shape.

        Returns:
            A tensor of the shape of ``t``: 1 at t = 0, 0 at t = 1.
        """
        return 1 - t**self.power

    def beta(self, t: Tensor) -> Tensor:
        """Data coefficient ``beta_t = t^p``.

        Args:
            t: times in [0, 1], any shape.

        Returns:
            A tensor of the shape of ``t``: 0 at t = 0, 1 at t = 1.
        """
        return t**self.power

    def dalpha(self, t: Tensor) -> Tensor:
        """Time derivative ``dalpha_t = -p t^(p - 1)``.

        Args:
            t: times in [0, 1], any shape.

        Returns:
            A tensor of the shape of ``t``.
        """
        return -self.power * t ** (self.power - 1)

    def dbeta(self, t: Tensor) -> Tensor:
        """Time derivative ``dbeta_t = p t^(p - 1)``.

        Args:
            t: times in [0, 1], any shape.

        Returns:
            A tensor of the shape of ``t``.
        """
        return self.power * t ** (self.power - 1)

    def time_from_snr(self, snr: Tensor) -> Tensor:
        """Inverse of ``snr_t``: ``t = (r / (1 + r))^(1/p)`` with ``r = sqrt(snr)``.

        Written as ``(1 / (1 + 1/r))^(1/p)`` so that ``snr = inf`` gives 1 (not ``inf / inf``)
        and ``snr = 0`` gives 0.

        Args:
            snr: signal-to-noise ratios in [0, inf], any shape.

        Returns:
            Times in [0, 1] of the shape of ``snr``.
        """
        return (1 / (1 + 1 / snr.sqrt())) ** (1 / self.power)


@hookimpl
def mfm_interpolants() -> list[type]:
    """Register :class:`PowerInterpolant` (mfm calls this once, at plugin discovery)."""
    return [PowerInterpolant]
