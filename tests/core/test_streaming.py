"""Streamed, chunked processing equals the in-memory result (docs/contract.md, The Q4 operator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from q4 import JobSpec, Q4Estimator, run_job
from q4.moments import Moments
from support.tables import matrix_csv, read_json, split_scores


def _offset_data(rng: np.random.Generator, n: int = 301) -> np.ndarray:
    """Features with means ~1e9 times their standard deviations, correlated."""
    base = rng.standard_normal((n, 4)) @ np.array(
        [[1.0, 0.3, 0.0, 0.1], [0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.2], [0.0, 0.0, 0.0, 0.4]]
    )
    std = np.array([1.0, 0.5, 2.0, 3.0])
    return base * std + 1e9 * std


def test_moments_merge_is_chunking_invariant(rng):
    x = _offset_data(rng)
    whole = Moments(4)
    whole.update(x)
    for chunk in (1, 2, 7, 64):
        streamed = Moments(4)
        for start in range(0, len(x), chunk):
            streamed.update(x[start : start + chunk])
        assert streamed.n == whole.n
        np.testing.assert_allclose(streamed.offset, whole.offset, rtol=0, atol=1e-12)
        np.testing.assert_allclose(streamed.comoment, whole.comoment, rtol=1e-12)
    # and against an exact reference: fsum of the shifted values, co-moments in float64 from them
    ref_mean = np.array([math.fsum(x[:, j] - x[0, j]) / len(x) for j in range(4)])
    np.testing.assert_allclose(whole.offset, ref_mean, rtol=1e-13, atol=1e-13)
    y = (x - x[0]) - ref_mean
    np.testing.assert_allclose(whole.comoment, y.T @ y, rtol=1e-11)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_run_job_streamed_matches_in_memory_to_1e9(tmp_path, rng, chunk_rows):
    x = _offset_data(rng)
    src = matrix_csv(tmp_path / "big_offsets.csv", x)
    run_dir = tmp_path / "out" / "run=s"
    result = run_job([src], run_dir, JobSpec(run_id="s", chunk_rows=chunk_rows))
    assert result.rows == {
        "input": 301,
        "valid": 301,
        "rejected": 0,
        "keep": result.rows["keep"],
        "discard": 301 - result.rows["keep"],
    }
    study = read_json(run_dir / "output" / "Q_study.json")

    est = Q4Estimator().fit(x)  # the in-memory computation
    np.testing.assert_allclose(study["mean"], est.mean_, rtol=1e-15)
    np.testing.assert_allclose(study["scale"], est.scale_, rtol=1e-9)
    np.testing.assert_allclose(study["projectors"], est.components_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(study["eigenvalues"], est.eigenvalues_, rtol=1e-9, atol=1e-12)
    rows, s, q = split_scores(run_dir)
    np.testing.assert_array_equal(rows, np.arange(301))
    expected = est.transform(x)
    np.testing.assert_allclose(s, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_array_equal(q, est.labels_)

    # an independent reference: exact-sum mean, population std, eigh of Zᵀ Z / n
    mean = np.array([math.fsum(x[:, j]) / len(x) for j in range(4)])
    centred = x - mean
    scale = np.sqrt(np.array([math.fsum(c * c) for c in centred.T]) / len(x))
    np.testing.assert_allclose(study["scale"], scale, rtol=1e-9)
    z = centred / scale
    _, v = np.linalg.eigh(z.T @ z / len(x))
    p = v[:, ::-1][:, :2].T
    p *= np.sign(p[np.arange(2), np.argmax(np.abs(p), axis=1)])[:, None]
    np.testing.assert_allclose(study["projectors"], p, atol=1e-7)  # z itself is only good to ~ulp(1e9)/std


def test_chunking_does_not_change_any_artifact_byte(tmp_path, rng):
    x = rng.standard_normal((250, 3)) * [1.0, 10.0, 0.1] + [5.0, -3.0, 1e6]
    src = matrix_csv(tmp_path / "t.csv", x)
    digests = []
    for chunk in (1, 13, 100_000):
        res = run_job(
            [src], tmp_path / f"c{chunk}" / "run=r", JobSpec(run_id="r", mode="enhanced", chunk_rows=chunk)
        )
        digests.append({a.key: a.sha256 for a in res.artifacts if a.key.endswith(".csv")})
    # row files are identical; the JSON documents agree to rounding (checked above)
    assert digests[0].keys() == digests[1].keys() == digests[2].keys()
    for key in ("output/Q_keep.csv", "output/Q_discard.csv", "output/Q_rejected.csv"):
        rows_a = (tmp_path / "c1" / "run=r" / key).read_text().splitlines()
        rows_b = (tmp_path / "c100000" / "run=r" / key).read_text().splitlines()
        assert len(rows_a) == len(rows_b)
        for la, lb in zip(rows_a[1:], rows_b[1:], strict=True):
            a, b = la.split(","), lb.split(",")
            assert a[:-2] == b[:-2]  # input values, row index, quadrant: exact
            np.testing.assert_allclose(
                np.array(a[-2:], float), np.array(b[-2:], float), rtol=1e-9, atol=1e-12
            )
