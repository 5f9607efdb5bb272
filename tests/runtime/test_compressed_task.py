"""The task (`q4-task` on moto) reads compressed CSV parts under an input prefix beside plain ones, and
fails a run whose compressed input does not decompress (docs/contract.md, "Compressed CSV")."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json

import pyarrow as pa
import q4_contract as contract
from support.pipeline import Pipeline, accept, drain, keys, put, read, run_task, table


def test_an_input_prefix_of_compressed_and_plain_parts_is_one_table(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN a prefix with a gzip part (its name long enough to be shortened on disk), a bzip2 part, a
    # Zstandard part, a plain part and objects that are not tables
    parts = {
        "run=z1/input/parts/" + "p" * 300 + "-1.csv.gz": gzip.compress(table(40, seed=1)),
        "run=z1/input/parts/p-2.CSV.BZ2": bz2.compress(table(30, seed=2)),
        "run=z1/input/parts/p-3.csv.zst": pa.Codec("zstd").compress(table(20, seed=3), asbytes=True),
        "run=z1/input/parts/p-4.csv": table(10, seed=4),
    }
    for key, body in parts.items():
        put(pipeline.archive_bucket, key, body)
    put(pipeline.archive_bucket, "run=z1/input/parts/notes.gz", gzip.compress(b"not a table"))
    put(pipeline.archive_bucket, "run=z1/input/parts/p-5.parquet.gz", gzip.compress(b"not read"))
    job = accept(pipeline, {"run_id": "z1", "input_prefix": "run=z1/input/parts/"})
    # WHEN the task runs
    process = run_task(pipeline, aws_env, job)
    # THEN the four tables are read as one, each recorded as stored (compressed size and ETag)
    assert process.returncode == 0, process.stdout
    manifest = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key("z1")))
    assert manifest["rows"]["input"] == 100
    assert [(i["key"], i["size"], i["etag"]) for i in manifest["inputs"]] == [
        (key, len(body), hashlib.md5(body).hexdigest()) for key, body in sorted(parts.items())
    ]
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded"


def test_a_truncated_gzip_input_fails_the_run_with_malformed_csv(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    packed = gzip.compress(table(60))
    put(pipeline.archive_bucket, "run=z2/input/x.csv.gz", packed[: len(packed) // 2])
    job = accept(pipeline, {"run_id": "z2", "input_key": "run=z2/input/x.csv.gz"})
    process = run_task(pipeline, aws_env, job)
    assert process.returncode == 2, process.stdout
    assert keys(pipeline.artifacts_bucket, "run=z2/") == ["run=z2/ERROR.json", "run=z2/job.json"]
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key("z2")))
    assert error["code"] == "malformed_csv"
    assert error["message"].startswith("The CSV file x.csv.gz is not a complete gzip stream (")
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"] == {
        "code": "malformed_csv",
        "message": error["message"],
    }


def test_the_work_message_takes_compressed_csv_keys_only() -> None:
    for name in ("x.csv.gz", "x.CSV.Bz2", "x.csv.zst"):
        job = contract.parse_job({"run_id": "z3", "input_key": f"run=z3/input/{name}"})
        assert job.input_key == f"run=z3/input/{name}"
    for name in ("x.gz", "x.parquet.gz", "x.csv.xz", "x.tar.gz"):
        try:
            contract.parse_job({"run_id": "z3", "input_key": f"run=z3/input/{name}"})
        except contract.Rejection as exc:
            assert exc.code == "unsupported_input", name
        else:
            raise AssertionError(f"{name} was accepted")
