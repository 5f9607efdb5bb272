"""The local runtime's CloudWatch Logs writing (q4_local.logs, lambda_host) against the moto server:
PutLogEvents batches within its limits, a task's output file shipped line by line exactly once (across a
restart), and an invocation's output in its function's log group as Lambda writes it."""

from __future__ import annotations

import re
import time
from typing import Any

import boto3
import pytest
from q4_local import lambda_host
from q4_local import logs as q4_logs


def _events(logs: Any, group: str, stream: str) -> list[str]:
    return [e["message"] for e in logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]]


def test_batches_keep_within_put_log_events_limits():
    # GIVEN more events than one call takes, a day's span, and an event over the per-event size
    many = [(1_000, f"line {i}") for i in range(q4_logs.MAX_BATCH_EVENTS + 5)]
    spread = [(0, "a"), (q4_logs.MAX_BATCH_SPAN_MS + 1, "b")]
    big = [(0, "x" * (q4_logs.MAX_EVENT_BYTES + 10))]
    heavy = [(0, "y" * 200_000) for _ in range(6)]
    # THEN each is split where a limit would be crossed, and nothing is lost
    assert [len(b) for b in q4_logs.batches(many)] == [q4_logs.MAX_BATCH_EVENTS, 5]
    assert [[e["message"] for e in b] for b in q4_logs.batches(spread)] == [["a"], ["b"]]
    (parts,) = list(q4_logs.batches(big))
    assert "".join(e["message"] for e in parts) == big[0][1]
    assert all(len(e["message"].encode()) <= q4_logs.MAX_EVENT_BYTES for e in parts)
    sizes = [sum(len(e["message"]) + q4_logs.EVENT_OVERHEAD_BYTES for e in b) for b in q4_logs.batches(heavy)]
    assert len(sizes) == 2 and max(sizes) <= q4_logs.MAX_BATCH_BYTES


def test_awslogs_destination_names_the_stream_as_ecs_does():
    container = {
        "name": "q4-task",
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": "/ecs/q4-task", "awslogs-stream-prefix": "q4"},
        },
    }
    arn = "arn:aws:ecs:eu-central-2:123456789012:task/q4-cluster/0123456789abcdef"
    assert q4_logs.awslogs_destination(container, arn) == q4_logs.Destination(
        "/ecs/q4-task", "q4/q4-task/0123456789abcdef"
    )
    assert q4_logs.awslogs_destination({"name": "x"}, arn) is None
    json_file = {"name": "x", "logConfiguration": {"logDriver": "json-file"}}
    assert q4_logs.awslogs_destination(json_file, arn) is None


def test_file_tail_ships_complete_lines_once_even_across_a_restart(aws_env, tmp_path):
    # GIVEN a task's output file and its stream in an existing group
    logs = boto3.client("logs")
    group = f"/ecs/tail-{time.monotonic_ns()}"
    logs.create_log_group(logGroupName=group)
    destination = q4_logs.Destination(group, "q4/app/task1")
    output = tmp_path / "task.log"
    output.write_bytes(b'{"level": "INFO", "message": "one"}\n\ntwo\npart')
    tail = q4_logs.FileTail(output, q4_logs.LogStream(logs, destination))
    # WHEN it ships: the complete lines go (the empty one dropped, as the awslogs driver does), not the rest
    assert tail.ship() == 3
    assert _events(logs, group, destination.stream) == ['{"level": "INFO", "message": "one"}', "two"]
    # WHEN the file grows and a restarted runtime (a new tail) ships, finally: only what is new goes
    with open(output, "ab") as appending:
        appending.write(b"ial\nlast, unterminated")
    restarted = q4_logs.FileTail(output, q4_logs.LogStream(logs, destination))
    assert restarted.ship(final=True) == 2
    assert restarted.ship(final=True) == 0
    assert _events(logs, group, destination.stream)[2:] == ["partial", "last, unterminated"]


@pytest.mark.parametrize("sleep_s", [0, 3])
def test_invocation_output_goes_to_its_lambda_stream(aws_env, tmp_path, sleep_s):
    # GIVEN a function whose handler prints a line (and, in the second case, outlives its 1 s timeout)
    code = tmp_path / "code"
    code.mkdir()
    (code / "fn.py").write_text(
        "import time\ndef handler(event, context):\n"
        "    print('hello from', event['who'], flush=True)\n"
        f"    time.sleep({sleep_s})\n    return 'ok'\n"
    )
    name = f"shipping-{time.monotonic_ns()}"
    function = lambda_host.DeployedFunction(
        name=name,
        arn=f"arn:aws:lambda:{aws_env['AWS_REGION']}:123456789012:function:{name}",
        handler="fn.handler",
        environment={},
        timeout_s=1,
        memory_mb=256,
        code_dir=code,
    )
    logs = boto3.client("logs")
    # WHEN it is invoked with a logs client
    outcome = lambda_host.invoke(
        function,
        {"who": "test"},
        dict(aws_env),
        runtime_dir=lambda_host.runtime_packages_dir(tmp_path / "cache"),
        log_path=tmp_path / "lambda.log",
        logs=logs,
    )
    # THEN lambda.log has its line, and /aws/lambda/<name> (created, as Lambda does) has one stream, named as
    # Lambda names them, with the line between START and END/REPORT (and the timeout said)
    assert outcome.ok is (sleep_s == 0)
    assert "hello from test" in (tmp_path / "lambda.log").read_text()
    (stream,) = logs.describe_log_streams(logGroupName=f"/aws/lambda/{name}")["logStreams"]
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", stream["logStreamName"])
    messages = _events(logs, f"/aws/lambda/{name}", stream["logStreamName"])
    request = outcome.request_id
    assert messages[0] == f"START RequestId: {request} Version: $LATEST"
    assert "hello from test" in messages[1:-2]
    assert messages[-2] == f"END RequestId: {request}"
    assert messages[-1].startswith(f"REPORT RequestId: {request}\tDuration: ")
    assert (f"{request} Task timed out after 1.00 seconds" in messages) is (sleep_s > 0)
