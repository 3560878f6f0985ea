"""Sampler-level steering baselines against closed forms and against what really ran.

Gaussian data ``N(m, s^2 I)`` with the exact Gaussian meta flow map and a quadratic reward: the
tilted law ``p_r`` is Gaussian with known moments (tests/steering_helpers.py). Costs are checked
against the ledger and, on the small real network, against the rows the backbone itself saw.
"""

from __future__ import annotations

import math

import pytest
import torch

from mfm_framework.baselines import (
    BaselineResult,
    KernelSampler,
    ODESampler,
    best_of_n,
    effective_sample_size,
    mfm_search,
    resample,
    sir,
    smc,
)
from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext
from mfm_framework.ledger import CostLedger
from mfm_framework.sampling import kernel_sample
from mfm_framework.steering import SamplingResult, SteeredResult
from tests.steering_helpers import (
    F64,
    ExactGaussianValue,
    comp,
    exact_value,
    gaussian_model,
    random_quadratic,
    tiny_model,
    tilted_moments,
)

DIM = 2
M, S = 0.5, 0.7


def context(reward, seed: int, *, model=None, **kw) -> SteeringContext:
    model = gaussian_model(dim=DIM, mean=M, std=S) if model is None else model
    return SteeringContext(model=model, reward=reward, generator=torch.Generator().manual_seed(seed), **kw)


def reward_of(seed: int = 0, strength: float = 1.0):
    return random_quadratic(DIM, torch.Generator().manual_seed(seed), strength=strength)


def base_marginal(t: float, n: int, seed: int) -> torch.Tensor:
    """``n`` exact draws of the unsteered marginal ``p_t`` (``x_t = (1 - t) x_0 + t x_1``)."""
    g = torch.Generator().manual_seed(seed)
    x1 = M + S * torch.randn(n, DIM, generator=g, dtype=F64)
    return (1 - t) * torch.randn(n, DIM, generator=g, dtype=F64) + t * x1


def assert_moments(samples: torch.Tensor, reward, *, mean_tol: float, cov_tol: float) -> None:
    m, cov = tilted_moments(reward, dim=DIM)
    assert torch.allclose(samples.mean(0), m, atol=mean_tol), (samples.mean(0), m)
    assert torch.allclose(torch.cov(samples.T), cov, atol=cov_tol), (torch.cov(samples.T), cov)


class Recording:
    """A base sampler test double: exact Gaussian draws from the generator; remembers what it returned."""

    description = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, *, model, n, generator, cond):
        x = M + S * torch.randn(n, DIM, generator=generator, dtype=F64)
        self.calls.append((x, cond))
        return x


class Fixed:
    """A base sampler test double returning the same candidates (tiled) whatever the generator."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def __call__(self, *, model, n, generator, cond):
        k = self.points.shape[0]
        return self.points.repeat(math.ceil(n / k), 1)[:n]


class ScaledValue(ExactGaussianValue):
    """A deliberately wrong value estimate ``c * V_t`` (0 NFE): SMC must stay consistent anyway."""

    name = "test-scaled-value"

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.calls = 0

    def value(self, *, t, x, context):
        self.calls += x.shape[0]
        return self.c * exact_value(context.reward, t, x)


# --------------------------------------------------------------------------- the record
def test_every_method_returns_the_common_record():
    reward = reward_of(0)
    runs = [
        best_of_n(context=context(reward, 1), n=3, draws=4, sampler=KernelSampler()),
        sir(context=context(reward, 1), n=3, draws=4, sampler=KernelSampler()),
        smc(
            context=context(reward, 1), estimator=ExactGaussianValue(), integrator=comp("integrator", "euler-maruyama"),
            times=uniform_grid(0.2, 1.0, 3, dtype=F64), n=3, particles=4,
        ),
        mfm_search(context=context(reward, 1), n=3, draws=4, times=uniform_grid(0.0, 1.0, 2, dtype=F64)),
    ]
    assert [r.method for r in runs] == ["best-of-n", "sir", "smc", "mfm-search"]
    for r in runs:
        assert isinstance(r, BaselineResult) and isinstance(r, SamplingResult)
        assert r.samples.shape == (3, DIM) and r.rewards.shape == (3,)
        # the rewards reported are those of the samples returned
        assert torch.allclose(r.rewards, reward(r.samples), rtol=1e-12, atol=1e-12)
        assert r.flags()["method"] == r.method and r.cost.samples == 3
    assert runs[0].flags() == {"method": "best-of-n", "draws": 4, "sampler": "kernel(1 steps)"}
    assert issubclass(SteeredResult, SamplingResult)


# --------------------------------------------------------------------------- Best-of-N
def test_best_of_n_keeps_the_argmax_exactly():
    reward = reward_of(1)
    sampler = Recording()
    n, draws = 7, 5
    result = best_of_n(context=context(reward, 2), n=n, draws=draws, sampler=sampler)
    (cands, cond), = sampler.calls
    assert cond is None and cands.shape == (n * draws, DIM)
    cands = cands.reshape(n, draws, DIM)
    r = reward(cands.reshape(-1, DIM)).reshape(n, draws)
    best = r.argmax(1)
    assert torch.equal(result.samples, cands[torch.arange(n), best])
    assert torch.equal(result.rewards, r.max(1).values)
    # not trivially the first candidate
    assert (best != 0).any()


def test_best_of_n_cost_is_counted_and_matches_what_ran():
    reward = reward_of(2)
    model = tiny_model(dim=DIM)
    ledger = CostLedger()
    n, draws, steps = 3, 6, 4
    sampler = ODESampler(integrator=comp("integrator", "euler"), times=uniform_grid(0.0, 1.0, steps, dtype=F64))
    before = reward.calls
    result = best_of_n(context=context(reward, 3, model=model, ledger=ledger), n=n, draws=draws, sampler=sampler)
    c = result.cost
    assert (c.base_forwards, c.mfm_forwards, c.reward_calls, c.backwards) == (steps * draws, 0, draws, 0)
    assert c.nfe == steps * draws + draws  # the paper's K N + N
    assert model.backbone.counter["forward"] == n * draws * steps  # the rows the network really saw
    assert reward.calls - before == n * draws
    assert ledger.reward_rows == n * draws and model.ledger is None  # detached afterwards
    assert result.flags()["sampler"] == "ode(euler, 4 steps)"


def test_candidates_share_the_output_label_and_can_be_chunked():
    reward = reward_of(3)
    sampler = Recording()
    labels = torch.tensor([3, 1, 4])
    result = best_of_n(context=context(reward, 4, cond=labels), n=3, draws=5, sampler=sampler, max_batch=4)
    assert [x.shape[0] for x, _ in sampler.calls] == [4, 4, 4, 3]
    assert torch.equal(torch.cat([c for _, c in sampler.calls]), labels.repeat_interleave(5))
    assert result.cost.reward_calls == 5 and result.samples.shape == (3, DIM)
    with pytest.raises(ValueError, match="one label per output sample"):
        best_of_n(context=context(reward, 4, cond=labels), n=2, draws=5, sampler=sampler)


# --------------------------------------------------------------------------- SIR
def test_sir_picks_in_proportion_to_exp_r():
    reward = reward_of(4)
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5], [0.5, -0.5]], dtype=F64)
    n = 40000
    result = sir(context=context(reward, 5), n=n, draws=4, sampler=Fixed(points))
    index = (result.samples[:, None, :] == points[None]).all(-1).float().argmax(1)
    freq = torch.bincount(index, minlength=4).to(F64) / n
    want = torch.softmax(reward(points), 0)
    assert (want.max() - want.min()) > 0.2  # the weights are far from uniform
    assert torch.allclose(freq, want, atol=4 * (0.25 / n) ** 0.5)


def test_sir_converges_to_the_tilted_law_and_best_of_n_does_not():
    reward = reward_of(0)
    n, draws = 16000, 128
    result = sir(context=context(reward, 6), n=n, draws=draws, sampler=KernelSampler(steps=1))
    assert_moments(result.samples, reward, mean_tol=0.02, cov_tol=0.02)
    m, cov = tilted_moments(reward, dim=DIM)
    assert (cov.diag() - S**2).abs().min() > 0.1 and (m - M).abs().max() > 0.1  # the tilt is visible
    assert result.cost.mfm_forwards == draws and result.cost.reward_calls == draws
    # Best-of-N at the same cost is a mode seeker: far narrower than p_r
    best = best_of_n(context=context(reward, 6), n=2000, draws=draws, sampler=KernelSampler(steps=1))
    assert (torch.cov(best.samples.T).diag() < 0.5 * cov.diag()).all()
    assert best.rewards.mean() > result.rewards.mean()


# --------------------------------------------------------------------------- SMC
def smc_run(reward, seed, *, n, particles, steps, t_min=0.2, estimator=None, **kw):
    return smc(
        context=context(reward, seed),
        estimator=ExactGaussianValue() if estimator is None else estimator,
        integrator=comp("integrator", "euler-maruyama"),
        times=uniform_grid(t_min, 1.0, steps, dtype=F64),
        n=n,
        particles=particles,
        x=base_marginal(t_min, n * particles, seed + 100),
        **kw,
    )


def test_smc_with_the_exact_value_reaches_the_tilted_law():
    reward = reward_of(5)
    n, p, steps = 3000, 64, 20
    result = smc_run(reward, 7, n=n, particles=p, steps=steps)
    assert_moments(result.samples, reward, mean_tol=0.04, cov_tol=0.03)
    m, cov = tilted_moments(reward, dim=DIM)
    assert (m - M).abs().min() > 0.35 and (cov.diag() - S**2).abs().min() > 0.15  # far from the base law
    # the exact V keeps the weights fairly even: a high ESS all along, recorded per step and group
    assert result.ess.shape == (steps + 1, n) and (result.ess.mean(1) > 0.4 * p).all()
    assert result.cost.base_forwards == p * steps and result.cost.reward_calls == p  # V is free (an oracle)
    assert result.cost.mfm_forwards == 0 and result.flags()["steps"] == steps


def test_smc_resamples_exactly_when_the_ess_is_low():
    """A strong reward: the weights degenerate along the base SDE and resampling repairs them."""
    reward = reward_of(5, strength=4.0)
    n, p, steps, thr = 3000, 32, 20, 0.5
    result = smc_run(reward, 8, n=n, particles=p, steps=steps, ess_threshold=thr)
    assert result.ess.shape == (steps + 1, n) and result.resampled.shape == (steps + 1, n)
    assert ((result.ess >= 1 - 1e-9) & (result.ess <= p + 1e-9)).all()
    assert torch.equal(result.resampled[:-1], result.ess[:-1] < thr * p)
    assert not result.resampled[-1].any()
    assert result.resampled.sum() > 2 * n  # it happened, in many groups and steps
    assert result.settings["resample_events"] == int(result.resampled.sum())
    assert_moments(result.samples, reward, mean_tol=0.06, cov_tol=0.03)
    # without resampling the same run is sequential importance sampling: the weights collapse
    plain = smc_run(reward, 8, n=n, particles=p, steps=steps, ess_threshold=0.0)
    assert not plain.resampled.any() and plain.ess[-1].mean() < 0.25 * result.ess[-1].mean()
    m, _ = tilted_moments(reward, dim=DIM)
    assert (plain.samples.mean(0) - m).abs().max() > 0.2


def test_smc_weights_telescope_to_exp_r_whatever_the_value():
    """The potentials ``V_{k+1} - V_k`` sum to ``r(x_1)``: without resampling, V changes nothing; with
    resampling, a poor V (0.3 V) still targets p_r (each particle's value follows it through resampling).
    """
    reward = reward_of(5)
    runs = [
        smc_run(reward, 9, n=400, particles=8, steps=6, estimator=ScaledValue(c), ess_threshold=0.0)
        for c in (0.0, 0.3, 1.0)
    ]
    for other in runs[1:]:
        assert torch.allclose(other.samples, runs[0].samples, rtol=0, atol=1e-12)
    estimator = ScaledValue(0.3)
    n, p, steps = 3000, 64, 20
    result = smc_run(reward, 10, n=n, particles=p, steps=steps, estimator=estimator, ess_threshold=1.0)
    assert result.resampled[:-1].float().mean() > 0.9
    assert_moments(result.samples, reward, mean_tol=0.04, cov_tol=0.03)
    assert estimator.calls == n * p * steps  # V at t_0 .. t_{K-1}; r at t_K


def test_smc_with_a_flat_value_is_importance_sampling_at_the_end():
    """V = 0: the weights stay uniform (ESS = P) until t = 1, where exp r weights them."""
    reward = reward_of(2)
    n, p = 500, 8
    result = smc_run(reward, 9, n=n, particles=p, steps=5, estimator=ScaledValue(0.0))
    assert torch.allclose(result.ess[:-1], torch.full((5, n), float(p), dtype=F64))
    assert not result.resampled.any() and (result.ess[-1] < p - 1e-3).all()


def test_smc_counts_a_real_estimator_and_the_start_through_the_ledger():
    reward = reward_of(3)
    model = tiny_model(dim=DIM)
    n, p, steps, draws, start = 2, 3, 4, 5, 2
    result = smc(
        context=context(reward, 10, model=model),
        estimator=comp("value-estimator", "mfm-gf", particles=draws),
        integrator=comp("integrator", "euler-maruyama"),
        times=uniform_grid(0.1, 1.0, steps, dtype=F64),
        n=n,
        particles=p,
        start_steps=start,
    )
    c = result.cost
    assert c.base_forwards == p * (start + steps)  # the start from noise and the SDE moves
    assert c.mfm_forwards == p * steps * draws  # V at t_0 .. t_{K-1}, N draws each
    assert c.reward_calls == p * steps * draws + p  # and r at t = 1
    assert model.backbone.counter["forward"] == n * (c.base_forwards + c.mfm_forwards)
    assert result.flags()["estimator"] == "mfm-gf" and result.flags()["particles"] == p


def test_smc_and_the_baselines_draw_from_the_context_generator_only():
    reward = reward_of(4)
    runs = {
        "smc": lambda s: smc_run(reward, s, n=4, particles=8, steps=5, ess_threshold=1.0).samples,
        "sir": lambda s: sir(context=context(reward, s), n=4, draws=8, sampler=KernelSampler(steps=2)).samples,
        "bon": lambda s: best_of_n(context=context(reward, s), n=4, draws=8, sampler=KernelSampler()).samples,
        "search": lambda s: mfm_search(
            context=context(reward, s), n=4, draws=3, particles=2, times=uniform_grid(0.0, 1.0, 3, dtype=F64)
        ).samples,
    }
    for name, run in runs.items():
        torch.manual_seed(0)
        a = run(11)
        torch.manual_seed(1)  # the global generator plays no part
        assert torch.equal(a, run(11)), name
        assert not torch.allclose(a, run(12)), name


def test_smc_rejects_bad_settings():
    reward = reward_of(0)
    run = dict(context=context(reward, 0), estimator=ExactGaussianValue(), n=2, particles=3)
    em = comp("integrator", "euler-maruyama")
    with pytest.raises(ValueError, match="deterministic"):
        smc(**run, integrator=comp("integrator", "euler"), times=uniform_grid(0.1, 1.0, 3, dtype=F64))
    with pytest.raises(ValueError, match="t_min"):
        smc(**run, integrator=em, times=uniform_grid(0.0, 1.0, 3, dtype=F64))
    with pytest.raises(ValueError, match="end at t = 1"):
        smc(**run, integrator=em, times=uniform_grid(0.1, 0.9, 3, dtype=F64))
    with pytest.raises(ValueError, match="ess_threshold"):
        smc(**run, integrator=em, times=uniform_grid(0.1, 1.0, 3, dtype=F64), ess_threshold=1.5)
    with pytest.raises(ValueError, match="initial particles"):
        smc(**run, integrator=em, times=uniform_grid(0.1, 1.0, 3, dtype=F64), x=torch.zeros(5, DIM, dtype=F64))


# --------------------------------------------------------------------------- resampling helpers
def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_p_w():
    g = torch.Generator().manual_seed(13)
    log_w = torch.randn(200, 10, generator=g, dtype=F64) * 1.5
    idx = resample(log_w, generator=g, scheme="systematic")
    counts = torch.zeros_like(log_w).scatter_add_(1, idx, torch.ones_like(log_w))
    expected = 10 * torch.softmax(log_w, 1)
    assert ((counts >= expected.floor() - 1e-9) & (counts <= expected.ceil() + 1e-9)).all()
    # multinomial: unbiased counts on average
    idx = resample(log_w[:1].expand(20000, 10), generator=g, scheme="multinomial")
    mean_counts = torch.zeros(20000, 10, dtype=F64).scatter_add_(1, idx, torch.ones(20000, 10, dtype=F64)).mean(0)
    assert torch.allclose(mean_counts, expected[0], atol=0.05)
    with pytest.raises(ValueError, match="resampling scheme"):
        resample(log_w, generator=g, scheme="stratified")  # type: ignore[arg-type]


def test_zero_weight_particles_are_never_picked():
    """Particles of weight 0 (reward -inf) are skipped even at the edges of the cumulative weights."""
    from mfm_framework.baselines import _inverse_cdf

    log_w = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0, -math.inf]], dtype=F64).expand(3, 5)
    positions = torch.tensor([[0.0, 0.25, 0.5], [0.5, 0.75, 0.999], [0.0, 0.5, 0.5]], dtype=F64)
    assert torch.equal(_inverse_cdf(log_w, positions), torch.tensor([[1, 1, 3], [3, 3, 3], [1, 3, 3]]))
    idx = resample(log_w, generator=torch.Generator().manual_seed(1), scheme="multinomial")
    assert set(idx.unique().tolist()) <= {1, 3}


def test_effective_sample_size():
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9], [math.log(3.0), 0.0, -1e9, -1e9]], dtype=F64)
    assert torch.allclose(effective_sample_size(log_w), torch.tensor([4.0, 1.0, 16 / 10], dtype=F64))


# --------------------------------------------------------------------------- MFM-Search
def test_mfm_search_raises_the_reward_over_plain_sampling():
    reward = reward_of(1, strength=2.0)
    n = 2000
    grid = uniform_grid(0.0, 1.0, 4, dtype=F64)
    result = mfm_search(context=context(reward, 14), n=n, draws=4, particles=2, times=grid)
    model = gaussian_model(dim=DIM, mean=M, std=S)
    plain = kernel_sample(model, n=n, steps=1, generator=torch.Generator().manual_seed(15))
    gain = result.rewards.mean() - reward(plain).mean()
    spread = reward(plain).std() / n**0.5
    assert gain > 10 * spread
    # and it beats Best-of-N with as many draws per step (M N): the search refines over steps
    bon = best_of_n(context=context(reward, 16), n=n, draws=8, sampler=KernelSampler())
    assert result.rewards.mean() > bon.rewards.mean()


def test_mfm_search_with_one_step_is_best_of_n_on_the_one_step_kernel():
    """K = 1, M = 1: N posterior draws at the uninformative context t = 0, keep the best."""
    reward = reward_of(2)
    search = mfm_search(context=context(reward, 17), n=50, draws=6, times=torch.tensor([0.0, 1.0], dtype=F64))
    bon = best_of_n(context=context(reward, 17), n=50, draws=6, sampler=KernelSampler(steps=1))
    assert torch.equal(search.samples, bon.samples) and torch.equal(search.rewards, bon.rewards)


def test_mfm_search_cost_is_2mnk_as_counted():
    reward = reward_of(3)
    model = tiny_model(dim=DIM)
    n, m, draws, steps = 3, 2, 5, 4
    ledger = CostLedger()
    result = mfm_search(
        context=context(reward, 18, model=model, ledger=ledger), n=n, draws=draws, particles=m,
        times=uniform_grid(0.0, 1.0, steps, dtype=F64),
    )
    c = result.cost
    mnk = m * draws * steps
    assert (c.mfm_forwards, c.reward_calls, c.base_forwards, c.backwards) == (mnk, mnk, 0, 0)
    assert c.nfe == 2 * m * draws * steps
    assert model.backbone.counter["forward"] == n * m * draws * steps  # what the network really saw
    assert ledger.mfm_rows == n * m * draws * steps
    two = mfm_search(
        context=context(reward, 18, model=model), n=n, draws=draws, particles=m,
        times=uniform_grid(0.0, 1.0, steps, dtype=F64), posterior_steps=2,
    )
    assert two.cost.mfm_forwards == 2 * m * draws * steps and two.cost.reward_calls == m * draws * steps


def test_mfm_search_rejects_bad_grids():
    reward = reward_of(0)
    with pytest.raises(ValueError, match="start at t = 0"):
        mfm_search(context=context(reward, 0), n=2, draws=2, times=uniform_grid(0.1, 1.0, 3, dtype=F64))
    with pytest.raises(ValueError, match="end at t = 1"):
        mfm_search(context=context(reward, 0), n=2, draws=2, times=uniform_grid(0.0, 0.5, 3, dtype=F64))
    with pytest.raises(ValueError, match="draws"):
        mfm_search(context=context(reward, 0), n=2, draws=0, times=uniform_grid(0.0, 1.0, 3, dtype=F64))
