"""The ``exact`` oracle value estimator: ``V_t`` and ``grad V_t`` in closed form (MATH.md sections 6, 8).

It needs a data law whose tilts are known (``context.data`` a
:class:`~mfm_framework.interfaces.TiltableData`, such as Gaussian mixtures) and a reward with a
closed form (``Reward.closed_form()`` not ``None``); it then is the ground truth the other
estimators are measured against. It evaluates no network and no reward.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import ExpQuadraticMixture, SteeringContext, TiltableData, ValueEstimator

__all__ = ["EXACT_ESTIMATORS", "ExactValue", "ExactValueOptions"]


def _check_bool(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"'{attribute.name}' must be true or false, got {value!r}")


@attrs.frozen(kw_only=True)
class ExactValueOptions:
    """Options of :class:`ExactValue`.

    Attributes:
        exact_drift: also replace the base drift by the data law's exact velocity ``b_t(x)`` in
            :meth:`ExactValue.drift_and_grad_value` (0 NFE instead of 1 base forward), so that a
            steering run integrates the exact steered drift ``b_t + g_t grad V_t``, whose law at
            t = 1 is exactly the tilted law. Off by default: the base drift is the model's.
    """

    exact_drift: bool = attrs.field(default=False, validator=_check_bool)


class ExactValue(ValueEstimator):
    """Oracle ``V_t(x) = log E[exp r(x_1) | x_t = x]`` and its exact gradient, from closed forms.

    ``value`` is ``context.data.log_value(t=t, x=x, form=context.reward.closed_form(),
    interpolant=context.model.interpolant)``; ``grad_value`` is its autograd gradient in ``x`` only
    (a detached copy of ``x``; works under an outer ``torch.no_grad()``). With exact ``b_t``,
    ``b_t + g_t grad V_t`` is the velocity of the tilted law ``p_1 exp(r) / Z``.

    Shapes: ``t`` ``[B]`` (or a scalar), ``x`` and the gradient ``[B, D]``, the value ``[B]``,
    in ``x``'s dtype (computed in float64 by the data law).

    Cost: 0 NFE (an oracle: no network, no reward call; with ``exact_drift`` the base drift is
    free too).

    Raises:
        ValueError: when the reward has no closed form, the data source has no exact tilts
            (``context.data`` is not a ``TiltableData``), or there is no outer interpolant
            (``context.model.interpolant``).
    """

    name = "exact"
    Options = ExactValueOptions
    requires_differentiable_reward = False

    def _oracle(self, context: SteeringContext) -> tuple[Any, ExpQuadraticMixture, Any]:
        """``(data, closed form, interpolant)``, or a clear error."""
        reward = context.reward
        reward_name = getattr(reward, "name", type(reward).__name__)
        closed_form = getattr(reward, "closed_form", None)
        form = closed_form() if callable(closed_form) else None
        if form is None:
            raise ValueError(
                f"the 'exact' value estimator needs a reward with a closed form, but reward {reward_name!r} "
                "has none (its closed_form() returned None); use a sampling estimator such as 'mfm-g' instead"
            )
        data = context.data
        if not isinstance(data, TiltableData):
            what = "no data source (context.data is None)" if data is None else (
                f"data source {getattr(data, 'name', type(data).__name__)!r}, which has no exact tilts"
            )
            raise ValueError(
                f"the 'exact' value estimator needs a data law with exact tilts (TiltableData: tilted() and "
                f"log_value()), got {what}; reward {reward_name!r}"
            )
        interpolant = getattr(context.model, "interpolant", None)
        if interpolant is None:
            raise ValueError(
                "the 'exact' value estimator needs the outer interpolant of the contexts "
                "(context.model.interpolant), but context.model has none"
            )
        return data, form, interpolant

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """Exact ``V_t(x)``, ``[B]``. 0 NFE."""
        data, form, interpolant = self._oracle(context)
        return data.log_value(t=t, x=x, form=form, interpolant=interpolant)

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """Exact ``grad_x V_t(x)``, ``[B, D]`` (autograd of :meth:`value` in ``x`` only). 0 NFE."""
        data, form, interpolant = self._oracle(context)
        t = t.detach() if torch.is_tensor(t) else t
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            v = data.log_value(t=t, x=xx, form=form, interpolant=interpolant)
            (grad,) = torch.autograd.grad(v.sum(), inputs=[xx])
        return grad.detach()

    def base_drift(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        """The base drift ``b_t(x)``, ``[B, D]``, detached.

        With ``exact_drift`` the data law's exact velocity (0 NFE, also where ``g_t = 0``);
        otherwise the model's base drift (1 base NFE, the interface's default).
        """
        if not self.options.exact_drift:
            return super().base_drift(t=t, x=x, context=context)
        data, _, interpolant = self._oracle(context)
        with torch.no_grad():
            return data.velocity(t=t, x=x, interpolant=interpolant).detach()


EXACT_ESTIMATORS: tuple[type, ...] = (ExactValue,)
