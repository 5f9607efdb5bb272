"""Manifest/error builders, exclusive commit, and properties of the split on random tables."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from q4 import JobSpec, run_job
from q4.errors import InputError
from q4.manifest import build_error, build_manifest, write_error, write_manifest
from support.tables import write_csv


def test_manifest_and_error_builders_take_json_able_s3_and_compute_info(tmp_path):
    manifest = build_manifest(
        run_id="r",
        mode="standard",
        job={"run_id": "r", "input_key": "run=r/input/x.csv"},
        inputs=[{"key": "run=r/input/x.csv", "size": 10, "etag": '"abc"'}],
        artifacts=[{"key": "output/er.json", "bytes": 2, "sha256": "00", "content_type": "application/json"}],
        rows={"input": 3, "valid": 3, "rejected": 0, "keep": 2, "discard": 1},
        timings={"read": 0.5},
        compute={"task_arn": "arn:aws:ecs:task/1", "cpu": "1024", "memory": "2048"},
    )
    assert manifest["schema"] == "q4.manifest/v1" and manifest["compute"]["task_arn"] == "arn:aws:ecs:task/1"
    assert manifest["inputs"][0]["etag"] == '"abc"' and manifest["software"]["q4"]
    json.dumps(manifest, allow_nan=False)
    error = build_error(
        run_id="r", error=InputError("too_few_rows", "Too few rows; add rows.", {"rows": 1}), attempts=2
    )
    assert error == {
        **error,
        "schema": "q4.error/v1",
        "code": "too_few_rows",
        "attempts": 2,
        "retryable": False,
    }
    crash = build_error(
        run_id="r", error={"code": "task_crashed", "message": "It crashed.", "retryable": True}
    )
    assert crash["retryable"] is True and crash["details"] == {}

    path = write_manifest(tmp_path, manifest)
    assert json.loads(path.read_text()) == manifest
    with pytest.raises(FileExistsError):
        write_manifest(tmp_path, {**manifest, "run_id": "other"})
    assert json.loads(path.read_text())["run_id"] == "r"
    write_error(tmp_path, error)
    with pytest.raises(FileExistsError):
        write_error(tmp_path, error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ERROR.json", "MANIFEST.json"]  # no temp files left


cells = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64),
    st.sampled_from(["", "nan", "inf", "x", " 2.5 "]),
)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=st.lists(st.tuples(cells, cells, cells), min_size=3, max_size=40),
    chunk_rows=st.integers(min_value=1, max_value=9),
    split=st.integers(min_value=1, max_value=2),
)
def test_every_row_lands_exactly_once_in_input_order_whatever_the_chunking(
    tmp_path_factory, table, chunk_rows, split
):
    tmp = tmp_path_factory.mktemp("prop")
    rows = [[f"r{i}", *r] for i, r in enumerate(table)]
    rows[0][1:] = [1.0, 2.0, 3.0]  # keep the columns numeric-looking
    rows[1][1:] = [-1.0, 0.5, 7.0]
    rows[2][1:] = [4.0, -3.0, 0.0]
    cut = max(1, len(rows) // 2) if split == 2 else len(rows)
    files = [write_csv(tmp / "a.csv", ["id", "x", "y", "z"], rows[:cut])]
    if cut < len(rows):
        files.append(write_csv(tmp / "b.csv", ["id", "x", "y", "z"], rows[cut:]))
    try:
        streamed = run_job(files, tmp / "s" / "run=p", JobSpec(run_id="p", chunk_rows=chunk_rows))
    except InputError as exc:
        assert exc.code in {"too_few_rows", "too_few_features"}
        return
    whole = run_job(files, tmp / "w" / "run=p", JobSpec(run_id="p", chunk_rows=10_000))
    assert streamed.rows == whole.rows
    seen = []
    for name in ("keep", "discard", "rejected"):
        out = pcsv.read_csv(
            tmp / "s" / "run=p" / "output" / f"Q_{name}.csv",
            convert_options=pcsv.ConvertOptions(column_types={"id": pa.string()}),
        )
        q4_row = out["q4_row"].to_pylist()
        assert q4_row == sorted(q4_row)  # input order
        assert out["id"].to_pylist() == [f"r{i}" for i in q4_row]
        seen += q4_row
        if name != "rejected":
            assert (out["q4_quadrant"].to_numpy() >= 1).all() and (out["q4_quadrant"].to_numpy() <= 4).all()
    assert sorted(seen) == list(range(len(rows)))
    for key in ("output/Q_keep.csv", "output/Q_discard.csv", "output/Q_rejected.csv"):
        a = (tmp / "s" / "run=p" / key).read_text().splitlines()
        b = (tmp / "w" / "run=p" / key).read_text().splitlines()
        assert [r.split(",")[:-2] for r in a] == [r.split(",")[:-2] for r in b]
        if "rejected" not in key and len(a) > 1:
            sa = np.array([r.split(",")[-2:] for r in a[1:]], float)
            sb = np.array([r.split(",")[-2:] for r in b[1:]], float)
            np.testing.assert_allclose(sa, sb, rtol=1e-9, atol=1e-9)
