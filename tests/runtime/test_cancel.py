"""`q4 cancel` (docs/contract.md, "Cancel") against the moto server: the real CLI, the orchestrator's handler
with real SQS batches and STOPPED events, the real `q4-task` as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4_orchestrator.handler import lambda_handler
from support.pipeline import (
    Q4_TASK,
    Pipeline,
    accept,
    artifact_keys,
    deliver_batches,
    drain,
    put,
    put_input,
    read,
    run_task,
    send_work,
    stopped_event,
    table,
    tasks_of,
)

Q4 = str(Path(sys.executable).with_name("q4"))


def q4(pipeline: Pipeline, aws_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        **aws_env,
        **pipeline.user_env,
    }
    return subprocess.run([Q4, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def submitted(pipeline: Pipeline, run_id: str) -> str:
    """A run whose input is uploaded; returns its work message."""
    key = f"run={run_id}/input/data.csv"
    put_input(pipeline, key, table())
    return json.dumps({"run_id": run_id, "input_key": key})


def error_doc(pipeline: Pipeline, run_id: str) -> dict[str, Any]:
    return dict(json.loads(read(pipeline.artifacts_bucket, contract.error_key(run_id))))


def test_a_queued_work_message_of_a_cancelled_run_is_answered_cancelled(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN a submitted run cancelled before its work message is handled
    message = submitted(pipeline, "c-queued")
    cancel = q4(pipeline, aws_env, "cancel", "c-queued")
    assert cancel.returncode == 0, cancel.stderr
    assert "No task was launched" in cancel.stdout
    request = json.loads(read(pipeline.artifacts_bucket, "run=c-queued/cancel.json"))
    assert request["schema"] == "q4.cancel/v1" and request["run_id"] == "c-queued"
    # WHEN the work message arrives
    send_work(pipeline, message)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    # THEN nothing is launched; the run ends failed (cancelled) with one done message
    assert tasks_of(pipeline) == []
    error = error_doc(pipeline, "c-queued")
    assert (error["code"], error["status"], error["attempts"], error["attempt"]) == (
        "cancelled",
        "failed",
        0,
        None,
    )
    (done,) = drain(pipeline.done_queue_url)
    assert (done["status"], done["error"]["code"], done["duplicate"]) == ("failed", "cancelled", False)
    # AND the same message again gets a duplicate of that done message, still launching nothing
    send_work(pipeline, message)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (again,) = drain(pipeline.done_queue_url)
    assert (again["error"]["code"], again["duplicate"]) == ("cancelled", True)
    assert tasks_of(pipeline) == []


def test_cancel_stops_the_running_task_and_its_stop_event_ends_the_run_once(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN a run whose task ECS runs
    send_work(pipeline, submitted(pipeline, "c-running"))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (task,) = tasks_of(pipeline)
    assert task["desiredStatus"] == "RUNNING"
    # WHEN it is cancelled
    cancel = q4(pipeline, aws_env, "cancel", "c-running", "--json")
    # THEN the task is stopped through ECS StopTask
    assert cancel.returncode == 0, cancel.stderr
    report = json.loads(cancel.stdout)
    assert report["cancelled"] is True
    assert [t["task_arn"] for t in report["stopped_tasks"]] == [task["taskArn"]]
    (stopped,) = tasks_of(pipeline)
    assert (stopped["lastStatus"], stopped["stoppedReason"]) == ("STOPPED", "Cancelled by q4 cancel")
    assert not contract.S3Store(boto3.client("s3"), pipeline.artifacts_bucket).exists(
        contract.error_key("c-running")
    )
    # AND until the stop is reported, `q4 status` shows the cancel asked for
    status = q4(pipeline, aws_env, "status", "c-running", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["cancel"]["requested_at"] == report["requested_at"]
    text = q4(pipeline, aws_env, "status", "c-running").stdout
    assert f"cancel:    requested at {report['requested_at']}" in text
    assert "the run ends failed (cancelled) once nothing of it runs" in text
    # AND its STOPPED event (SIGTERM: exit 143) ends the run failed (cancelled), without a relaunch
    event = stopped_event(
        pipeline, task, 143, stopCode="UserInitiated", stoppedReason="Cancelled by q4 cancel"
    )
    assert lambda_handler(event, None) == {"outcome": "cancelled"}
    error = error_doc(pipeline, "c-running")
    assert (error["code"], error["attempts"]) == ("cancelled", 1)
    assert error["details"]["stop_code"] == "UserInitiated" and error["details"]["exit_code"] == 143
    assert error["job"]["input_key"] == "run=c-running/input/data.csv"
    (done,) = drain(pipeline.done_queue_url)
    assert (done["status"], done["error"]["code"], done["attempt"]) == ("failed", "cancelled", 1)
    # AND the same event again sends nothing and launches nothing
    assert lambda_handler(event, None) == {"outcome": "stale"}
    assert drain(pipeline.done_queue_url) == []
    assert len(tasks_of(pipeline)) == 1
    # AND cancelling it again says it ended and changes nothing
    keys = artifact_keys(pipeline)
    again = q4(pipeline, aws_env, "cancel", "c-running")
    assert again.returncode == 0 and "already ended (failed, cancelled); nothing to cancel" in again.stdout
    assert artifact_keys(pipeline) == keys
    # AND `q4 status` of the ended run no longer shows a pending cancel
    assert "cancel" not in json.loads(q4(pipeline, aws_env, "status", "c-running", "--json").stdout)


def test_a_run_that_committed_first_stays_succeeded_when_cancelled(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    # GIVEN a run whose task committed
    send_work(pipeline, submitted(pipeline, "c-late"))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (task,) = tasks_of(pipeline)
    job = contract.parse_job(json.loads(read(pipeline.artifacts_bucket, "run=c-late/job.json")))
    assert run_task(pipeline, aws_env, job).returncode == 0
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded"
    # WHEN q4 cancel comes too late
    keys = artifact_keys(pipeline)
    cancel = q4(pipeline, aws_env, "cancel", "c-late")
    # THEN it says so and changes nothing
    assert cancel.returncode == 0, cancel.stderr
    assert "already ended (succeeded); nothing to cancel, nothing changed" in cancel.stdout
    assert artifact_keys(pipeline) == keys
    # AND a cancel request that lost the race to the commit (the task stopped after committing) leaves the
    # one terminal document: the orchestrator sends the succeeded done message, writes no ERROR.json
    put(pipeline.artifacts_bucket, "run=c-late/cancel.json", b'{"run_id": "c-late", "requested_at": "x"}')
    assert lambda_handler(stopped_event(pipeline, task, 143, stopCode="UserInitiated"), None) == {
        "outcome": "resent"
    }
    assert "run=c-late/ERROR.json" not in artifact_keys(pipeline)
    (resent,) = drain(pipeline.done_queue_url)
    assert resent["status"] == "succeeded"


def test_a_task_of_a_cancelled_run_commits_nothing(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    # GIVEN an accepted run with a cancel request
    job = accept(pipeline, {"run_id": "c-task", "input_key": "run=c-task/input/data.csv"})
    put_input(pipeline, "run=c-task/input/data.csv", table())
    put(pipeline.artifacts_bucket, "run=c-task/cancel.json", b'{"run_id": "c-task", "requested_at": "x"}')
    # WHEN its task starts
    process = run_task(pipeline, aws_env, job)
    # THEN it exits 143 (stopped, not terminal: the orchestrator ends the run) and writes nothing
    assert process.returncode == 143, process.stdout[-2000:]
    assert "The run has a cancel request; stopping before starting" in process.stdout
    assert artifact_keys(pipeline) == ["run=c-task/cancel.json", "run=c-task/job.json"]
    assert drain(pipeline.done_queue_url) == []


def test_sigterm_stops_the_task_before_its_commit(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    # GIVEN a task working through a table in small chunks
    job = accept(pipeline, {"run_id": "c-term", "input_key": "run=c-term/input/data.csv", "mode": "full"})
    put_input(pipeline, "run=c-term/input/data.csv", table(rows=20000))
    env = {
        "PATH": str(Path(sys.executable).parent),
        **aws_env,
        "Q4_INPUT_BUCKET": pipeline.archive_bucket,
        "Q4_ARTIFACTS_BUCKET": pipeline.artifacts_bucket,
        "Q4_DONE_QUEUE_URL": pipeline.done_queue_url,
        "Q4_CHUNK_ROWS": "16",
        **job.to_env(1),
    }
    with subprocess.Popen([Q4_TASK], env=env, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if "Opened the inputs" in line:
                    break
            # WHEN ECS stops it (SIGTERM) while it works
            process.send_signal(signal.SIGTERM)
            rest = process.stdout.read()
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    # THEN it exits 143 and commits nothing
    assert code == 143, rest[-2000:]
    assert "SIGTERM received; the task stops here and commits nothing." in rest
    assert "Task stopped before its commit; nothing committed." in rest
    assert [k for k in artifact_keys(pipeline) if k.endswith(("MANIFEST.json", "ERROR.json"))] == []
    assert drain(pipeline.done_queue_url) == []


@pytest.mark.parametrize("run_id", ["never-submitted", "../x"])
def test_cancel_of_an_unknown_or_invalid_run_is_refused(
    pipeline: Pipeline, aws_env: dict[str, str], run_id: str
) -> None:
    cancel = q4(pipeline, aws_env, "cancel", run_id)
    assert cancel.returncode == 2
    code = "run_not_found" if run_id == "never-submitted" else "invalid_run_id"
    assert cancel.stderr.startswith("q4: error: ") and cancel.stderr.rstrip().endswith(f"[{code}]")
    assert artifact_keys(pipeline) == []
