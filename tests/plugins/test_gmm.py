"""The ``gmm`` data source against closed forms and Monte Carlo (MATH.md sections 1 and 8).

Everything runs in float64 with seeded generators. Monte Carlo checks use tolerances of a few
standard errors (estimated from the same draws), so a wrong formula fails while the exact one
passes; each check also asserts that its standard error is small enough to mean something.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from mfm_data import GaussianMixture, GaussianMixtureOptions, GaussianMixturePosterior
from mfm_framework.interfaces import DataSource, ExactData
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import default_plugin_system

F64 = torch.float64
INTERPOLANTS = ["linear", "trigonometric"]
Z = 5.0  # tolerance in standard errors

# A 2-D mixture with full, different covariances and unequal weights (harder than the presets).
RICH = dict(
    preset="custom",
    means=((-2.0, 1.0), (1.5, 2.0), (0.5, -2.0)),
    covariances=(((0.6, 0.25), (0.25, 0.4)), ((0.3, -0.1), (-0.1, 0.8)), ((1.0, 0.0), (0.0, 0.2))),
    weights=(0.2, 0.5, 0.3),
)
# A 3-D mixture with diagonal and isotropic components.
DIAG3 = dict(
    preset="custom",
    means=((1.0, 0.0, -1.0), (-1.5, 1.0, 0.5)),
    variances=((0.5, 0.2, 1.1), (0.3,)),
    weights=(2.0, 1.0),
)
# A 3-D mixture with full covariances whose eigenvectors are not symmetric matrices (catches a
# transposed eigenbasis, which the 2-D and diagonal mixtures cannot).
FULL3 = dict(
    preset="custom",
    means=((0.5, -1.0, 1.0), (-1.0, 1.0, 0.0)),
    covariances=(
        ((1.0, 0.3, -0.2), (0.3, 0.5, 0.1), (-0.2, 0.1, 0.8)),
        ((0.4, -0.15, 0.05), (-0.15, 0.9, 0.3), (0.05, 0.3, 0.6)),
    ),
    weights=(0.4, 0.6),
)


def interpolant(name: str):
    registry = default_plugin_system().registry
    return registry.get(kind_by_name("interpolant"), name).cls()


def gmm(**options) -> GaussianMixture:
    return GaussianMixture(GaussianMixtureOptions(**options), dtype=F64)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def as_t(t: float, b: int) -> torch.Tensor:
    return torch.full((b,), t, dtype=F64)


def reference_marginal(g: GaussianMixture, alpha: float, beta: float) -> MixtureSameFamily:
    """``x_t`` law by torch.distributions (independent of the eigenbasis implementation)."""
    d = g.data_shape[0]
    cov = beta**2 * g.covariances + alpha**2 * torch.eye(d, dtype=F64)
    return MixtureSameFamily(Categorical(probs=g.weights), MultivariateNormal(beta * g.means, covariance_matrix=cov))


def contexts(g: GaussianMixture, interp, t: float, b: int, seed: int) -> torch.Tensor:
    """Typical states ``x_t = alpha x_0 + beta x_1`` (fresh draws)."""
    x1 = g.sample(b, generator=gen(seed)).x_1
    x0 = torch.randn(b, g.data_shape[0], generator=gen(seed + 1), dtype=F64)
    return interp.interpolate(x_0=x0, x_1=x1, t=t)


def self_normalised(g, interp, t, x, f, *, n=100_000, seed=0):
    """Importance estimate of ``E[f(x_1, x) | x_t = x]`` from prior draws; returns (estimate, standard error).

    Weights ``N(x; beta x_1, alpha^2 I)`` (self-normalised); ``f(x1 [N, d], x [B, 1, d]) -> [B, N, d]``.
    """
    tt = torch.tensor(t, dtype=F64)
    a, b = interp.alpha(tt), interp.beta(tt)
    x1 = g.sample(n, generator=gen(seed)).x_1
    logw = -0.5 * ((x[:, None, :] - b * x1[None]) ** 2).sum(-1) / a**2  # [B, N]
    w = logw.softmax(-1)
    vals = f(x1[None], x[:, None, :]).expand(x.shape[0], n, -1)
    est = torch.einsum("bn,bnd->bd", w, vals)
    se = torch.einsum("bn,bnd->bd", w**2, (vals - est[:, None]) ** 2).sqrt()
    return est, se


# --------------------------------------------------------------------------- registration and presets


def test_registered_and_exact_capability() -> None:
    entry = default_plugin_system().registry.get(kind_by_name("data-source"), "gmm")
    assert entry.cls is GaussianMixture
    g = GaussianMixture()
    assert isinstance(g, DataSource) and isinstance(g, ExactData)
    assert g.data_shape == (2,) and g.num_classes is None


def test_preset_paper_2d() -> None:
    g = GaussianMixture()
    torch.testing.assert_close(g.means, torch.tensor([[-3.0, -3.0], [0.0, 0.0], [3.0, 3.0]], dtype=F64))
    torch.testing.assert_close(g.covariances, 0.5 * torch.eye(2, dtype=F64).expand(3, 2, 2))
    torch.testing.assert_close(g.weights, torch.full((3,), 1 / 3, dtype=F64))


def test_preset_ring_8() -> None:
    g = gmm(preset="ring-8", radius=3.0, std=0.2)
    mu = g.means
    assert mu.shape == (8, 2)
    torch.testing.assert_close(mu.norm(dim=-1), torch.full((8,), 3.0, dtype=F64))
    angles = torch.atan2(mu[:, 1], mu[:, 0]).remainder(2 * math.pi)
    torch.testing.assert_close(angles.sort().values, torch.arange(8, dtype=F64) * math.pi / 4)
    torch.testing.assert_close(g.covariances, 0.04 * torch.eye(2, dtype=F64).expand(8, 2, 2))
    default_ring = GaussianMixture(GaussianMixtureOptions(preset="ring-8")).means
    close(default_ring.norm(dim=-1), torch.full((8,), 4.0, dtype=F64), 1e-12)


def test_preset_grid_25_in_higher_dimension() -> None:
    g = gmm(preset="grid-25", dim=4, spacing=1.5)
    mu = g.means
    assert g.data_shape == (4,) and mu.shape == (25, 4)
    assert torch.all(mu[:, 2:] == 0)
    ticks = 1.5 * torch.arange(-2, 3, dtype=F64)
    for axis in (0, 1):
        torch.testing.assert_close(mu[:, axis].unique(), ticks)
    assert len({tuple(m.tolist()) for m in mu}) == 25
    torch.testing.assert_close(g.covariances, 0.09 * torch.eye(4, dtype=F64).expand(25, 4, 4))


def test_custom_variances_and_weights() -> None:
    g = gmm(**DIAG3)
    torch.testing.assert_close(g.covariances[0], torch.diag(torch.tensor([0.5, 0.2, 1.1], dtype=F64)))
    torch.testing.assert_close(g.covariances[1], 0.3 * torch.eye(3, dtype=F64))
    torch.testing.assert_close(g.weights, torch.tensor([2 / 3, 1 / 3], dtype=F64))
    full = gmm(**RICH)
    torch.testing.assert_close(full.covariances[0], torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=F64))


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (dict(preset="nope"), "preset"),
        (dict(std=-1.0), "std"),
        (dict(preset="ring-8", radius=0.0), "radius"),
        (dict(preset="custom"), "means"),
        (dict(preset="custom", means=((0.0, 1.0), (2.0,))), "means"),
        (dict(preset="custom", means=((0.0, 1.0),), variances=((-0.5,),)), "variances"),
        (dict(preset="custom", means=((0.0, 1.0), (1.0, 1.0)), variances=((0.5,),)), "variances"),
        (dict(preset="custom", means=((0.0, 1.0),), variances=((0.5, 0.5, 0.5),)), "variances"),
        (dict(preset="custom", means=((0.0, 1.0),), covariances=(((1.0, 2.0), (2.0, 1.0)),)), "covariances"),
        (dict(preset="custom", means=((0.0, 1.0),), covariances=(((1.0, 0.5), (0.0, 1.0)),)), "covariances"),
        (dict(preset="custom", means=((0.0, 1.0),), covariances=(((1.0,),),)), "covariances"),
        (dict(preset="custom", means=((0.0, 1.0),), variances=((1.0,),), std=0.5), "std"),
        (dict(preset="custom", means=((0.0, 1.0),), dim=3), "dim"),
        (dict(weights=(1.0, 2.0)), "weights"),
        (dict(weights=(1.0, -2.0, 1.0)), "weights"),
        (dict(means=((0.0, 0.0),)), "means"),
        (dict(radius=2.0), "radius"),
        (dict(preset="grid-25", dim=1), "dim"),
    ],
)
def test_bad_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=f"'{option}'"):
        GaussianMixtureOptions(**options)


def test_options_from_toml_values() -> None:
    from mfm_framework.spec.converter import make_converter

    converter = make_converter(default_plugin_system().registry)
    raw = {"preset": "custom", "means": [[0, 1], [2.5, 3]], "variances": [[0.5], [0.2, 0.3]], "weights": [1, 3]}
    options = converter.structure(raw, GaussianMixtureOptions)
    g = GaussianMixture(options)
    torch.testing.assert_close(g.weights, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(g.covariances[1], torch.diag(torch.tensor([0.2, 0.3], dtype=F64)))


# --------------------------------------------------------------------------- the data law


@pytest.mark.parametrize("options", [RICH, FULL3], ids=["rich-2d", "full-3d"])
def test_sample_moments_match_the_mixture(options: dict) -> None:
    g = gmm(**options)
    n = 200_000
    x = g.sample(n, generator=gen(1)).x_1
    assert x.shape == (n, g.data_shape[0]) and x.dtype == F64
    mean, cov = g.mean, g.covariance
    # Independent closed form: mixture mean and covariance.
    w, mu, s = g.weights, g.means, g.covariances
    torch.testing.assert_close(mean, (w[:, None] * mu).sum(0))
    torch.testing.assert_close(
        cov, (w[:, None, None] * (s + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(mean, mean)
    )
    se_mean = (cov.diagonal() / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() < Z * se_mean)
    c = x - mean
    products = c[:, :, None] * c[:, None, :]
    se_cov = products.std(0) / math.sqrt(n)
    assert torch.all((products.mean(0) - cov).abs() < Z * se_cov)
    assert se_cov.max() < 0.02


def test_sample_default_dtype_and_labels() -> None:
    g = GaussianMixture(GaussianMixtureOptions(preset="ring-8", std=0.05, labelled=True))
    assert g.num_classes == 8
    batch = g.sample(500, generator=gen(2))
    assert batch.x_1.dtype == torch.float32 and batch.cond is not None and batch.cond.dtype == torch.int64
    assert batch.cond.min() >= 0 and batch.cond.max() < 8
    nearest = torch.cdist(batch.x_1.double(), g.means).argmin(-1)
    assert torch.equal(nearest, batch.cond)
    assert len(batch.cond.unique()) == 8


def test_log_prob_normalises_and_matches_direct_computation() -> None:
    for options in (dict(), RICH):
        g = gmm(**options)
        h = 18 / 600
        ticks = torch.linspace(-9, 9, 601, dtype=F64)
        grid = torch.cartesian_prod(ticks, ticks)
        mass = g.log_prob(grid).exp().sum() * h * h
        assert mass.item() == pytest.approx(1.0, abs=1e-6)
        x = 2 * torch.randn(50, 2, generator=gen(3), dtype=F64)
        close(g.log_prob(x), reference_marginal(g, 0.0, 1.0).log_prob(x), 1e-10)
    g = gmm(**DIAG3)
    x = torch.randn(50, 3, generator=gen(4), dtype=F64)
    close(g.log_prob(x), reference_marginal(g, 0.0, 1.0).log_prob(x), 1e-10)


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_marginal_log_prob_matches_direct_computation(name: str) -> None:
    interp = interpolant(name)
    for options in (RICH, DIAG3, FULL3):
        g = gmm(**options)
        d = g.data_shape[0]
        x = 2 * torch.randn(20, d, generator=gen(5), dtype=F64)
        for t in (0.0, 0.25, 0.7, 1.0):
            a, b = interp.alpha(torch.tensor(t, dtype=F64)).item(), interp.beta(torch.tensor(t, dtype=F64)).item()
            expected = reference_marginal(g, a, b).log_prob(x)
            close(g.marginal_log_prob(t=t, x=x, interpolant=interp), expected, 1e-10)
            close(g.marginal_log_prob(t=as_t(t, 20), x=x, interpolant=interp), expected, 1e-10)


# --------------------------------------------------------------------------- denoiser, velocity, score


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_denoiser_and_velocity_match_monte_carlo(name: str) -> None:
    interp = interpolant(name)
    g = gmm(**RICH)
    for i, t in enumerate((0.2, 0.5, 0.8)):
        x = contexts(g, interp, t, 4, seed=10 + i)
        x[0] = torch.tensor([-0.3, 1.2], dtype=F64) * interp.beta(torch.tensor(t, dtype=F64))  # between modes
        tt = torch.tensor(t, dtype=F64)
        a, b, da, db = interp.alpha(tt), interp.beta(tt), interp.dalpha(tt), interp.dbeta(tt)

        est, se = self_normalised(g, interp, t, x, lambda x1, xc: x1, seed=20 + i)
        assert se.max() < 0.03
        assert torch.all((g.denoiser(t=t, x=x, interpolant=interp) - est).abs() < Z * se + 1e-12)

        # E[dalpha x_0 + dbeta x_1 | x] with x_0 = (x - beta x_1) / alpha.
        est, se = self_normalised(g, interp, t, x, lambda x1, xc: da * (xc - b * x1) / a + db * x1, seed=20 + i)
        assert se.max() < 0.1
        assert torch.all((g.velocity(t=t, x=x, interpolant=interp) - est).abs() < Z * se + 1e-12)


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_velocity_and_score_agree_with_the_interpolant_conversions(name: str) -> None:
    interp = interpolant(name)
    for options in (RICH, DIAG3, FULL3):
        g = gmm(**options)
        x = 2 * torch.randn(16, g.data_shape[0], generator=gen(6), dtype=F64)
        t = torch.rand(16, generator=gen(7), dtype=F64) * 0.98 + 0.01
        den = g.denoiser(t=t, x=x, interpolant=interp)
        close(g.velocity(t=t, x=x, interpolant=interp), interp.velocity_from_denoiser(t=t, x=x, denoiser=den), 1e-9)
        close(g.score(t=t, x=x, interpolant=interp), interp.score_from_denoiser(t=t, x=x, denoiser=den), 1e-9)


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_score_is_the_gradient_of_the_marginal_log_density(name: str) -> None:
    interp = interpolant(name)
    for options in (RICH, DIAG3, FULL3):
        g = gmm(**options)
        for t in (0.0, 0.3, 0.75, 1.0):
            x = (2 * torch.randn(10, g.data_shape[0], generator=gen(8), dtype=F64)).requires_grad_()
            (grad,) = torch.autograd.grad(g.marginal_log_prob(t=t, x=x, interpolant=interp).sum(), x)
            close(g.score(t=t, x=x, interpolant=interp), grad, 1e-10)


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_velocity_at_the_ends(name: str) -> None:
    interp = interpolant(name)
    g = gmm(**RICH)
    x = 2 * torch.randn(8, 2, generator=gen(9), dtype=F64)
    zero, one = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    # t = 0: x_t = x_0 is independent of x_1, so b_0(x) = dalpha_0 x + dbeta_0 E[x_1].
    v0 = g.velocity(t=0.0, x=x, interpolant=interp)
    close(v0, interp.dalpha(zero) * x + interp.dbeta(zero) * g.mean, 1e-12)
    close(g.denoiser(t=0.0, x=x, interpolant=interp), g.mean.expand(8, 2), 1e-12)
    # t = 1: x_1 = x, E[x_0 | x_1] = 0, so b_1(x) = dbeta_1 x; the limit t -> 1 agrees.
    v1 = g.velocity(t=1.0, x=x, interpolant=interp)
    assert torch.isfinite(v1).all()
    close(v1, interp.dbeta(one) * x, 1e-12)
    torch.testing.assert_close(g.velocity(t=1 - 1e-6, x=x, interpolant=interp), v1, rtol=0, atol=1e-4)
    torch.testing.assert_close(g.velocity(t=1e-7, x=x, interpolant=interp), v0, rtol=0, atol=1e-4)
    close(g.denoiser(t=1.0, x=x, interpolant=interp), x, 1e-12)
    # Mixed ends in one batch, and gradients through x and t stay finite there.
    t = torch.tensor([0.0, 1.0] * 4, dtype=F64, requires_grad=True)
    xg = x.clone().requires_grad_()
    v = g.velocity(t=t, x=xg, interpolant=interp)
    torch.testing.assert_close(v[1::2], v1[1::2].detach())
    gx, gt = torch.autograd.grad(v.square().sum(), (xg, t))
    assert torch.isfinite(gx).all() and torch.isfinite(gt).all()


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_continuity_equation(name: str) -> None:
    """``d/dt log p_t + div b_t + b_t . grad log p_t = 0`` (autograd in t and x)."""
    interp = interpolant(name)
    g = gmm(**RICH)
    x = (2 * torch.randn(6, 2, generator=gen(11), dtype=F64)).requires_grad_()
    for t0 in (0.05, 0.4, 0.9):
        t = torch.full((6,), t0, dtype=F64, requires_grad=True)
        (dlogp_dt,) = torch.autograd.grad(g.marginal_log_prob(t=t, x=x, interpolant=interp).sum(), t)
        v = g.velocity(t=t, x=x, interpolant=interp)
        div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
        score = g.score(t=t, x=x, interpolant=interp)
        residual = dlogp_dt + div + (v * score).sum(-1)
        torch.testing.assert_close(residual, torch.zeros_like(residual), rtol=0, atol=1e-9)


def test_dtype_follows_the_input() -> None:
    interp = interpolant("linear")
    g = GaussianMixture(GaussianMixtureOptions(**RICH))
    x64 = torch.randn(5, 2, generator=gen(12), dtype=F64)
    x32 = x64.float()
    for method in (g.denoiser, g.velocity, g.score):
        out = method(t=0.4, x=x32, interpolant=interp)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, method(t=0.4, x=x64, interpolant=interp).float())
    assert g.marginal_log_prob(t=0.4, x=x32, interpolant=interp).dtype == torch.float32
    assert g.posterior_sample(t=0.4, x=x32, n=3, interpolant=interp, generator=gen(0)).dtype == torch.float32


# --------------------------------------------------------------------------- the posterior


def literal_posterior(g: GaussianMixture, a: float, b: float, x: torch.Tensor):
    """MATH.md section 8, literally (explicit inverses; interior t only)."""
    d = g.data_shape[0]
    eye = torch.eye(d, dtype=F64)
    s_inv = torch.linalg.inv(g.covariances)
    c = torch.linalg.inv(s_inv + (b**2 / a**2) * eye)  # [K, d, d]
    rhs = (s_inv @ g.means[:, :, None])[None, :, :, 0] + (b / a**2) * x[:, None, :]  # [B, K, d]
    m = torch.einsum("kij,bkj->bki", c, rhs)
    marg = MultivariateNormal(b * g.means, covariance_matrix=b**2 * g.covariances + a**2 * eye)
    logw = (g.weights.log() + marg.log_prob(x[:, None, :])).log_softmax(-1)
    return logw, m, c


@pytest.mark.parametrize("name", INTERPOLANTS)
def test_posterior_matches_the_formulas_and_bayes_rule(name: str) -> None:
    interp = interpolant(name)
    for options in (RICH, DIAG3, FULL3):
        g = gmm(**options)
        d = g.data_shape[0]
        for i, t in enumerate((0.15, 0.5, 0.85)):
            tt = torch.tensor(t, dtype=F64)
            a, b = interp.alpha(tt).item(), interp.beta(tt).item()
            x = contexts(g, interp, t, 5, seed=30 + i)
            post = g.posterior(t=t, x=x, interpolant=interp)
            assert isinstance(post, GaussianMixturePosterior)
            logw, m, c = literal_posterior(g, a, b, x)
            close(post.log_weights, logw, 1e-9)
            close(post.means, m, 1e-9)
            close(post.covariances, c.expand(5, -1, -1, -1), 1e-9)
            close(post.mean(), g.denoiser(t=t, x=x, interpolant=interp), 1e-12)
            # Bayes: log p(x_1 | x) = log p_1(x_1) + log N(x; beta x_1, alpha^2 I) - log p_t(x).
            x1 = 2 * torch.randn(5, 7, d, generator=gen(40 + i), dtype=F64)
            lik = MultivariateNormal(b * x1, covariance_matrix=a**2 * torch.eye(d, dtype=F64)).log_prob(x[:, None, :])
            evidence = g.marginal_log_prob(t=t, x=x, interpolant=interp)[:, None]
            bayes = g.log_prob(x1.reshape(-1, d)).reshape(5, 7) + lik - evidence
            close(g.posterior_log_prob(t=t, x=x, x_1=x1, interpolant=interp), bayes, 1e-9)


def test_posterior_log_prob_normalises() -> None:
    interp = interpolant("linear")
    g = gmm(**RICH)
    x = torch.tensor([[-0.5, 0.6], [0.2, -0.4]], dtype=F64)
    ticks = torch.linspace(-8, 8, 641, dtype=F64)
    h = 16 / 640
    grid = torch.cartesian_prod(ticks, ticks)
    logp = g.posterior_log_prob(t=0.35, x=x, x_1=grid.expand(2, -1, -1), interpolant=interp)
    torch.testing.assert_close(logp.exp().sum(-1) * h * h, torch.ones(2, dtype=F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "options"),
    [("linear", RICH), ("trigonometric", RICH), ("linear", FULL3)],
    ids=["linear-2d", "trigonometric-2d", "linear-3d"],
)
def test_posterior_samples_have_the_posterior_moments(name: str, options: dict) -> None:
    interp = interpolant(name)
    g = gmm(**options)
    n = 40_000
    x = contexts(g, interp, 0.5, 3, seed=50)
    samples = g.posterior_sample(t=0.5, x=x, n=n, interpolant=interp, generator=gen(51))
    assert samples.shape == (3, n, g.data_shape[0]) and samples.dtype == F64
    post = g.posterior(t=0.5, x=x, interpolant=interp)
    mean, cov = post.mean(), post.covariance()
    se_mean = (cov.diagonal(dim1=-2, dim2=-1) / n).sqrt()
    assert torch.all((samples.mean(1) - mean).abs() < Z * se_mean)
    c = samples - mean[:, None]
    products = c[..., :, None] * c[..., None, :]
    se_cov = products.std(1) / math.sqrt(n)
    assert torch.all((products.mean(1) - cov).abs() < Z * se_cov)
    # The posterior covariance also matches a Monte Carlo estimate from prior draws.
    est, se = self_normalised(g, interp, 0.5, x, lambda x1, xc: x1 * x1, seed=52)
    second = cov.diagonal(dim1=-2, dim2=-1) + mean**2
    assert se.max() < 0.05
    assert torch.all((est - second).abs() < Z * se)
    # Deterministic given the generator.
    again = g.posterior_sample(t=0.5, x=x, n=n, interpolant=interp, generator=gen(51))
    assert torch.equal(samples, again)


def test_posterior_at_the_ends() -> None:
    interp = interpolant("linear")
    g = gmm(**RICH)
    n = 40_000
    x = 2 * torch.randn(2, 2, generator=gen(60), dtype=F64)
    # t -> 0: the context says nothing; the posterior is p_1.
    for t in (0.0, 1e-9):
        samples = g.posterior_sample(t=t, x=x, n=n, interpolant=interp, generator=gen(61))
        se = (g.covariance.diagonal() / n).sqrt()
        assert torch.all((samples.mean(1) - g.mean).abs() < Z * se)
        cov = torch.stack([torch.cov(s.T) for s in samples])
        assert torch.all((cov - g.covariance).abs() < 0.05 * g.covariance.abs().max())
        x1 = 2 * torch.randn(2, 5, 2, generator=gen(62), dtype=F64)
        prior = g.log_prob(x1.reshape(-1, 2)).reshape(2, 5)
        close(g.posterior_log_prob(t=t, x=x, x_1=x1, interpolant=interp), prior, 1e-6)
    # t -> 1: the posterior concentrates at x (a point mass at t = 1).
    at_one = g.posterior_sample(t=1.0, x=x, n=100, interpolant=interp, generator=gen(63))
    assert torch.isfinite(at_one).all()
    torch.testing.assert_close(at_one, x[:, None].expand(-1, 100, -1), rtol=0, atol=1e-12)
    near = g.posterior_sample(t=1 - 1e-6, x=x, n=1000, interpolant=interp, generator=gen(64))
    assert (near - x[:, None]).abs().max() < 1e-4
    post = g.posterior(t=1.0, x=x, interpolant=interp)
    assert torch.all(post.eigenvalues == 0) and torch.isfinite(post.log_weights).all()


# --------------------------------------------------------------------------- batches


def test_batches_split_the_global_batch_across_ranks() -> None:
    """Shapes, labels, seeds and disjoint ranks are in the data-source conformance suite
    (tests/plugins/test_conformance.py); the gmm also promises that the ranks' batches
    together are the batch one process would draw, and rejects a rank outside the world."""
    g = gmm(preset="grid-25", dim=3, labelled=True)
    r0 = g.batches(batch_size=16, generator=gen(71), rank=0, world_size=2)
    r1 = g.batches(batch_size=16, generator=gen(71), rank=1, world_size=2)
    single = g.batches(batch_size=32, generator=gen(71))
    for _ in range(2):
        a, b, whole = next(r0), next(r1), next(single)
        assert a.x_1.shape == b.x_1.shape == (16, 3)
        assert torch.equal(torch.cat([a.x_1, b.x_1]), whole.x_1)
        assert torch.equal(torch.cat([a.cond, b.cond]), whole.cond)

    unlabelled = next(GaussianMixture().batches(batch_size=4, generator=gen(72)))
    assert unlabelled.cond is None and unlabelled.x_1.dtype == torch.float32
    with pytest.raises(ValueError, match="rank"):
        g.batches(batch_size=4, generator=gen(0), rank=2, world_size=2)
