"""The DLQ way back: `q4 dlq` lists dead letters, `--redrive` moves them to the work queue, and the
orchestrator resumes the runs, checking a redriven task event against its launch record and ECS."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from q4.cli import main
from q4_orchestrator.handler import build_orchestrator, lambda_handler
from q4_orchestrator.orchestration import LaunchError
from support.pipeline import (
    SEED_MESSAGE,
    Pipeline,
    artifact_keys,
    deliver_batches,
    drain,
    put_input,
    queue_depth,
    send_work,
    stopped_event,
    task_env,
    tasks_of,
)

RUN = "2025-08-25-001"


@pytest.fixture
def user_env(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    for key, value in pipeline.user_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("Q4_DLQ_URL", pipeline.dlq_url)
    return pipeline


def launched(pipeline: Pipeline) -> dict[str, Any]:
    put_input(pipeline, f"run={RUN}/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (task,) = tasks_of(pipeline)
    return task


def stop_in_ecs(pipeline: Pipeline, task: dict[str, Any]) -> None:
    boto3.client("ecs").stop_task(cluster=pipeline.cluster, task=task["taskArn"], reason="OutOfMemoryError")


def dead_letter(pipeline: Pipeline, event: dict[str, Any], error: str) -> None:
    """Keep an event in the DLQ as Lambda does after the last failed asynchronous try."""
    boto3.client("sqs").send_message(
        QueueUrl=pipeline.dlq_url,
        MessageBody=json.dumps(event),
        MessageAttributes={
            "RequestID": {"DataType": "String", "StringValue": "req-1"},
            "ErrorCode": {"DataType": "String", "StringValue": "200"},
            "ErrorMessage": {"DataType": "String", "StringValue": error},
        },
    )


def failing_run_task(boto_hooks: Any, times: int) -> list[str]:
    answers = ["failures"] * times

    def hook(**kwargs: Any) -> Any:
        if not answers:
            return None
        answers.pop()
        return AWSResponse("https://ecs", 200, {}, None), {
            "tasks": [],
            "failures": [{"arn": "x", "reason": "RESOURCE:MEMORY"}],
        }

    boto_hooks("before-call.ecs.RunTask", hook)
    return answers


def dlq_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["dlq", "--json", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_stopped_event_whose_relaunch_failed_is_redriven_and_the_run_resumes(
    user_env: Pipeline, boto_hooks: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    # GIVEN attempt 1 was OOM-killed and the relaunch's RunTask failed on every try of its STOPPED event
    first = launched(pipeline)
    stop_in_ecs(pipeline, first)
    event = stopped_event(pipeline, first, 137, stoppedReason="OutOfMemoryError")
    failing_run_task(boto_hooks, 1)
    with pytest.raises(LaunchError):
        lambda_handler(event, None)
    dead_letter(pipeline, event, "LaunchError: RunTask started no task")
    assert len(tasks_of(pipeline)) == 1
    # WHEN the user lists the DLQ
    listing = dlq_json(capsys)
    # THEN the event is shown as the run's task-stopped letter with Lambda's error, and is still there
    (letter,) = listing["messages"]
    assert (letter["kind"], letter["run_id"], letter["attempt"], letter["exit_code"]) == (
        "task-stopped",
        RUN,
        1,
        137,
    )
    assert letter["error"] == "200: LaunchError: RunTask started no task"
    assert queue_depth(pipeline.dlq_url) == 1
    # WHEN it is redriven and the work queue delivers it to the orchestrator
    assert dlq_json(capsys, "--redrive")["redriven"] == [letter["message_id"]]
    assert queue_depth(pipeline.dlq_url) == 0
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN attempt 2 runs: the run resumed, exactly once, and nothing is left in either queue
    assert (delivery.deleted, delivery.failed) == (1, 0)
    assert sorted(task_env(t)["Q4_ATTEMPT"] for t in tasks_of(pipeline)) == ["1", "2"]
    assert f"run={RUN}/attempts/2.json" in artifact_keys(pipeline)
    # AND the same event redriven again (at-least-once) is stale: no third task
    send_work(pipeline, json.dumps(event))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert len(tasks_of(pipeline)) == 2
    assert queue_depth(pipeline.work_queue_url) == 0 and drain(pipeline.done_queue_url) == []


def test_work_message_that_failed_every_delivery_is_redriven(
    user_env: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    # GIVEN a work message that went to the DLQ because RunTask failed on every delivery
    put_input(pipeline, f"run={RUN}/input/mydata.csv")
    send_work(pipeline, SEED_MESSAGE)
    monkeypatch.setenv("Q4_CLUSTER", "no-such-cluster")
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    monkeypatch.setenv("Q4_CLUSTER", pipeline.cluster)
    assert queue_depth(pipeline.dlq_url) == 1 and tasks_of(pipeline) == []
    # WHEN the user redrives only another run's letters, nothing moves
    assert dlq_json(capsys, "--redrive", "--run", "someone-else")["messages"] == []
    assert queue_depth(pipeline.dlq_url) == 1
    # WHEN they redrive this run's (the text output)
    capsys.readouterr()
    assert main(["dlq", "--redrive", "--run", RUN]) == 0
    out = capsys.readouterr().out
    assert f"moved work          run {RUN}" in out and "Moved 1 message(s)" in out
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN attempt 1 is launched once; the DLQ is empty
    (task,) = tasks_of(pipeline)
    assert task_env(task)["Q4_ATTEMPT"] == "1"
    assert queue_depth(pipeline.dlq_url) == 0 and queue_depth(pipeline.work_queue_url) == 0


def test_unknown_dlq_messages_are_listed_and_left(
    user_env: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    boto3.client("sqs").send_message(QueueUrl=pipeline.dlq_url, MessageBody="not json at all")
    doc = dlq_json(capsys, "--redrive")
    assert [m["kind"] for m in doc["messages"]] == ["unknown"] and doc["redriven"] == []
    assert len(doc["left"]) == 1
    assert queue_depth(pipeline.dlq_url) == 1 and queue_depth(pipeline.work_queue_url) == 0


def test_redriven_event_of_a_running_task_changes_nothing(user_env: Pipeline) -> None:
    pipeline = user_env
    # GIVEN a task ECS still reports RUNNING, and a STOPPED event for it sent through the work queue
    task = launched(pipeline)
    event = stopped_event(pipeline, task, 137)
    # WHEN the orchestrator takes it from the work queue
    assert build_orchestrator().accept(json.dumps(event)) == "running"
    send_work(pipeline, json.dumps(event))
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN no relaunch: the message is consumed (the task's own STOPPED event will come), no done message
    assert (delivery.deleted, delivery.failed) == (1, 0)
    assert len(tasks_of(pipeline)) == 1 and f"run={RUN}/attempts/2.json" not in artifact_keys(pipeline)
    assert drain(pipeline.done_queue_url) == []


def test_redriven_event_must_name_the_launched_task(user_env: Pipeline) -> None:
    pipeline = user_env
    task = launched(pipeline)
    stop_in_ecs(pipeline, task)
    orchestrator = build_orchestrator()
    # a task ARN the launch record does not name
    forged = stopped_event(pipeline, task, 137)
    forged["detail"]["taskArn"] = task["taskArn"].rsplit("/", 1)[0] + "/0123456789abcdef0123456789abcdef"
    assert orchestrator.accept(json.dumps(forged)) == "ignored"
    # an attempt that was never launched
    later = stopped_event(pipeline, task, 137)
    for item in later["detail"]["overrides"]["containerOverrides"][0]["environment"]:
        if item["name"] == "Q4_ATTEMPT":
            item["value"] = "2"
    assert orchestrator.accept(json.dumps(later)) == "ignored"
    # no run id at all
    bare = stopped_event(pipeline, task, 137)
    bare["detail"]["overrides"] = {}
    assert orchestrator.accept(json.dumps(bare)) == "ignored"
    assert len(tasks_of(pipeline)) == 1 and drain(pipeline.done_queue_url) == []


def test_redriven_event_of_a_task_ecs_no_longer_knows_is_handled(user_env: Pipeline) -> None:
    pipeline = user_env
    # GIVEN a launch record naming a task ECS does not know (it forgets stopped tasks after about an hour)
    task = launched(pipeline)
    gone = task["taskArn"].rsplit("/", 1)[0] + "/ffffffffffffffffffffffffffffffff"
    record_key = f"run={RUN}/attempts/1.json"
    s3 = boto3.client("s3")
    record = json.loads(s3.get_object(Bucket=pipeline.artifacts_bucket, Key=record_key)["Body"].read())
    s3.put_object(
        Bucket=pipeline.artifacts_bucket, Key=record_key, Body=json.dumps({**record, "task_arn": gone})
    )
    orchestrator = build_orchestrator()
    # WHEN its event says it exited cleanly, THEN there is nothing to recover
    clean = stopped_event(pipeline, task, 0)
    clean["detail"]["taskArn"] = gone
    assert orchestrator.accept(json.dumps(clean)) == "reported"
    # WHEN its event says it crashed, THEN attempt 2 is launched (the run has no commit)
    crashed = stopped_event(pipeline, task, 137)
    crashed["detail"]["taskArn"] = gone
    assert orchestrator.accept(json.dumps(crashed)) == "relaunched"
    assert sorted(task_env(t)["Q4_ATTEMPT"] for t in tasks_of(pipeline)) == ["1", "2"]


def test_redriven_event_of_a_committed_run_resends_nothing_twice(user_env: Pipeline) -> None:
    pipeline = user_env
    task = launched(pipeline)
    stop_in_ecs(pipeline, task)
    manifest = {
        "schema": "q4.manifest/v1",
        "run_id": RUN,
        "status": "succeeded",
        "mode": "standard",
        "rows": {"keep": 3},
        "attempt": 1,
        "duration_s": 2.0,
    }
    boto3.client("s3").put_object(
        Bucket=pipeline.artifacts_bucket, Key=f"run={RUN}/MANIFEST.json", Body=json.dumps(manifest)
    )
    event = json.dumps(stopped_event(pipeline, task, 137))
    orchestrator = build_orchestrator()
    assert orchestrator.accept(event) == "resent"
    assert orchestrator.accept(event) == "stale"
    assert [m["status"] for m in drain(pipeline.done_queue_url)] == ["succeeded"]
    assert len(tasks_of(pipeline)) == 1


def status_json(capsys: pytest.CaptureFixture[str], run_id: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", run_id, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_status_of_a_stuck_run_points_at_its_dead_letters(
    user_env: Pipeline, boto_hooks: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    # GIVEN an accepted run whose STOPPED event ended in the DLQ (its relaunch could not start)
    first = launched(pipeline)
    stop_in_ecs(pipeline, first)
    event = stopped_event(pipeline, first, 137)
    failing_run_task(boto_hooks, 1)
    with pytest.raises(LaunchError):
        lambda_handler(event, None)
    dead_letter(pipeline, event, "LaunchError: RunTask started no task")
    # WHEN the user asks for its status
    doc = status_json(capsys, RUN)
    # THEN it is accepted, and the status names the dead letter and the way out; the DLQ is left as it was
    assert doc["state"] == "accepted"
    (line,) = doc["dlq"]
    assert line.startswith("task-stopped") and "exit code 137" in line and "LaunchError" in line
    assert f"q4 dlq --redrive --run {RUN}" in doc["note"]
    assert queue_depth(pipeline.dlq_url) == 1
    capsys.readouterr()
    assert main(["status", RUN]) == 0
    assert "dlq:" in capsys.readouterr().out


def test_status_of_a_rejected_submission_shows_the_rejection(
    user_env: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    # GIVEN inputs uploaded and a work message the orchestrator rejected (behind other runs' done messages)
    sqs = boto3.client("sqs")
    for i in range(15):
        sqs.send_message(QueueUrl=pipeline.done_queue_url, MessageBody=json.dumps({"run_id": f"o{i}"}))
    put_input(pipeline, "run=rj5/input/data.csv")
    send_work(pipeline, '{"run_id": "rj5", "input_key": "run=rj5/input/data.csv", "svd_k": 0}')
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # WHEN the user asks for its status, THEN it is submitted and the rejection says why
    doc = status_json(capsys, "rj5")
    assert doc["state"] == "submitted" and doc["rejection"]["code"] == "invalid_svd_k"
    assert "fix what it says" in doc["note"]
    assert queue_depth(pipeline.done_queue_url) == 16  # nothing consumed
