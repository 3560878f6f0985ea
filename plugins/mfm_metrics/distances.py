"""Distances between two sample sets: sliced Wasserstein-2, multi-scale RBF MMD, energy distance.

All three compare generated ``samples`` ``[N, *D]`` with ``reference`` ``[M, *D]`` after
flattening each example to a vector of length ``d = prod(D)``; they compute in float64 whatever
the input dtype, on the device of ``samples`` (``reference`` is moved there), and return a 0-d
float64 tensor. None evaluates a network (0 NFE). Non-finite inputs give a non-finite result.
See MATH.md section 8; the evaluation stage reports each metric next to its noise floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import attrs
import torch
from torch import Tensor

from mfm_framework.interfaces import Metric

__all__ = [
    "EnergyDistance",
    "EnergyOptions",
    "MMD",
    "MMDOptions",
    "SlicedWasserstein2",
    "SlicedWasserstein2Options",
]

#: Rows of the reference used for the median heuristic of ``mmd`` with ``relative = true``.
MEDIAN_HEURISTIC_POINTS = 1000


# ---------------------------------------------------------------------------------- validators
def _positive_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _optional_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{attribute.name} must be an integer or None, got {value!r}")


def _to_float_tuple(value: Iterable[float]) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"bandwidths must be a sequence of positive numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _positive_bandwidths(instance: object, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must hold at least one bandwidth")
    bad = [v for v in value if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"{attribute.name} must be positive and finite, got {list(value)!r}")


# ------------------------------------------------------------------------------------- helpers
def _flatten_pair(samples: Tensor, reference: Tensor, *, cast: bool = True) -> tuple[Tensor, Tensor]:
    """Check shapes and return ``[N, d]`` and ``[M, d]`` on the samples' device (float64 if ``cast``)."""
    if not isinstance(samples, Tensor) or not isinstance(reference, Tensor):
        raise TypeError(
            f"samples and reference must be tensors, got {type(samples).__name__} and {type(reference).__name__}"
        )
    if samples.ndim < 1 or reference.ndim < 1:
        raise ValueError(
            f"samples and reference need a leading sample dimension, got shapes "
            f"{tuple(samples.shape)} and {tuple(reference.shape)}"
        )
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ in the shape "
            f"of one example: {tuple(samples.shape[1:])} vs {tuple(reference.shape[1:])}"
        )
    if samples.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError(
            f"need at least 2 samples on each side, got samples {tuple(samples.shape)} and "
            f"reference {tuple(reference.shape)}"
        )
    if samples.is_complex() or reference.is_complex():
        raise TypeError("samples and reference must be real tensors")
    x = samples.detach().reshape(samples.shape[0], -1)
    y = reference.detach().to(samples.device).reshape(reference.shape[0], -1)
    if not cast:
        return x, y
    return x.to(torch.float64), y.to(torch.float64)


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[A, B]`` (matrix-product form, clamped at 0)."""
    d = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def _pair_sum(
    x: Tensor, y: Tensor | None, block_sum: Callable[[Tensor], Tensor], at_zero: float, chunk: int
) -> Tensor:
    """``sum_{i,j} f(|x_i - y_j|^2)`` over blocks of ``chunk`` rows; memory ``O(chunk^2)``.

    ``block_sum(sq)`` returns ``sum f(sq)`` over a block of squared distances. With ``y = None``
    the sum runs over the pairs ``i != j`` of ``x``: blocks above the diagonal count twice (the
    kernel is symmetric), diagonal blocks get exact zeros on their diagonal and ``f(0) = at_zero``
    is taken off for each of those entries.
    """
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    n = x.shape[0]
    if y is None:
        for i in range(0, n, chunk):
            xi = x[i : i + chunk]
            for j in range(i, n, chunk):
                sq = _sq_dist(xi, x[j : j + chunk])
                if i == j:
                    sq.fill_diagonal_(0.0)
                    total = total + block_sum(sq) - at_zero * sq.shape[0]
                else:
                    total = total + 2.0 * block_sum(sq)
        return total
    for i in range(0, n, chunk):
        xi = x[i : i + chunk]
        for j in range(0, y.shape[0], chunk):
            total = total + block_sum(_sq_dist(xi, y[j : j + chunk]))
    return total


def _center(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Shift both sets by the reference mean (translation-invariant metrics; better rounding)."""
    shift = y.mean(0, keepdim=True)
    return x - shift, y - shift


# --------------------------------------------------------------------------------------- SW2
@attrs.frozen(kw_only=True)
class SlicedWasserstein2Options:
    """Options of :class:`SlicedWasserstein2`.

    Attributes:
        projections: number of random unit directions ``P``.
        seed: seed of the directions when no ``generator`` is passed to the call (reproducible
            values); ``None`` draws them from torch's global generator.
        chunk_size: rows projected at a time (bounds the float64 copy of the inputs).
    """

    projections: int = attrs.field(default=256, validator=_positive_int)
    seed: int | None = attrs.field(default=None, validator=_optional_int)
    chunk_size: int = attrs.field(default=8192, validator=_positive_int)


class SlicedWasserstein2(Metric):
    """Sliced Wasserstein-2 distance ``SW2 = sqrt(mean_p W2^2(theta_p . X, theta_p . Y))``.

    Draws ``P`` directions ``theta_p`` uniformly on the unit sphere of ``R^d`` (``d = prod(D)``),
    projects ``samples`` ``[N, *D]`` and ``reference`` ``[M, *D]`` on them and sorts each
    projection. The 1-D W2 between the two empirical laws is computed exactly from their quantile
    functions: the step functions are compared on the merged grid ``{i/N} U {j/M}`` of their
    jumps, so for ``N = M`` it is the mean squared difference of sorted pairs and for ``N != M``
    the exact optimal (monotone) transport cost. Returns the square root of the mean over
    directions; in the units of the data, and ``SW2(aX, aY) = |a| SW2(X, Y)``.

    Directions come from ``generator`` when one is passed, otherwise from ``seed``, otherwise from
    torch's global generator. For ``d = 1`` every direction is ``+-1`` and the value is the exact
    W2 distance. Cost: 0 NFE; ``O(P d (N + M))`` for the projections plus
    ``O(P (N + M) log(N + M))`` for the sorts; memory ``O(P (N + M) + P d)``.
    """

    name = "sw2"
    Options = SlicedWasserstein2Options

    def _directions(self, d: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        p = self.options.projections
        if generator is None and self.options.seed is not None:
            generator = torch.Generator().manual_seed(self.options.seed)
        if generator is None:
            theta = torch.randn(d, p, dtype=torch.float64, device=device)
        else:
            theta = torch.randn(d, p, dtype=torch.float64, device=generator.device, generator=generator)
        theta = theta.to(device)
        return theta / theta.norm(dim=0, keepdim=True)

    def _project(self, x: Tensor, theta: Tensor) -> Tensor:
        """Projections ``[P, N]`` (rows contiguous, so the sorts run along the fast dimension)."""
        c = self.options.chunk_size
        return torch.cat([theta.T @ rows.to(torch.float64).T for rows in x.split(c)], dim=1)

    def __call__(
        self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x, y = _flatten_pair(samples, reference, cast=False)  # cast chunk by chunk in _project
        n, m, d = x.shape[0], y.shape[0], x.shape[1]
        theta = self._directions(d, x.device, generator)
        xs = self._project(x, theta).sort(dim=1).values  # [P, N]
        ys = self._project(y, theta).sort(dim=1).values  # [P, M]
        # Jumps of the quantile functions as integers over the denominator N*M.
        grid = torch.cat(
            [
                torch.arange(n + 1, device=x.device, dtype=torch.int64) * m,
                torch.arange(m + 1, device=x.device, dtype=torch.int64) * n,
            ]
        ).unique(sorted=True)
        left = grid[:-1]
        weight = grid.diff().to(torch.float64) / (n * m)  # [K], sums to 1
        w2_sq = (xs[:, left // m] - ys[:, left // n]).square() @ weight  # [P]
        return w2_sq.mean().sqrt()



# --------------------------------------------------------------------------------------- MMD
@attrs.frozen(kw_only=True)
class MMDOptions:
    """Options of :class:`MMD`.

    Attributes:
        bandwidths: the RBF bandwidths ``h`` of the kernel ``sum_h exp(-|x - y|^2 / (2 h^2))``;
            in the units of the data, or multiples of the median heuristic when ``relative``.
        relative: scale every bandwidth by the median pairwise distance among the first
            ``MEDIAN_HEURISTIC_POINTS`` (1000) rows of the reference. The scale then depends on
            the reference only, so the noise floor (reference vs an independent reference) uses
            the same kernel as the comparison.
        chunk_size: rows per block of the pairwise computation (memory ``O(chunk_size^2)``).
    """

    bandwidths: tuple[float, ...] = attrs.field(
        default=(0.1, 0.5, 1.0, 2.0, 5.0), converter=_to_float_tuple, validator=_positive_bandwidths
    )
    relative: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    chunk_size: int = attrs.field(default=2048, validator=_positive_int)


class MMD(Metric):
    """Unbiased squared maximum mean discrepancy with a multi-scale RBF kernel.

    Kernel ``k(x, y) = sum_h exp(-|x - y|^2 / (2 h^2))`` over the ``bandwidths`` ``h`` (a sum, not
    a mean: each scale contributes its own MMD^2). Returns the U-statistic

        MMD^2 = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
                - 2/(NM) sum_{i,j} k(x_i, y_j)

    for ``samples`` ``[N, *D]`` (``x``) and ``reference`` ``[M, *D]`` (``y``), flattened to
    ``d = prod(D)``. It is the squared MMD, not its root: unbiased, so it is about 0 (and can be
    slightly negative) when both sets come from one law. ``generator`` is unused (deterministic).

    Cost: 0 NFE; ``O((N + M)^2 (d + |h|))`` time over blocks of ``chunk_size`` rows (memory
    ``O(chunk_size^2 + chunk_size d)``; 10k vs 10k points in 2-D takes about 10 s on 2 CPU
    cores with the 5 default bandwidths); the within-set sums use the symmetry of the kernel.
    """

    name = "mmd"
    Options = MMDOptions

    def scales(self, reference: Tensor) -> Tensor:
        """The bandwidths in data units for this ``reference`` ``[M, d]`` (float64), ``[|h|]``."""
        h = torch.tensor(self.options.bandwidths, dtype=torch.float64, device=reference.device)
        if not self.options.relative:
            return h
        head = reference[:MEDIAN_HEURISTIC_POINTS]
        i, j = torch.triu_indices(head.shape[0], head.shape[0], offset=1, device=head.device)
        median = _sq_dist(head, head)[i, j].median().sqrt()
        if not bool(median > 0):
            raise ValueError("mmd with relative = true: the median pairwise distance of the reference is 0")
        return h * median

    def __call__(
        self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x, y = _center(*_flatten_pair(samples, reference))
        n, m = x.shape[0], y.shape[0]
        inv = -0.5 / self.scales(y).square()  # [|h|]
        count = float(inv.shape[0])

        def kernel_sum(sq: Tensor) -> Tensor:
            # Exponents below -700 are clamped: the kernel value stays a normal float (~1e-304)
            # instead of a slow subnormal or 0; the error is far below float64 resolution.
            return sum((sq * c).clamp_min_(-700.0).exp_().sum() for c in inv)  # type: ignore[return-value]

        c = self.options.chunk_size
        k_xx = _pair_sum(x, None, kernel_sum, count, c) / (n * (n - 1))
        k_yy = _pair_sum(y, None, kernel_sum, count, c) / (m * (m - 1))
        k_xy = _pair_sum(x, y, kernel_sum, count, c) / (n * m)
        return k_xx + k_yy - 2.0 * k_xy


# ------------------------------------------------------------------------------------ energy
@attrs.frozen(kw_only=True)
class EnergyOptions:
    """Options of :class:`EnergyDistance`.

    Attributes:
        chunk_size: rows per block of the pairwise computation (memory ``O(chunk_size^2)``).
    """

    chunk_size: int = attrs.field(default=2048, validator=_positive_int)


class EnergyDistance(Metric):
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (unbiased U-statistic).

    For ``samples`` ``[N, *D]`` (``x``) and ``reference`` ``[M, *D]`` (``y``), flattened to
    ``d = prod(D)``, with Euclidean norms:

        E = 2/(NM) sum_{i,j} |x_i - y_j| - 1/(N(N-1)) sum_{i!=j} |x_i - x_j|
            - 1/(M(M-1)) sum_{i!=j} |y_i - y_j|.

    This is the squared-type quantity (Szekely's ``D^2``; in 1-D it equals ``2 int (F - G)^2``,
    Cramer), in the units of the data: it scales linearly, is translation invariant, and is about
    0 (slightly negative possible) for one law. ``generator`` is unused (deterministic).

    Cost: 0 NFE; ``O((N + M)^2 d)`` time over blocks of ``chunk_size`` rows, memory
    ``O(chunk_size^2 + chunk_size d)``.
    """

    name = "energy"
    Options = EnergyOptions

    def __call__(
        self, *, samples: Tensor, reference: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x, y = _center(*_flatten_pair(samples, reference))
        n, m = x.shape[0], y.shape[0]

        def dist_sum(sq: Tensor) -> Tensor:
            return sq.sqrt_().sum()

        c = self.options.chunk_size
        d_xx = _pair_sum(x, None, dist_sum, 0.0, c) / (n * (n - 1))
        d_yy = _pair_sum(y, None, dist_sum, 0.0, c) / (m * (m - 1))
        d_xy = _pair_sum(x, y, dist_sum, 0.0, c) / (n * m)
        return 2.0 * d_xy - d_xx - d_yy
