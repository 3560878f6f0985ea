"""The core's weighted sum of rewards (``mfm_framework.rewards.WeightedReward``).

Uses small rewards defined here (the core's tests need no plugin): two single-term closed forms,
a two-term closed form and a black-box reward without one.
"""

from __future__ import annotations

import pytest
import torch

from mfm_framework.interfaces import ExpQuadraticMixture, Reward
from mfm_framework.rewards import WeightedReward

F64 = torch.float64


class Bowl(Reward):
    """``r(x) = -|x - c|^2 / 2`` (a single-term closed form)."""

    name = "bowl"

    def __init__(self, center: tuple[float, ...]) -> None:
        super().__init__()
        self.center = torch.tensor(center, dtype=F64)

    def __call__(self, x_1, *, cond=None):
        return -0.5 * (x_1 - self.center.to(x_1)).square().sum(-1)

    def closed_form(self):
        d = self.center.shape[0]
        return ExpQuadraticMixture(
            precision=torch.eye(d, dtype=F64)[None], shift=self.center[None], log_scale=(-0.5 * self.center.square().sum())[None]
        )


class Tilt(Reward):
    """``r(x) = a . x`` (a single-term closed form, P = 0)."""

    name = "tilt"

    def __init__(self, a: tuple[float, ...]) -> None:
        super().__init__()
        self.a = torch.tensor(a, dtype=F64)

    def __call__(self, x_1, *, cond=None):
        return x_1 @ self.a.to(x_1)

    def closed_form(self):
        d = self.a.shape[0]
        return ExpQuadraticMixture(precision=torch.zeros(1, d, d, dtype=F64), shift=self.a[None], log_scale=torch.zeros(1, dtype=F64))


class TwoBumps(Reward):
    """``r(x) = log(exp(-|x - c1|^2) + 2 exp(-|x - c2|^2))`` (a two-term closed form)."""

    name = "two-bumps"

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=F64)
        self.log_w = torch.tensor([1.0, 2.0], dtype=F64).log()

    def __call__(self, x_1, *, cond=None):
        sq = (x_1[:, None] - self.c.to(x_1)).square().sum(-1)
        return (self.log_w.to(x_1) - sq).logsumexp(-1)

    def closed_form(self):
        return ExpQuadraticMixture(
            precision=2 * torch.eye(2, dtype=F64).expand(2, 2, 2).clone(),
            shift=2 * self.c,
            log_scale=self.log_w - self.c.square().sum(-1),
        )


class BlackBox(Reward):
    """A non-differentiable reward without a closed form: ``r(x) = [x_0 > 0]``."""

    name = "black-box"
    is_differentiable = False

    def __call__(self, x_1, *, cond=None):
        return (x_1[:, 0] > 0).to(x_1.dtype)


def points(seed: int, b: int = 32) -> torch.Tensor:
    return 2.0 * torch.randn(b, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def test_value_is_the_weighted_sum_and_terms_are_logged() -> None:
    bowl, tilt, box = Bowl((1.0, -1.0)), Tilt((0.5, 2.0)), BlackBox()
    reward = WeightedReward([(0.5, bowl), (-1.5, tilt), (3.0, box)])
    x = points(0)
    close(reward(x), 0.5 * bowl(x) - 1.5 * tilt(x) + 3.0 * box(x))
    values = reward.terms_values(x)
    assert list(values) == ["bowl", "tilt", "black-box"]
    close(values["bowl"], bowl(x))
    close(values["tilt"], tilt(x))  # unweighted
    total, same = reward.evaluate(x)
    close(total, reward(x))
    assert same.keys() == values.keys()
    assert isinstance(reward, Reward) and reward.name == "weighted-sum"


def test_labels_are_unique() -> None:
    reward = WeightedReward([(1.0, Bowl((0.0, 0.0))), (1.0, Tilt((1.0, 0.0))), (2.0, Bowl((1.0, 1.0))), (1.0, Tilt((0.0, 1.0)), "up")])
    assert reward.labels == ["bowl#1", "tilt", "bowl#2", "up"]
    assert list(reward.terms_values(points(1))) == reward.labels


def test_differentiability_is_that_of_every_term() -> None:
    assert WeightedReward([(1.0, Bowl((0.0, 0.0))), (2.0, Tilt((1.0, 0.0)))]).is_differentiable
    assert not WeightedReward([(1.0, Bowl((0.0, 0.0))), (2.0, BlackBox())]).is_differentiable
    x = points(2).requires_grad_(True)
    (g,) = torch.autograd.grad(WeightedReward([(2.0, Bowl((1.0, 0.0)))])(x).sum(), x)
    close(g, -2.0 * (x.detach() - torch.tensor([1.0, 0.0], dtype=F64)))


def test_closed_form_of_single_terms_is_the_weighted_sum_of_parameters() -> None:
    bowl, tilt = Bowl((1.0, -1.0)), Tilt((0.5, 2.0))
    reward = WeightedReward([(0.5, bowl), (-1.5, tilt)])
    form = reward.closed_form()
    assert form is not None and form.num_terms == 1
    close(form.precision[0], 0.5 * torch.eye(2, dtype=F64))
    close(form.shift[0], 0.5 * torch.tensor([1.0, -1.0], dtype=F64) - 1.5 * torch.tensor([0.5, 2.0], dtype=F64))
    x = points(3)
    close(form.reward(x), reward(x))


def test_closed_form_with_a_mixture_term_of_weight_one() -> None:
    reward = WeightedReward([(0.7, Bowl((0.0, 1.0))), (1.0, TwoBumps()), (2.0, Tilt((1.0, -1.0)))])
    form = reward.closed_form()
    assert form is not None and form.num_terms == 2
    x = points(4)
    close(form.reward(x), reward(x))
    # twice a mixture: the product of two two-term sums has four terms
    square = WeightedReward([(1.0, TwoBumps()), (1.0, TwoBumps())]).closed_form()
    assert square is not None and square.num_terms == 4
    close(square.reward(x), 2 * TwoBumps()(x))


def test_no_closed_form() -> None:
    assert WeightedReward([(1.0, Bowl((0.0, 0.0))), (1.0, BlackBox())]).closed_form() is None
    assert WeightedReward([(0.5, TwoBumps())]).closed_form() is None  # a power of a sum of exponentials
    assert WeightedReward([(1.0, Bowl((0.0, 0.0))), (1.0, Bowl((0.0, 0.0, 0.0)))]).closed_form() is None


@pytest.mark.parametrize(
    ("terms", "error", "message"),
    [
        ([], ValueError, "at least one"),
        ([(1.0,)], ValueError, "term 0 .* must be \\(weight, reward\\)"),
        ([(float("nan"), Bowl((0.0,)))], ValueError, "term 0 .* weight nan"),
        ([(True, Bowl((0.0,)))], ValueError, "weight True"),
        ([(1.0, Bowl((0.0,))), (1.0, lambda x: x)], TypeError, "term 1 .* must be a Reward"),
        ([(1.0, Bowl((0.0,)), "")], ValueError, "label ''"),
    ],
)
def test_bad_terms(terms, error, message) -> None:
    with pytest.raises(error, match=message):
        WeightedReward(terms)
