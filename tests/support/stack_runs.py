"""Runs through the shared local stack (the ``stack`` fixture of tests/local/conftest.py), as a user sends
them: inputs into the archive bucket, work messages into the work queue, done messages read back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

Q4 = str(Path(sys.executable).parent / "q4")


def client(aws: dict[str, str], service: str) -> Any:
    """A boto3 client of ``service`` at the stack's emulator."""
    session = boto3.session.Session(
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_REGION"],
    )
    return session.client(service, endpoint_url=aws["AWS_ENDPOINT_URL"])


def table(rows: int) -> bytes:
    """A valid CSV: an id and three numeric features."""
    lines = ["id,f_1,f_2,f_3"]
    lines += [f"r{i},{(i * 7) % 13 - 6},{(i * 5) % 11 - 5}.5,{i % 3}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


#: A CSV the task refuses (one numeric column: too few features): the run ends ``failed``.
ONE_FEATURE = b"id,name,f_1\n" + b"".join(b"r%d,n%d,%d\n" % (i, i, i) for i in range(50))


def submit(aws: dict[str, str], run_id: str, data: bytes | None, **fields: Any) -> None:
    """Upload ``data`` (when given) as the run's input and send its work message (``fields`` added)."""
    key = f"run={run_id}/input/table.csv"
    if data is not None:
        client(aws, "s3").put_object(Bucket=aws["Q4_ARCHIVE_BUCKET"], Key=key, Body=data)
    body = {"run_id": run_id, "input_key": key, **fields}
    client(aws, "sqs").send_message(QueueUrl=aws["Q4_WORK_QUEUE_URL"], MessageBody=json.dumps(body))


def done_messages(aws: dict[str, str], run_ids: list[str], timeout: float = 240) -> dict[str, dict[str, Any]]:
    """The first done message of each run (deleted); other runs' messages are hidden while we look, then
    released."""
    sqs = client(aws, "sqs")
    queue = aws["Q4_DONE_QUEUE_URL"]
    found: dict[str, dict[str, Any]] = {}
    hidden: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while set(run_ids) - set(found) and time.monotonic() < deadline:
            for message in sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30
            ).get("Messages", []):
                body = json.loads(message["Body"])
                if body.get("run_id") in run_ids and body["run_id"] not in found:
                    sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                    found[body["run_id"]] = body
                else:
                    hidden.append(message["ReceiptHandle"])
    finally:
        for handle in hidden:
            with contextlib.suppress(Exception):  # its visibility timeout may have expired already
                sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=0)
    missing = sorted(set(run_ids) - set(found))
    assert not missing, f"no done message for {missing} within {timeout} s"
    return found


def ledger_entries(state_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """The local runtime's ledger entries of ``run_id``'s tasks, oldest first."""
    path = state_dir / "ledger.json"
    entries = json.loads(path.read_text()).values() if path.exists() else []
    mine = []
    for entry in entries:
        for override in entry["task"].get("overrides", {}).get("containerOverrides", []):
            if {"name": "Q4_RUN_ID", "value": run_id} in override.get("environment", []):
                mine.append(entry)
    return sorted(mine, key=lambda e: e["created_at"])


def wait_stopped(state_dir: Path, run_ids: list[str], timeout: float = 60) -> None:
    """Wait until every task of the runs has stopped in the local runtime, which ships a task's last log
    lines before it marks the task stopped (a task sends its done message before it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [entry for run_id in run_ids for entry in ledger_entries(state_dir, run_id)]
        if entries and all(entry["status"] not in ("pending", "running") for entry in entries):
            return
        time.sleep(0.2)
    raise AssertionError(f"the tasks of {run_ids} did not stop within {timeout} s")


def q4(stack: dict[str, Any], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `q4` console script as a user runs it after `eval "$(q4 local env)"`."""
    return subprocess.run(
        [Q4, *args], env={**stack["env"], **stack["aws"]}, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
