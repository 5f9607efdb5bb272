"""run_job end to end on real files: artifacts, values unchanged, rejected rows, formats, models."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from q4 import JobSpec, Q4Estimator, energy_split, four_quadrants, learn_projectors_linear, run_job
from q4.errors import InputError, ModelError
from q4.sources import LocalSource
from support.tables import matrix_csv, read_json, read_text_csv, split_scores, write_csv


def _mixed_csv(tmp_path, rng, n=40):
    x = rng.standard_normal((n, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]])
    rows = [
        [f"{i:03d}", x[i, 0], f"text, with comma {i}" if i % 5 == 0 else f"t{i}", x[i, 1], x[i, 2]]
        for i in range(n)
    ]
    rows[3][1] = ""  # missing
    rows[7][3] = "abc"  # not numeric
    rows[11][4] = "inf"  # not finite
    rows[13][1] = "nan"
    for r in rows:
        if isinstance(r[2], str) and "," in r[2]:
            r[2] = f'"{r[2]}"'
    return write_csv(tmp_path / "mixed.csv", ["id", "a", "label", "b", "c"], rows), x


def test_standard_run_writes_every_artifact_with_values_unchanged(tmp_path, rng):
    src, x = _mixed_csv(tmp_path, rng)
    run_dir = tmp_path / "out" / "run=t1"
    result = run_job(
        [src], run_dir, JobSpec(run_id="t1", features=("a", "b", "c")), input_names=["mixed.csv"]
    )
    keys = {a.key for a in result.artifacts}
    assert keys == {
        "output/Q_keep.csv",
        "output/Q_discard.csv",
        "output/Q_rejected.csv",
        "output/er.json",
        "output/Q_study.json",
    }
    for a in result.artifacts:
        data = (run_dir / a.key).read_bytes()
        assert a.bytes == len(data) and a.sha256 == hashlib.sha256(data).hexdigest()
    assert result.rows == {
        "input": 40,
        "valid": 36,
        "rejected": 4,
        "keep": result.rows["keep"],
        "discard": 36 - result.rows["keep"],
    }

    original = read_text_csv(src)
    keep, discard = (
        read_text_csv(run_dir / "output/Q_keep.csv"),
        read_text_csv(run_dir / "output/Q_discard.csv"),
    )
    for part in (keep, discard):
        assert part.column_names == [
            *original.column_names,
            "q4_row",
            "q4_quadrant",
            "q4_score1",
            "q4_score2",
        ]
        for row in part.to_pylist():
            i = int(row["q4_row"])
            assert {k: row[k] for k in original.column_names} == original.slice(i, 1).to_pylist()[0]
    assert keep["id"][0].as_py() == "000"  # "000" stays "000"
    assert set(keep["q4_quadrant"].to_pylist()) <= {"1", "4"}
    assert set(discard["q4_quadrant"].to_pylist()) <= {"2", "3"}

    rejected = read_text_csv(run_dir / "output/Q_rejected.csv")
    assert rejected.column_names == [*original.column_names, "q4_row", "q4_reason"]
    assert list(zip(rejected["q4_row"].to_pylist(), rejected["q4_reason"].to_pylist(), strict=True)) == [
        ("3", "missing:a"),
        ("7", "not_numeric:b"),
        ("11", "not_finite:c"),
        ("13", "not_finite:a"),
    ]

    study = read_json(run_dir / "output/Q_study.json")
    assert study["schema"] == "q4.study/v1" and study["input"]["keys"] == ["mixed.csv"]
    assert study["input"]["sha256"] == [hashlib.sha256(src.read_bytes()).hexdigest()]
    assert study["features"] == ["a", "b", "c"] and study["passthrough_columns"] == ["id", "label"]
    assert study["model"] == {"source": "fitted"}

    # the seeds' functions on the valid rows give the same er.json
    valid = np.delete(x, [3, 7, 11, 13], axis=0)
    projectors, _ = learn_projectors_linear(valid)
    er = energy_split(*four_quadrants(valid, projectors))
    written = read_json(run_dir / "output/er.json")
    assert er.keys() == written.keys()
    for q in ("Q1", "Q2", "Q3", "Q4"):
        assert er["quadrants"][q]["rows"] == written["quadrants"][q]["rows"]
        np.testing.assert_allclose(
            er["quadrants"][q]["energy"], written["quadrants"][q]["energy"], rtol=1e-12
        )
    np.testing.assert_allclose(written["total_energy"], 36 * 3, rtol=1e-12)
    assert written["keep"]["rows"] + written["discard"]["rows"] == 36


def test_written_floats_round_trip_exactly(tmp_path, rng):
    x = rng.standard_normal((50, 3)) * np.array([1e-150, 1.0, 1e150]) / 7.0
    src = matrix_csv(tmp_path / "extreme.csv", x)
    run_dir = tmp_path / "run=f"
    run_job([src], run_dir, JobSpec(run_id="f", mode="enhanced", output_format="csv"))
    keep = pcsv.read_csv(run_dir / "output/Q_keep.csv")
    rows = keep["q4_row"].to_numpy()
    np.testing.assert_array_equal(np.column_stack([keep[f"f{j}"].to_numpy() for j in range(3)]), x[rows])
    est = Q4Estimator().fit(x)
    _, s, _ = split_scores(run_dir)
    np.testing.assert_allclose(s, est.transform(x), rtol=1e-9)


def test_enhanced_run_persists_a_model_that_reapplies_identically(tmp_path, rng):
    x = rng.standard_normal((120, 4)) @ rng.standard_normal((4, 4)) + 100.0
    src = matrix_csv(tmp_path / "fit.csv", x)
    fit_dir = tmp_path / "run=fit"
    run_job([src], fit_dir, JobSpec(run_id="fit", mode="enhanced", svd_k=3))
    study = read_json(fit_dir / "output/Q_study.json")
    assert study["svd"]["k"] == 3 and len(study["svd"]["singular_values"]) == 3
    assert 0 < study["svd"]["reconstruction_error"] < 1
    svd = pcsv.read_csv(fit_dir / "output/svd_scores.csv")
    assert svd.column_names == ["q4_row", "svd_1", "svd_2", "svd_3"]
    sigma = np.sqrt((np.column_stack([svd[c].to_numpy() for c in svd.column_names[1:]]) ** 2).sum(axis=0))
    np.testing.assert_allclose(sigma, study["svd"]["singular_values"], rtol=1e-9)
    model = read_json(fit_dir / "model/q4_model.json")
    assert model["schema"] == "q4.model/v1" and model["source_run"] == "fit"

    # apply it to other data with the columns shuffled and an extra column
    y = rng.standard_normal((30, 4)) + 100.0
    other = write_csv(
        tmp_path / "other.csv", ["f2", "extra", "f0", "f1", "f3"], [[r[2], "e", r[0], r[1], r[3]] for r in y]
    )
    apply_dir = tmp_path / "run=apply"
    run_job([other], apply_dir, JobSpec(run_id="apply", model_path=fit_dir / "model/q4_model.json"))
    applied = read_json(apply_dir / "output/Q_study.json")
    assert applied["model"]["source"].endswith("q4_model.json")
    assert applied["mean"] == study["mean"] and applied["projectors"] == study["projectors"]
    _, s, q = split_scores(apply_dir)
    est = Q4Estimator.load(fit_dir / "model/q4_model.json")
    frame = pd.DataFrame(y, columns=["f0", "f1", "f2", "f3"])  # the model knows its feature names
    np.testing.assert_allclose(s, est.transform(frame), rtol=1e-12)
    np.testing.assert_array_equal(q, est.predict(frame))


def test_model_with_absent_features_is_model_mismatch(tmp_path, rng):
    est = Q4Estimator().fit(rng.standard_normal((20, 3)))
    model = est.save(tmp_path / "m.json")
    src = write_csv(tmp_path / "two.csv", ["x0", "x1"], rng.standard_normal((5, 2)).tolist())
    with pytest.raises(ModelError) as info:
        run_job([src], tmp_path / "run=m", JobSpec(run_id="m", model_path=model))
    assert info.value.code == "model_mismatch" and "'x2'" in info.value.message
    assert not (tmp_path / "run=m" / "output").exists()  # nothing half-written is left


def test_parquet_in_and_out_and_several_files_as_one_table(tmp_path, rng):
    x = rng.standard_normal((90, 3))
    names = ["p", "q", "r"]
    parts = []
    for i, (lo, hi) in enumerate(((0, 30), (30, 31), (31, 90))):
        t = pa.table(
            {
                "key": [f"k{j}" for j in range(lo, hi)],
                **{n: x[lo:hi, j] for j, n in enumerate(names)},
                "flag": [j % 2 == 0 for j in range(lo, hi)],
            }
        )
        pq.write_table(t, tmp_path / f"part{i}.parquet")
        parts.append(tmp_path / f"part{i}.parquet")
    run_dir = tmp_path / "run=pq"
    result = run_job(parts, run_dir, JobSpec(run_id="pq", output_format="parquet", chunk_rows=16))
    assert {a.key for a in result.artifacts} >= {
        "output/Q_keep.parquet",
        "output/Q_discard.parquet",
        "output/Q_rejected.parquet",
    }
    for a in result.artifacts:  # the row outputs were hashed as written: the files hold those bytes
        data = (run_dir / a.key).read_bytes()
        assert a.bytes == len(data) and a.sha256 == hashlib.sha256(data).hexdigest(), a.key
    keep = pq.read_table(run_dir / "output/Q_keep.parquet")
    discard = pq.read_table(run_dir / "output/Q_discard.parquet")
    assert keep.schema.field("flag").type == pa.bool_() and keep.schema.field("p").type == pa.float64()
    both = pa.concat_tables([keep, discard]).sort_by("q4_row")
    assert both["q4_row"].to_pylist() == list(range(90))
    np.testing.assert_array_equal(np.column_stack([both[n].to_numpy() for n in names]), x)
    study = read_json(run_dir / "output/Q_study.json")
    assert study["features"] == names and study["passthrough_columns"] == [
        "key",
        "flag",
    ]  # bool is not a feature
    assert study["input"]["format"] == "parquet" and len(study["input"]["sha256"]) == 3
    est = Q4Estimator().fit(x)
    np.testing.assert_allclose(
        np.column_stack([both["q4_score1"], both["q4_score2"]]), est.transform(x), rtol=1e-9
    )


def test_csv_files_with_different_columns_are_refused(tmp_path):
    a = write_csv(tmp_path / "a.csv", ["x", "y"], [[1, 2], [3, 5]])
    b = write_csv(tmp_path / "b.csv", ["x", "z"], [[1, 2], [3, 5]])
    with pytest.raises(InputError) as info:
        run_job([a, b], tmp_path / "run=d", JobSpec(run_id="d"))
    assert info.value.code == "input_columns_differ" and "b.csv" in info.value.message


def test_bad_numeric_cell_far_into_a_file_rejects_the_row_not_the_run(tmp_path, rng):
    x = rng.standard_normal((40_000, 2))
    rows = x.tolist()
    rows[34_321][1] = "oops"  # beyond the first MiB, which decides the column types
    src = write_csv(tmp_path / "late.csv", ["u", "v"], rows)
    run_dir = tmp_path / "run=late"
    assert src.stat().st_size > 1.2 * 2**20
    result = run_job([src], run_dir, JobSpec(run_id="late", chunk_rows=1000))
    assert result.rows["rejected"] == 1
    assert read_text_csv(run_dir / "output/Q_rejected.csv").to_pylist() == [
        {"u": repr(float(x[34_321, 0])), "v": "oops", "q4_row": "34321", "q4_reason": "not_numeric:v"}
    ]


def test_every_artifact_is_deterministic(tmp_path, rng):
    x = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 3))
    src = matrix_csv(tmp_path / "d.csv", x)
    digests = []
    for name in ("a", "b"):
        result = run_job([src], tmp_path / name / "run=same", JobSpec(run_id="same", mode="enhanced"))
        digests.append({a.key: a.sha256 for a in result.artifacts})
    assert digests[0] == digests[1]


def test_degenerate_projectors_warn(tmp_path):
    # four points on a square: λ1 == λ2
    src = write_csv(tmp_path / "sq.csv", ["x", "y"], [[1, 0], [0, 1], [-1, 0], [0, -1]])
    result = run_job([src], tmp_path / "run=sq", JobSpec(run_id="sq"))
    assert [w["code"] for w in result.warnings] == ["degenerate_projectors"]
    study = read_json(tmp_path / "run=sq" / "output/Q_study.json")
    assert study["warnings"][0]["code"] == "degenerate_projectors"


def test_constant_column_is_standardized_to_zero(tmp_path, rng):
    x = rng.standard_normal((50, 2))
    src = write_csv(tmp_path / "c.csv", ["a", "k", "b"], [[r[0], 5, r[1]] for r in x])
    run_dir = tmp_path / "run=c"
    run_job([src], run_dir, JobSpec(run_id="c", mode="full"))
    study = read_json(run_dir / "output/Q_study.json")
    assert study["constant_columns"] == ["k"] and study["scale"][1] == 1.0
    assert study["projectors"][0][1] == 0.0 and study["projectors"][1][1] == 0.0
    json.dumps(study, allow_nan=False)
    assert study["study"]["keep_vs_discard"]["effect_size"][1] is None


class _CountedFile(io.RawIOBase):
    """A local file that adds the bytes read from it to ``counter``."""

    def __init__(self, path, counter):
        self._f, self._counter = path.open("rb", buffering=0), counter

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._counter[0] += n or 0
        return n

    def close(self):
        self._f.close()
        super().close()


@dataclasses.dataclass(frozen=True)
class _CountedSource(LocalSource):
    """A local input whose reads (by pyarrow, through ``arrow_file``) are counted; hashing is not."""

    read: list[int] = dataclasses.field(default_factory=lambda: [0], compare=False, hash=False)

    def open(self):
        return _CountedFile(self.path, self.read)

    def arrow_file(self):
        return pa.PythonFile(self.open(), mode="r")


def test_pass_1_reads_only_the_feature_columns_of_a_parquet_file(tmp_path, rng):
    n = 20_000
    x = rng.standard_normal((n, 2))
    notes = [rng.bytes(int(k)).hex() for k in rng.integers(50, 150, n)]  # text pass 1 need not decode
    src = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"note": notes, "a": x[:, 0], "b": x[:, 1] + x[:, 0]}), src, row_group_size=5000)
    meta = pq.ParquetFile(src).metadata
    chunk_bytes = {
        name: sum(meta.row_group(i).column(j).total_compressed_size for i in range(meta.num_row_groups))
        for j, name in enumerate(meta.schema.names)
    }
    assert chunk_bytes["note"] > 5 * (chunk_bytes["a"] + chunk_bytes["b"])
    source = _CountedSource(src)
    run_dir = tmp_path / "run=w"
    result = run_job([source], run_dir, JobSpec(run_id="w", output_format="parquet", chunk_rows=4096))
    # pass 2 reads the whole file, pass 1 the feature columns; each open reads the footer's last 64 KiB
    features = chunk_bytes["a"] + chunk_bytes["b"]
    assert source.read[0] < src.stat().st_size + features + 8 * 65536
    assert source.read[0] >= src.stat().st_size
    keep = pq.read_table(run_dir / "output/Q_keep.parquet")
    discard = pq.read_table(run_dir / "output/Q_discard.parquet")
    both = pa.concat_tables([keep, discard]).sort_by("q4_row")
    assert both["note"].to_pylist() == notes and result.rows["valid"] == n
