"""Logs on the local stack: a task's output reaches the log group and stream its task definition names (as
ECS's awslogs driver names it), the orchestrator's its Lambda log group; `q4 logs` prints a run's lines,
every attempt, rendered, for a succeeded, a failed and a crashed-then-relaunched run; `--follow` ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest
from support.stack_runs import (
    ONE_FEATURE,
    Q4,
    client,
    done_messages,
    ledger_entries,
    q4,
    submit,
    table,
    wait_stopped,
)

pytestmark = pytest.mark.slow

ATTEMPT = re.compile(r"^\[attempt (\d+)\] ")


def _outputs(stack: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads((stack["state_dir"] / "stack.json").read_text())["outputs"])


def _events(logs: Any, group: str, stream: str) -> list[str]:
    return [e["message"] for e in logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]]


def _attempts(output: str) -> list[int]:
    """The attempt number of each printed line that starts one (an exception's lines follow, indented)."""
    return [int(m.group(1)) for line in output.splitlines() if (m := ATTEMPT.match(line))]


def test_task_and_orchestrator_lines_reach_their_log_groups(stack):
    # GIVEN a run that succeeded
    aws = stack["aws"]
    submit(aws, "logs-ok-1", table(200))
    assert done_messages(aws, ["logs-ok-1"])["logs-ok-1"]["status"] == "succeeded"
    wait_stopped(stack["state_dir"], ["logs-ok-1"])
    # THEN its task's lines are in the task definition's awslogs group, stream <prefix>/<container>/<task id>
    outputs = _outputs(stack)
    definition = client(aws, "ecs").describe_task_definition(taskDefinition=outputs["task_definition_arn"])
    (container,) = definition["taskDefinition"]["containerDefinitions"]
    options = container["logConfiguration"]["options"]
    assert aws["Q4_TASK_LOG_GROUP"] == options["awslogs-group"] == outputs["task_log_group"]
    record = client(aws, "s3").get_object(
        Bucket=aws["Q4_ARTIFACTS_BUCKET"], Key="run=logs-ok-1/attempts/1.json"
    )
    task_id = json.loads(record["Body"].read())["task_arn"].rsplit("/", 1)[-1]
    logs = client(aws, "logs")
    stream = f"{options['awslogs-stream-prefix']}/{container['name']}/{task_id}"
    lines = [json.loads(m) for m in _events(logs, options["awslogs-group"], stream) if m.startswith("{")]
    assert {line["run_id"] for line in lines} == {"logs-ok-1"}
    assert "Run succeeded." in [line["message"] for line in lines]
    # AND the orchestrator's lines are in /aws/lambda/<function>, a stream per invocation named as Lambda does
    group = f"/aws/lambda/{outputs['orchestrator_function_name']}"
    streams = [  # every page: the shared stack's other tests add streams (50 a page)
        s["logStreamName"]
        for page in logs.get_paginator("describe_log_streams").paginate(logGroupName=group)
        for s in page["logStreams"]
    ]
    assert streams and all(re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", s) for s in streams)
    launched = [
        json.loads(message)
        for s in streams
        for message in _events(logs, group, s)
        if message.startswith("{") and "logs-ok-1" in message
    ]
    assert any({"run_id": "logs-ok-1", "outcome": "launched"}.items() <= line.items() for line in launched), (
        launched
    )


def test_q4_logs_prints_a_succeeded_and_a_failed_run_rendered(stack):
    # GIVEN a run that succeeded and one that failed on its input
    aws = stack["aws"]
    submit(aws, "logs-ok-2", table(200))
    submit(aws, "logs-bad-1", ONE_FEATURE)
    done = done_messages(aws, ["logs-ok-2", "logs-bad-1"])
    assert (done["logs-ok-2"]["status"], done["logs-bad-1"]["status"]) == ("succeeded", "failed")
    wait_stopped(stack["state_dir"], ["logs-ok-2", "logs-bad-1"])
    # WHEN `q4 logs` prints them
    ok, bad = q4(stack, "logs", "logs-ok-2"), q4(stack, "logs", "logs-bad-1")
    # THEN each line is its attempt's, rendered (time, level, message, fields), not raw JSON
    assert ok.returncode == 0 and bad.returncode == 0, ok.stderr + bad.stderr
    for result in (ok, bad):
        assert set(_attempts(result.stdout)) == {1}
        assert not any(line.startswith("[attempt 1] {") for line in result.stdout.splitlines())
    assert re.search(r"^\[attempt 1\] \S+ INFO +Run succeeded\.  rows=\{\"input\": 200, ", ok.stdout, re.M), (
        ok.stdout
    )
    assert re.search(r"^\[attempt 1\] \S+ ERROR +Run failed\.  code=\S+", bad.stdout, re.M), bad.stdout
    # AND --json gives one object per line, its fields parsed
    as_json = q4(stack, "logs", "logs-bad-1", "--json")
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert docs and {doc["attempt"] for doc in docs} == {1}
    assert "Run failed." in [(doc["fields"] or {}).get("message") for doc in docs]


def test_q4_logs_follow_prints_every_attempt_of_a_crashed_run_and_ends(stack):
    # GIVEN `q4 logs --follow` started as the run is submitted, and the run's first task killed once it
    # has logged (SIGKILL: a crash the orchestrator relaunches)
    aws = stack["aws"]
    submit(aws, "logs-crash-1", table(5000))
    follow = subprocess.Popen(
        [Q4, "logs", "--follow", "logs-crash-1"],
        env={**stack["env"], **aws},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    killed = None
    while killed is None and time.monotonic() < deadline:
        for entry in ledger_entries(stack["state_dir"], "logs-crash-1"):
            task_log = stack["state_dir"] / "tasks" / entry["task_arn"].rsplit("/", 1)[-1] / "task.log"
            if entry["status"] == "running" and task_log.exists() and task_log.stat().st_size:
                os.killpg(entry["pid"], signal.SIGKILL)
                killed = entry["task_arn"]
        time.sleep(0.05)
    assert killed is not None
    done = done_messages(aws, ["logs-crash-1"])["logs-crash-1"]
    assert (done["status"], done["attempt"]) == ("succeeded", 2)
    # THEN --follow ends by itself once the run ended and its streams are drained
    followed, errors = follow.communicate(timeout=120)
    assert follow.returncode == 0, errors
    # AND it printed both attempts, the first's lines before the second's, the second's to its end
    attempts = _attempts(followed)
    assert attempts[0] == 1 and set(attempts) == {1, 2} and attempts == sorted(attempts), followed
    assert "Run succeeded." in followed
    # AND nothing came after it ended: `q4 logs` now prints the same lines
    assert q4(stack, "logs", "logs-crash-1").stdout == followed
