"""Gaussian mixture data laws with exact marginals, denoisers, velocities and posteriors.

The mixture ``p_1 = sum_k pi_k N(mu_k, S_k)`` in ``d`` dimensions is the ground truth of the toy
experiments (MATH.md section 8). Under an interpolant ``x_t = alpha_t x_0 + beta_t x_1`` with
``x_0 ~ N(0, I)`` everything stays Gaussian per component:

- marginal: ``x_t | k ~ N(beta_t mu_k, Sigma_k)``, ``Sigma_k = beta_t^2 S_k + alpha_t^2 I``;
- posterior ``p_{1|t}(. | x)``: a mixture with weights ``~ pi_k N(x; beta_t mu_k, Sigma_k)``,
  covariances ``C_k = (S_k^-1 + (beta_t^2 / alpha_t^2) I)^-1`` and means
  ``m_k = C_k (S_k^-1 mu_k + (beta_t / alpha_t^2) x)``.

Implementation: each ``S_k = U_k diag(lambda_k) U_k^T`` is diagonalised once (``eigh``, float64).
In that eigenbasis every matrix above is diagonal, and the formulas are used in a form multiplied
through by ``alpha_t^2`` so that no quantity divides by ``alpha_t`` or ``beta_t``:

- ``Sigma_k`` has eigenvalues ``v = beta^2 lambda + alpha^2`` (> 0 at every t);
- ``C_k`` has eigenvalues ``alpha^2 lambda / v`` (``lambda`` at t = 0, 0 at t = 1);
- ``m_k = mu_k + beta S_k Sigma_k^-1 (x - beta mu_k)`` (``mu_k`` at t = 0, ``x`` at t = 1);
- ``E[x_0 | x_t = x, k] = alpha Sigma_k^-1 (x - beta mu_k)`` (``x`` at t = 0, 0 at t = 1);
- ``grad log p_t(x | k) = -Sigma_k^-1 (x - beta mu_k)``.

So the denoiser, the velocity ``dalpha E[x_0 | x] + dbeta E[x_1 | x]`` and the score are regular on
the closed interval [0, 1] and differentiable (autograd) in ``x`` and ``t`` everywhere.

Tilts (MATH.md sections 6 and 8): a reward in closed form
``exp r(x) = sum_j exp(c_j - x^T P_j x / 2 + h_j^T x)`` (:class:`ExpQuadraticMixture`) keeps every
Gaussian a Gaussian. For ``N(m, C)`` and term ``j``, with ``F = I + C P_j`` (no inverse of ``C``,
so a degenerate posterior at ``alpha_t = 0`` is fine):

- tilted covariance ``C' = (C^-1 + P_j)^-1 = F^-1 C`` and mean ``m' = C'(C^-1 m + h_j) = F^-1 (m + C h_j)``;
- mass ``log int N(x; m, C) exp(term_j(x)) dx = c_j + Q / 2 - log det F / 2`` with
  ``Q = -m^T G P_j m + 2 m^T G h_j + h_j^T C G h_j``, ``G = F^-T = (I + P_j C)^-1``
  (equal to ``m'^T C'^-1 m' - m^T C^-1 m`` when ``C`` is invertible).

So ``p_1 exp(r) / Z`` is a mixture of ``K J`` Gaussians (:meth:`GaussianMixture.tilted`) and the
exact value ``V_t(x) = log E[exp r(x_1) | x_t = x]`` is the log-sum of the posterior weights times
these masses (:meth:`GaussianMixture.log_value`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import DataBatch, DataSource, ExpQuadraticMixture, Interpolant

__all__ = ["GaussianMixture", "GaussianMixtureOptions", "GaussianMixturePosterior", "PRESETS"]

#: The presets of :class:`GaussianMixtureOptions` and their default isotropic std of each mode.
PRESETS: dict[str, float] = {
    "paper-2d": math.sqrt(0.5),
    "ring-8": 0.5,
    "grid-25": 0.3,
    "custom": 1.0,
}

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- option validators
# The spec loader calls field validators with ``instance=None`` (to report every bad field at
# once), so they look at their own value only; checks across fields live in __attrs_post_init__.


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_positive(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _check_preset(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in PRESETS:
        names = ", ".join(repr(p) for p in PRESETS)
        raise ValueError(f"'{attribute.name}' must be one of {names}, got {value!r}")


def _check_positive_or_none(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not _finite_positive(value):
        raise ValueError(f"'{attribute.name}' must be a finite number > 0, got {value!r}")


def _check_dim(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"'{attribute.name}' must be an integer >= 1, got {value!r}")


def _rows(attribute: attrs.Attribute, value: Any) -> list[Sequence[Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ValueError(f"'{attribute.name}' must be a non-empty array of arrays, got {value!r}")
    for i, row in enumerate(value):
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) == 0:
            raise ValueError(f"'{attribute.name}' must hold non-empty arrays of numbers; entry {i} is {row!r}")
    return list(value)


def _check_means(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    rows = _rows(attribute, value)
    if len({len(row) for row in rows}) != 1:
        raise ValueError(
            f"'{attribute.name}' must all have the same length (the dimension), "
            f"got lengths {[len(row) for row in rows]}"
        )
    for i, row in enumerate(rows):
        if not all(_is_number(v) and math.isfinite(v) for v in row):
            raise ValueError(f"'{attribute.name}' must hold finite numbers; mean {i} is {list(row)!r}")


def _check_variances(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    for i, row in enumerate(_rows(attribute, value)):
        if not all(_finite_positive(v) for v in row):
            raise ValueError(f"'{attribute.name}' must hold finite variances > 0; row {i} is {list(row)!r}")


def _check_covariances(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    for i, matrix in enumerate(_rows(attribute, value)):
        where = f"'{attribute.name}' matrix {i}"
        n = len(matrix)
        if not all(isinstance(r, Sequence) and not isinstance(r, str) and len(r) == n for r in matrix):
            raise ValueError(f"{where} is not square (it must be an array of {n} arrays of {n} numbers)")
        if not all(_is_number(v) and math.isfinite(v) for r in matrix for v in r):
            raise ValueError(f"{where} holds a number that is not finite")
        m = torch.tensor([list(r) for r in matrix], dtype=torch.float64)
        if not torch.allclose(m, m.T, rtol=1e-10, atol=1e-12):
            raise ValueError(f"{where} is not symmetric: {m.tolist()!r}")
        if torch.linalg.eigvalsh(m).min() <= 0:
            raise ValueError(f"{where} is not positive definite: {m.tolist()!r}")


def _check_weights(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ValueError(f"'{attribute.name}' must be a non-empty array of numbers, got {value!r}")
    if not all(_finite_positive(v) for v in value):
        raise ValueError(f"'{attribute.name}' must hold finite weights > 0, got {list(value)!r}")


@attrs.frozen(kw_only=True)
class GaussianMixtureOptions:
    """Options of :class:`GaussianMixture`.

    Attributes:
        preset: the mixture. ``"paper-2d"``: the paper's 2-D mixture, means (-3, -3), (0, 0),
            (3, 3), covariance 0.5 I, equal weights. ``"ring-8"``: 8 modes equally spaced on a
            circle of radius ``radius`` (the first at angle 0), isotropic std ``std`` (0.5).
            ``"grid-25"``: a 5 x 5 grid of modes ``spacing * (i, j)``, ``i, j`` in -2..2,
            isotropic std ``std`` (0.3). ``"custom"``: ``means``, with ``variances`` or
            ``covariances`` (or isotropic std ``std``, default 1.0). The 2-D presets live in the
            first two coordinates of ``dim`` dimensions (the other mean coordinates are 0 and the
            covariance is isotropic there too).
        dim: dimension ``d``; default 2 for the presets (must be >= 2), the length of the means
            for ``"custom"`` (must agree when given).
        std: isotropic standard deviation of every mode; default per preset (see above).
            ``"paper-2d"`` uses sqrt(0.5) unless given. Not allowed with ``variances`` or
            ``covariances``.
        radius: radius of the ``"ring-8"`` circle.
        spacing: distance between neighbouring ``"grid-25"`` modes.
        means: ``"custom"`` only: the ``K`` means, each of length ``d``.
        variances: ``"custom"`` only: one row per component, either one variance (isotropic)
            or ``d`` variances (diagonal covariance).
        covariances: ``"custom"`` only: one full ``d x d`` covariance matrix per component
            (symmetric positive definite). Exclusive with ``variances``.
        weights: mixture weights, one per component, > 0 (normalised to sum to 1); default equal.
            Allowed with every preset.
        labelled: give each example its component index as the class label (``cond`` in
            ``[0, K)``, ``num_classes = K``).
    """

    preset: str = attrs.field(default="paper-2d", validator=_check_preset)
    dim: int | None = attrs.field(default=None, validator=_check_dim)
    std: float | None = attrs.field(default=None, validator=_check_positive_or_none)
    radius: float = attrs.field(default=4.0, validator=_check_positive_or_none)
    spacing: float = attrs.field(default=2.0, validator=_check_positive_or_none)
    means: tuple[tuple[float, ...], ...] | None = attrs.field(default=None, validator=_check_means)
    variances: tuple[tuple[float, ...], ...] | None = attrs.field(default=None, validator=_check_variances)
    covariances: tuple[tuple[tuple[float, ...], ...], ...] | None = attrs.field(
        default=None, validator=_check_covariances
    )
    weights: tuple[float, ...] | None = attrs.field(default=None, validator=_check_weights)
    labelled: bool = False

    def __attrs_post_init__(self) -> None:
        preset = self.preset
        if preset == "custom":
            if self.means is None:
                raise ValueError("'means' are required with preset 'custom' (an array of K means of length d)")
            k, d = len(self.means), len(self.means[0])
            if self.dim is not None and self.dim != d:
                raise ValueError(f"'dim' ({self.dim}) does not match the length {d} of the 'means'")
            if self.variances is not None and self.covariances is not None:
                raise ValueError("'covariances' cannot be combined with 'variances' (give one of them)")
            if self.std is not None and (self.variances is not None or self.covariances is not None):
                raise ValueError("'std' cannot be combined with 'variances' or 'covariances'")
            if self.variances is not None:
                if len(self.variances) != k:
                    raise ValueError(
                        f"'variances' has {len(self.variances)} rows but there are {k} 'means'"
                    )
                for i, row in enumerate(self.variances):
                    if len(row) not in (1, d):
                        raise ValueError(
                            f"'variances' rows must hold 1 (isotropic) or {d} (diagonal) variances; "
                            f"row {i} holds {len(row)}"
                        )
            if self.covariances is not None:
                if len(self.covariances) != k:
                    raise ValueError(
                        f"'covariances' has {len(self.covariances)} matrices but there are {k} 'means'"
                    )
                for i, matrix in enumerate(self.covariances):
                    if len(matrix) != d:
                        raise ValueError(
                            f"'covariances' must be {d} x {d} matrices; matrix {i} is {len(matrix)} x {len(matrix)}"
                        )
        else:
            for name in ("means", "variances", "covariances"):
                if getattr(self, name) is not None:
                    raise ValueError(f"'{name}' is only used with preset = 'custom' (preset is {preset!r})")
            if self.dim is not None and self.dim < 2:
                raise ValueError(f"'dim' must be >= 2 for preset {preset!r}, got {self.dim}")
            k = {"paper-2d": 3, "ring-8": 8, "grid-25": 25}[preset]
        if preset != "ring-8" and self.radius != 4.0:
            raise ValueError(f"'radius' is only used with preset = 'ring-8' (preset is {preset!r})")
        if preset != "grid-25" and self.spacing != 2.0:
            raise ValueError(f"'spacing' is only used with preset = 'grid-25' (preset is {preset!r})")
        if self.weights is not None and len(self.weights) != k:
            raise ValueError(f"'weights' has {len(self.weights)} entries but the mixture has {k} components")


def _mixture_parameters(options: GaussianMixtureOptions) -> tuple[Tensor, Tensor, Tensor]:
    """Means ``[K, d]``, covariances ``[K, d, d]`` and normalised weights ``[K]`` (float64, CPU)."""
    f64 = torch.float64
    preset = options.preset
    if preset == "custom":
        assert options.means is not None
        means = torch.tensor([list(m) for m in options.means], dtype=f64)
        k, d = means.shape
        if options.covariances is not None:
            covs = torch.tensor([[list(r) for r in m] for m in options.covariances], dtype=f64)
            covs = 0.5 * (covs + covs.transpose(-1, -2))
        elif options.variances is not None:
            var = torch.stack([torch.tensor(list(row), dtype=f64).expand(d) for row in options.variances])
            covs = torch.diag_embed(var)
        else:
            std = PRESETS["custom"] if options.std is None else options.std
            covs = (std**2) * torch.eye(d, dtype=f64).expand(k, d, d).clone()
    else:
        d = 2 if options.dim is None else options.dim
        if preset == "paper-2d":
            plane = torch.tensor([[-3.0, -3.0], [0.0, 0.0], [3.0, 3.0]], dtype=f64)
        elif preset == "ring-8":
            angles = torch.arange(8, dtype=f64) * (2 * math.pi / 8)
            plane = options.radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
        else:  # grid-25
            ticks = options.spacing * torch.arange(-2, 3, dtype=f64)
            plane = torch.cartesian_prod(ticks, ticks)
        k = plane.shape[0]
        means = torch.zeros(k, d, dtype=f64)
        means[:, :2] = plane
        std = PRESETS[preset] if options.std is None else options.std
        covs = (std**2) * torch.eye(d, dtype=f64).expand(k, d, d).clone()
    weights = torch.ones(k, dtype=f64) if options.weights is None else torch.tensor(list(options.weights), dtype=f64)
    return means, covs, weights / weights.sum()


# --------------------------------------------------------------------------- the posterior record


@attrs.frozen(kw_only=True)
class GaussianMixturePosterior:
    """The posterior ``p_{1|t}(. | x)`` of a Gaussian mixture: a Gaussian mixture per context.

    Component ``k`` of context ``b`` is ``N(means[b, k], U_k diag(eigenvalues[b, k]) U_k^T)`` with
    ``U_k = eigenvectors[k]`` (the eigenbasis of the data covariance ``S_k``, shared by all
    contexts and times).

    Attributes:
        log_weights: normalised log mixture weights, ``[B, K]``.
        means: component means ``m_k``, ``[B, K, d]``.
        eigenvalues: eigenvalues of the component covariances ``C_k``, ``[B, K, d]`` (0 at
            ``alpha_t = 0``, where the posterior is a point mass at ``x``).
        eigenvectors: orthonormal eigenvectors (columns) of ``C_k``, ``[K, d, d]``.
    """

    log_weights: Tensor
    means: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    @property
    def weights(self) -> Tensor:
        """Mixture weights ``[B, K]``."""
        return self.log_weights.exp()

    @property
    def covariances(self) -> Tensor:
        """Component covariances ``C_k``, ``[B, K, d, d]``."""
        u = self.eigenvectors
        return torch.einsum("kij,bkj,klj->bkil", u, self.eigenvalues, u)

    def mean(self) -> Tensor:
        """Posterior mean ``E[x_1 | x_t = x] = sum_k w_k m_k`` (the denoiser), ``[B, d]``."""
        return torch.einsum("bk,bki->bi", self.weights, self.means)

    def covariance(self) -> Tensor:
        """Posterior covariance ``sum_k w_k (C_k + m_k m_k^T) - m m^T``, ``[B, d, d]``."""
        w, m = self.weights, self.means
        mean = self.mean()
        second = torch.einsum("bk,bkij->bij", w, self.covariances) + torch.einsum("bk,bki,bkj->bij", w, m, m)
        return second - mean[:, :, None] * mean[:, None, :]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` i.i.d. draws per context, ``[B, n, d]``: a component, then a Gaussian draw.

        Random numbers are drawn on the generator's device (so a seed gives the same draws on
        every device), component indices first, then standard normals ``[B, n, d]``.
        """
        b, k, d = self.means.shape
        device = self.means.device
        rng_device = generator.device if generator is not None else device
        probs = self.weights.detach().to(rng_device)
        comp = torch.multinomial(probs, n, replacement=True, generator=generator).to(device)  # [B, n]
        eps = torch.randn(b, n, d, generator=generator, device=rng_device, dtype=self.means.dtype).to(device)
        index = comp[:, :, None].expand(b, n, d)
        m = self.means.gather(1, index)  # [B, n, d]
        lam = self.eigenvalues.gather(1, index)  # [B, n, d]
        u = self.eigenvectors[comp]  # [B, n, d, d]
        return m + torch.einsum("bnij,bnj->bni", u, lam.clamp_min(0).sqrt() * eps)

    def log_prob(self, x_1: Tensor) -> Tensor:
        """``log p_{1|t}(x_1 | x)`` for ``x_1`` ``[B, M, d]`` (context ``b`` for row ``b``): ``[B, M]``.

        At ``alpha_t = 0`` the posterior is a point mass and has no density; the eigenvalues are
        then clamped at the smallest normal float and the values mean nothing.
        """
        tiny = torch.finfo(self.eigenvalues.dtype).tiny
        r = x_1[:, :, None, :] - self.means[:, None, :, :]  # [B, M, K, d]
        z = torch.einsum("kij,bmki->bmkj", self.eigenvectors, r)  # U^T r
        lam = self.eigenvalues.clamp_min(tiny)[:, None]  # [B, 1, K, d]
        log_n = -0.5 * ((z**2 / lam).sum(-1) + lam.log().sum(-1) + z.shape[-1] * _LOG_2PI)
        return torch.logsumexp(self.log_weights[:, None, :] + log_n, dim=-1)

    def to(self, dtype: torch.dtype) -> GaussianMixturePosterior:
        """The same record with every tensor cast to ``dtype``."""
        return GaussianMixturePosterior(
            log_weights=self.log_weights.to(dtype),
            means=self.means.to(dtype),
            eigenvalues=self.eigenvalues.to(dtype),
            eigenvectors=self.eigenvectors.to(dtype),
        )


@attrs.frozen
class _Terms:
    """Per-component quantities at ``(t, x)`` in the working dtype (internal)."""

    alpha: Tensor  # [B, 1, 1]
    beta: Tensor  # [B, 1, 1]
    z: Tensor  # [B, K, d]: U_k^T (x - beta mu_k)
    v: Tensor  # [B, K, d]: eigenvalues of Sigma_k = beta^2 S_k + alpha^2 I
    log_joint: Tensor  # [B, K]: log pi_k + log N(x; beta mu_k, Sigma_k)


# --------------------------------------------------------------------------- tilts by closed-form rewards


def _tilt_gaussians(means: Tensor, covs: Tensor, form: ExpQuadraticMixture) -> tuple[Tensor, Tensor, Tensor]:
    """Tilt Gaussians ``N(m, C)`` by each term of ``form`` (see the module docstring).

    Args:
        means: ``m``, ``[..., d]``.
        covs: ``C``, ``[..., d, d]`` (positive semi-definite; may be singular).
        form: the reward, ``J`` terms in ``d`` dimensions (cast to the dtype of ``means``).

    Returns:
        ``(m', C', log_mass)``: tilted means ``[..., J, d]``, tilted covariances
        ``[..., J, d, d]`` (symmetrised) and ``log int N(x; m, C) exp(term_j(x)) dx`` ``[..., J]``
        (``+inf`` where the integral diverges: ``C^-1 + P_j`` not positive definite).
    """
    p = form.precision.to(device=means.device, dtype=means.dtype)
    p = 0.5 * (p + p.transpose(-1, -2))  # only the symmetric part enters x^T P x
    h = form.shift.to(device=means.device, dtype=means.dtype)
    c = form.log_scale.to(device=means.device, dtype=means.dtype)
    d = means.shape[-1]
    eye = torch.eye(d, dtype=means.dtype, device=means.device)
    m = means[..., None, :]  # [..., 1, d]
    cov = covs[..., None, :, :]  # [..., 1, d, d]
    f = eye + cov @ p  # F = I + C P_j, [..., J, d, d]
    ch = torch.einsum("...ij,...j->...i", cov, h)  # C h_j, [..., J, d]
    rhs = m + ch  # m + C h_j, [..., J, d]
    new_m = torch.linalg.solve(f, rhs[..., None])[..., 0]
    new_c = torch.linalg.solve(f, cov.expand_as(f))
    new_c = 0.5 * (new_c + new_c.transpose(-1, -2))
    g_inv = f.transpose(-1, -2)  # G^-1 = F^T = I + P_j C
    mm = m.expand_as(rhs)
    pm = torch.einsum("jik,...jk->...ji", p, mm)  # P_j m
    gpm = torch.linalg.solve(g_inv, pm[..., None])[..., 0]  # G P_j m
    gh = torch.linalg.solve(g_inv, h.expand_as(rhs)[..., None])[..., 0]  # G h_j
    q = -(mm * gpm).sum(-1) + 2 * (mm * gh).sum(-1) + (ch * gh).sum(-1)
    logdet = torch.linalg.slogdet(f)[1]
    log_mass = c + 0.5 * q - 0.5 * logdet
    # The integral is finite iff I + C^(1/2) P_j C^(1/2) is positive definite, i.e. iff every
    # eigenvalue of F (the same, F being similar to it) is > 0; otherwise the mass is +inf.
    with torch.no_grad():
        finite = torch.linalg.eigvals(f).real.amin(-1) > 0
    return new_m, new_c, torch.where(finite, log_mass, torch.full_like(log_mass, math.inf))


# --------------------------------------------------------------------------- the data source


class GaussianMixture(DataSource):
    """A Gaussian mixture ``p_1 = sum_k pi_k N(mu_k, S_k)`` with exact ground truth (MATH.md 8).

    Draws exact i.i.d. samples (``SamplableData``) and gives the exact log-density, marginals,
    denoiser, velocity, score and posterior under any interpolant (``ExactData``), all in closed
    form and regular on the closed interval ``t`` in [0, 1] (see the module docstring). For a
    reward in closed form it also gives the exact tilted law and value (``TiltableData``:
    :meth:`tilted`, :meth:`log_value`, :meth:`log_partition`), the ground truth of steering.

    Shapes: one example is ``[d]``; contexts are ``x`` ``[B, d]`` with times ``t`` a scalar or
    ``[B]``. Computations run in float64 (float32 on MPS, which has no float64) and return the
    dtype of ``x``; samples come in the constructor's ``dtype`` (float32 by default) on its
    ``device``. Every method is differentiable in ``x`` and ``t`` with autograd.

    Cost: no network evaluations; ``O(B K d^2)`` arithmetic per call.

    Args:
        options: :class:`GaussianMixtureOptions` (default: the paper's 2-D mixture).
        device: device of the samples and of the mixture parameters (default CPU).
        dtype: floating dtype of the samples (default float32).
    """

    name = "gmm"
    Options = GaussianMixtureOptions

    def __init__(
        self,
        options: GaussianMixtureOptions | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(options)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self._work_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        means, covs, weights = _mixture_parameters(self.options)
        lam, u = torch.linalg.eigh(covs)
        self._params: dict[torch.device, tuple[Tensor, ...]] = {}
        self._cpu = (means, covs, weights.log(), lam, u)
        self.num_classes = means.shape[0] if self.options.labelled else None

    # ------------------------------------------------------------------ the law itself
    @property
    def data_shape(self) -> tuple[int, ...]:
        """``(d,)``."""
        return (self._cpu[0].shape[1],)

    @property
    def num_components(self) -> int:
        """The number of mixture components ``K``."""
        return self._cpu[0].shape[0]

    @property
    def means(self) -> Tensor:
        """Component means ``mu_k``, ``[K, d]`` (float64, CPU)."""
        return self._cpu[0].clone()

    @property
    def covariances(self) -> Tensor:
        """Component covariances ``S_k``, ``[K, d, d]`` (float64, CPU)."""
        return self._cpu[1].clone()

    @property
    def weights(self) -> Tensor:
        """Normalised mixture weights ``pi_k``, ``[K]`` (float64, CPU)."""
        return self._cpu[2].exp()

    @property
    def mean(self) -> Tensor:
        """Mean of ``p_1``, ``[d]`` (float64, CPU)."""
        return self.weights @ self._cpu[0]

    @property
    def covariance(self) -> Tensor:
        """Covariance of ``p_1``, ``[d, d]`` (float64, CPU)."""
        w, mu, s = self.weights, self._cpu[0], self._cpu[1]
        m = self.mean
        return torch.einsum("k,kij->ij", w, s) + torch.einsum("k,ki,kj->ij", w, mu, mu) - torch.outer(m, m)

    def _on(self, device: torch.device) -> tuple[Tensor, ...]:
        """``(means, covariances, log_weights, eigenvalues, eigenvectors)`` on ``device``."""
        key = torch.device(device)
        if key not in self._params:
            self._params[key] = tuple(p.to(device=key, dtype=self._work_dtype) for p in self._cpu)
        return self._params[key]

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``n`` draws in the working dtype on ``self.device`` and their component indices."""
        if n < 0:
            raise ValueError(f"the number of samples must be >= 0, got {n}")
        means, _, log_w, lam, u = self._on(self.device)
        rng_device = generator.device if generator is not None else self.device
        probs = log_w.exp().to(rng_device)
        comp = torch.multinomial(probs, n, replacement=True, generator=generator).to(self.device)
        eps = torch.randn(n, means.shape[1], generator=generator, device=rng_device, dtype=means.dtype)
        eps = eps.to(self.device)
        x = means[comp] + torch.einsum("nij,nj->ni", u[comp], lam[comp].sqrt() * eps)
        return x, comp

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> DataBatch:
        """``n`` exact i.i.d. draws ``x_1 ~ p_1``.

        Draws a component index per example (``torch.multinomial``), then standard normals
        ``[n, d]``, both on the generator's device, and maps them with ``mu_k + S_k^(1/2) eps``.

        Args:
            n: number of draws.
            generator: source of randomness (default: torch's global generator).

        Returns:
            :class:`DataBatch` with ``x_1`` ``[n, d]`` (constructor ``dtype`` and ``device``)
            and, when ``labelled``, ``cond`` ``[n]`` (int64 component indices), else ``None``.
        """
        x, comp = self._draw(n, generator)
        return DataBatch(x_1=x.to(self.dtype), cond=comp if self.options.labelled else None)

    def batches(
        self, *, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[DataBatch]:
        """An endless iterator of exact i.i.d. batches for process ``rank`` of ``world_size``.

        Every rank holds a generator seeded identically. Each step draws the *global* batch of
        ``world_size * batch_size`` examples exactly as :meth:`sample` would, and rank ``r`` keeps
        rows ``[r * batch_size, (r + 1) * batch_size)``. So ranks get disjoint, independent data,
        the generators stay in step, and the union of the ranks' batches is the batch a single
        process would draw with ``batch_size * world_size`` (the data do not depend on how the
        run is split). The iterator advances ``generator``.

        Args:
            batch_size: examples per rank and step.
            generator: the shared source of randomness.
            rank: this process's rank, in ``[0, world_size)``.
            world_size: number of processes.

        Yields:
            :class:`DataBatch` with ``x_1`` ``[batch_size, d]`` and ``cond`` as in :meth:`sample`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        return self._batches(batch_size, generator, rank, world_size)

    def _batches(self, batch_size: int, generator: torch.Generator, rank: int, world_size: int) -> Iterator[DataBatch]:
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        while True:
            batch = self.sample(batch_size * world_size, generator=generator)
            yield DataBatch(x_1=batch.x_1[rows], cond=None if batch.cond is None else batch.cond[rows])

    def log_prob(self, x_1: Tensor) -> Tensor:
        """``log p_1(x_1)`` for ``x_1`` ``[B, d]``: ``[B]`` (in ``x_1``'s dtype)."""
        return self._gaussian_terms(t=None, x=x_1, interpolant=None).log_joint.logsumexp(-1).to(x_1.dtype)

    # ------------------------------------------------------------------ ground truth under an interpolant
    def _times(self, t: Tensor | float, x: Tensor) -> Tensor:
        """Times as a ``[B]`` tensor in the working dtype (keeps autograd)."""
        if torch.is_tensor(t):
            t = t.to(device=x.device, dtype=x.dtype)
        else:  # a Python number straight to the working dtype (not via float32)
            t = torch.tensor(t, device=x.device, dtype=x.dtype)
        if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1):
            return t.reshape(()).expand(x.shape[0])
        if t.ndim == 1 and t.shape[0] == x.shape[0]:
            return t
        raise ValueError(f"times of shape {tuple(t.shape)} do not match a batch of shape {tuple(x.shape)}")

    def _check_x(self, x: Tensor, what: str = "x") -> None:
        d = self.data_shape[0]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{what} must have shape [B, {d}], got {tuple(x.shape)}")

    def _gaussian_terms(self, *, t: Tensor | float | None, x: Tensor, interpolant: Interpolant | None) -> _Terms:
        """Per-component marginal terms at ``(t, x)``; ``t=None`` means the data law itself."""
        self._check_x(x)
        means, _, log_w, lam, u = self._on(x.device)
        x = x.to(self._work_dtype)
        if t is None:
            alpha = torch.zeros(x.shape[0], 1, 1, dtype=x.dtype, device=x.device)
            beta = torch.ones_like(alpha)
        else:
            assert interpolant is not None
            tt = self._times(t, x)
            alpha, beta = interpolant.alpha(tt)[:, None, None], interpolant.beta(tt)[:, None, None]
        r = x[:, None, :] - beta * means[None]  # [B, K, d]: x - beta mu_k
        z = torch.einsum("kij,bki->bkj", u, r)  # U_k^T r
        v = beta**2 * lam[None] + alpha**2  # eigenvalues of Sigma_k
        log_n = -0.5 * ((z**2 / v).sum(-1) + v.log().sum(-1) + x.shape[1] * _LOG_2PI)
        return _Terms(alpha=alpha, beta=beta, z=z, v=v, log_joint=log_w[None] + log_n)

    def _posterior(
        self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant
    ) -> tuple[_Terms, GaussianMixturePosterior]:
        terms = self._gaussian_terms(t=t, x=x, interpolant=interpolant)
        means, _, _, lam, u = self._on(x.device)
        a, b, z, v = terms.alpha, terms.beta, terms.z, terms.v
        # m_k = mu_k + beta S_k Sigma_k^-1 (x - beta mu_k);  C_k = alpha^2 S_k Sigma_k^-1.
        m = means[None] + torch.einsum("kij,bkj->bki", u, b * lam[None] * z / v)
        c = a**2 * lam[None] / v
        log_w = terms.log_joint - terms.log_joint.logsumexp(-1, keepdim=True)
        return terms, GaussianMixturePosterior(log_weights=log_w, means=m, eigenvalues=c, eigenvectors=u)

    def marginal_log_prob(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``log p_t(x)``, the density of ``x_t = alpha_t x_0 + beta_t x_1``, ``[B]``.

        ``x_t ~ sum_k pi_k N(beta_t mu_k, beta_t^2 S_k + alpha_t^2 I)``; at t = 1 it is
        :meth:`log_prob`, at t = 0 the standard normal.

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            interpolant: the schedule defining ``x_t``.
        """
        return self._gaussian_terms(t=t, x=x, interpolant=interpolant).log_joint.logsumexp(-1).to(x.dtype)

    def posterior(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> GaussianMixturePosterior:
        """The posterior ``p_{1|t}(. | x)``, a Gaussian mixture per context (MATH.md section 8).

        Weights ``~ pi_k N(x; beta mu_k, beta^2 S_k + alpha^2 I)``, covariances
        ``C_k = alpha^2 S_k (beta^2 S_k + alpha^2 I)^-1`` (= ``(S_k^-1 + beta^2/alpha^2 I)^-1``) and
        means ``m_k = mu_k + beta S_k (beta^2 S_k + alpha^2 I)^-1 (x - beta mu_k)``; at t = 0 it is
        ``p_1``, at ``alpha_t = 0`` a point mass at ``x / beta_t`` (zero covariances).

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            interpolant: the schedule defining ``x_t``.

        Returns:
            :class:`GaussianMixturePosterior` in ``x``'s dtype.
        """
        return self._posterior(t=t, x=x, interpolant=interpolant)[1].to(x.dtype)

    def denoiser(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``D_t(x) = E[x_1 | x_t = x] = sum_k w_k(x) m_k(x)``, ``[B, d]``; regular on [0, 1].

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            interpolant: the schedule defining ``x_t``.
        """
        return self._posterior(t=t, x=x, interpolant=interpolant)[1].mean().to(x.dtype)

    def velocity(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``b_t(x) = E[dalpha_t x_0 + dbeta_t x_1 | x_t = x]``, ``[B, d]``; regular on [0, 1].

        Equal to ``interpolant.velocity_from_denoiser(D)`` for ``alpha_t > 0``, but computed as
        ``dalpha_t E[x_0 | x] + dbeta_t D_t(x)`` with
        ``E[x_0 | x] = sum_k w_k alpha_t Sigma_k^-1 (x - beta_t mu_k)``, which stays finite at
        t = 1 (where ``E[x_0 | x] = 0`` and ``b_1(x) = dbeta_1 x``) and gives
        ``b_0(x) = dalpha_0 x + dbeta_0 E[x_1]`` at t = 0.

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            interpolant: the schedule defining ``x_t``.
        """
        terms, post = self._posterior(t=t, x=x, interpolant=interpolant)
        _, _, _, _, u = self._on(x.device)
        w = post.weights
        e_x0 = terms.alpha[:, :, 0] * torch.einsum("bk,kij,bkj->bi", w, u, terms.z / terms.v)
        tt = self._times(t, x.to(self._work_dtype))
        da, db = interpolant.dalpha(tt)[:, None], interpolant.dbeta(tt)[:, None]
        return (da * e_x0 + db * post.mean()).to(x.dtype)

    def score(self, *, t: Tensor | float, x: Tensor, interpolant: Interpolant) -> Tensor:
        """``grad_x log p_t(x) = -sum_k w_k(x) Sigma_k^-1 (x - beta_t mu_k)``, ``[B, d]``.

        Equal to ``(beta_t D - x) / alpha_t^2`` for ``alpha_t > 0``, and finite at t = 1 (the
        score of ``p_1``).

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            interpolant: the schedule defining ``x_t``.
        """
        terms = self._gaussian_terms(t=t, x=x, interpolant=interpolant)
        _, _, _, _, u = self._on(x.device)
        w = terms.log_joint.softmax(-1)
        return -torch.einsum("bk,kij,bkj->bi", w, u, terms.z / terms.v).to(x.dtype)

    def posterior_sample(
        self,
        *,
        t: Tensor | float,
        x: Tensor,
        n: int,
        interpolant: Interpolant,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` exact i.i.d. draws from ``p_{1|t}(. | x)`` per context, ``[B, n, d]`` (``x``'s dtype).

        A component index per draw, then standard normals ``[B, n, d]``, both drawn on the
        generator's device. At ``alpha_t = 0`` every draw equals ``x / beta_t``.

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            n: draws per context.
            interpolant: the schedule defining ``x_t``.
            generator: source of randomness (default: torch's global generator).
        """
        post = self._posterior(t=t, x=x, interpolant=interpolant)[1]
        return post.sample(n, generator=generator).to(x.dtype)

    def posterior_log_prob(self, *, t: Tensor | float, x: Tensor, x_1: Tensor, interpolant: Interpolant) -> Tensor:
        """``log p_{1|t}(x_1 | x)`` for ``x_1`` ``[B, M, d]`` per context ``x`` ``[B, d]``: ``[B, M]``.

        Undefined at ``alpha_t = 0`` (a point mass); see :meth:`GaussianMixturePosterior.log_prob`.

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            x_1: points ``[B, M, d]`` at which to evaluate the posterior of context ``b``.
            interpolant: the schedule defining ``x_t``.
        """
        d = self.data_shape[0]
        if x_1.ndim != 3 or x_1.shape[0] != x.shape[0] or x_1.shape[2] != d:
            raise ValueError(f"x_1 must have shape [{x.shape[0]}, M, {d}], got {tuple(x_1.shape)}")
        post = self._posterior(t=t, x=x, interpolant=interpolant)[1]
        return post.log_prob(x_1.to(self._work_dtype)).to(x_1.dtype)

    # ------------------------------------------------------------------ tilts by closed-form rewards (oracles)
    @classmethod
    def from_parameters(
        cls,
        *,
        means: Tensor,
        covariances: Tensor,
        weights: Tensor,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> GaussianMixture:
        """The mixture with explicit parameters (a ``"custom"`` preset holding them exactly).

        Args:
            means: ``[K, d]``.
            covariances: ``[K, d, d]``, symmetric positive definite.
            weights: ``[K]``, > 0 (normalised to sum to 1).
            device: as in the constructor.
            dtype: as in the constructor.
        """
        means, covs, weights = (v.detach().to(device="cpu", dtype=torch.float64) for v in (means, covariances, weights))
        if means.ndim != 2 or covs.shape != (*means.shape, means.shape[1]) or weights.shape != means.shape[:1]:
            raise ValueError(
                "from_parameters needs means [K, d], covariances [K, d, d] and weights [K], got "
                f"{tuple(means.shape)}, {tuple(covs.shape)} and {tuple(weights.shape)}"
            )
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        options = GaussianMixtureOptions(
            preset="custom",
            means=tuple(tuple(row) for row in means.tolist()),
            covariances=tuple(tuple(tuple(r) for r in matrix) for matrix in covs.tolist()),
            weights=tuple(weights.tolist()),
        )
        return cls(options, device=device, dtype=dtype)

    def _tilt(self, form: ExpQuadraticMixture) -> tuple[Tensor, Tensor, Tensor]:
        """Means ``[K, J, d]``, covariances ``[K, J, d, d]`` and log masses ``[K, J]`` of the tilt (float64, CPU).

        The log mass of component ``(k, j)`` is ``log pi_k + log int N(x; mu_k, S_k) exp(term_j(x)) dx``,
        so their log-sum-exp is ``log Z``.
        """
        if not isinstance(form, ExpQuadraticMixture):
            raise TypeError(f"a gmm tilt takes an ExpQuadraticMixture (Reward.closed_form()), got {type(form).__name__}")
        d = self.data_shape[0]
        if form.dim != d:
            raise ValueError(f"the reward's closed form is {form.dim}-dimensional but the gmm data are {d}-dimensional")
        means, covs, log_w, _, _ = self._cpu
        form = ExpQuadraticMixture(
            precision=form.precision.detach().to("cpu", torch.float64),
            shift=form.shift.detach().to("cpu", torch.float64),
            log_scale=form.log_scale.detach().to("cpu", torch.float64),
        )
        m, c, log_mass = _tilt_gaussians(means, covs, form)
        bad = (~torch.isfinite(log_mass)).nonzero().tolist()
        if bad:
            k, j = bad[0]
            raise ValueError(
                f"the reward does not tilt the gmm into a probability law: E[exp r] is infinite under "
                f"component {k} (S_k^-1 + P_j is not positive definite for term {j})"
            )
        return m, c, log_w[:, None] + log_mass

    def log_partition(self, form: ExpQuadraticMixture) -> Tensor:
        """``log Z = log E_{p_1}[exp r(x_1)]`` for a reward in closed form: a 0-d float64 tensor (CPU).

        Equal to :meth:`log_value` at t = 0.
        """
        return self._tilt(form)[2].logsumexp(dim=(0, 1))

    def tilted(self, form: ExpQuadraticMixture) -> GaussianMixture:
        """The exact tilted law ``p_r = p_1 exp(r) / Z`` as a :class:`GaussianMixture` (MATH.md 6, 8).

        Component ``(k, j)`` (index ``k J + j``) of the ``K J`` components has covariance
        ``C = (S_k^-1 + P_j)^-1``, mean ``m = C (S_k^-1 mu_k + h_j)`` and weight
        ``~ pi_k exp(c_j) int N(x; mu_k, S_k) exp(-x^T P_j x / 2 + h_j^T x) dx``, i.e.
        ``log pi_k + c_j + m^T C^-1 m / 2 - mu_k^T S_k^-1 mu_k / 2 + log det C / 2 - log det S_k / 2``
        (computed without inverting ``S_k``; see the module docstring). Components whose normalised
        weight underflows to 0 in float64 are dropped. Being a full data source, the result has
        exact samples, log-density, denoiser, velocity, score and posteriors; its velocity is the
        exact steered drift ``b_t + g_t grad V_t``.

        Cost: no network evaluations; ``O(K J d^3)`` float64 arithmetic, once.

        Args:
            form: the reward in closed form, ``J`` terms in ``d`` dimensions.

        Returns:
            an unlabelled :class:`GaussianMixture` with this mixture's ``device`` and ``dtype``.

        Raises:
            ValueError: when ``E_{p_1}[exp r]`` is infinite (some ``S_k^-1 + P_j`` is not positive
                definite) or the dimensions differ.
        """
        m, c, log_mass = self._tilt(form)
        d = self.data_shape[0]
        m, c, log_mass = m.reshape(-1, d), c.reshape(-1, d, d), log_mass.reshape(-1)
        w = (log_mass - log_mass.max()).exp()
        keep = w > 0
        return GaussianMixture.from_parameters(
            means=m[keep], covariances=c[keep], weights=w[keep], device=self.device, dtype=self.dtype
        )

    def log_value(
        self, *, t: Tensor | float, x: Tensor, form: ExpQuadraticMixture, interpolant: Interpolant
    ) -> Tensor:
        """The exact value ``V_t(x) = log E[exp r(x_1) | x_t = x]``, ``[B]`` (``x``'s dtype).

        The posterior ``p_{1|t}(. | x)`` is a mixture of ``N(m_k, C_k)`` with weights ``w_k``
        (:meth:`posterior`), so ``V_t(x) = logsumexp_{k,j} (log w_k + log int N(x_1; m_k, C_k)
        exp(term_j(x_1)) dx_1)``, each integral in closed form (module docstring). Differentiable
        in ``x`` (and ``t``): ``torch.autograd.grad`` gives the exact ``grad V_t(x)``, and
        ``b_t + g_t grad V_t`` is the velocity of :meth:`tilted`. At t = 0 it is
        :meth:`log_partition` for every ``x``; at ``alpha_t = 0`` it is ``r(x / beta_t)``.
        ``+inf`` where the posterior expectation diverges.

        Cost: no network evaluations; ``O(B K J d^3)`` arithmetic in float64.

        Args:
            t: times, a scalar or ``[B]``.
            x: states ``[B, d]``.
            form: the reward in closed form, ``J`` terms in ``d`` dimensions.
            interpolant: the schedule defining ``x_t``.
        """
        if not isinstance(form, ExpQuadraticMixture):
            raise TypeError(f"log_value takes an ExpQuadraticMixture (Reward.closed_form()), got {type(form).__name__}")
        d = self.data_shape[0]
        if form.dim != d:
            raise ValueError(f"the reward's closed form is {form.dim}-dimensional but the gmm data are {d}-dimensional")
        post = self._posterior(t=t, x=x, interpolant=interpolant)[1]
        _, _, log_mass = _tilt_gaussians(post.means, post.covariances, form)  # [B, K, J]
        return (post.log_weights[:, :, None] + log_mass).logsumexp(dim=(1, 2)).to(x.dtype)
