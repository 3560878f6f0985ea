"""The cost ledger counts what is really called, checked against a network that counts itself."""

from __future__ import annotations

import pytest
import torch

from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext
from mfm_framework.ledger import Cost, CostLedger, CountedReward
from mfm_framework.steering import steered_sample
from tests.steering_helpers import F64, BlackBoxReward, comp, random_quadratic, tiny_model

DIM, B = 2, 5


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, generator=gen, dtype=F64) * 0.8 + 0.1, torch.randn(B, DIM, generator=gen, dtype=F64)


def test_the_model_counts_nothing_without_a_ledger():
    model = tiny_model()
    assert model.ledger is None
    t, x = batch()
    model.drift(t=t, x=x)  # no error, nothing to count


def test_roles_of_the_model_methods():
    model = tiny_model()
    ledger = CostLedger()
    t, x = batch()
    with torch.no_grad(), ledger.attach(model):
        model.drift(t=t, x=x)
        model.denoise(t=t, x=x)
        model.flow(s=0.2, u=0.5, y=x)
        assert (ledger.base_rows, ledger.mfm_rows) == (3 * B, 0)
        model.velocity(s=0.1, u=0.4, y=x, t=t, x=x)
        model.jump(s=0.1, u=0.4, y=x, t=t, x=x)
        model.sample_posterior(t=t, x=x, n=3, steps=2)
    assert (ledger.base_rows, ledger.mfm_rows, ledger.backward_rows) == (3 * B, 2 * B + 6 * B, 0)
    assert model.backbone.counter["forward"] == ledger.base_rows + ledger.mfm_rows


def test_backwards_are_counted_only_when_they_happen():
    model = tiny_model()
    ledger = CostLedger()
    t, x = batch()
    x = x.requires_grad_(True)
    with ledger.attach(model):
        model.sample_posterior(t=t, x=x, n=4)  # a graph, but no backward
        assert ledger.backward_rows == 0
        draws = model.sample_posterior(t=t, x=x, n=4, steps=2)
        torch.autograd.grad(draws.sum(), [x])
    assert ledger.backward_rows == 8 * B == model.backbone.counter["backward"]
    # outside the attachment nothing is counted
    model.drift(t=t, x=x).sum().backward()
    assert ledger.backward_rows == 8 * B and ledger.base_rows == 0


def test_attach_restores_and_refuses_a_second_ledger():
    model = tiny_model()
    ledger, other = CostLedger(), CostLedger()
    with ledger.attach(model):
        assert model.ledger is ledger and ledger.attached
        with ledger.attach(model):  # re-entrant
            assert model.ledger is ledger
        assert model.ledger is ledger
        with pytest.raises(RuntimeError, match="another cost ledger"):
            with other.attach(model):
                pass
    assert model.ledger is None and not ledger.attached
    assert ledger.wall_s > 0


def test_counted_reward_counts_rows_and_is_the_reward_otherwise():
    reward = BlackBoxReward(torch.eye(DIM, dtype=F64), torch.zeros(DIM, dtype=F64))
    ledger = CostLedger()
    counted = ledger.count_reward(reward)
    assert isinstance(counted, CountedReward) and ledger.count_reward(counted) is counted
    x = torch.randn(7, DIM, dtype=F64)
    assert torch.equal(counted(x), reward(x))
    assert ledger.reward_rows == 7
    assert counted.name == "test-black-box" and counted.is_differentiable is False and counted.a is reward.a
    with ledger.attach(tiny_model(), reward) as proxy:
        proxy(x[:3])
    assert ledger.reward_rows == 10


def test_cost_record():
    ledger = CostLedger()
    ledger.base_rows, ledger.mfm_rows, ledger.backward_rows, ledger.reward_rows = 10, 40, 40, 40
    cost = ledger.cost(samples=10)
    assert (cost.base_forwards, cost.mfm_forwards, cost.backwards, cost.reward_calls) == (1, 4, 4, 4)
    assert cost.nfe == 1 + 4 + 4 + 2 * 4
    d = cost.to_dict()
    assert d["nfe"] == 17 and d["samples"] == 10 and set(d) == {
        "samples", "base_forwards", "mfm_forwards", "backwards", "reward_calls", "wall_s", "nfe"
    }
    snap = ledger.totals()
    ledger.base_rows += 5
    assert ledger.cost(samples=5, since=snap).base_forwards == 1 and ledger.cost(samples=5, since=snap).nfe == 1
    with pytest.raises(ValueError, match="samples"):
        ledger.cost(samples=0)
    assert isinstance(snap, Cost) and snap.samples == 1
    ledger.reset()
    assert ledger.totals().nfe == 0


K, N = 4, 3


def expected(name: str, **options) -> dict[str, float]:
    """The paper's per-sample counts over K Euler steering steps (MATH.md section 6)."""
    if name == "mfm-g":
        steps = options.get("posterior_steps", 1)
        return dict(base=K, mfm=N * steps * K, reward=N * K, backward=N * steps * K)
    if name == "mfm-gf":
        return dict(base=K, mfm=N * K, reward=N * K, backward=0)
    if name == "dps":
        return dict(base=K, mfm=0, reward=K, backward=K)
    s = options["steps"]  # glass-mc: S base forwards per draw, a backward through them
    return dict(base=K + N * s * K, mfm=0, reward=N * K, backward=N * s * K)


@pytest.mark.parametrize(
    "name, options",
    [
        ("mfm-g", {"particles": N}),
        ("mfm-g", {"particles": N, "posterior_steps": 2}),
        ("mfm-gf", {"particles": N}),
        ("dps", {}),
        ("glass-mc", {"particles": N, "steps": 2}),
    ],
)
def test_steering_costs_are_counted(name, options):
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    reward = random_quadratic(DIM, gen)
    ctx = SteeringContext(model=model, reward=reward, generator=gen)
    x = torch.randn(B, DIM, generator=gen, dtype=F64)
    result = steered_sample(
        estimator=comp("value-estimator", name, **options),
        integrator=comp("integrator", "euler"),
        context=ctx,
        x=x,
        times=uniform_grid(0.05, 1.0, K, dtype=F64),
    )
    want = expected(name, **options)
    cost = result.cost
    assert (cost.base_forwards, cost.mfm_forwards, cost.reward_calls, cost.backwards) == (
        want["base"], want["mfm"], want["reward"], want["backward"]
    )
    assert cost.nfe == want["base"] + want["mfm"] + want["reward"] + 2 * want["backward"]
    if name == "mfm-g" and "posterior_steps" not in options:
        assert cost.nfe == K + 4 * N * K
    if name == "mfm-gf":
        assert cost.nfe == K + 2 * N * K
    if name == "dps":
        assert cost.nfe == 4 * K
    # the network's and the reward's own counts agree with the ledger
    counter = model.backbone.counter
    assert counter["forward"] == B * (cost.base_forwards + cost.mfm_forwards)
    assert counter["backward"] == B * cost.backwards
    assert reward.calls == B * cost.reward_calls
    assert cost.samples == B and cost.wall_s > 0
    assert all(p.grad is None for p in [*model.parameters(), reward.c])
    assert model.ledger is None


def test_heun_counts_its_two_evaluations_and_the_unsteered_end():
    """Heun evaluates the drift at t = 1 on its last step, where g_t = 0: the base drift alone."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    reward = random_quadratic(DIM, gen)
    ledger = CostLedger()
    ctx = SteeringContext(model=model, reward=reward, generator=gen, ledger=ledger)
    x = torch.randn(B, DIM, generator=gen, dtype=F64)
    run = dict(
        estimator=comp("value-estimator", "mfm-gf", particles=N),
        integrator=comp("integrator", "heun"),
        context=ctx,
        x=x,
        times=uniform_grid(0.05, 1.0, K, dtype=F64),
    )
    result = steered_sample(**run)
    assert result.drift_evaluations == 2 * K
    assert (result.cost.base_forwards, result.cost.mfm_forwards) == (2 * K, N * (2 * K - 1))
    # a ledger in the context accumulates; each result's cost covers its own call
    again = steered_sample(**run)
    assert again.cost.nfe == result.cost.nfe
    assert ledger.totals().base_forwards == 2 * B * 2 * K
