"""Composition of rewards: a weighted sum whose terms are logged separately.

The core composes rewards but names none: the terms are whatever :class:`Reward` components a
run spec declares (each built from the registry), with a weight each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mfm_framework.interfaces import ExpQuadraticMixture, Reward

__all__ = ["WeightedReward"]


class WeightedReward(Reward):
    """A weighted sum of rewards ``r(x_1) = sum_i w_i r_i(x_1)``, each term logged on its own.

    Built by the core from a spec's list of rewards and weights (not a registered component).
    Shapes: ``x_1`` ``[B, *D]`` as the terms take it; returns ``[B]``. Cost: one call evaluates
    every term once, so ``n`` terms cost ``n`` NFE.

    Args:
        terms: ``(weight, reward)`` or ``(weight, reward, label)`` tuples, at least one; weights are
            finite numbers. A term's label (its key in :meth:`terms_values`) defaults to the
            reward's ``name``; repeated names get ``#1``, ``#2``, ... suffixes in order.

    Attributes:
        terms: the ``(weight, reward)`` pairs, in order.
        labels: one label per term, unique.
        is_differentiable: True when every term is differentiable.
    """

    name = "weighted-sum"

    def __init__(self, terms: Sequence[tuple[Any, ...]]) -> None:
        super().__init__()
        if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence) or len(terms) == 0:
            raise ValueError(f"a weighted reward needs at least one (weight, reward) term, got {terms!r}")
        pairs: list[tuple[float, Reward]] = []
        labels: list[str | None] = []
        for i, term in enumerate(terms):
            if not isinstance(term, tuple) or len(term) not in (2, 3):
                raise ValueError(f"term {i} of a weighted reward must be (weight, reward) or (weight, reward, label), got {term!r}")
            weight, reward = term[0], term[1]
            label = term[2] if len(term) == 3 else None
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"term {i} of a weighted reward has weight {weight!r}; it must be a finite number")
            if not isinstance(reward, Reward):
                raise TypeError(f"term {i} of a weighted reward must be a Reward, got {type(reward).__name__}")
            if label is not None and (not isinstance(label, str) or not label):
                raise ValueError(f"term {i} of a weighted reward has label {label!r}; it must be a non-empty string")
            pairs.append((float(weight), reward))
            labels.append(label)
        self.terms: list[tuple[float, Reward]] = pairs
        self.labels: list[str] = _unique_labels([lab or r.name for lab, (_, r) in zip(labels, pairs)])
        self.is_differentiable = all(r.is_differentiable for _, r in pairs)  # type: ignore[misc]

    def __repr__(self) -> str:
        inner = ", ".join(f"{w!r} * {r!r}" for w, r in self.terms)
        return f"WeightedReward([{inner}])"

    def evaluate(self, x_1: Tensor, *, cond: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum ``[B]`` and the unweighted value ``[B]`` of each term, by label (one pass)."""
        values = {label: reward(x_1, cond=cond) for label, (_, reward) in zip(self.labels, self.terms)}
        total = sum(w * values[label] for label, (w, _) in zip(self.labels, self.terms))
        assert isinstance(total, Tensor)
        return total, values

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``sum_i w_i r_i(x_1)``, ``[B]``."""
        return self.evaluate(x_1, cond=cond)[0]

    def terms_values(self, x_1: Tensor, *, cond: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted value ``r_i(x_1)`` ``[B]`` of each term, keyed by its label (for logging)."""
        return self.evaluate(x_1, cond=cond)[1]

    def closed_form(self) -> ExpQuadraticMixture | None:
        """The product ``prod_i exp(w_i r_i)`` as an :class:`ExpQuadraticMixture`, when it has one.

        Single-term forms combine with any weight (``P``, ``h`` and ``log_scale`` add up, times
        ``w_i``); a term with a multi-term form combines only with weight 1 (the terms of the
        product are all the combinations, ``J_1 J_2 ...`` of them). ``None`` when some term has no
        closed form, a multi-term form has a weight other than 1, or the dimensions differ.
        """
        combined: ExpQuadraticMixture | None = None
        for weight, reward in self.terms:
            form = reward.closed_form()
            if form is None or (form.num_terms > 1 and weight != 1):
                return None
            form = _to_f64(form).scaled(weight)
            if combined is None:
                combined = form
                continue
            if form.dim != combined.dim:
                return None
            combined = ExpQuadraticMixture(
                precision=(combined.precision[:, None] + form.precision[None]).flatten(0, 1),
                shift=(combined.shift[:, None] + form.shift[None]).flatten(0, 1),
                log_scale=(combined.log_scale[:, None] + form.log_scale[None]).flatten(0, 1),
            )
        return combined


def _to_f64(form: ExpQuadraticMixture) -> ExpQuadraticMixture:
    cast = lambda v: v.detach().to(device="cpu", dtype=torch.float64)  # noqa: E731
    return ExpQuadraticMixture(precision=cast(form.precision), shift=cast(form.shift), log_scale=cast(form.log_scale))


def _unique_labels(names: list[str]) -> list[str]:
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if counts[n] == 1:
            out.append(n)
        else:
            seen[n] = seen.get(n, 0) + 1
            out.append(f"{n}#{seen[n]}")
    return out
