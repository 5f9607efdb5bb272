"""The full-mode plots: real PNG files, deterministic, readable for wide tables and many points."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from q4 import viz
from support.viz import FullRun, make_full_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def render(run: FullRun, viz_dir: Path) -> list[Path]:
    return viz.render_plots(
        viz_dir,
        er=run.er,
        study=run.study,
        scores=run.scores,
        quadrants=run.quadrants,
        svd_scores=run.svd_scores,
        correlation=run.correlation,
    )


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def text_chunks(path: Path) -> list[bytes]:
    """The keywords of every tEXt/iTXt/zTXt chunk of a PNG."""
    data = path.read_bytes()
    keywords = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keywords.append(data[offset + 8 : offset + 8 + length].split(b"\0")[0])
        offset += 12 + length
    return keywords


def test_every_plot_is_written_as_a_plausible_png(tmp_path: Path, full_run: FullRun) -> None:
    # GIVEN a typical full-mode run
    # WHEN the plots are rendered
    paths = render(full_run, tmp_path / "viz")
    # THEN every plot exists under viz/, in the documented order, as a real PNG of sensible size
    assert [p.name for p in paths] == list(viz.PLOT_FILES)
    for path in paths:
        assert path.parent == tmp_path / "viz"
        width, height = png_size(path)
        assert 300 <= width <= 1600 and 200 <= height <= 1600, (path.name, width, height)
        assert 5_000 < path.stat().st_size < 1_500_000, path.name


def test_png_bytes_are_deterministic_and_carry_no_software_stamp(tmp_path: Path, full_run: FullRun) -> None:
    first = render(full_run, tmp_path / "a")
    second = render(make_full_run(), tmp_path / "b")
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes(), one.name
        assert b"Software" not in text_chunks(one)
        assert b"matplotlib" not in one.read_bytes().lower()


def test_different_data_gives_different_plots(tmp_path: Path, full_run: FullRun) -> None:
    one = render(full_run, tmp_path / "a")
    two = render(make_full_run(seed=1), tmp_path / "b")
    assert one[0].read_bytes() != two[0].read_bytes()


def test_without_svd_scores_the_embedding_is_skipped(tmp_path: Path) -> None:
    run = make_full_run(with_svd=False)
    paths = render(run, tmp_path)
    assert "svd_embedding.png" not in {p.name for p in paths}
    assert not (tmp_path / "svd_embedding.png").exists()
    assert len(paths) == len(viz.PLOT_FILES) - 1


def test_few_points_are_drawn_as_markers_in_their_quadrant_colour(full_run: FullRun) -> None:
    figure = viz._quadrant_scatter(full_run.scores, full_run.quadrants, full_run.er)
    axes = figure.axes[0]
    assert not axes.images
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in axes.collections}
    assert colours == {tuple(np.round(to_rgb(c), 3)) for c in viz.QUADRANT_COLORS.values()}
    drawn = sum(len(c.get_offsets()) for c in axes.collections)
    assert drawn == len(full_run.scores)


def test_many_points_become_a_density_image_with_pure_quadrant_colours(tmp_path: Path) -> None:
    # GIVEN 100,000 sampled scores (the largest sample the core passes)
    run = make_full_run(n=100_000, d=5)
    # WHEN the quadrant plot is drawn
    figure = viz._quadrant_scatter(run.scores, run.quadrants, run.er)
    # THEN it is one density image whose cells right of / above 0 carry exactly the quadrant colours
    axes = figure.axes[0]
    assert len(axes.images) == 1 and not axes.collections
    image = axes.images[0]
    rgba = np.asarray(image.get_array())
    left, right, bottom, top = image.get_extent()
    ys, xs = np.nonzero(rgba[:, :, 3] > 0)
    x_centre = left + (xs + 0.5) * (right - left) / rgba.shape[1]
    y_centre = bottom + (ys + 0.5) * (top - bottom) / rgba.shape[0]
    expected_quadrant = np.where(x_centre >= 0, np.where(y_centre >= 0, 1, 4), np.where(y_centre >= 0, 2, 3))
    for quadrant, colour in viz.QUADRANT_COLORS.items():
        cells = rgba[ys[expected_quadrant == quadrant], xs[expected_quadrant == quadrant], :3]
        assert len(cells) > 100
        np.testing.assert_allclose(cells, np.broadcast_to(to_rgb(colour), cells.shape), atol=1e-9)
    # and the file renders
    assert render(run, tmp_path)[0].stat().st_size > 5_000


def test_grid_edges_put_zero_on_an_edge() -> None:
    for low, high in [(-3.2, 7.9), (-1e-3, 5.0), (0.5, 2.0), (-4.0, -0.1)]:
        edges = viz._grid_edges(low, high, 50)
        assert edges[0] <= low and edges[-1] >= high
        assert np.allclose(np.diff(edges), (high - low) / 50)
        if low < 0 < high:
            assert 0.0 in edges


def test_wide_tables_stay_readable_and_small(tmp_path: Path) -> None:
    # GIVEN 2,000 features
    run = make_full_run(n=300, d=2_000)
    # WHEN the plots are rendered
    paths = {p.name: p for p in render(run, tmp_path)}
    # THEN the images keep a sensible size and at most MAX_LABELS features are labelled
    for name in ("loadings.png", "correlation.png", "scree.png"):
        width, height = png_size(paths[name])
        assert width <= 1600 and height <= 1600, (name, width, height)
    loadings = viz._loadings_heatmap(run.study, run.study["features"])
    assert loadings is not None
    labels = [t.get_text() for t in loadings.axes[0].get_yticklabels()]
    assert len(labels) == viz.MAX_LABELS
    strength = np.hypot(*np.array(run.study["study"]["loadings"]))
    strongest = run.study["features"][int(np.argmax(strength))]
    assert labels[0] == strongest
    correlation = viz._correlation_heatmap(run.correlation, run.study["features"])
    assert correlation is not None
    assert not [t for t in correlation.axes[0].get_xticklabels() if t.get_text().startswith("feature_")]
    assert max(np.asarray(correlation.axes[0].images[0].get_array()).shape) <= viz.MAX_HEATMAP_CELLS


def test_pooling_keeps_the_signed_entry_of_largest_magnitude() -> None:
    matrix = np.array(
        [
            [1.0, 0.2, -0.9, 0.1],
            [0.2, 1.0, 0.3, np.nan],
            [-0.9, 0.3, 1.0, -0.4],
            [0.1, np.nan, -0.4, 1.0],
        ]
    )
    pooled, block = viz._pool_max_abs(matrix, 2)
    assert block == 2
    np.testing.assert_array_equal(pooled, [[1.0, -0.9], [-0.9, 1.0]])
    same, block = viz._pool_max_abs(matrix, 4)
    assert block == 1
    np.testing.assert_array_equal(same, matrix)
    odd, block = viz._pool_max_abs(matrix[:3, :3], 2)
    assert block == 2
    np.testing.assert_array_equal(odd, [[1.0, -0.9], [-0.9, 1.0]])


def test_nulls_and_nans_do_not_break_the_plots(tmp_path: Path) -> None:
    # GIVEN a degenerate run: undefined numbers everywhere JSON allows them
    run = make_full_run(n=50, d=4, constant=1)
    run.er["snr"] = run.er["snr_db"] = None
    run.er["quadrants"]["Q2"]["fraction"] = None
    run.study["eigenvalues"][-1] = None
    run.study["explained_variance_ratio"] = None
    run.study["study"]["loadings"][1][0] = None
    run.study["svd"]["explained_variance_ratio"] = None
    run.correlation[0, 1] = run.correlation[1, 0] = np.nan
    # WHEN rendered THEN every plot is still written
    paths = render(run, tmp_path)
    assert [p.name for p in paths] == list(viz.PLOT_FILES)


def test_a_standard_mode_study_without_analysis_sections_is_tolerated(tmp_path: Path) -> None:
    run = make_full_run(n=80, d=3, with_svd=False)
    del run.study["svd"], run.study["study"]
    paths = render(run, tmp_path)
    assert "loadings.png" in {p.name for p in paths}
    figure = viz._loadings_heatmap(run.study, run.study["features"])
    assert figure is not None and "Projectors" in figure.axes[0].get_title()


@pytest.mark.parametrize("points", [np.zeros((0, 2)), np.ones((7, 2)), np.array([[np.nan, 1.0], [2.0, 3.0]])])
def test_degenerate_score_samples(tmp_path: Path, full_run: FullRun, points: np.ndarray) -> None:
    quadrants = np.ones(len(points), dtype=np.int64)
    paths = viz.render_plots(
        tmp_path,
        er=full_run.er,
        study=full_run.study,
        scores=points,
        quadrants=quadrants,
        svd_scores=points,
        correlation=full_run.correlation,
    )
    assert (tmp_path / "quadrant_scatter.png") in paths


def test_constant_columns_show_as_undefined_in_the_correlation_plot(tmp_path: Path) -> None:
    # GIVEN the core's correlation, where a constant column's row and column are 0
    run = make_full_run(n=200, d=4, constant=1)
    core_style = np.nan_to_num(run.correlation, nan=0.0)
    # WHEN masked for display
    undefined = viz._undefined_features(run.study, run.study["features"], 4)
    masked, _ = viz._pool_max_abs(core_style, viz.MAX_HEATMAP_CELLS, undefined)
    assert undefined.tolist() == [False, False, False, True]
    # THEN exactly the constant feature's row and column are undefined, the rest untouched
    assert np.isnan(masked[3]).all() and np.isnan(masked[:, 3]).all()
    np.testing.assert_array_equal(masked[:3, :3], core_style[:3, :3])
    assert not np.isnan(core_style).any()
    figure = viz._correlation_heatmap(core_style, run.study["features"], run.study)
    assert figure is not None and "undefined" in figure.axes[0].get_title()
    shown = np.ma.getmaskarray(figure.axes[0].images[0].get_array())
    assert shown[3].all() and shown[:, 3].all() and not shown[:3, :3].any()


def test_density_bins_grow_with_the_sample() -> None:
    assert viz.density_bins(5_001) == 60
    assert viz.density_bins(20_000) == 85
    assert viz.density_bins(100_000) == viz.MAX_DENSITY_BINS


def test_pooling_matches_a_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.uniform(-1, 1, size=(23, 23))
    matrix[4, 7] = np.nan
    undefined = np.zeros(23, dtype=bool)
    undefined[[2, 22]] = True
    pooled, block = viz._pool_max_abs(matrix, 5, undefined)
    assert block == 5 and pooled.shape == (5, 5)
    masked = matrix.copy()
    masked[undefined] = np.nan
    masked[:, undefined] = np.nan
    for i in range(5):
        for j in range(5):
            tile = masked[i * 5 : (i + 1) * 5, j * 5 : (j + 1) * 5].ravel()
            tile = tile[~np.isnan(tile)]
            expected = tile[np.argmax(np.abs(tile))] if tile.size else np.nan
            np.testing.assert_equal(pooled[i, j], expected)


def test_mismatched_or_one_dimensional_samples_are_tolerated(tmp_path: Path, full_run: FullRun) -> None:
    paths = viz.render_plots(
        tmp_path,
        er=full_run.er,
        study=full_run.study,
        scores=full_run.scores,
        quadrants=full_run.quadrants[:-10],
        svd_scores=full_run.svd_scores[:, :1] if full_run.svd_scores is not None else None,
        correlation=full_run.correlation,
    )
    assert [p.name for p in paths] == list(viz.PLOT_FILES)
