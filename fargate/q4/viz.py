"""Plots of a full-mode run (``viz/*.png``).

Every figure is drawn on a private :class:`matplotlib.figure.Figure` with the Agg canvas (never
``pyplot`` global state), so rendering is thread-safe and needs no display. PNGs are written without
the ``Software`` metadata key, so the same inputs give the same bytes.

Readability rules for wide tables (``d`` up to thousands of features):

- tick labels are drawn for at most :data:`MAX_LABELS` features; beyond that heatmaps show feature
  indices and the loadings heatmap shows only the :data:`MAX_LABELS` features with the largest loadings;
- the correlation heatmap is max-|r| pooled to at most :data:`MAX_HEATMAP_CELLS` cells a side;
- the scree plot shows at most :data:`MAX_COMPONENTS` components;
- score scatters switch from markers to a per-quadrant-coloured density image above
  :data:`SCATTER_MAX_POINTS` points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

__all__ = [
    "MAX_COMPONENTS",
    "MAX_HEATMAP_CELLS",
    "MAX_LABELS",
    "PLOT_FILES",
    "QUADRANT_COLORS",
    "SCATTER_MAX_POINTS",
    "render_plots",
]

#: File names of the plots, in the order :func:`render_plots` returns them.
PLOT_FILES = (
    "quadrant_scatter.png",
    "energy.png",
    "scree.png",
    "loadings.png",
    "correlation.png",
    "svd_embedding.png",
)
#: Colours of Q1..Q4: keep quadrants (Q1, Q4) in blue/green, discard quadrants (Q2, Q3) in orange/red.
QUADRANT_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#d62728", 4: "#2ca02c"}
KEEP_COLOR = "#1f77b4"
DISCARD_COLOR = "#d62728"
SCATTER_MAX_POINTS = 5_000
MAX_DENSITY_BINS = 160
MAX_LABELS = 40
MAX_HEATMAP_CELLS = 400
MAX_COMPONENTS = 40
DPI = 100
# No "Software" key (it carries the matplotlib version) and no dates: deterministic bytes.
PNG_METADATA: dict[str, str | None] = {"Software": None}


def render_plots(
    viz_dir: Path,
    *,
    er: dict[str, Any],
    study: dict[str, Any],
    scores: np.ndarray,
    quadrants: np.ndarray,
    svd_scores: np.ndarray | None,
    correlation: np.ndarray,
) -> list[Path]:
    """Write the full-mode plots into ``viz_dir`` and return their paths (order of :data:`PLOT_FILES`).

    ``scores`` (m, 2) and ``quadrants`` (m,) are a sample of the Q4 scores and their quadrant labels
    1..4; ``svd_scores`` (m, 2) the matching SVD scores or ``None`` (then no ``svd_embedding.png``);
    ``correlation`` (d, d) the feature correlation matrix (NaN allowed for constant columns).
    ``er`` and ``study`` are the er.json and Q_study.json documents; missing sections or null
    numbers make the affected plot simpler or skip it, never fail.
    """
    viz_dir.mkdir(parents=True, exist_ok=True)
    features = [str(name) for name in study.get("features") or []]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    quadrants = np.asarray(quadrants).astype(np.int64).reshape(-1)
    rows = min(len(scores), len(quadrants))
    scores, quadrants = scores[:rows], quadrants[:rows]
    matrix = np.asarray(correlation, dtype=np.float64)
    builders: dict[str, Callable[[], Figure | None]] = {
        "quadrant_scatter.png": lambda: _quadrant_scatter(scores, quadrants, er),
        "energy.png": lambda: _energy_bars(er),
        "scree.png": lambda: _scree(study),
        "loadings.png": lambda: _loadings_heatmap(study, features),
        "correlation.png": lambda: _correlation_heatmap(matrix, features, study),
        "svd_embedding.png": lambda: (
            None
            if svd_scores is None
            else _svd_embedding(np.asarray(svd_scores, np.float64), quadrants, study)
        ),
    }
    written: list[Path] = []
    for name in PLOT_FILES:  # one figure at a time: peak memory is one figure
        figure = builders[name]()
        if figure is None:
            continue
        path = viz_dir / name
        _save(figure, path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------
# helpers


def _new_figure(width: float, height: float) -> tuple[Figure, FigureCanvasAgg]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)


def _floats(values: Any) -> np.ndarray:
    """A list that may hold nulls as a float array with NaN for each null."""
    if values is None:
        return np.zeros(0)
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.1f}%"


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _axes_through_zero(axes: Axes) -> None:
    axes.axhline(0.0, color="0.25", linewidth=0.8, zorder=3)
    axes.axvline(0.0, color="0.25", linewidth=0.8, zorder=3)


def _label_quadrants(axes: Axes) -> None:
    """Quadrant names in the corners of the plot (after the limits are final)."""
    for quadrant, (x, y, ha, va) in {
        1: (0.98, 0.98, "right", "top"),
        2: (0.02, 0.98, "left", "top"),
        3: (0.02, 0.02, "left", "bottom"),
        4: (0.98, 0.02, "right", "bottom"),
    }.items():
        side = "keep" if quadrant in (1, 4) else "discard"
        axes.text(
            x,
            y,
            f"Q{quadrant} ({side})",
            transform=axes.transAxes,
            ha=ha,
            va=va,
            fontsize=10,
            fontweight="bold",
            color=QUADRANT_COLORS[quadrant],
            zorder=4,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 2},
        )


def _grid_edges(low: float, high: float, bins: int) -> np.ndarray:
    """Equal-width bin edges covering [low, high] with 0 as an edge whenever low < 0 < high."""
    width = (high - low) / bins
    below = math.ceil(-low / width) if low < 0 else 0
    above = math.ceil(high / width) if high > 0 else 0
    if low >= 0:
        start = math.floor(low / width)
        return width * np.arange(start, max(above, start + 1) + 1)
    if high <= 0:
        stop = -math.floor(-high / width)
        return width * np.arange(min(-below, stop - 1), stop + 1)
    return width * np.arange(-below, above + 1)


def density_bins(points: int) -> int:
    """Bins per axis of the density image: ~0.6·√points, between 60 and :data:`MAX_DENSITY_BINS`."""
    return int(min(MAX_DENSITY_BINS, max(60, round(0.6 * math.sqrt(points)))))


def _density_image(axes: Axes, points: np.ndarray, labels: np.ndarray) -> None:
    """Per-class 2-D histogram; each cell mixes the class colours by count, opacity ~ log(count)."""
    x, y = points[:, 0], points[:, 1]
    bins = density_bins(len(points))
    x_edges = _grid_edges(float(x.min()), float(x.max()), bins)
    y_edges = _grid_edges(float(y.min()), float(y.max()), bins)
    rgb = np.zeros((len(y_edges) - 1, len(x_edges) - 1, 3))
    total = np.zeros(rgb.shape[:2])
    for quadrant, color in QUADRANT_COLORS.items():
        chosen = labels == quadrant
        if not chosen.any():
            continue
        counts, _, _ = np.histogram2d(y[chosen], x[chosen], bins=(y_edges, x_edges))
        rgb += counts[:, :, None] * np.array(to_rgb(color))
        total += counts
    filled = total > 0
    rgb[filled] /= total[filled][:, None]
    alpha = np.zeros_like(total)
    alpha[filled] = 0.25 + 0.75 * np.log1p(total[filled]) / np.log1p(total.max())
    image = np.dstack([rgb, alpha])
    axes.imshow(
        image,
        origin="lower",
        extent=(x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]),
        aspect="auto",
        interpolation="nearest",
        zorder=2,
    )


def _class_scatter(axes: Axes, points: np.ndarray, labels: np.ndarray) -> str:
    """Draw ``points`` coloured by quadrant; returns a note on how they were drawn."""
    finite = np.isfinite(points).all(axis=1)
    points, labels = points[finite], labels[finite]
    if len(points) == 0:
        axes.text(0.5, 0.5, "no points", transform=axes.transAxes, ha="center", va="center")
        return "no points"
    spread = np.ptp(points, axis=0)
    if len(points) <= SCATTER_MAX_POINTS or not (spread > 0).all():
        size = 28.0 if len(points) <= 500 else 6.0
        for quadrant, color in QUADRANT_COLORS.items():
            chosen = labels == quadrant
            if chosen.any():
                axes.scatter(
                    points[chosen, 0],
                    points[chosen, 1],
                    s=size,
                    color=color,
                    alpha=0.8 if len(points) <= 500 else 0.6,
                    linewidths=0,
                    rasterized=True,
                    zorder=3.5,
                )
        return f"{len(points):,} points"
    _density_image(axes, points, labels)
    bins = density_bins(len(points))
    return f"density of {len(points):,} points, {bins}×{bins} bins, log shading"


def _quadrant_legend(axes: Axes, labels: np.ndarray, er: dict[str, Any] | None) -> None:
    quadrant_info = (er or {}).get("quadrants") or {}
    handles = []
    for quadrant, color in QUADRANT_COLORS.items():
        side = "keep" if quadrant in (1, 4) else "discard"
        info = quadrant_info.get(f"Q{quadrant}") or {}
        rows = int((labels == quadrant).sum())
        label = f"Q{quadrant} {side}: {rows:,} rows shown"
        if er is not None:
            label += f", energy {_percent(_number(info.get('fraction')))}"
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, label=label))
    axes.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False
    )


# ----------------------------------------------------------------------------------------------------------
# the plots


def _quadrant_scatter(scores: np.ndarray, quadrants: np.ndarray, er: dict[str, Any]) -> Figure:
    figure, _ = _new_figure(7.0, 7.0)
    axes = figure.add_subplot()
    how = _class_scatter(axes, scores, quadrants)
    _axes_through_zero(axes)
    axes.set_xlabel("score s1 = Z·p1 (first principal component)")
    axes.set_ylabel("score s2 = Z·p2 (second principal component)")
    axes.set_title(f"Q4 quadrants of the scores ({how})", fontsize=11)
    _label_quadrants(axes)
    _quadrant_legend(axes, quadrants, er)
    axes.grid(True, color="0.9", zorder=0)
    return figure


def _svd_embedding(svd_scores: np.ndarray, quadrants: np.ndarray, study: dict[str, Any]) -> Figure:
    figure, _ = _new_figure(7.0, 7.0)
    axes = figure.add_subplot()
    points = svd_scores.reshape(len(svd_scores), -1)[:, :2] if svd_scores.size else np.zeros((0, 2))
    if points.shape[1] < 2:  # k = 1: the second coordinate is 0
        points = np.column_stack([points[:, 0], np.zeros(len(points))])
    rows = min(len(points), len(quadrants))
    points, quadrants = points[:rows], quadrants[:rows]
    how = _class_scatter(axes, points, quadrants)
    _axes_through_zero(axes)
    ratios = _floats((study.get("svd") or {}).get("explained_variance_ratio"))
    titles = [
        f"SVD component {i + 1}" + (f" ({_percent(ratios[i])} of variance)" if i < len(ratios) else "")
        for i in range(2)
    ]
    axes.set_xlabel(titles[0])
    axes.set_ylabel(titles[1])
    axes.set_title(f"Rows in the first two SVD components, coloured by Q4 quadrant\n({how})", fontsize=11)
    _quadrant_legend(axes, quadrants, None)
    axes.grid(True, color="0.9", zorder=0)
    return figure


def _energy_bars(er: dict[str, Any]) -> Figure:
    figure, _ = _new_figure(10.0, 4.6)
    left, right = figure.subplots(1, 2, width_ratios=(2, 1))
    quadrant_info = er.get("quadrants") or {}
    names = ["Q1", "Q2", "Q3", "Q4"]
    rows = np.array([_number((quadrant_info.get(q) or {}).get("rows")) for q in names])
    energy = np.array([_number((quadrant_info.get(q) or {}).get("fraction")) for q in names])
    total = er.get("total_energy")
    projected = np.array([_number((quadrant_info.get(q) or {}).get("projected_energy")) for q in names])
    projected = projected / float(total) if total else np.full(4, math.nan)
    row_total = np.nansum(rows)
    row_share = rows / row_total if row_total > 0 else np.full(4, math.nan)
    positions = np.arange(4)
    width = 0.27
    colors = [QUADRANT_COLORS[i] for i in range(1, 5)]
    series: tuple[tuple[np.ndarray, str, dict[str, Any]], ...] = (
        (row_share, "rows", {"hatch": "//", "alpha": 0.45}),
        (energy, "energy ‖z‖²", {"alpha": 1.0}),
        (projected, "projected energy s1²+s2²", {"alpha": 0.7, "hatch": ".."}),
    )
    for offset, (values, label, style) in zip((-width, 0.0, width), series, strict=True):
        bars = left.bar(
            positions + offset,
            np.nan_to_num(values),
            width,
            color=colors,
            edgecolor="0.2",
            linewidth=0.6,
            label=label,
            **style,
        )
        left.bar_label(bars, labels=[_percent(v) for v in values], fontsize=7, padding=1)
    left.set_xticks(positions, [f"{q}\n({'keep' if q in ('Q1', 'Q4') else 'discard'})" for q in names])
    left.set_ylabel("share of valid rows / of total energy")
    left.set_title("Per quadrant: rows vs energy", fontsize=11)
    _style_legend(left, [style for _, _, style in series], [label for _, label, _ in series])
    left.set_ylim(0, min(1.0, max(0.1, float(np.nanmax(np.r_[row_share, energy, projected, 0.0])))) * 1.35)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))

    sides = [er.get("keep") or {}, er.get("discard") or {}]
    side_rows = np.array([_number(s.get("rows")) for s in sides])
    side_total = np.nansum(side_rows)
    side_row_share = side_rows / side_total if side_total > 0 else np.full(2, math.nan)
    side_energy = np.array([_number(s.get("fraction")) for s in sides])
    positions2 = np.arange(2)
    for offset, values, label, style in (
        (-0.2, side_row_share, "rows", {"hatch": "//", "alpha": 0.45}),
        (0.2, side_energy, "energy", {"alpha": 1.0}),
    ):
        bars = right.bar(
            positions2 + offset,
            np.nan_to_num(values),
            0.38,
            color=[KEEP_COLOR, DISCARD_COLOR],
            edgecolor="0.2",
            linewidth=0.6,
            label=label,
            **style,
        )
        right.bar_label(bars, labels=[_percent(v) for v in values], fontsize=8, padding=1)
    right.set_xticks(positions2, ["keep\n(Q1+Q4)", "discard\n(Q2+Q3)"])
    right.set_ylim(0, 1.3)
    right.set_yticks(np.linspace(0, 1, 6))
    right.yaxis.set_major_formatter(PercentFormatter(1.0))
    snr_db = er.get("snr_db")
    snr_text = "n/a" if snr_db is None else f"{float(snr_db):.2f} dB"
    right.set_title(f"Signal vs noise (SNR {snr_text})", fontsize=11)
    _style_legend(right, [{"hatch": "//", "alpha": 0.45}, {"alpha": 1.0}], ["rows", "energy"])
    return figure


def _style_legend(axes: Axes, styles: list[dict[str, Any]], labels: list[str]) -> None:
    """A legend of bar styles in neutral grey (the bar colours encode the quadrant, not the series)."""
    handles = [
        Patch(facecolor="0.55", edgecolor="0.2", label=label, **style)
        for style, label in zip(styles, labels, strict=True)
    ]
    axes.legend(handles=handles, fontsize=8, loc="upper center", ncol=len(handles))


def _scree(study: dict[str, Any]) -> Figure | None:
    eigenvalues = _floats(study.get("eigenvalues"))
    ratios = _floats(study.get("explained_variance_ratio"))
    count = max(len(eigenvalues), len(ratios))
    if count == 0:
        return None
    if len(ratios) < count:
        finite_sum = np.nansum(eigenvalues)
        ratios = eigenvalues / finite_sum if finite_sum > 0 else np.full(count, math.nan)
    shown = min(count, MAX_COMPONENTS)
    figure, _ = _new_figure(8.0, 4.6)
    axes = figure.add_subplot()
    positions = np.arange(1, shown + 1)
    colors = ["#1f77b4" if i < 2 else "#9ecae1" for i in range(shown)]
    axes.bar(
        positions,
        np.nan_to_num(ratios[:shown]),
        color=colors,
        edgecolor="0.3",
        linewidth=0.5,
        label="explained variance ratio (p1, p2 dark)",
    )
    cumulative = np.nancumsum(ratios)[:shown]
    axes.plot(positions, cumulative, marker="o", markersize=3, color="#d62728", label="cumulative")
    axes.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
    if shown >= 2 and math.isfinite(cumulative[1]):
        axes.annotate(
            f"p1+p2: {100 * cumulative[1]:.3g}%",
            (2, cumulative[1]),
            textcoords="offset points",
            xytext=(8, -12),
            fontsize=9,
            color="#d62728",
        )
    reached = float(np.nanmax(np.r_[cumulative, 0.0]))
    top = 1.08 if reached >= 0.5 or reached <= 0 else 1.25 * reached
    axes.set_ylim(0, top)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("principal component")
    axes.set_ylabel("share of total variance")
    axes.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    note = f" (first {shown} of {count:,})" if shown < count else ""
    axes.set_title(f"Scree plot: variance explained per component{note}", fontsize=11)
    eigen_total = float(np.nansum(eigenvalues))
    if len(eigenvalues) == count and eigen_total > 0:
        # Right axis in eigenvalue units: a ratio r is the eigenvalue r · Σλ.
        twin = axes.twinx()
        twin.set_ylim(0, top * eigen_total)
        twin.set_ylabel("eigenvalue λ")
    axes.legend(fontsize=8, loc="center right" if top > 1 else "upper left")
    return figure


def _loadings_matrix(study: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    section = study.get("study") or {}
    source = section.get("loadings")
    title = "Loadings of the two leading components"
    if source is None:
        source = study.get("projectors")
        title = "Projectors p1, p2 (feature weights)"
    if not source:
        return None
    rows = [_floats(row) for row in source[:2]]
    if not rows or any(len(row) != len(rows[0]) for row in rows) or len(rows[0]) == 0:
        return None
    return np.vstack(rows).T, title  # (d, 2)


def _loadings_heatmap(study: dict[str, Any], features: list[str]) -> Figure | None:
    found = _loadings_matrix(study)
    if found is None:
        return None
    matrix, title = found
    d = matrix.shape[0]
    names = features if len(features) == d else [f"f{i}" for i in range(d)]
    index = np.arange(d)
    if d > MAX_LABELS:
        strength = np.nan_to_num(np.sqrt(np.nansum(matrix**2, axis=1)), nan=-1.0)
        index = np.argsort(-strength, kind="stable")[:MAX_LABELS]
        title += f"\n(top {MAX_LABELS} of {d:,} features by √(l1²+l2²))"
    shown = matrix[index]
    limit = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    limit = limit or 1.0
    height = 1.6 + 0.24 * len(index)
    figure, _ = _new_figure(6.0, height)
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(shown),
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        interpolation="nearest",
    )
    axes.set_xticks([0, 1], ["p1", "p2"][: shown.shape[1]] if shown.shape[1] == 2 else ["p1"])
    axes.xaxis.tick_top()
    axes.set_yticks(np.arange(len(index)), [_short(names[i]) for i in index], fontsize=8)
    for row in range(len(index)):
        for column in range(shown.shape[1]):
            value = shown[row, column]
            text = "null" if not math.isfinite(value) else f"{value:+.2f}"
            dark = math.isfinite(value) and abs(value) > 0.6 * limit
            axes.text(
                column, row, text, ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )
    figure.colorbar(image, ax=axes, shrink=min(1.0, 6.0 / height), label="loading")
    axes.set_title(title, fontsize=10)
    return figure


def _pool_max_abs(
    matrix: np.ndarray, cells: int, undefined: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Shrink a square matrix to at most ``cells`` a side; each block keeps its entry of largest |r|.

    Rows and columns flagged in ``undefined`` (bool, length d) count as NaN. Works one slab of block rows
    at a time, so a d × d input is never copied whole (d = 10,000 is 800 MB of float64).
    """
    d = matrix.shape[0]
    block = max(1, math.ceil(d / cells))
    side = math.ceil(d / block)
    pooled = np.empty((side, side))
    for row in range(side):
        slab = np.array(matrix[row * block : (row + 1) * block], dtype=np.float64)
        if undefined is not None:
            slab[:, undefined] = np.nan
            slab[undefined[row * block : (row + 1) * block]] = np.nan
        if block == 1:
            pooled[row] = slab[0]
            continue
        padded = np.full((block, side * block), np.nan)
        padded[: slab.shape[0], :d] = slab
        tiles = padded.reshape(block, side, block).transpose(1, 0, 2).reshape(side, block * block)
        magnitude = np.where(np.isnan(tiles), -1.0, np.abs(tiles))
        pooled[row] = np.take_along_axis(tiles, magnitude.argmax(axis=1)[:, None], axis=1)[:, 0]
    return pooled, block


def _undefined_features(study: dict[str, Any], features: list[str], d: int) -> np.ndarray:
    """Which of the d features are constant (their correlations are undefined, whatever the matrix holds)."""
    constant = {str(name) for name in study.get("constant_columns") or []}
    if len(features) != d:
        return np.zeros(d, dtype=bool)
    return np.array([name in constant for name in features], dtype=bool)


def _correlation_heatmap(
    correlation: np.ndarray, features: list[str], study: dict[str, Any] | None = None
) -> Figure | None:
    if correlation.ndim != 2 or correlation.shape[0] != correlation.shape[1] or correlation.shape[0] == 0:
        return None
    d = correlation.shape[0]
    names = features if len(features) == d else [f"f{i}" for i in range(d)]
    undefined = _undefined_features(study or {}, features, d)
    pooled, block = _pool_max_abs(correlation, MAX_HEATMAP_CELLS, undefined)
    size = 8.0 if d > 12 else 6.0
    figure, _ = _new_figure(size + 1.2, size)
    axes = figure.add_subplot()
    cmap = _diverging_with_bad()
    image = axes.imshow(
        np.ma.masked_invalid(pooled),
        cmap=cmap,
        vmin=-1,
        vmax=1,
        interpolation="nearest",
        extent=(-0.5, d - 0.5, d - 0.5, -0.5),
    )
    source = ((study or {}).get("model") or {}).get("source", "fitted")
    title = "Correlation of the features (Pearson r)"
    if source != "fitted":
        title = "Correlation ZᵀZ/n under the applied model's standardization"
    if d <= MAX_LABELS:
        labels = [_short(n, 20) for n in names]
        fontsize = 8 if d <= 25 else 6
        axes.set_xticks(np.arange(d), labels, rotation=90, fontsize=fontsize)
        axes.set_yticks(np.arange(d), labels, fontsize=fontsize)
        if d <= 12:
            for i in range(d):
                for j in range(d):
                    value = pooled[i, j]
                    text = "–" if not math.isfinite(value) else f"{value:.2f}"
                    axes.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if math.isfinite(value) and abs(value) > 0.6 else "black",
                    )
    else:
        axes.set_xlabel("feature index (order of the features list)")
        axes.set_ylabel("feature index")
        if block > 1:
            title += f"\n({d:,} features, blocks of {block}×{block} show the entry of largest |r|)"
    if np.isnan(pooled).any():
        title += "\ngrey: undefined (constant column)"
    figure.colorbar(image, ax=axes, shrink=0.8, label="r")
    axes.set_title(title, fontsize=10)
    return figure


def _diverging_with_bad() -> Any:
    from matplotlib import colormaps

    return colormaps["RdBu_r"].with_extremes(bad="0.75")
