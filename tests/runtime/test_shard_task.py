"""A sharded run's steps in the Fargate task (`q4-task` as a real subprocess, on moto), driven by hand in
the order the orchestrator launches them (docs/contract.md, "Sharded runs"): every pass-1 shard, every
pass-2 shard, finish. The run commits the one-task answer; a step that is done does nothing again; bad
input in one shard fails the run once, naming the shard."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import q4_contract as contract
from q4.job import JobSpec, run_job
from q4_contract import shards as rules
from support.pipeline import Pipeline, accept, drain, keys, put, read, run_task, table

ROWS = 3000


def _plan(pipeline: Pipeline, job: contract.Job, key: str, size: int, shards: int) -> dict:
    doc = rules.plan_document(job.run_id, [rules.InputObject(key, size)], shards, "requested", shards)
    put(pipeline.artifacts_bucket, rules.plan_key(job.run_id), json.dumps(doc).encode())
    return doc


def _step(pipeline, aws_env, job, step: str, shard: int, attempt: int = 1):
    return run_task(
        pipeline, aws_env, job, attempt, Q4_SHARD_STEP=step, Q4_SHARD=str(shard), Q4_CHUNK_ROWS="256"
    )


def _run_all(pipeline, aws_env, job, shards: int) -> None:
    for step, count in ((rules.PASS1, shards), (rules.PASS2, shards), (rules.FINISH, 1)):
        for shard in range(count):
            process = _step(pipeline, aws_env, job, step, shard)
            assert process.returncode == 0, process.stdout + process.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_steps_commit_the_one_task_answer(pipeline: Pipeline, aws_env, tmp_path: Path, fmt: str) -> None:
    body = table(ROWS)
    key = "run=sharded-1/input/data.csv"
    put(pipeline.archive_bucket, key, body)
    job = accept(
        pipeline, {"run_id": "sharded-1", "input_key": key, "mode": "enhanced", "output_format": fmt}
    )
    plan = _plan(pipeline, job, key, len(body), 3)
    _run_all(pipeline, aws_env, job, 3)

    local = tmp_path / "data.csv"
    local.write_bytes(body)
    spec = JobSpec(run_id="sharded-1", mode="enhanced", output_format=fmt, chunk_rows=256)
    reference = run_job([local], tmp_path / "ref", spec)
    manifest = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key("sharded-1")))
    assert manifest["rows"] == reference.rows
    assert manifest["sharding"] == {"shards": 3, "requested": 3, "sized_by": "requested"}
    assert [s["bytes"] for s in manifest["shards"]] == [s["bytes"] for s in plan["slices"]]
    assert sum(s["rows"] for s in manifest["shards"]) == ROWS
    suffix = "." + fmt
    for name in ("Q_keep", "Q_discard", "Q_rejected"):
        got = read(pipeline.artifacts_bucket, f"run=sharded-1/output/{name}{suffix}")
        want = (tmp_path / "ref" / "output" / f"{name}{suffix}").read_bytes()
        if fmt == "csv":
            # the same rows, in order; the scores agree to the last bits or nearly
            got_t, want_t = pcsv.read_csv(io.BytesIO(got)), pcsv.read_csv(io.BytesIO(want))
        else:
            got_t, want_t = pq.read_table(io.BytesIO(got)), pq.read_table(io.BytesIO(want))
        assert got_t.column_names == want_t.column_names
        assert got_t.column("q4_row").to_pylist() == want_t.column("q4_row").to_pylist()
        if got_t.num_rows:
            assert (
                pa.compute.max(
                    pa.compute.abs(pa.compute.subtract(got_t.column("q4_score1"), want_t.column("q4_score1")))
                ).as_py()
                < 1e-9
            )
    artifacts = {a["key"]: a for a in manifest["artifacts"]}
    for name, artifact in artifacts.items():
        data = read(pipeline.artifacts_bucket, f"run=sharded-1/{name}")
        assert len(data) == artifact["bytes"], name
        if "parts" in artifact:  # an assembled CSV: each part's bytes hash as listed
            offset = 0
            for part in artifact["parts"]:
                piece = data[offset : offset + part["bytes"]]
                assert hashlib.sha256(piece).hexdigest() == part["sha256"], name
                offset += part["bytes"]
            assert offset == len(data) and fmt == "csv"
        else:
            assert hashlib.sha256(data).hexdigest() == artifact["sha256"], name
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded" and done["run_id"] == "sharded-1"
    # the parts were the outputs' bytes a second time: gone once the run is committed
    assert not [k for k in keys(pipeline.artifacts_bucket, "run=sharded-1/shards/") if "/output/" in k]


def test_a_step_that_is_done_does_nothing_again(pipeline: Pipeline, aws_env) -> None:
    body = table(ROWS)
    key = "run=sharded-2/input/data.csv"
    put(pipeline.archive_bucket, key, body)
    job = accept(pipeline, {"run_id": "sharded-2", "input_key": key})
    _plan(pipeline, job, key, len(body), 2)
    assert _step(pipeline, aws_env, job, rules.PASS1, 0).returncode == 0
    written = read(pipeline.artifacts_bucket, rules.partial_key("sharded-2", rules.PASS1, 0))
    again = _step(pipeline, aws_env, job, rules.PASS1, 0, attempt=2)
    assert again.returncode == 0 and "already done" in again.stdout
    assert read(pipeline.artifacts_bucket, rules.partial_key("sharded-2", rules.PASS1, 0)) == written
    # pass 2 before every pass-1 partial exists is a launch error: a crash (retried), nothing written
    early = _step(pipeline, aws_env, job, rules.PASS2, 0)
    assert early.returncode == 1 and "shard_not_ready" in early.stdout
    assert not [k for k in keys(pipeline.artifacts_bucket, "run=sharded-2/shards/pass2/")]
    # a step the plan does not have is a configuration error: a crash
    assert _step(pipeline, aws_env, job, rules.PASS1, 5).returncode == 1
    assert _step(pipeline, aws_env, job, "pass9", 0).returncode == 1


def test_bad_input_in_one_shard_fails_the_run_once_naming_the_shard(pipeline: Pipeline, aws_env) -> None:
    lines = table(30_000).decode().splitlines()
    # a row with one value too many, in the last of 3 slices, after the 1 MiB that decides the columns
    lines[28_000] += ",extra"
    body = ("\n".join(lines) + "\n").encode()
    key = "run=sharded-3/input/data.csv"
    put(pipeline.archive_bucket, key, body)
    job = accept(pipeline, {"run_id": "sharded-3", "input_key": key})
    _plan(pipeline, job, key, len(body), 3)
    # the orchestrator's records of pass 1: three launches, two of them stopped (ECS times and size)
    for shard in range(3):
        arn = f"arn:aws:ecs:us-east-1:123456789012:task/q4/p1-{shard}"
        launch = {"run_id": "sharded-3", "attempt": 1, "task_arn": arn}
        put(
            pipeline.artifacts_bucket,
            rules.step_attempt_key("sharded-3", "pass1", shard, 1),
            json.dumps(launch).encode(),
        )
        if shard < 2:
            stop = {
                "seconds": 61.0,
                "vcpu": 1.0,
                "memory_mib": 4096.0,
                "ephemeral_gib": 21.0,
                "task_arn": arn,
            }
            put(
                pipeline.artifacts_bucket,
                rules.step_stopped_key("sharded-3", "pass1", shard, 1),
                json.dumps(stop).encode(),
            )
    codes = [_step(pipeline, aws_env, job, rules.PASS1, shard).returncode for shard in range(3)]
    codes += [_step(pipeline, aws_env, job, rules.PASS2, shard).returncode for shard in range(3)]
    # a cut CSV's bad rows surface in pass 2 (after the quote check at every boundary): one ERROR.json
    assert codes[:3] == [0, 0, 0] and set(codes[3:]) == {2}
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key("sharded-3")))
    assert error["code"] == "malformed_csv" and error["details"]["shard_step"] == "pass2"
    assert "shard" in error["details"]
    # its cost counts every step so far: two stopped pass-1 attempts, one not yet stopped (unknown), its own
    cost = error["cost"]
    sources = sorted(str(a["source"]) for a in cost["attempts"])
    assert sources == ["None", "ecs", "ecs", "task_clock"] and cost["complete"] is False
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed"
    finish = _step(pipeline, aws_env, job, rules.FINISH, 0)
    assert finish.returncode == 2 and not keys(pipeline.artifacts_bucket, "run=sharded-3/MANIFEST.json")
