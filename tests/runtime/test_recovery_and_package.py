"""Crash recovery across the real task and the real handler; the Lambda package's imports; 403-as-missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import q4_contract as contract
from botocore.awsrequest import AWSResponse
from q4_orchestrator.handler import lambda_handler
from q4_orchestrator.runs import RunStore
from support.pipeline import (
    SEED_KEY,
    Pipeline,
    deliver_batches,
    drain,
    put,
    run_task,
    table,
)

REPO = Path(__file__).resolve().parents[2]


def test_lambda_package_imports_neither_numpy_nor_q4() -> None:
    # GIVEN only the orchestrator package on the path (what the Lambda zip holds, plus the runtime's boto3)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import q4_orchestrator.handler, q4_contract;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'q4', 'pyarrow', 'pandas'));"
        "print(','.join(bad))"
    )
    process = subprocess.run(
        [sys.executable, "-I", "-c", code, str(REPO / "orchestrator")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert process.stdout.strip() == ""


def stopped(pipeline: Pipeline, attempt: int, exit_code: int | None) -> dict[str, Any]:
    ecs = boto3.client("ecs")
    tasks = ecs.describe_tasks(
        cluster=pipeline.cluster, tasks=ecs.list_tasks(cluster=pipeline.cluster)["taskArns"]
    )
    (task,) = [
        t
        for t in tasks["tasks"]
        if {e["name"]: e["value"] for e in t["overrides"]["containerOverrides"][0]["environment"]}[
            "Q4_ATTEMPT"
        ]
        == str(attempt)
    ]
    container: dict[str, Any] = {"name": "q4", "lastStatus": "STOPPED"}
    if exit_code is not None:
        container["exitCode"] = exit_code
    return {
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "detail": {
            "clusterArn": task["clusterArn"],
            "taskArn": task["taskArn"],
            "lastStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "containers": [container],
            "overrides": task["overrides"],
        },
    }


def test_task_crash_between_commit_and_done_is_recovered_with_the_same_done_message(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN a run launched by the orchestrator whose task commits but cannot send its done message
    put(pipeline.archive_bucket, SEED_KEY, table())
    boto3.client("sqs").send_message(
        QueueUrl=pipeline.work_queue_url,
        MessageBody='{"input_key":"run=2025-08-25-001/input/mydata.csv","run_id":"2025-08-25-001"}',
    )
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    job = contract.parse_job(
        json.loads(
            boto3.client("s3")
            .get_object(Bucket=pipeline.artifacts_bucket, Key="run=2025-08-25-001/job.json")["Body"]
            .read()
        )
    )
    crashed = run_task(pipeline, aws_env, job, Q4_DONE_QUEUE_URL=pipeline.done_queue_url + "-gone")
    assert crashed.returncode == 1
    # WHEN its STOPPED event (exit 1) reaches the orchestrator, twice
    event = stopped(pipeline, 1, 1)
    assert lambda_handler(event, None) == {"outcome": "resent"}
    assert lambda_handler(event, None) == {"outcome": "stale"}
    # THEN one done message, built from the manifest, and no relaunch
    manifest = RunStore(boto3.client("s3"), pipeline.artifacts_bucket).manifest("2025-08-25-001")
    assert manifest is not None
    (done,) = drain(pipeline.done_queue_url)
    assert done == contract.succeeded_done(manifest, pipeline.artifacts_bucket)
    assert len(boto3.client("ecs").list_tasks(cluster=pipeline.cluster)["taskArns"]) == 1


def test_relaunched_attempt_runs_the_same_job_and_succeeds(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    put(pipeline.archive_bucket, SEED_KEY, table())
    boto3.client("sqs").send_message(
        QueueUrl=pipeline.work_queue_url,
        MessageBody=json.dumps({"run_id": "2025-08-25-001", "input_key": SEED_KEY}),
    )
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # attempt 1 is OOM-killed before doing anything; the orchestrator relaunches attempt 2
    assert lambda_handler(stopped(pipeline, 1, 137), None) == {"outcome": "relaunched"}
    env = {
        e["name"]: e["value"]
        for e in stopped(pipeline, 2, None)["detail"]["overrides"]["containerOverrides"][0]["environment"]
    }
    process = run_task(pipeline, aws_env, contract.Job.from_env(env), attempt=int(env["Q4_ATTEMPT"]))
    assert process.returncode == 0
    assert lambda_handler(stopped(pipeline, 2, 0), None) == {"outcome": "reported"}
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded" and done["attempt"] == 2


def test_a_403_for_a_missing_key_reads_as_missing(pipeline: Pipeline) -> None:
    # GIVEN S3 answering 403 to GET/HEAD of missing keys (a prefix-conditioned s3:ListBucket grant)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=pipeline.artifacts_bucket, Key="run=x/job.json", Body=b'{"run_id": "x"}')

    def deny_missing(**kwargs: Any) -> Any:
        url = kwargs["params"]["url"]
        if url.endswith("/run%3Dx/job.json") or url.endswith("/run=x/job.json"):
            return None
        return AWSResponse(url, 403, {}, None), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    s3.meta.events.register("before-call.s3.GetObject", deny_missing)
    s3.meta.events.register("before-call.s3.HeadObject", deny_missing)
    store = RunStore(s3, pipeline.artifacts_bucket)
    # THEN missing objects read as absent, present ones as present
    assert store.manifest("x") is None and not store.exists("run=x/ERROR.json")
    assert store.job("x") == {"run_id": "x"} and store.exists("run=x/job.json")
