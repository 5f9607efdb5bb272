"""Both passes run on Q4_CPUS worker threads: every artifact's bytes are the same for any thread count at
a given chunk size (CSV with quoted newlines and rejected rows, several files; Parquet in and out; full
mode with its plots), and the answer is the same to 1e-12 across chunk sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from q4 import JobSpec, run_job
from q4.moments import Moments
from support.tables import read_json

THREADS = ("1", "2", "4")


def _csv_files(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    """Two CSV files: correlated floats, a text column whose values hold commas, quotes and newlines,
    and some rows to reject."""
    x = rng.standard_normal((1500, 4)) @ rng.standard_normal((4, 4)) + [3.0, -1.0, 1e6, 0.0]
    files = []
    for part, rows in enumerate((range(0, 900), range(900, 1500))):
        lines = ["id,note,a,b,c,d"]
        for i in rows:
            note = f'"line {i}\nsecond, ""quoted"""' if i % 97 == 0 else f"n{i}"
            values = [repr(float(v)) for v in x[i]]
            if i % 113 == 5:
                values[i % 4] = "NA" if i % 2 else "x"
            lines.append(",".join([str(i), note, *values]))
        path = tmp_path / f"part{part}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


def _parquet_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    x = rng.standard_normal((2000, 5)) @ rng.standard_normal((5, 5))
    x[7, 2] = np.nan  # one rejected row
    table = pa.table(
        {"key": pa.array([f"k{i}" for i in range(2000)]), **{f"f{j}": x[:, j] for j in range(5)}}
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=300)
    return path


def _digests(
    inputs: list[Path], out: Path, spec: JobSpec, threads: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setenv("Q4_CPUS", threads)
    result = run_job(inputs, out / f"t{threads}" / f"run={spec.run_id}", spec)
    return {a.key: a.sha256 for a in result.artifacts}


@pytest.mark.parametrize("mode", ["standard", "full"])
def test_csv_artifacts_are_the_same_bytes_for_any_thread_count(tmp_path, rng, monkeypatch, mode):
    files = _csv_files(tmp_path, rng)
    spec = JobSpec(run_id="p", mode=mode, chunk_rows=64)
    runs = [_digests(files, tmp_path / "out", spec, n, monkeypatch) for n in THREADS]
    assert runs[0] == runs[1] == runs[2]
    assert "output/Q_rejected.csv" in runs[0] and (mode == "standard" or "viz/report.html" in runs[0])
    keep = (tmp_path / "out" / "t4" / "run=p" / "output" / "Q_keep.csv").read_text(encoding="utf-8")
    discard = (tmp_path / "out" / "t4" / "run=p" / "output" / "Q_discard.csv").read_text(encoding="utf-8")
    assert '"line 0\nsecond, ""quoted"""' in keep + discard  # the quoted newline went through unchanged


@pytest.mark.parametrize("output_format", ["parquet", "csv"])
def test_parquet_artifacts_are_the_same_bytes_for_any_thread_count(tmp_path, rng, monkeypatch, output_format):
    src = _parquet_file(tmp_path, rng)
    spec = JobSpec(run_id="q", mode="enhanced", output_format=output_format, chunk_rows=128)
    runs = [_digests([src], tmp_path / "out", spec, n, monkeypatch) for n in THREADS]
    assert runs[0] == runs[1] == runs[2]
    kept = (
        pq.read_table(tmp_path / "out" / "t2" / "run=q" / "output" / "Q_keep.parquet")
        if (output_format == "parquet")
        else None
    )
    if kept is not None:
        rows = kept.column("q4_row").to_pylist()
        assert rows == sorted(rows) and kept.column("key").to_pylist() == [f"k{i}" for i in rows]


def _numbers(doc: object) -> list[float]:
    if isinstance(doc, dict):
        return [v for key in sorted(doc) for v in _numbers(doc[key])]
    if isinstance(doc, list):
        return [v for item in doc for v in _numbers(item)]
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        return []
    return [float(doc)]


def test_the_answer_is_the_same_to_1e_12_across_chunk_sizes(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("Q4_CPUS", "2")
    files = _csv_files(tmp_path, rng)
    docs = []
    for chunk in (7, 64, 100_000):
        run_dir = tmp_path / f"c{chunk}" / "run=r"
        run_job(files, run_dir, JobSpec(run_id="r", mode="full", chunk_rows=chunk))
        study = read_json(run_dir / "output" / "Q_study.json")
        del study["warnings"]
        docs.append((_numbers(read_json(run_dir / "output" / "er.json")), _numbers(study)))
    for er, study in docs[1:]:
        np.testing.assert_allclose(er, docs[0][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(study, docs[0][1], rtol=1e-12, atol=1e-12)


def test_chunk_partials_merged_in_order_match_one_pass_with_huge_offsets(rng):
    """Moments.of per chunk (each its own shift), merged in chunk order, against the whole array and an
    exact reference, with means ~1e9 times the standard deviations."""
    x = rng.standard_normal((1001, 3)) * [1.0, 0.5, 2.0] + [1e9, 5e8, 2e9]
    whole = Moments.of(x)
    for chunk in (1, 7, 250):
        merged = Moments(3)
        for start in range(0, len(x), chunk):
            merged.merge(Moments.of(x[start : start + chunk]))
        assert merged.n == whole.n
        np.testing.assert_array_equal(merged.minimum, x.min(axis=0))
        np.testing.assert_array_equal(merged.maximum, x.max(axis=0))
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-15)
        np.testing.assert_allclose(merged.comoment, whole.comoment, rtol=1e-12)
    exact_mean = [math.fsum(x[:, j] - x[0, j]) / len(x) for j in range(3)]
    np.testing.assert_allclose(whole.offset, exact_mean, rtol=1e-13, atol=1e-13)
