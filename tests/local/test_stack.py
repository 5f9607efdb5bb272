"""The local stack end to end: `q4 local up --detach` once per session (the `stack` fixture in
tests/local/conftest.py), real runs through the work queue, the e2e script and the README's aws CLI
lines; `q4 local down` and what it must stop are checked by the fixture's teardown.

Everything runs as a user would run it: the `q4` console script, bash, the real `aws` CLI, terraform.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from q4_local import state as stack_state
from support.local_stack import load_bench

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")


def _clients(aws: dict[str, str]) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_REGION"],
    )
    return (
        session.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"]),
        session.client("sqs", endpoint_url=aws["AWS_ENDPOINT_URL"]),
    )


def _done_message(aws: dict[str, str], run_id: str, timeout: float = 180) -> dict[str, Any]:
    """The run's done message (deleted); other runs' messages are hidden while we look, then released."""
    _, sqs = _clients(aws)
    queue = aws["Q4_DONE_QUEUE_URL"]
    hidden: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=20
            ).get("Messages", []):
                body = json.loads(message["Body"])
                if body.get("run_id") == run_id:
                    sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                    return dict(body)
                hidden.append(message["ReceiptHandle"])
    finally:
        _release(sqs, queue, hidden)
    raise AssertionError(f"no done message for {run_id} within {timeout} s")


def _release(sqs: Any, queue: str, handles: list[str]) -> None:
    for handle in handles:
        with contextlib.suppress(sqs.exceptions.ClientError):  # its visibility timeout expired already
            sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=0)


def _ledger(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "ledger.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _sample(path: Path, rows: int = 300) -> Path:
    lines = ["id,f_1,f_2,f_3"] + [
        f"r{i},{(i * 7) % 13 - 6},{(i * 5) % 11 - 5}.5,{i % 3}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_env_exports_the_deployment_and_up_again_reuses_it(stack):
    aws = stack["aws"]
    assert set(aws) == {
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "Q4_ARCHIVE_BUCKET",
        "Q4_ARTIFACTS_BUCKET",
        "Q4_WORK_QUEUE_URL",
        "Q4_DONE_QUEUE_URL",
        "Q4_DLQ_URL",
        "Q4_TASK_LOG_GROUP",
    }
    assert aws["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    # The values are terraform's outputs, and they name live resources in the emulator.
    outputs = json.loads((stack["state_dir"] / "stack.json").read_text())["outputs"]
    assert aws["Q4_WORK_QUEUE_URL"] == outputs["work_queue_url"]
    s3, sqs = _clients(aws)
    s3.head_bucket(Bucket=aws["Q4_ARCHIVE_BUCKET"])
    attributes = sqs.get_queue_attributes(QueueUrl=aws["Q4_WORK_QUEUE_URL"], AttributeNames=["All"])[
        "Attributes"
    ]
    assert "RedrivePolicy" in attributes
    # A second `up` says so and reuses the same processes.
    before = stack_state.load(stack["state_dir"])
    again = subprocess.run(
        [Q4, "local", "up", "--detach"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "already up" in again.stderr
    after = stack_state.load(stack["state_dir"])
    assert before is not None and after is not None
    assert (after.moto, after.runtime) == (before.moto, before.runtime)


def test_submit_wait_runs_through_the_queue(stack, tmp_path):
    data = _sample(tmp_path / "table.csv")
    env = {**stack["env"], **stack["aws"]}
    started = time.monotonic()
    result = subprocess.run(
        [
            Q4,
            "submit",
            str(data),
            "--run-id",
            "submit-wait-1",
            "--mode",
            "enhanced",
            "--wait",
            "--timeout",
            "240",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    latency = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nq4 submit --wait (enhanced, 300 rows): {latency:.1f} s", file=sys.stderr)
    s3, _ = _clients(stack["aws"])
    manifest = json.loads(
        s3.get_object(Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Key="run=submit-wait-1/MANIFEST.json")[
            "Body"
        ].read()
    )
    assert manifest["status"] == "succeeded"
    assert any(a["key"].endswith("model/q4_model.json") for a in manifest["artifacts"])
    # The task's size comes from the deployed task definition, through the task metadata endpoint stand-in
    ecs = boto3.client(
        "ecs", endpoint_url=stack["aws"]["AWS_ENDPOINT_URL"], region_name=stack["aws"]["AWS_REGION"],
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    task_arn = manifest["compute"]["task_arn"]
    task = ecs.describe_tasks(cluster=task_arn.split("/")[1], tasks=[task_arn])["tasks"][0]
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    assert manifest["compute"]["cpu"] == int(definition["taskDefinition"]["cpu"]) / 1024
    assert manifest["compute"]["memory"] == int(definition["taskDefinition"]["memory"])
    # The task ran as a local process with a real exit code, and its STOPPED event reached the orchestrator
    # (shortly after the done message, which the task sends before it exits).
    deadline = time.monotonic() + 20
    while True:
        run_id_of = load_bench().run_id_of
        entries = [e for e in _ledger(stack["state_dir"]).values() if run_id_of(e) == "submit-wait-1"]
        done = [(e["status"], e["exit_code"]) for e in entries] == [("delivered", 0)]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(e["status"], e["exit_code"]) for e in entries] == [("delivered", 0)]


def test_e2e_script_passes_against_the_local_stack(stack):
    # GIVEN a done queue that already holds 25 other runs' messages (more than one receive returns)
    _, sqs = _clients(stack["aws"])
    queue = stack["aws"]["Q4_DONE_QUEUE_URL"]
    foreign = {f"someone-else-{i}" for i in range(25)}
    names = sorted(foreign)
    for start in range(0, len(names), 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"schema": "q4.done/v1", "run_id": name})}
                for i, name in enumerate(names[start : start + 10])
            ],
        )
    env = {**stack["env"], "AWS": str(BIN / "aws"), "PYTHON": sys.executable, "TIMEOUT": "240"}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "test_q4_pipeline.sh")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    # THEN the other runs' messages are all still there and visible again at once (the script released them)
    seen: set[str] = set()
    kept: list[str] = []
    for _ in range(20):
        messages = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30
        ).get("Messages", [])
        if not messages:
            break
        for message in messages:
            run_id = json.loads(message["Body"]).get("run_id")
            if run_id in foreign:
                seen.add(run_id)
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            else:
                kept.append(message["ReceiptHandle"])
    _release(sqs, queue, kept)
    assert seen == foreign


def test_readme_lines_after_eval_produce_a_done_message(stack, tmp_path):
    data = _sample(tmp_path / "mydata.csv")
    script = f"""
set -euo pipefail
eval "$(uv run q4 local env)"
aws s3 cp {shlex.quote(str(data))} "s3://$Q4_ARCHIVE_BUCKET/run=2025-08-25-001/input/mydata.csv"
aws sqs send-message --queue-url "$Q4_WORK_QUEUE_URL" \\
  --message-body '{{"input_key":"run=2025-08-25-001/input/mydata.csv","run_id":"2025-08-25-001"}}'
"""
    result = subprocess.run(
        ["bash", "-c", script],
        env=stack["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    done = _done_message(stack["aws"], "2025-08-25-001")
    assert done["status"] == "succeeded", done
    assert done["manifest_key"] == "run=2025-08-25-001/MANIFEST.json"


def test_bad_message_is_rejected_and_never_launched(stack):
    _, sqs = _clients(stack["aws"])
    tasks_before = len(_ledger(stack["state_dir"]))
    sqs.send_message(
        QueueUrl=stack["aws"]["Q4_WORK_QUEUE_URL"],
        MessageBody=json.dumps({"run_id": "bad-1", "input_key": "run=bad-1/input/x.csv", "colour": "blue"}),
    )
    done = _done_message(stack["aws"], "bad-1", timeout=60)
    assert done["status"] == "rejected"
    assert done["error"]["code"]
    time.sleep(2)
    assert len(_ledger(stack["state_dir"])) == tasks_before


def test_demo_reuses_the_stack_and_ends_with_the_report_path(stack, tmp_path):
    result = subprocess.run(
        [Q4, "demo", "--to", str(tmp_path / "demo"), "--rows", "500"],
        env=stack["env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = Path(result.stdout.strip().splitlines()[-1].removeprefix("Report: "))
    assert report.is_file() and report.name == "report.html"
    assert report.is_relative_to(tmp_path / "demo")
    assert (report.parent.parent / "MANIFEST.json").is_file()


def test_crashed_task_is_relaunched_through_the_stopped_event(stack, tmp_path):
    # GIVEN a run whose first task process is killed (SIGKILL: exit code 137, a crash)
    s3, sqs = _clients(stack["aws"])
    data = _sample(tmp_path / "crash.csv", rows=5000)
    s3.upload_file(str(data), stack["aws"]["Q4_ARCHIVE_BUCKET"], "run=crash-1/input/crash.csv")
    sqs.send_message(
        QueueUrl=stack["aws"]["Q4_WORK_QUEUE_URL"],
        MessageBody=json.dumps({"run_id": "crash-1", "input_key": "run=crash-1/input/crash.csv"}),
    )
    deadline = time.monotonic() + 60
    killed = None
    while killed is None and time.monotonic() < deadline:
        for entry in _ledger(stack["state_dir"]).values():
            if load_bench().run_id_of(entry) == "crash-1" and entry["status"] == "running" and entry["pid"]:
                os.killpg(entry["pid"], signal.SIGKILL)
                killed = entry["task_arn"]
        time.sleep(0.05)
    assert killed is not None
    # WHEN the runtime reports its STOPPED event, THEN the orchestrator relaunches and attempt 2 succeeds
    done = _done_message(stack["aws"], "crash-1")
    assert (done["status"], done["attempt"]) == ("succeeded", 2), done
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = sorted(
            (e for e in _ledger(stack["state_dir"]).values() if load_bench().run_id_of(e) == "crash-1"),
            key=lambda e: e["created_at"],
        )
        if [e["status"] for e in entries] == ["delivered", "delivered"]:
            break
        time.sleep(0.2)
    assert [(e["task_arn"] == killed, e["exit_code"]) for e in entries] == [(True, 137), (False, 0)]
