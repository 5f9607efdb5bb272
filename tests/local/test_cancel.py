"""`q4 cancel` on the local stack, as a user runs it: a running full-mode job is stopped through ECS StopTask
(the Fargate stand-in sends its process SIGTERM), its STOPPED event reaches the orchestrator, and the run ends
failed with code `cancelled` and one done message; a run cancelled while its work message is still queued is
answered the same way and never launched."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.local_stack import load_bench

pytestmark = pytest.mark.slow

Q4 = str(Path(sys.executable).parent / "q4")


def _env(stack: dict[str, Any]) -> dict[str, str]:
    return {**stack["env"], **stack["aws"]}


def _q4(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [Q4, *args], env=_env(stack), capture_output=True, text=True, timeout=120, check=False
    )


def _client(stack: dict[str, Any], service: str) -> Any:
    aws = stack["aws"]
    return boto3.client(
        service, endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_REGION"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def _done_messages(
    stack: dict[str, Any], run_id: str, wait_s: float, settle_s: float
) -> list[dict[str, Any]]:
    """The run's done messages (deleted): waits up to ``wait_s`` for the first, then ``settle_s`` more for
    any other; other runs' messages are released."""
    sqs, queue = _client(stack, "sqs"), stack["aws"]["Q4_DONE_QUEUE_URL"]
    found: list[dict[str, Any]] = []
    hidden: list[str] = []
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            for message in sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30
            ).get("Messages", []):
                body = json.loads(message["Body"])
                if body.get("run_id") != run_id:
                    hidden.append(message["ReceiptHandle"])
                    continue
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                if not found:
                    deadline = time.monotonic() + settle_s
                found.append(body)
    finally:
        for handle in hidden:
            with contextlib.suppress(sqs.exceptions.ClientError):
                sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=0)
    return found


def _tasks_of(stack: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    path = stack["state_dir"] / "ledger.json"
    ledger = json.loads(path.read_text()) if path.exists() else {}
    return [entry for entry in ledger.values() if load_bench().run_id_of(entry) == run_id]


def _table(path: Path, rows: int) -> Path:
    with path.open("w") as out:
        out.write("id,f_1,f_2,f_3,f_4\n")
        for i in range(rows):
            out.write(f"r{i},{(i * 7) % 13 - 6},{(i * 5) % 11 - 5}.5,{i % 3},{(i * 11) % 17}\n")
    return path


def _keys(stack: dict[str, Any], run_id: str) -> list[str]:
    listing = _client(stack, "s3").list_objects_v2(
        Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Prefix=f"run={run_id}/"
    )
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _error(stack: dict[str, Any], run_id: str) -> dict[str, Any]:
    body = _client(stack, "s3").get_object(
        Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Key=f"run={run_id}/ERROR.json"
    )
    return dict(json.loads(body["Body"].read()))


def test_cancel_stops_a_running_full_mode_job_into_cancelled(stack: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN a full-mode run submitted as a user does, whose task is working
    data = _table(tmp_path / "big.csv", rows=600_000)
    submit = _q4(stack, "submit", str(data), "--run-id", "cancel-full", "--mode", "full")
    assert submit.returncode == 0, submit.stderr
    deadline = time.monotonic() + 120
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        running = [t for t in _tasks_of(stack, "cancel-full") if t["status"] == "running"]
        log = (
            stack["state_dir"] / "tasks" / running[0]["task_arn"].rsplit("/", 1)[-1] / "task.log"
            if running
            else None
        )
        if log is not None and log.exists() and "Opened the inputs" in log.read_text():
            task = running[0]
            break
        time.sleep(0.1)
    assert task, f"the task never started working: {_tasks_of(stack, 'cancel-full')}"
    # WHEN the user cancels it
    cancel = _q4(stack, "cancel", "cancel-full")
    # THEN its task is stopped, and the run ends failed (cancelled) with exactly one done message
    assert cancel.returncode == 0, cancel.stderr
    assert f"Stopped task {task['task_arn']} (attempt 1)." in cancel.stdout
    (done,) = _done_messages(stack, "cancel-full", wait_s=120, settle_s=8)
    assert (done["status"], done["error"]["code"], done["duplicate"]) == ("failed", "cancelled", False), done
    assert "run=cancel-full/MANIFEST.json" not in _keys(stack, "cancel-full")
    error = _error(stack, "cancel-full")
    assert (error["code"], error["attempts"]) == ("cancelled", 1)
    assert error["details"]["stop_code"] == "UserInitiated"
    assert error["details"]["stopped_reason"] == "Cancelled by q4 cancel"
    # AND the task process got SIGTERM and stopped committing nothing (143), or was killed after stopTimeout
    (stopped,) = _tasks_of(stack, "cancel-full")
    assert (stopped["stop_code"], stopped["status"]) == ("UserInitiated", "delivered"), stopped
    assert stopped["exit_code"] in (143, 137), stopped
    # AND `q4 status` shows it; cancelling again says it ended and changes nothing
    status = _q4(stack, "status", "cancel-full", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["state"], shown["error"]["code"]) == ("failed", "cancelled")
    keys = _keys(stack, "cancel-full")
    again = _q4(stack, "cancel", "cancel-full")
    assert again.returncode == 0 and "already ended (failed, cancelled)" in again.stdout
    assert _keys(stack, "cancel-full") == keys


def test_a_run_cancelled_while_its_work_message_is_queued_is_never_launched(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a run whose input is uploaded, cancelled before its work message is sent
    s3, sqs = _client(stack, "s3"), _client(stack, "sqs")
    data = _table(tmp_path / "small.csv", rows=500)
    s3.upload_file(str(data), stack["aws"]["Q4_ARCHIVE_BUCKET"], "run=cancel-queued/input/small.csv")
    cancel = _q4(stack, "cancel", "cancel-queued")
    assert cancel.returncode == 0, cancel.stderr
    assert "No task was launched" in cancel.stdout
    # WHEN its work message arrives
    sqs.send_message(
        QueueUrl=stack["aws"]["Q4_WORK_QUEUE_URL"],
        MessageBody=json.dumps({"run_id": "cancel-queued", "input_key": "run=cancel-queued/input/small.csv"}),
    )
    # THEN it is answered failed (cancelled) once, and no task ever runs for it
    (done,) = _done_messages(stack, "cancel-queued", wait_s=60, settle_s=5)
    assert (done["status"], done["error"]["code"]) == ("failed", "cancelled"), done
    assert _error(stack, "cancel-queued")["attempts"] == 0
    assert _tasks_of(stack, "cancel-queued") == []
