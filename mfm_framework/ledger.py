"""The cost ledger: counts the network and reward evaluations that really happen.

Costs are counted where they are incurred, never computed from a formula:

- **base forwards**: rows through the base model, the ``t = 0`` slice of a meta flow map
  (:meth:`MetaFlowMap.drift <mfm_framework.model.MetaFlowMap.drift>`, ``denoise``, ``flow``);
- **MFM forwards**: rows through the meta flow map with a real context (``velocity``, ``jump``,
  ``sample_posterior``);
- **backwards**: rows of network outputs that a backward pass actually went through (a tensor
  hook on each network output that requires grad fires when a gradient reaches it);
- **reward calls**: rows through the reward;
- **wall time** while the ledger is attached.

The model reports its own calls: :meth:`CostLedger.attach` sets ``model.ledger`` (the model's one
entry point to its network reports every call with its role) and wraps the reward in a
:class:`CountedReward`. The paper's accounting (MATH.md section 6) turns the counts into NFE:
each forward or reward call is 1, each backward 2 more. For example K steering steps of MFM-G
with N particles cost ``K + 4NK`` per sample: K base drifts, NK MFM draws, NK reward calls and a
backward through the NK draws.

A backward that reaches no network output (for example the gradient of a reward at a fixed
point) is not counted: only backwards through networks are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
from torch import Tensor

__all__ = ["Cost", "CostLedger", "CountedReward", "ROLES"]

#: The roles of a network call: the base model (t = 0 slice) and the meta flow map proper.
ROLES: tuple[str, ...] = ("base", "mfm")


def _nfe(cost: Cost) -> float:
    return cost.base_forwards + cost.mfm_forwards + cost.reward_calls + 2 * cost.backwards


@attrs.frozen(kw_only=True)
class Cost:
    """What producing a batch of samples cost, per output sample (MATH.md section 6 accounting).

    Attributes:
        samples: the number of output samples the counts are divided by.
        base_forwards: rows through the base model (the ``t = 0`` slice) per sample.
        mfm_forwards: rows through the meta flow map with a real context per sample.
        backwards: rows of network outputs a backward pass went through, per sample.
        reward_calls: rows through the reward per sample.
        wall_s: wall-clock seconds in total (not per sample).
        nfe: ``base_forwards + mfm_forwards + reward_calls + 2 * backwards`` (derived).
    """

    samples: int
    base_forwards: float
    mfm_forwards: float
    backwards: float
    reward_calls: float
    wall_s: float
    nfe: float = attrs.field(init=False, default=attrs.Factory(_nfe, takes_self=True))

    def to_dict(self) -> dict[str, float | int]:
        """The record as a plain dict (for ``metrics.jsonl`` and ``summary.json``)."""
        return attrs.asdict(self)


class CountedReward:
    """A reward that reports the rows of every call to a ledger.

    Calls go to the wrapped reward; every other attribute (``is_differentiable``, ``name``,
    ``options``, ...) is the wrapped reward's own.

    Args:
        reward: the reward ``r(x_1)``: ``[B, *D] -> [B]``.
        ledger: where the calls are counted.
    """

    def __init__(self, reward: Any, ledger: CostLedger) -> None:
        self.wrapped = reward
        self.ledger = ledger

    def __call__(self, x_1: Tensor, *, cond: Tensor | None = None) -> Tensor:
        out = self.wrapped(x_1, cond=cond)
        self.ledger.record_reward(x_1.shape[0])
        return out

    def __getattr__(self, name: str) -> Any:
        if name in ("wrapped", "ledger"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"CountedReward({self.wrapped!r})"


class CostLedger:
    """Counts base and MFM forwards, backwards, reward calls and wall time as they happen.

    Use :meth:`attach` around the work to count; :meth:`cost` gives the counts per output sample.
    Counters accumulate across attachments; pass ``since=ledger.totals()`` taken before a piece
    of work to :meth:`cost` to get that piece alone.

    Attributes:
        base_rows: rows through the base model.
        mfm_rows: rows through the meta flow map with a real context.
        backward_rows: rows of network outputs a backward went through.
        reward_rows: rows through the reward.
    """

    def __init__(self) -> None:
        self.base_rows = 0
        self.mfm_rows = 0
        self.backward_rows = 0
        self.reward_rows = 0
        self._wall = 0.0
        self._started: float | None = None

    # ------------------------------------------------------------------ recording
    def record_forward(self, role: str, output: Tensor) -> None:
        """Count a network call of ``role`` (``"base"`` or ``"mfm"``) whose output is ``[B, *D]``.

        When the output requires grad, a hook on it counts its rows as a backward if and when a
        gradient reaches it.
        """
        if role == "base":
            self.base_rows += output.shape[0]
        elif role == "mfm":
            self.mfm_rows += output.shape[0]
        else:
            raise ValueError(f"unknown role {role!r} of a network call; expected one of {ROLES}")
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad: Tensor) -> None:
        self.backward_rows += grad.shape[0]

    def record_reward(self, rows: int) -> None:
        """Count ``rows`` rows through the reward."""
        self.reward_rows += int(rows)

    def count_reward(self, reward: Any) -> CountedReward:
        """``reward`` wrapped so that its calls count here (not wrapped twice for this ledger)."""
        if isinstance(reward, CountedReward) and reward.ledger is self:
            return reward
        return CountedReward(reward, self)

    # ------------------------------------------------------------------ attaching
    @property
    def attached(self) -> bool:
        """True while inside :meth:`attach`."""
        return self._started is not None

    @contextmanager
    def attach(self, model: Any, reward: Any = None) -> Iterator[CountedReward | None]:
        """Count the calls of ``model`` (and of the reward yielded) and the wall time, inside the block.

        Sets ``model.ledger`` for the duration and restores it after. Re-entrant for the same
        ledger (an inner attachment changes nothing); a model already counted by another ledger
        is an error.

        Args:
            model: a :class:`~mfm_framework.model.MetaFlowMap` (anything with a ``ledger``
                attribute that its network calls report to).
            reward: the reward to count, or ``None``.

        Yields:
            The counted reward (a :class:`CountedReward`) to call instead of ``reward``, or None.

        Raises:
            RuntimeError: if ``model`` is already attached to another ledger.
        """
        previous = getattr(model, "ledger", None)
        if previous is not None and previous is not self:
            raise RuntimeError("the model is already counted by another cost ledger; detach it first")
        outer = not self.attached
        model.ledger = self
        if outer:
            self._started = time.perf_counter()
        try:
            yield None if reward is None else self.count_reward(reward)
        finally:
            model.ledger = previous
            if outer:
                assert self._started is not None
                self._wall += time.perf_counter() - self._started
                self._started = None

    # ------------------------------------------------------------------ reporting
    @property
    def wall_s(self) -> float:
        """Wall-clock seconds spent attached so far (including a running attachment)."""
        running = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._wall + running

    def totals(self) -> Cost:
        """The raw counts so far, as a :class:`Cost` of ``samples = 1``."""
        return Cost(
            samples=1,
            base_forwards=float(self.base_rows),
            mfm_forwards=float(self.mfm_rows),
            backwards=float(self.backward_rows),
            reward_calls=float(self.reward_rows),
            wall_s=self.wall_s,
        )

    def cost(self, *, samples: int, since: Cost | None = None) -> Cost:
        """The counts per output sample (wall time in total), optionally since an earlier :meth:`totals`.

        Args:
            samples: the number of output samples produced (>= 1).
            since: a snapshot from :meth:`totals`; counts and time before it are left out.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        now = self.totals()
        base = since if since is not None else Cost(
            samples=1, base_forwards=0.0, mfm_forwards=0.0, backwards=0.0, reward_calls=0.0, wall_s=0.0
        )
        return Cost(
            samples=samples,
            base_forwards=(now.base_forwards - base.base_forwards) / samples,
            mfm_forwards=(now.mfm_forwards - base.mfm_forwards) / samples,
            backwards=(now.backwards - base.backwards) / samples,
            reward_calls=(now.reward_calls - base.reward_calls) / samples,
            wall_s=now.wall_s - base.wall_s,
        )

    def reset(self) -> None:
        """Set every counter and the wall time back to zero."""
        running = self._started is not None
        self.__init__()  # type: ignore[misc]
        if running:
            self._started = time.perf_counter()
