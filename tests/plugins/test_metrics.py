"""The first-party metrics ``sw2``, ``mmd`` and ``energy`` against brute force and closed forms.

Every random input comes from a seeded generator; expected values are closed forms or brute-force
computations, with tolerances set from the sampling error where the inputs are random.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import PluginSystem
from mfm_metrics import (
    MMD,
    EnergyDistance,
    EnergyOptions,
    MMDOptions,
    SlicedWasserstein2,
    SlicedWasserstein2Options,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


def sw2(projections: int = 256, seed: int | None = 0) -> SlicedWasserstein2:
    return SlicedWasserstein2(SlicedWasserstein2Options(projections=projections, seed=seed))


def mean_and_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=F64)
    return t.mean().item(), (t.std() / math.sqrt(len(values))).item()


ALL = [SlicedWasserstein2, MMD, EnergyDistance]


# ----------------------------------------------------------------------- registration, contract
def test_the_plugin_registers_the_three_metrics():
    system = PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)
    metrics = system.registry.components(kind_by_name("metrics"))
    assert {"sw2", "mmd", "energy"} <= set(metrics)
    assert metrics["sw2"].plugin.name == "mfm-metrics"


@pytest.mark.parametrize("cls", ALL)
def test_shapes_are_validated(cls):
    metric = cls()
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(6, 3\)"):
        metric(samples=torch.zeros(5, 2), reference=torch.zeros(6, 3))
    with pytest.raises(ValueError, match="at least 2"):
        metric(samples=torch.zeros(1, 2), reference=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="at least 2"):
        metric(samples=torch.zeros(4, 2), reference=torch.zeros(1, 2))


@pytest.mark.parametrize("cls", ALL)
def test_float32_images_in_float64_scalar_out(cls):
    x = torch.randn(6, 3, 2, 2, generator=gen(1))
    y = torch.randn(7, 3, 2, 2, generator=gen(2))
    value = cls()(samples=x, reference=y, generator=gen(3))
    assert value.shape == () and value.dtype == F64 and torch.isfinite(value)
    # [N] inputs are N scalars.
    assert cls()(samples=x.flatten()[:9], reference=y.flatten()[:8], generator=gen(3)).shape == ()


def test_options_are_validated():
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError):
            SlicedWasserstein2Options(projections=bad)
        with pytest.raises(ValueError):
            EnergyOptions(chunk_size=bad)
    with pytest.raises(ValueError):
        SlicedWasserstein2Options(seed=1.5)
    for bad in ((), (1.0, 0.0), (-1.0,), (float("inf"),), "1.0"):
        with pytest.raises(ValueError):
            MMDOptions(bandwidths=bad)
    with pytest.raises(TypeError):
        MMDOptions(relative="yes")
    assert MMDOptions(bandwidths=[1, 2]).bandwidths == (1.0, 2.0)


# ------------------------------------------------------------------------------------------ SW2
def brute_force_w2_1d(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between two uniform point sets of equal size: the best of all assignments."""
    n = len(x)
    return math.sqrt(min(sum((x[i] - y[p[i]]) ** 2 for i in range(n)) / n for p in itertools.permutations(range(n))))


def test_sw2_of_identical_sets_is_zero():
    x = randn(50, 3, seed=0)
    assert sw2()(samples=x, reference=x.clone()).item() == 0.0


@pytest.mark.parametrize("n", [2, 4, 6])
def test_sw2_in_1d_is_the_optimal_assignment_cost(n):
    x, y = randn(n, 1, seed=n), randn(n, 1, seed=100 + n)
    expected = brute_force_w2_1d(x[:, 0].tolist(), y[:, 0].tolist())
    assert sw2()(samples=x, reference=y).item() == pytest.approx(expected, rel=1e-12)


def test_sw2_in_1d_is_the_sorted_difference_and_a_translation_is_its_length():
    x, y = randn(200, 1, seed=1), 3.0 * randn(200, 1, seed=2) + 1.0
    sorted_w2 = (x.sort(0).values - y.sort(0).values).square().mean().sqrt().item()
    assert sw2(projections=3)(samples=x, reference=y).item() == pytest.approx(sorted_w2, rel=1e-12)
    for c in (0.7, -2.5):
        assert sw2()(samples=x + c, reference=x).item() == pytest.approx(abs(c), rel=1e-12)


def test_sw2_with_unequal_sizes_is_exact_optimal_transport():
    # N = 3, M = 2 in 1-D: the same laws as 6 points each (every x twice, every y three times),
    # where the brute-force assignment is exact.
    x, y = randn(3, 1, seed=3), randn(2, 1, seed=4)
    expected = brute_force_w2_1d(x[:, 0].repeat_interleave(2).tolist(), y[:, 0].repeat_interleave(3).tolist())
    assert sw2()(samples=x, reference=y).item() == pytest.approx(expected, rel=1e-12)
    # In d dimensions with the same directions: N = 6, M = 4 equals the replicated 12 vs 12.
    x, y = randn(6, 3, seed=5), randn(4, 3, seed=6)
    replicated = sw2()(samples=x.repeat_interleave(2, 0), reference=y.repeat_interleave(3, 0)).item()
    assert sw2()(samples=x, reference=y).item() == pytest.approx(replicated, rel=1e-12)
    # A set and the same set repeated are the same law.
    assert sw2()(samples=x, reference=x.repeat(3, 1)).item() == pytest.approx(0.0, abs=1e-12)


def test_sw2_scales_linearly_and_is_reproducible():
    x, y = randn(40, 4, seed=7), randn(30, 4, seed=8)
    base = sw2()(samples=x, reference=y)
    assert sw2()(samples=-2.5 * x, reference=-2.5 * y).item() == pytest.approx(2.5 * base.item(), rel=1e-12)
    assert torch.equal(sw2()(samples=x, reference=y), base)  # same seed, same directions
    metric = sw2(seed=None)
    assert torch.equal(metric(samples=x, reference=y, generator=gen(9)), metric(samples=x, reference=y, generator=gen(9)))
    torch.manual_seed(11)
    first = metric(samples=x, reference=y)
    torch.manual_seed(11)
    assert torch.equal(metric(samples=x, reference=y), first)
    # Chunked projection gives the same value.
    chunked = SlicedWasserstein2(SlicedWasserstein2Options(seed=0, chunk_size=7))
    assert chunked(samples=x, reference=y).item() == pytest.approx(base.item(), rel=1e-12)


def test_sw2_of_shifted_gaussians_matches_the_closed_form():
    # N(0, I) vs N(m, I): every projection is N(0, 1) vs N(theta.m, 1), with W2^2 = (theta.m)^2,
    # so SW2^2 = E_theta (theta.m)^2 = |m|^2 / d.
    d, n, p = 2, 1000, 2048
    m = torch.tensor([6.0, -8.0], dtype=F64)  # SW2^2 = 50
    x, y = randn(n, d, seed=12), randn(n, d, seed=13) + m
    value = sw2(projections=p, seed=14)(samples=x, reference=y).item() ** 2
    expected = m.square().sum().item() / d
    # Error from the directions: (theta.m)^2 = |m|^2 theta_1^2, theta_1^2 ~ Beta(1/2, (d-1)/2).
    a, b = 0.5, (d - 1) / 2
    se_directions = m.square().sum().item() * math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)) / p)
    # Error from the samples: W2^2 ~ (theta.m + e)^2 with e the difference of two sample means.
    se_samples = 2 * math.sqrt(expected) * math.sqrt(2 / n)
    tolerance = 4 * math.hypot(se_directions, se_samples)
    assert tolerance < 0.1 * expected  # the check has power
    assert value == pytest.approx(expected, abs=tolerance)


# ------------------------------------------------------------------------------------------ MMD
def brute_force_mmd(x, y, bandwidths):
    def k(a, b):
        sq = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
        return sum(math.exp(-sq / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(xi, yj) for xi in x for yj in y) / (n * m)
    return kxx + kyy - 2 * kxy


def gaussian_mmd2(m: torch.Tensor, s: float, bandwidths) -> float:
    """MMD^2 between N(0, s^2 I) and N(m, s^2 I) under sum_h exp(-|x - y|^2 / (2 h^2))."""
    d, total = m.numel(), 0.0
    for h in bandwidths:
        var = h * h + 2 * s * s
        same = (h * h / var) ** (d / 2)
        total += 2 * same * (1 - math.exp(-m.square().sum().item() / (2 * var)))
    return total


def test_mmd_matches_a_double_loop():
    x, y = randn(5, 3, seed=20), randn(7, 3, seed=21) + 0.3
    bandwidths = (0.3, 1.0, 4.0)
    value = MMD(MMDOptions(bandwidths=bandwidths))(samples=x, reference=y).item()
    assert value == pytest.approx(brute_force_mmd(x.tolist(), y.tolist(), bandwidths), rel=1e-10)
    # Relative bandwidths: multiples of the median pairwise distance of the reference (21 pairs).
    median = sorted(torch.pdist(y).tolist())[10]
    relative = MMD(MMDOptions(bandwidths=bandwidths, relative=True))(samples=x, reference=y).item()
    expected = brute_force_mmd(x.tolist(), y.tolist(), [h * median for h in bandwidths])
    assert relative == pytest.approx(expected, rel=1e-10)


def test_mmd_chunking_and_relative_scale_invariance():
    x, y = randn(50, 2, seed=22), randn(40, 2, seed=23) + 0.5
    full = MMD(MMDOptions(chunk_size=4096))(samples=x, reference=y).item()
    assert MMD(MMDOptions(chunk_size=7))(samples=x, reference=y).item() == pytest.approx(full, rel=1e-12)
    rel = MMD(MMDOptions(relative=True))
    assert rel(samples=3 * x, reference=3 * y).item() == pytest.approx(rel(samples=x, reference=y).item(), rel=1e-10)


def test_mmd_is_unbiased_for_one_law_and_grows_with_the_shift():
    metric = MMD(MMDOptions(bandwidths=(0.5, 1.0, 2.0)))
    null = [metric(samples=randn(200, 2, seed=30 + i), reference=randn(200, 2, seed=60 + i)).item() for i in range(20)]
    mean, se = mean_and_se(null)
    assert abs(mean) < 4 * se
    assert min(null) < 0  # the U-statistic is not clamped
    shifted = [
        metric(samples=randn(300, 2, seed=90), reference=randn(300, 2, seed=91) + torch.tensor([c, 0.0], dtype=F64)).item()
        for c in (0.5, 1.0, 2.0)
    ]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_mmd_of_shifted_gaussians_matches_the_closed_form():
    s, bandwidths = 1.5, (0.5, 1.0, 2.0)
    m = torch.tensor([1.0, -0.5], dtype=F64)
    metric = MMD(MMDOptions(bandwidths=bandwidths))
    values = [
        metric(samples=s * randn(400, 2, seed=120 + i), reference=s * randn(400, 2, seed=150 + i) + m).item()
        for i in range(10)
    ]
    mean, se = mean_and_se(values)
    expected = gaussian_mmd2(m, s, bandwidths)
    assert expected > 10 * se  # the check has power
    assert abs(mean - expected) < 4 * se


# --------------------------------------------------------------------------------------- energy
def brute_force_energy(x, y):
    def dist(a, b):
        return math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))

    n, m = len(x), len(y)
    dxx = sum(dist(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    dyy = sum(dist(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    dxy = sum(dist(xi, yj) for xi in x for yj in y) / (n * m)
    return 2 * dxy - dxx - dyy


def test_energy_matches_a_double_loop_and_chunking():
    x, y = randn(6, 3, seed=40), randn(5, 3, seed=41) + 0.4
    value = EnergyDistance()(samples=x, reference=y).item()
    assert value == pytest.approx(brute_force_energy(x.tolist(), y.tolist()), rel=1e-10)
    x, y = randn(50, 2, seed=42), randn(40, 2, seed=43)
    full = EnergyDistance()(samples=x, reference=y).item()
    assert EnergyDistance(EnergyOptions(chunk_size=7))(samples=x, reference=y).item() == pytest.approx(full, rel=1e-12)


def test_energy_is_translation_invariant_and_scales_linearly():
    x, y = randn(60, 3, seed=44), randn(50, 3, seed=45) + 0.3
    base = EnergyDistance()(samples=x, reference=y).item()
    c = torch.tensor([100.0, -50.0, 7.0], dtype=F64)
    assert EnergyDistance()(samples=x + c, reference=y + c).item() == pytest.approx(base, rel=1e-9)
    assert EnergyDistance()(samples=-2 * x, reference=-2 * y).item() == pytest.approx(2 * base, rel=1e-12)


def test_energy_of_point_masses_is_the_cramer_integral():
    # 2 int (F - G)^2 for delta_a vs delta_b is 2 |a - b|.
    a, b = 0.25, -1.5
    x, y = torch.full((4, 1), a, dtype=F64), torch.full((3, 1), b, dtype=F64)
    assert EnergyDistance()(samples=x, reference=y).item() == pytest.approx(2 * abs(a - b), rel=1e-12)


def test_energy_of_shifted_uniforms_and_gaussians_matches_the_closed_forms():
    metric = EnergyDistance()
    # U(0, 1) vs U(c, 1 + c): 2 int (F - G)^2 = 2 (c^2 - c^3 / 3) for 0 <= c <= 1.
    c = 0.3
    values = [
        metric(
            samples=torch.rand(500, 1, generator=gen(200 + i), dtype=F64),
            reference=torch.rand(500, 1, generator=gen(230 + i), dtype=F64) + c,
        ).item()
        for i in range(8)
    ]
    mean, se = mean_and_se(values)
    expected = 2 * (c**2 - c**3 / 3)
    assert expected > 10 * se and abs(mean - expected) < 4 * se
    # N(0, 1) vs N(mu, 1) in 1-D: X - Y ~ N(-mu, 2) and E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2/(2 s^2))
    # + mu (1 - 2 Phi(-mu/s)); E|X - X'| = 2 / sqrt(pi).
    mu, s = 0.8, math.sqrt(2)
    phi = 0.5 * math.erfc(mu / s / math.sqrt(2))
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * phi)
    expected = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    values = [metric(samples=randn(500, 1, seed=260 + i), reference=randn(500, 1, seed=290 + i) + mu).item() for i in range(8)]
    mean, se = mean_and_se(values)
    assert expected > 10 * se and abs(mean - expected) < 4 * se


def test_energy_is_unbiased_for_one_law():
    values = [
        EnergyDistance()(samples=randn(150, 2, seed=320 + i), reference=randn(150, 2, seed=350 + i)).item()
        for i in range(20)
    ]
    mean, se = mean_and_se(values)
    assert abs(mean) < 4 * se
    assert min(values) < 0
