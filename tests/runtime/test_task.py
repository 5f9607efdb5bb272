"""The Fargate task (`q4-task`) as a real subprocess, its environment per docs/contract.md, on moto."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3
import pytest
import q4_contract as contract
from support.pipeline import (
    SEED_KEY,
    Pipeline,
    accept,
    drain,
    keys,
    log_lines,
    put,
    read,
    run_task,
    table,
)

RUN_ID = "2025-08-25-001"


def test_seed_job_runs_end_to_end_from_s3_input_to_done_message(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN the seeds' input and job
    put(pipeline.archive_bucket, SEED_KEY, table())
    before = boto3.client("s3").head_object(Bucket=pipeline.archive_bucket, Key=SEED_KEY)["ETag"]
    job = accept(pipeline, {"input_key": SEED_KEY, "run_id": RUN_ID})
    # WHEN the task runs
    process = run_task(pipeline, aws_env, job)
    # THEN it succeeds, commits every artifact with a manifest that holds and sends the done message
    assert process.returncode == 0, process.stdout + process.stderr
    prefix = f"run={RUN_ID}/"
    assert keys(pipeline.artifacts_bucket, prefix) == sorted(
        prefix + name
        for name in (
            "job.json",
            "MANIFEST.json",
            "output/Q_keep.csv",
            "output/Q_discard.csv",
            "output/Q_rejected.csv",
            "output/er.json",
            "output/Q_study.json",
        )
    )
    manifest = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key(RUN_ID)))
    assert manifest["schema"] == "q4.manifest/v1" and manifest["status"] == "succeeded"
    assert manifest["job"] == job.to_dict()
    assert manifest["inputs"] == [{"key": SEED_KEY, "size": len(table()), "etag": before.strip('"')}]
    assert manifest["compute"]["task_arn"].endswith(f"{RUN_ID}-1") and manifest["compute"]["attempt"] == 1
    for artifact in manifest["artifacts"]:
        body = read(pipeline.artifacts_bucket, prefix + artifact["key"])
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"] and len(body) == artifact["bytes"]
    assert manifest["rows"]["input"] == 60
    assert manifest["rows"]["keep"] + manifest["rows"]["discard"] + manifest["rows"]["rejected"] == 60
    (done,) = drain(pipeline.done_queue_url)
    assert done == contract.succeeded_done(manifest, pipeline.artifacts_bucket)
    assert done["status"] == "succeeded" and done["manifest_key"] == f"run={RUN_ID}/MANIFEST.json"
    assert done["attempt"] == 1 and done["duplicate"] is False and done["duration_s"] > 0
    # inputs are never modified
    assert keys(pipeline.archive_bucket) == [SEED_KEY]
    assert boto3.client("s3").head_object(Bucket=pipeline.archive_bucket, Key=SEED_KEY)["ETag"] == before
    # logs: one JSON object per line, each with the run id
    lines = log_lines(process)
    assert lines and all(line["run_id"] == RUN_ID and line["attempt"] == 1 for line in lines)
    assert any(line["message"] == "Run succeeded." for line in lines)


def test_committed_run_is_not_rewritten_and_another_job_is_refused(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    put(pipeline.archive_bucket, SEED_KEY, table())
    job = accept(pipeline, {"input_key": SEED_KEY, "run_id": RUN_ID})
    assert run_task(pipeline, aws_env, job).returncode == 0
    drain(pipeline.done_queue_url)
    s3 = boto3.client("s3")
    listing = {
        k: s3.head_object(Bucket=pipeline.artifacts_bucket, Key=k)["LastModified"]
        for k in keys(pipeline.artifacts_bucket)
    }
    # WHEN the same job runs again (a relaunch or a racing task): exit 0, nothing rewritten, no done message
    again = run_task(pipeline, aws_env, job, attempt=2)
    assert again.returncode == 0
    # WHEN a different job runs for the committed run: refused with exit 2, nothing written
    other = contract.parse_job({"input_key": SEED_KEY, "run_id": RUN_ID, "mode": "full"})
    refused = run_task(pipeline, aws_env, other)
    assert refused.returncode == 2
    assert any("different job" in line["message"] for line in log_lines(refused))
    assert {
        k: s3.head_object(Bucket=pipeline.artifacts_bucket, Key=k)["LastModified"]
        for k in keys(pipeline.artifacts_bucket)
    } == listing
    assert drain(pipeline.done_queue_url) == []


def test_prefix_input_enhanced_mode_and_model_reuse(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    # GIVEN two CSV parts and a README under the prefix
    put(pipeline.archive_bucket, "run=p1/input/parts/part-1.csv", table(40, seed=1))
    put(
        pipeline.archive_bucket,
        "run=p1/input/parts/part-2.csv",
        table(30, seed=2).split(b"\n", 1)[0] + b"\n" + table(30, seed=2).split(b"\n", 1)[1],
    )
    put(pipeline.archive_bucket, "run=p1/input/parts/README.txt", b"not a table")
    job = accept(
        pipeline,
        {
            "run_id": "p1",
            "input_prefix": "run=p1/input/parts/",
            "mode": "enhanced",
            "svd_k": 2,
            "features": ["a", "b", "c"],
        },
    )
    process = run_task(pipeline, aws_env, job)
    assert process.returncode == 0, process.stdout
    manifest = json.loads(read(pipeline.artifacts_bucket, "run=p1/MANIFEST.json"))
    assert [i["key"] for i in manifest["inputs"]] == [
        "run=p1/input/parts/part-1.csv",
        "run=p1/input/parts/part-2.csv",
    ]
    assert manifest["rows"]["input"] == 70
    assert "run=p1/model/q4_model.json" in keys(pipeline.artifacts_bucket, "run=p1/")
    assert "run=p1/output/svd_scores.csv" in keys(pipeline.artifacts_bucket, "run=p1/")
    # WHEN a later run applies that model
    put(pipeline.archive_bucket, "run=p2/input/new.csv", table(25, seed=3))
    reuse = accept(
        pipeline,
        {"run_id": "p2", "input_key": "run=p2/input/new.csv", "model_key": "run=p1/model/q4_model.json"},
    )
    assert run_task(pipeline, aws_env, reuse).returncode == 0
    study = json.loads(read(pipeline.artifacts_bucket, "run=p2/output/Q_study.json"))
    assert study["mean"] == json.loads(read(pipeline.artifacts_bucket, "run=p1/output/Q_study.json"))["mean"]
    assert [d["status"] for d in drain(pipeline.done_queue_url)] == ["succeeded", "succeeded"]


@pytest.mark.parametrize(
    ("message", "body", "code"),
    [
        ({"run_id": "bad1", "input_key": "run=bad1/input/x.csv"}, b"a,b\n1,2\n", "too_few_rows"),
        ({"run_id": "bad2", "input_key": "run=bad2/input/x.csv"}, None, "input_not_found"),
        (
            {
                "run_id": "bad3",
                "input_key": "run=bad3/input/x.csv",
                "model_key": "run=none/model/q4_model.json",
            },
            table(),
            "model_not_found",
        ),
    ],
)
def test_bad_input_fails_permanently_with_error_json_and_done_message(
    pipeline: Pipeline, aws_env: dict[str, str], message: dict[str, Any], body: bytes | None, code: str
) -> None:
    if body is not None:
        put(pipeline.archive_bucket, message["input_key"], body)
    job = accept(pipeline, message)
    process = run_task(pipeline, aws_env, job)
    # THEN exit 2, ERROR.json (no MANIFEST.json, no partial outputs) and one failed done message
    assert process.returncode == 2, process.stdout
    run_id = message["run_id"]
    assert keys(pipeline.artifacts_bucket, f"run={run_id}/") == [
        f"run={run_id}/ERROR.json",
        f"run={run_id}/job.json",
    ]
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(run_id)))
    assert error["schema"] == "q4.error/v1" and error["code"] == code and error["attempts"] == 1
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"] == {"code": code, "message": error["message"]}
    assert done["mode"] == "standard"
    # a relaunch of the failed run writes nothing and exits 2
    assert run_task(pipeline, aws_env, job, attempt=2).returncode == 2
    assert drain(pipeline.done_queue_url) == []


def test_transient_aws_trouble_is_a_crash_not_an_error(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    put(pipeline.archive_bucket, SEED_KEY, table())
    job = accept(pipeline, {"input_key": SEED_KEY, "run_id": RUN_ID})
    # WHEN the done queue cannot be reached after the commit
    process = run_task(pipeline, aws_env, job, Q4_DONE_QUEUE_URL=pipeline.done_queue_url + "-missing")
    # THEN a crash exit (the orchestrator re-sends the done message from the manifest), no ERROR.json
    assert process.returncode == 1, process.stdout
    assert contract.manifest_key(RUN_ID) in keys(pipeline.artifacts_bucket)
    assert contract.error_key(RUN_ID) not in keys(pipeline.artifacts_bucket)
    # WHEN the task is misconfigured (no artifacts bucket): a crash, nothing written
    other = accept(pipeline, {"input_key": "run=r2/input/x.csv", "run_id": "r2"})
    assert run_task(pipeline, aws_env, other, Q4_ARTIFACTS_BUCKET=None).returncode == 1
    assert keys(pipeline.artifacts_bucket, "run=r2/") == ["run=r2/job.json"]


def test_task_with_an_invalid_job_environment_fails_the_run(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    job = contract.parse_job({"input_key": "run=r3/input/x.csv", "run_id": "r3"})
    process = run_task(pipeline, aws_env, job, Q4_MODE="turbo")
    assert process.returncode == 2
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key("r3")))
    assert error["code"] == "unknown_mode"
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "unknown_mode"


def test_compute_comes_from_the_ecs_task_metadata_endpoint(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    import http.server
    import threading

    metadata = {
        "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/q4/abc",
        "Limits": {"CPU": 2, "Memory": 8192},
    }

    class MetadataHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(metadata).encode() if self.path == "/v4/task" else b"{}"
            self.send_response(200 if self.path == "/v4/task" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MetadataHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        put(pipeline.archive_bucket, SEED_KEY, table())
        job = accept(pipeline, {"input_key": SEED_KEY, "run_id": RUN_ID})
        uri = f"http://127.0.0.1:{server.server_address[1]}/v4"
        process = run_task(pipeline, aws_env, job, ECS_CONTAINER_METADATA_URI_V4=uri, Q4_TASK_ARN=None)
    finally:
        server.shutdown()
        server.server_close()
    assert process.returncode == 0, process.stdout
    manifest = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key(RUN_ID)))
    assert manifest["compute"] == {"task_arn": metadata["TaskARN"], "cpu": 2, "memory": 8192, "attempt": 1}
