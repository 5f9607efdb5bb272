"""The orchestrator Lambda handler against real SQS batches, S3 and ECS in the moto server."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
import q4_contract as contract
from botocore.awsrequest import AWSResponse
from q4_orchestrator.handler import lambda_handler
from support.pipeline import (
    SEED_MESSAGE,
    Pipeline,
    artifact_keys,
    deliver_batches,
    drain,
    put_input,
    queue_depth,
    send_work,
    sqs_event,
    stopped_event,
    task_env,
    tasks_of,
)

# ---------------------------------------------------------------- SQS batches


def test_seed_example_message_launches_one_fargate_task(pipeline: Pipeline) -> None:
    # GIVEN the seeds' input object and their example message, unchanged
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    # WHEN the event source mapping delivers it
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN one task runs with the per-run environment, job.json and the launch record are written
    assert (delivery.received, delivery.deleted, delivery.failed) == (1, 1, 0)
    (task,) = tasks_of(pipeline)
    assert task["launchType"] == "FARGATE"
    assert task["startedBy"] == "q4:2025-08-25-001"
    env = task_env(task)
    assert env["Q4_RUN_ID"] == "2025-08-25-001"
    assert env["Q4_INPUT_KEY"] == "run=2025-08-25-001/input/mydata.csv"
    assert env["Q4_MODE"] == "standard" and env["Q4_ATTEMPT"] == "1"
    assert artifact_keys(pipeline) == ["run=2025-08-25-001/attempts/1.json", "run=2025-08-25-001/job.json"]
    s3 = boto3.client("s3")
    job = json.loads(
        s3.get_object(Bucket=pipeline.artifacts_bucket, Key="run=2025-08-25-001/job.json")["Body"].read()
    )
    assert job["input_key"] == "run=2025-08-25-001/input/mydata.csv" and job["mode"] == "standard"
    record = json.loads(
        s3.get_object(Bucket=pipeline.artifacts_bucket, Key="run=2025-08-25-001/attempts/1.json")[
            "Body"
        ].read()
    )
    assert record["task_arn"] == task["taskArn"]
    assert drain(pipeline.done_queue_url) == []
    assert queue_depth(pipeline.work_queue_url) == 0


BAD_MESSAGES = [
    ("not json", "invalid_json"),
    ('["run_id"]', "invalid_message"),
    ('{"run_id":"r1","input_key":"run=r1/input/../../etc/passwd"}', "path_traversal"),
    ('{"run_id":"r1","input_key":"run=r2/input/x.csv"}', "wrong_prefix"),
    ('{"run_id":"r1","input_key":"input/x.csv"}', "wrong_prefix"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","colour":"red"}', "unknown_field"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","svd_k":"5"}', "invalid_type"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","svd_k":true}', "invalid_type"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","features":"a,b"}', "invalid_type"),
    ('{"run_id":"../r1","input_key":"run=../r1/input/x.csv"}', "invalid_run_id"),
    ('{"run_id":"a..b","input_key":"run=a..b/input/x.csv"}', "invalid_run_id"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","mode":"turbo"}', "unknown_mode"),
    ('{"run_id":"r1","input_key":"run=r1/input/x.csv","input_prefix":"run=r1/input/"}', "invalid_input"),
    ('{"run_id":"r1","input_key":"run=r1/input/missing.csv"}', "input_not_found"),
]


def test_bad_messages_are_rejected_at_once_with_a_done_message(pipeline: Pipeline) -> None:
    # GIVEN a batch of malformed work messages (sent in two batches of at most 10)
    for body, _ in BAD_MESSAGES:
        send_work(pipeline, body)
    # WHEN they are delivered
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN each ends exactly once: deleted, one rejected done message, nothing launched or written
    assert (delivery.received, delivery.deleted, delivery.failed) == (len(BAD_MESSAGES), len(BAD_MESSAGES), 0)
    done = drain(pipeline.done_queue_url)
    assert sorted(message["error"]["code"] for message in done) == sorted(code for _, code in BAD_MESSAGES)
    for message in done:
        assert message["schema"] == "q4.done/v1" and message["status"] == "rejected"
        assert message["error"]["message"].endswith(".")
        assert message["duplicate"] is False
    assert tasks_of(pipeline) == []
    assert artifact_keys(pipeline) == []
    assert queue_depth(pipeline.work_queue_url) == 0 and queue_depth(pipeline.dlq_url) == 0


def test_duplicate_message_of_an_in_flight_run_is_not_launched_twice(pipeline: Pipeline) -> None:
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # WHEN the same message arrives again (and the same job with defaults spelled out)
    send_work(pipeline, SEED_MESSAGE)
    send_work(pipeline, json.loads(json.dumps(SEED_MESSAGE)).replace("}", ',"mode":"standard","svd_k":10}'))
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN still one task, no done message, both deleted
    assert (delivery.deleted, delivery.failed) == (2, 0)
    assert len(tasks_of(pipeline)) == 1
    assert drain(pipeline.done_queue_url) == []


def test_different_job_for_an_accepted_run_is_rejected_as_conflict(pipeline: Pipeline) -> None:
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    send_work(pipeline, SEED_MESSAGE.replace("}", ',"mode":"full"}'))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "rejected" and done["error"]["code"] == "run_conflict"
    assert len(tasks_of(pipeline)) == 1


def test_committed_run_gets_a_duplicate_done_message_and_no_launch(pipeline: Pipeline) -> None:
    # GIVEN a committed run (job.json + MANIFEST.json)
    s3 = boto3.client("s3")
    job = contract.parse_message_body(SEED_MESSAGE)
    s3.put_object(Bucket=pipeline.artifacts_bucket, Key=contract.job_key(job.run_id), Body=job.to_json())
    manifest = {
        "schema": "q4.manifest/v1",
        "run_id": job.run_id,
        "status": "succeeded",
        "mode": "standard",
        "rows": {"input": 2, "valid": 2, "rejected": 0, "keep": 1, "discard": 1},
        "attempt": 1,
        "duration_s": 1.5,
    }
    s3.put_object(
        Bucket=pipeline.artifacts_bucket, Key=contract.manifest_key(job.run_id), Body=json.dumps(manifest)
    )
    # WHEN the work message is re-sent
    send_work(pipeline, SEED_MESSAGE)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN a duplicate copy of the succeeded done message, no task
    (done,) = drain(pipeline.done_queue_url)
    assert done == {**contract.succeeded_done(manifest, pipeline.artifacts_bucket), "duplicate": True}
    assert done["manifest_key"] == "run=2025-08-25-001/MANIFEST.json" and done["rows"]["keep"] == 1
    assert tasks_of(pipeline) == []


def test_run_task_error_is_retried_through_sqs_into_the_dlq(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an orchestrator pointing at a cluster that does not exist (RunTask fails at the ECS API)
    monkeypatch.setenv("Q4_CLUSTER", "no-such-cluster")
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    # WHEN the event source mapping keeps delivering it
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN it is a batch item failure each time and lands in the DLQ after maxReceiveCount, never lost
    assert delivery.failed == pipeline.max_receive_count and delivery.deleted == 0
    assert queue_depth(pipeline.work_queue_url) == 0
    (dead,) = drain(pipeline.dlq_url)
    assert dead == json.loads(SEED_MESSAGE)
    assert drain(pipeline.done_queue_url) == []
    assert artifact_keys(pipeline) == ["run=2025-08-25-001/job.json"]


def test_run_task_failures_entry_and_throttling_are_transient(pipeline: Pipeline, boto_hooks: Any) -> None:
    # GIVEN RunTask answering 200 with a failures entry, then throttling, then working again
    answers = ["failures", "throttled"]

    def run_task_hook(**kwargs: Any) -> Any:
        if not answers:
            return None
        answer = answers.pop(0)
        response = AWSResponse("https://ecs", 200 if answer == "failures" else 400, {}, None)
        if answer == "failures":
            return response, {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:MEMORY"}]}
        return response, {
            "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    boto_hooks("before-call.ecs.RunTask", run_task_hook)
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    # WHEN delivered three times (the queue's DLQ allows two receives, so use a fresh message per round)
    first = deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1)
    second = deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1)
    assert (first.failed, second.failed) == (1, 1)
    assert tasks_of(pipeline) == [] and answers == []
    send_work(pipeline, SEED_MESSAGE)
    third = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN the message that got through launched exactly one task
    assert third.deleted == 1 and len(tasks_of(pipeline)) == 1
    assert drain(pipeline.done_queue_url) == []


def test_mixed_batch_reports_only_the_failed_item(pipeline: Pipeline, boto_hooks: Any) -> None:
    failures = {"count": 0}

    def fail_run_r2(**kwargs: Any) -> Any:
        request = json.loads(kwargs["params"]["body"])
        env = {e["name"]: e["value"] for e in request["overrides"]["containerOverrides"][0]["environment"]}
        if env["Q4_RUN_ID"] != "r2":
            return None
        failures["count"] += 1
        return AWSResponse("https://ecs", 200, {}, None), {"tasks": [], "failures": [{"reason": "AGENT"}]}

    boto_hooks("before-call.ecs.RunTask", fail_run_r2)
    for run_id in ("r1", "r2"):
        put_input(pipeline, f"run={run_id}/input/data.csv")
    sqs = boto3.client("sqs")
    for body in (
        '{"run_id":"r1","input_key":"run=r1/input/data.csv"}',
        '{"run_id":"r2","input_key":"run=r2/input/data.csv"}',
        "{oops",
    ):
        sqs.send_message(QueueUrl=pipeline.work_queue_url, MessageBody=body)
    messages = sqs.receive_message(QueueUrl=pipeline.work_queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 3

    response = lambda_handler(sqs_event(pipeline.work_queue_url, messages), None)
    r2_id = next(m["MessageId"] for m in messages if '"r2"' in m["Body"])
    assert response == {"batchItemFailures": [{"itemIdentifier": r2_id}]}
    assert failures["count"] == 1
    assert [task_env(t)["Q4_RUN_ID"] for t in tasks_of(pipeline)] == ["r1"]
    (rejected,) = drain(pipeline.done_queue_url)
    assert rejected["error"]["code"] == "invalid_json"


def test_input_prefix_job_launches_with_prefix_env(pipeline: Pipeline) -> None:
    put_input(pipeline, "run=p1/input/parts/a.csv")
    put_input(pipeline, "run=p1/input/parts/b.csv")
    send_work(
        pipeline,
        '{"run_id":"p1","input_prefix":"run=p1/input/parts","mode":"enhanced","svd_k":3,'
        '"features":["a","b"],"output_format":"parquet"}',
    )
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (task,) = tasks_of(pipeline)
    env = task_env(task)
    assert env["Q4_INPUT_PREFIX"] == "run=p1/input/parts/" and "Q4_INPUT_KEY" not in env
    assert (env["Q4_MODE"], env["Q4_SVD_K"], env["Q4_FEATURES"], env["Q4_OUTPUT_FORMAT"]) == (
        "enhanced",
        "3",
        "a,b",
        "parquet",
    )
    assert contract.Job.from_env(env) == contract.parse_message_body(
        '{"run_id":"p1","input_prefix":"run=p1/input/parts/","mode":"enhanced","svd_k":3,'
        '"features":["a","b"],"output_format":"parquet"}'
    )


# ---------------------------------------------------------------- crash recovery


def launched(pipeline: Pipeline) -> dict[str, Any]:
    put_input(pipeline, "run=2025-08-25-001/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (task,) = tasks_of(pipeline)
    return task


def task_of_attempt(pipeline: Pipeline, attempt: int) -> dict[str, Any]:
    (task,) = [t for t in tasks_of(pipeline) if task_env(t)["Q4_ATTEMPT"] == str(attempt)]
    return task


def test_crashed_task_is_relaunched_then_reported_failed(pipeline: Pipeline) -> None:
    first = launched(pipeline)
    # WHEN attempt 1 fails to start (no exit code) and the same event arrives twice
    event = stopped_event(
        pipeline,
        first,
        None,
        stopCode="TaskFailedToStart",
        stoppedReason="CannotPullContainerError: pull access denied",
    )
    assert lambda_handler(event, None) == {"outcome": "relaunched"}
    assert lambda_handler(event, None) == {"outcome": "stale"}
    # THEN exactly one attempt 2 exists, with Q4_ATTEMPT=2 and the same job
    assert len(tasks_of(pipeline)) == 2
    second = task_of_attempt(pipeline, 2)
    assert contract.Job.from_env(task_env(second)) == contract.parse_message_body(SEED_MESSAGE)
    # WHEN attempt 2 is OOM-killed, attempt 3 starts; a late event of attempt 1 is stale
    assert lambda_handler(stopped_event(pipeline, second, 137, stoppedReason="OutOfMemoryError"), None) == {
        "outcome": "relaunched"
    }
    assert lambda_handler(event, None) == {"outcome": "stale"}
    third = task_of_attempt(pipeline, 3)
    assert drain(pipeline.done_queue_url) == []
    # WHEN the last attempt crashes (exit 1), the run fails with task_crashed and the stop reason
    last = stopped_event(pipeline, third, 1)
    assert lambda_handler(last, None) == {"outcome": "failed"}
    assert lambda_handler(last, None) == {"outcome": "stale"}
    assert len(tasks_of(pipeline)) == 3
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "task_crashed"
    assert "exit code 1" in done["error"]["message"] and done["attempt"] == 3
    error = json.loads(
        boto3.client("s3")
        .get_object(Bucket=pipeline.artifacts_bucket, Key="run=2025-08-25-001/ERROR.json")["Body"]
        .read()
    )
    assert error["schema"] == "q4.error/v1" and error["code"] == "task_crashed" and error["attempts"] == 3
    assert error["details"]["stop_code"] == "EssentialContainerExited"
    assert "run=2025-08-25-001/MANIFEST.json" not in artifact_keys(pipeline)


@pytest.mark.parametrize("exit_code", [0, 2])
def test_clean_exits_need_no_recovery(pipeline: Pipeline, exit_code: int) -> None:
    task = launched(pipeline)
    assert lambda_handler(stopped_event(pipeline, task, exit_code), None) == {"outcome": "reported"}
    assert len(tasks_of(pipeline)) == 1 and drain(pipeline.done_queue_url) == []


def test_crash_after_commit_resends_the_done_message_instead_of_relaunching(pipeline: Pipeline) -> None:
    task = launched(pipeline)
    manifest = {
        "schema": "q4.manifest/v1",
        "run_id": "2025-08-25-001",
        "status": "succeeded",
        "mode": "standard",
        "rows": {"keep": 3},
        "attempt": 1,
        "duration_s": 2.0,
    }
    boto3.client("s3").put_object(
        Bucket=pipeline.artifacts_bucket, Key="run=2025-08-25-001/MANIFEST.json", Body=json.dumps(manifest)
    )
    event = stopped_event(pipeline, task, 1)
    assert lambda_handler(event, None) == {"outcome": "resent"}
    assert lambda_handler(event, None) == {"outcome": "stale"}
    (done,) = drain(pipeline.done_queue_url)
    assert done == contract.succeeded_done(manifest, pipeline.artifacts_bucket)
    assert len(tasks_of(pipeline)) == 1


def test_events_of_other_clusters_and_tasks_are_ignored(pipeline: Pipeline) -> None:
    task = launched(pipeline)
    foreign = stopped_event(pipeline, task, 1)
    foreign["detail"]["clusterArn"] = "arn:aws:ecs:us-east-1:123456789012:cluster/other"
    assert lambda_handler(foreign, None) == {"outcome": "ignored"}
    running = stopped_event(pipeline, task, None)
    running["detail"]["lastStatus"] = "RUNNING"
    assert lambda_handler(running, None) == {"outcome": "ignored"}
    assert lambda_handler({"source": "aws.s3"}, None) == {"outcome": "ignored"}
    assert len(tasks_of(pipeline)) == 1
