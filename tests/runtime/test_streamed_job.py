"""run_job reading S3 sources and writing its row outputs to S3 multipart uploads (the Fargate task's way)
gives byte for byte the artifacts of the same job on local files; the spill rule changes nothing either."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from q4 import JobSpec, run_job
from q4.errors import Q4Error
from q4.job import RunResult
from q4.s3io import S3Source, S3Writer
from support.tables import write_csv

PART = 256 << 10  # small read parts: a ~3 MB input crosses many part boundaries


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    name = f"q4-stream-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _csv(path: Path, n: int) -> Path:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 4)) @ rng.standard_normal((4, 4))
    rows: list[list[Any]] = [
        [f"id{i:06d}", *x[i].tolist(), f'"note, {i}"' if i % 97 == 0 else "n"] for i in range(n)
    ]
    rows[5][2] = "not a number"
    return write_csv(path, ["id", "a", "b", "c", "d", "note"], rows)


def _parquet(path: Path, n: int) -> Path:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, 3))
    table = pa.table(
        {"k": [f"r{i}" for i in range(n)], "a": x[:, 0], "b": x[:, 1] * 2 + x[:, 0], "c": x[:, 2]}
    )
    pq.write_table(table, path, row_group_size=5000)
    return path


def _streamed(bucket: str, src: Path, run_dir: Path, spec: JobSpec, **kwargs: Any) -> RunResult:
    s3 = boto3.client("s3")
    key = f"run={spec.run_id}/input/{src.name}"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=src.read_bytes())["ETag"].strip('"')
    source = S3Source(s3, bucket, key, src.stat().st_size, etag, part_bytes=PART)
    prefix = f"out/run={spec.run_id}/"
    return run_job(
        [source],
        run_dir,
        spec,
        input_names=[src.name],
        sinks=lambda k, content_type: S3Writer(s3, bucket, prefix + k, content_type),
        **kwargs,
    )


def _artifact_bytes(bucket: str, result: RunResult) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    out = {}
    for a in result.artifacts:
        if a.key in result.streamed:
            body = s3.get_object(Bucket=bucket, Key=f"out/run={result.run_id}/{a.key}")["Body"].read()
        else:
            body = (result.run_dir / a.key).read_bytes()
        assert len(body) == a.bytes and hashlib.sha256(body).hexdigest() == a.sha256, a.key
        out[a.key] = body
    return out


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("csv", JobSpec(run_id="s1", mode="enhanced", chunk_rows=4096)),
        ("parquet", JobSpec(run_id="s1", mode="enhanced", chunk_rows=4096, output_format="parquet")),
    ],
)
def test_a_job_from_s3_sources_to_s3_sinks_equals_the_same_job_on_local_files(
    bucket: str, tmp_path: Path, kind: str, spec: JobSpec
) -> None:
    src = _csv(tmp_path / "t.csv", 40_000) if kind == "csv" else _parquet(tmp_path / "t.parquet", 40_000)
    assert src.stat().st_size > 4 * PART
    local = run_job([src], tmp_path / "local" / "run=s1", spec, input_names=[src.name])
    streamed = _streamed(bucket, src, tmp_path / "streamed" / "run=s1", spec)
    assert [a.to_dict() for a in streamed.artifacts] == [a.to_dict() for a in local.artifacts]
    assert streamed.input == local.input and streamed.rows == local.rows
    assert streamed.input["sha256"] == [hashlib.sha256(src.read_bytes()).hexdigest()]
    rows = {"output/Q_keep", "output/Q_discard", "output/Q_rejected", "output/svd_scores"}
    assert {k.rsplit(".", 1)[0] for k in streamed.streamed} == rows
    assert not any((streamed.run_dir / k).exists() for k in streamed.streamed)  # nothing on scratch
    assert _artifact_bytes(bucket, streamed) == {
        a.key: (local.run_dir / a.key).read_bytes() for a in local.artifacts
    }
    assert local.spill["reason"] == ("fits" if kind == "csv" else "parquet")


def test_without_scratch_room_pass_2_parses_the_csv_again_with_the_same_results(
    bucket: str, tmp_path: Path
) -> None:
    src = _csv(tmp_path / "t.csv", 20_000)
    spec = JobSpec(run_id="s2", chunk_rows=2048)
    spilled = run_job([src], tmp_path / "a" / "run=s2", spec, input_names=[src.name])
    unspilled = _streamed(bucket, src, tmp_path / "b" / "run=s2", spec, scratch_limit=0)
    assert spilled.spill["spilled"] is True and spilled.spill["bytes"] > src.stat().st_size
    assert unspilled.spill == {"spilled": False, "bytes": 0, "budget_bytes": 0, "reason": "over_budget"}
    assert [a.to_dict() for a in unspilled.artifacts] == [a.to_dict() for a in spilled.artifacts]


def test_a_job_whose_row_output_cannot_go_up_leaves_no_row_object_and_no_pending_upload(
    bucket: str, tmp_path: Path
) -> None:
    # Q_keep goes to a bucket that does not exist: it fails, the other row outputs are aborted
    src = _csv(tmp_path / "t.csv", 100_000)
    s3 = boto3.client("s3")

    def sinks(key: str, content_type: str) -> S3Writer:
        target = f"{bucket}-missing" if "Q_keep" in key else bucket
        return S3Writer(s3, target, f"out/{key}", content_type)

    with pytest.raises(Q4Error) as excinfo:
        run_job([src], tmp_path / "run=s3", JobSpec(run_id="s3"), sinks=sinks)
    assert excinfo.value.code == "missing_resource"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not (tmp_path / "run=s3" / "output").exists()
