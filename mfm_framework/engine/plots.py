"""PNG plots of the evaluate and steer stages.

matplotlib is imported inside the functions (it is slow to import and only needed when plots are
asked for), and figures are drawn on the Agg canvas through :class:`matplotlib.figure.Figure`
directly: no pyplot, so no global figure state and no interactive backend is ever touched.

Every function takes plain arrays (NumPy arrays or CPU tensors) and writes one file; none knows
about models or data sources.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PosteriorPanel",
    "posterior_plot",
    "distance_vs_nfe_plot",
    "error_vs_particles_plot",
    "samples_over_density_plot",
    "curves_plot",
    "DPI",
]

DPI = 100
_MODEL_COLOR = "tab:blue"
_EXACT_COLOR = "tab:gray"
_GLASS_COLOR = "tab:orange"


def _figure(rows: int, cols: int, *, size: tuple[float, float]) -> tuple[Any, Any]:
    """An Agg figure with a ``rows x cols`` grid of axes (always a 2-D array of axes)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _array(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=DPI)
    return path.name


class PosteriorPanel:
    """One panel of the posterior plot: a context and draws of its posterior.

    Attributes:
        t: the context time.
        model: model draws, ``[N, d]`` (only the first two coordinates are drawn).
        exact: exact posterior draws, ``[M, d]``.
        context: the context ``x``, ``[d]``.
        x_1: the data point the context was made from, ``[d]``.
        contour: ``(X, Y, log_density)`` on a grid (2-D data) or ``None``; for 1-D data
            ``(grid, log_density)``.
        label: the name of the model's sampler (e.g. ``"mfm-1"``).
    """

    def __init__(
        self, *, t: float, model: Any, exact: Any, context: Any, x_1: Any, contour: Any = None, label: str = "model"
    ) -> None:
        self.t, self.label = t, label
        self.model, self.exact = _array(model), _array(exact)
        self.context, self.x_1 = _array(context).reshape(-1), _array(x_1).reshape(-1)
        self.contour = None if contour is None else tuple(_array(c) for c in contour)


def _scatter_alpha(n: int) -> float:
    """Opaque enough to see a few hundred points, translucent enough to see the density of many."""
    return float(min(0.7, max(0.12, 200.0 / max(n, 1))))


def posterior_plot(path: str | Path, panels: Sequence[Sequence[PosteriorPanel]], *, title: str = "") -> str:
    """Posterior draws over the exact posterior, one row per context time, one column per context.

    With a 2-D contour (2-D data) the model draws are scattered over the contour lines of the
    exact log-density; without one, the first two coordinates of exact (gray) and model (blue)
    draws are scattered together. 1-D data get histograms over the exact density. The context
    ``x`` is marked with a black cross and its ``x_1`` with a red star.

    Returns:
        The file name written.
    """
    import numpy as np

    path = Path(path)
    rows = len(panels)
    cols = max((len(r) for r in panels), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("posterior_plot needs at least one panel")
    fig, axes = _figure(rows, cols, size=(3.2 * cols, 3.0 * rows))
    for i, row in enumerate(panels):
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(row):
                ax.set_axis_off()
                continue
            p = row[j]
            one_d = p.model.ndim == 1 or p.model.shape[-1] == 1
            if one_d:
                model, exact = p.model.reshape(-1), p.exact.reshape(-1)
                lo, hi = np.quantile(np.concatenate([model, exact]), [0.005, 0.995])
                bins = np.linspace(lo, hi, 50)
                ax.hist(exact, bins=bins, density=True, color=_EXACT_COLOR, alpha=0.4, label="exact")
                ax.hist(model, bins=bins, density=True, histtype="step", color=_MODEL_COLOR, label=p.label)
                if p.contour is not None:
                    grid, logp = p.contour
                    ax.plot(grid, np.exp(logp), color="k", lw=1.0, label="exact density")
                ax.axvline(p.context[0], color="k", ls=":", lw=1.0, label="context x")
                ax.axvline(p.x_1[0], color="tab:red", ls="--", lw=1.0, label="its x_1")
            else:
                alpha = _scatter_alpha(len(p.model))
                if p.contour is not None:
                    gx, gy, logp = p.contour
                    finite = logp[np.isfinite(logp)]
                    if finite.size:
                        top = finite.max()
                        # log-density drops of k^2 / 2: the 1, 2 and 3 sigma lines of a Gaussian mode
                        levels = top - np.array([4.5, 2.0, 0.5])
                        ax.contour(gx, gy, logp, levels=levels, colors="k", linewidths=0.8, linestyles="solid", alpha=0.8)
                else:
                    ax.scatter(p.exact[:, 0], p.exact[:, 1], s=3, alpha=alpha, color=_EXACT_COLOR, label="exact", lw=0)
                ax.scatter(p.model[:, 0], p.model[:, 1], s=3, alpha=alpha, color=_MODEL_COLOR, label=p.label, lw=0)
                ax.scatter([p.context[0]], [p.context[1]], marker="x", s=50, color="k", label="context x", zorder=5)
                ax.scatter([p.x_1[0]], [p.x_1[1]], marker="*", s=80, color="tab:red", label="its x_1", zorder=5)
                if p.contour is not None:
                    ax.set_xlim(p.contour[0].min(), p.contour[0].max())
                    ax.set_ylim(p.contour[1].min(), p.contour[1].max())
                    ax.set_aspect("equal", adjustable="box")
                else:
                    ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(f"t = {p.t:g}")
            if i == 0:
                ax.set_title(f"context {j + 1}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8, markerscale=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def distance_vs_nfe_plot(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    floor: float | None = None,
    metric: str = "distance",
    per_t: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
    clip: float | None = None,
    title: str = "",
    ylabel: str | None = None,
) -> str:
    """Excess distance (metric minus noise floor) against NFE on log-log axes.

    Args:
        path: the PNG file.
        curves: label -> (NFE values, excess values), e.g. ``{"MFM": ..., "GLASS": ...}``.
        floor: the noise floor itself (mean over context times), drawn as a dotted reference
            line: an excess well below it is indistinguishable from exact sampling.
        metric: the metric's name, for the axis label.
        per_t: optional label -> (context time -> (NFE, excess)), drawn as thin lines.
        clip: excess values below this are drawn at this value (log axes); default: a fraction
            of the floor, or of the smallest positive value.
        title: figure title.
        ylabel: the y-axis label (default: the metric minus the noise floor, mean over t).

    Returns:
        The file name written.
    """
    import numpy as np

    path = Path(path)
    positives = [v for _, ys in curves.values() for v in ys if v is not None and math.isfinite(v) and v > 0]
    if clip is None:
        if floor is not None and math.isfinite(floor) and floor > 0:
            clip = floor * 1e-2
        else:
            clip = min(positives) * 0.5 if positives else 1e-6
        if positives:
            clip = min(clip, min(positives) * 0.5)
    fig, axes = _figure(1, 1, size=(5.6, 4.2))
    ax = axes[0, 0]
    colors = [_MODEL_COLOR, _GLASS_COLOR, "tab:green", "tab:purple", "tab:brown", "tab:red", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for i, ((label, (xs, ys)), color) in enumerate(zip(curves.items(), colors * 4)):
        style = "-" if i < len(colors) else "--"
        xs_a, raw = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        order = np.argsort(xs_a)
        xs_a, raw = xs_a[order], raw[order]
        ys_a = np.clip(raw, clip, None)
        ax.plot(xs_a, ys_a, style, color=color, lw=2, label=label)
        low = raw <= clip
        ax.plot(xs_a[~low], ys_a[~low], "o", color=color)
        ax.plot(xs_a[low], ys_a[low], "o", mfc="white", color=color)
        for txs, tys in (per_t or {}).get(label, {}).values():
            txs_a, tys_a = np.asarray(txs, dtype=float), np.clip(np.asarray(tys, dtype=float), clip, None)
            o = np.argsort(txs_a)
            ax.plot(txs_a[o], tys_a[o], color=color, lw=0.6, alpha=0.35)
    if floor is not None and math.isfinite(floor) and floor > 0:
        ax.axhline(floor, color="k", ls=":", lw=1.0, label=f"noise floor itself ({metric} = {floor:.3g})")
    ax.axhline(clip, color="0.6", ls="--", lw=0.6, label=f"excess <= {clip:.1e} (hollow: clipped)")
    default_ylabel = f"{metric} minus noise floor (mean over t)"
    _log_log_axes(ax, xlabel="NFE per draw", ylabel=ylabel if ylabel is not None else default_ylabel, title=title)
    return _save(fig, path)


def _log_log_axes(ax: Any, *, xlabel: str, ylabel: str, title: str) -> None:
    """Log2 x, log y, labels, grid, legend and an optional title: the finish of the curve plots."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)


def error_vs_particles_plot(
    path: str | Path, lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = ""
) -> str:
    """An error against the number of particles ``N``, one line per estimator, on log-log axes.

    Args:
        path: the PNG file.
        lines: label -> (N values, errors); an estimator whose error does not depend on ``N``
            gives the same error at every ``N`` (a flat line).
        title: figure title.

    Returns:
        The file name written.
    """
    import numpy as np

    path = Path(path)
    fig, axes = _figure(1, 1, size=(5.6, 4.2))
    ax = axes[0, 0]
    colors = [_MODEL_COLOR, _GLASS_COLOR, "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    ns_all: list[float] = []
    for (label, (ns, errors)), color in zip(lines.items(), colors * 4):
        xs, ys = np.asarray(ns, dtype=float), np.asarray(errors, dtype=float)
        order = np.argsort(xs)
        xs, ys = xs[order], ys[order]
        ok = np.isfinite(ys) & (ys > 0)
        ax.plot(xs[ok], ys[ok], "o-", color=color, lw=2, label=label)
        ns_all += list(xs)
    if ns_all:  # the Monte Carlo rate, through the first line's first point
        first = next(iter(lines.values()))
        x0, y0 = float(first[0][0]), float(first[1][0])
        if math.isfinite(y0) and y0 > 0:
            grid = np.array(sorted(set(ns_all)), dtype=float)
            ax.plot(grid, y0 * np.sqrt(x0 / grid), color="k", ls=":", lw=1.0, label="N^-1/2")
    _log_log_axes(ax, xlabel="particles N", ylabel="relative error of grad V", title=title)
    return _save(fig, path)


def samples_over_density_plot(
    path: str | Path, sets: Mapping[str, Any], *, contour: Any = None, titles: Mapping[str, str] | None = None
) -> str:
    """Scatter plots of sample sets (first two coordinates), side by side, over a density's contours.

    Args:
        path: the PNG file.
        sets: label -> samples ``[N, d]``; the first is the reference (drawn in gray).
        contour: ``(X, Y, log_density)`` on a grid, drawn as the 1, 2 and 3 sigma lines of every
            panel (and setting the axes' limits), or ``None``.
        titles: optional label -> panel title.

    1-D samples are shown as histograms.

    Returns:
        The file name written.
    """
    import numpy as np

    path = Path(path)
    if not sets:
        raise ValueError("samples_over_density_plot needs at least one sample set")
    arrays = {k: _array(v).reshape(len(v), -1) for k, v in sets.items()}
    n = len(arrays)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols, size=(3.2 * cols, 3.1 * rows))
    grid = None if contour is None else tuple(_array(c) for c in contour)
    first = next(iter(arrays.values()))
    if grid is not None:
        lo, hi = [grid[0].min(), grid[1].min()], [grid[0].max(), grid[1].max()]
    else:
        lo, hi = np.quantile(first, 0.001, axis=0), np.quantile(first, 0.999, axis=0)
        pad = 0.15 * (hi - lo + 1e-12)
        lo, hi = lo - pad, hi + pad
    for idx, (label, x) in enumerate(arrays.items()):
        ax = axes[idx // cols, idx % cols]
        if grid is not None:
            gx, gy, logp = grid
            finite = logp[np.isfinite(logp)]
            if finite.size:
                levels = finite.max() - np.array([4.5, 2.0, 0.5])
                ax.contour(gx, gy, logp, levels=levels, colors="k", linewidths=0.8, alpha=0.8)
        color = _EXACT_COLOR if idx == 0 else _MODEL_COLOR
        if x.shape[1] >= 2:
            ax.scatter(x[:, 0], x[:, 1], s=3, lw=0, alpha=_scatter_alpha(len(x)), color=color)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal", adjustable="box")
        else:
            ax.hist(x[:, 0], bins=np.linspace(lo[0], hi[0], 60), density=True, color=color, alpha=0.7)
            ax.set_xlim(lo[0], hi[0])
        ax.set_title((titles or {}).get(label, label), fontsize=9)
        ax.tick_params(labelsize=7)
    for idx in range(n, rows * cols):
        axes[idx // cols, idx % cols].set_axis_off()
    return _save(fig, path)


def curves_plot(
    path: str | Path,
    panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]], Mapping[str, float]]],
    *,
    xlabel: str = "step",
    log_y: Sequence[bool] = (),
    title: str = "",
) -> str:
    """Curves over training steps, one panel per quantity, side by side.

    Args:
        path: the PNG file.
        panels: ``(y label, curves, reference lines)`` per panel: curves label -> (x values, y
            values), one colour per label (the same in every panel); reference lines label -> y,
            drawn as dotted horizontal lines (e.g. the noise floor, the untuned model).
        xlabel: the x axis label.
        log_y: per panel, a log y axis (non-positive values are left out there).
        title: figure title.

    Returns:
        The file name written.
    """
    import numpy as np

    path = Path(path)
    if not panels:
        raise ValueError("curves_plot needs at least one panel")
    fig, axes = _figure(1, len(panels), size=(4.6 * len(panels), 3.8))
    colors = [_MODEL_COLOR, _GLASS_COLOR, "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    line_styles = [":", "--", "-."]
    labels = list(dict.fromkeys(label for _, curves, _ in panels for label in curves))
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(labels)}
    for j, (ylabel, curves, references) in enumerate(panels):
        ax = axes[0, j]
        log = j < len(log_y) and log_y[j]
        for label, (xs, ys) in curves.items():
            xs_a, ys_a = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
            ok = np.isfinite(ys_a) & ((ys_a > 0) if log else True)
            ax.plot(xs_a[ok], ys_a[ok], "o-", ms=3, lw=1.6, color=color_of[label], label=label)
        for i, (label, y) in enumerate(references.items()):
            if y is not None and math.isfinite(y) and (y > 0 or not log):
                ax.axhline(y, color="k", ls=line_styles[i % len(line_styles)], lw=1.0, label=f"{label} ({y:.3g})")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
