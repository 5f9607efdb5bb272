"""`q4 logs` against the moto server: launch records in the artifacts bucket name each attempt's task, whose
stream is found in the task log group (also when attempts' streams have different prefixes, as after a
container rename), and its lines are printed attempt after attempt, rendered."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from q4.cli import main
from q4_contract.shards import step_attempt_key

RUN = "logs-cli-1"
#: A minute ago, to the second (CloudWatch refuses events older than 14 days).
BASE_MS = (int(time.time()) - 60) * 1000
CLUSTER = "arn:aws:ecs:eu-central-2:123456789012:task/q4"


@pytest.fixture
def deployed(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An artifacts bucket and a task log group, named in the environment as `q4 local env` does."""
    suffix = str(time.monotonic_ns())
    bucket, group = f"artifacts-{suffix}", f"/ecs/q4-{suffix}-task"
    s3, logs = boto3.client("s3"), boto3.client("logs")
    region = aws_env["AWS_REGION"]
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **location)
    logs.create_log_group(logGroupName=group)
    monkeypatch.setenv("Q4_ARTIFACTS_BUCKET", bucket)
    monkeypatch.setenv("Q4_TASK_LOG_GROUP", group)
    return {"s3": s3, "logs": logs, "bucket": bucket, "group": group}


def _attempt(deployed: dict[str, Any], number: int, stream: str, messages: list[str]) -> None:
    """A launch record for attempt ``number`` and its task's stream holding ``messages``."""
    task_id = stream.rsplit("/", 1)[-1]
    record = {"run_id": RUN, "attempt": number, "task_arn": f"{CLUSTER}/{task_id}"}
    deployed["s3"].put_object(
        Bucket=deployed["bucket"], Key=f"run={RUN}/attempts/{number}.json", Body=json.dumps(record)
    )
    deployed["logs"].create_log_stream(logGroupName=deployed["group"], logStreamName=stream)
    deployed["logs"].put_log_events(
        logGroupName=deployed["group"],
        logStreamName=stream,
        logEvents=[{"timestamp": BASE_MS + i, "message": m} for i, m in enumerate(messages)],
    )


def _line(level: str, message: str, **extra: Any) -> str:
    doc = {"timestamp": "2026-12-04T10:00:00.000+00:00", "level": level, "logger": "q4.task"}
    return json.dumps({**doc, "message": message, "run_id": RUN, "attempt": 1, **extra})


def test_logs_prints_every_attempt_rendered(deployed, capsys):
    # GIVEN two attempts whose streams have different container names, a stream of another task, and the
    # orchestrator's done.json record next to the launch records
    _attempt(deployed, 1, "q4/old-name/aaaa1111", [_line("INFO", "Task started."), "plain text line"])
    _attempt(
        deployed,
        2,
        "q4/q4-task/bbbb2222",
        [_line("ERROR", "Task cannot go on.", code="boom", exception="Traceback\n  line 1\nValueError: x")],
    )
    deployed["logs"].create_log_stream(logGroupName=deployed["group"], logStreamName="q4/q4-task/cccc3333")
    deployed["s3"].put_object(Bucket=deployed["bucket"], Key=f"run={RUN}/attempts/done.json", Body=b"{}")
    # WHEN `q4 logs` prints the run
    assert main(["logs", RUN]) == 0
    out = capsys.readouterr().out.splitlines()
    # THEN attempt 1's lines come first, then attempt 2's; JSON lines as time, level, message and fields
    assert out == [
        "[attempt 1] 2026-12-04T10:00:00.000+00:00 INFO    Task started.",
        f"[attempt 1] {datetime.fromtimestamp(BASE_MS / 1000, UTC):%Y-%m-%dT%H:%M:%S}.001Z plain text line",
        "[attempt 2] 2026-12-04T10:00:00.000+00:00 ERROR   Task cannot go on.  code=boom",
        "    Traceback",
        "      line 1",
        "    ValueError: x",
    ]
    # AND --json keeps every line with its attempt, stream and parsed fields
    assert main(["logs", RUN, "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["attempt"], d["log_stream"]) for d in docs] == [
        (1, "q4/old-name/aaaa1111"),
        (1, "q4/old-name/aaaa1111"),
        (2, "q4/q4-task/bbbb2222"),
    ]
    assert docs[1]["fields"] is None and docs[2]["fields"]["code"] == "boom"


def test_logs_of_a_run_without_a_task_says_so(deployed, capsys):
    assert main(["logs", "never-launched"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "run never-launched has no launched task" in captured.err


def test_follow_of_an_ended_run_prints_it_and_ends(deployed, capsys):
    # GIVEN a run that ended (MANIFEST.json) with one attempt
    _attempt(deployed, 1, "q4/q4-task/dddd4444", [_line("INFO", "Run succeeded.")])
    deployed["s3"].put_object(Bucket=deployed["bucket"], Key=f"run={RUN}/MANIFEST.json", Body=b"{}")
    # WHEN it is followed, THEN its lines are printed once and --follow ends by itself (without --timeout)
    assert main(["logs", "--follow", RUN]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[attempt 1] 2026-12-04T10:00:00.000+00:00 INFO    Run succeeded."
    ]


def test_logs_of_a_sharded_run_print_every_step_shard_by_shard(deployed, capsys):
    # GIVEN a sharded run: pass 1 of shards 0 and 1 (shard 1 ran twice), pass 2 of shard 0, the finish
    def step(name: str, shard: int, number: int, task_id: str, message: str) -> None:
        record = {"run_id": RUN, "attempt": number, "task_arn": f"{CLUSTER}/{task_id}"}
        key = step_attempt_key(RUN, name, shard, number)
        deployed["s3"].put_object(Bucket=deployed["bucket"], Key=key, Body=json.dumps(record))
        stream = f"q4/q4-task/{task_id}"
        deployed["logs"].create_log_stream(logGroupName=deployed["group"], logStreamName=stream)
        deployed["logs"].put_log_events(
            logGroupName=deployed["group"],
            logStreamName=stream,
            logEvents=[{"timestamp": BASE_MS, "message": _line("INFO", message)}],
        )

    step("finish", 0, 1, "ffff0001", "Run succeeded.")  # written first, printed last
    step("pass2", 0, 1, "eeee0001", "Pass 2 of shard 0.")
    step("pass1", 1, 2, "dddd0002", "Pass 1 of shard 1, again.")
    step("pass1", 1, 1, "dddd0001", "Pass 1 of shard 1.")
    step("pass1", 0, 1, "cccc0001", "Pass 1 of shard 0.")
    # WHEN `q4 logs` prints the run
    assert main(["logs", RUN]) == 0
    # THEN step by step, shard by shard, attempt by attempt, each line labelled with its step and shard
    when = "2026-12-04T10:00:00.000+00:00 INFO   "
    assert capsys.readouterr().out.splitlines() == [
        f"[pass1 shard 0 attempt 1] {when} Pass 1 of shard 0.",
        f"[pass1 shard 1 attempt 1] {when} Pass 1 of shard 1.",
        f"[pass1 shard 1 attempt 2] {when} Pass 1 of shard 1, again.",
        f"[pass2 shard 0 attempt 1] {when} Pass 2 of shard 0.",
        f"[finish shard 0 attempt 1] {when} Run succeeded.",
    ]
    assert main(["logs", RUN, "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["step"], d["shard"], d["attempt"]) for d in docs] == [
        ("pass1", 0, 1),
        ("pass1", 1, 1),
        ("pass1", 1, 2),
        ("pass2", 0, 1),
        ("finish", 0, 1),
    ]
