"""The local runtime's CloudWatch Logs writing (q4_local.logs, fargate, lambda_host) against the moto server:
PutLogEvents batches within its limits, a task's output file shipped line by line exactly once (across a
restart), the Fargate stand-in shipping a running task's lines as they come, and an invocation's output in
its function's log group as Lambda writes it."""

from __future__ import annotations

import re
import time
from typing import Any

import boto3
import pytest
from q4_local import lambda_host
from q4_local import logs as q4_logs
from q4_local.fargate import Fargate
from q4_local.ledger import Ledger
from support import toy_task


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


TASK_PROGRAM = (
    "import os, pathlib, sys, time\n"
    "print('first line', flush=True)\n"
    "go = pathlib.Path(os.environ['GO_FILE'])\n"
    "while not go.exists(): time.sleep(0.05)\n"
    "sys.stdout.write('last, unterminated'); sys.exit(3)\n"
)


def _fargate_task(aws_env: dict[str, str], tmp_path: Any, group: str) -> tuple[Fargate, str]:
    """A cluster with one RUNNING task whose definition logs with awslogs to ``group``, and the Fargate
    stand-in (with a logs client) that runs it."""
    ecs = boto3.client("ecs")
    cluster = ecs.create_cluster(clusterName=f"logs-{time.monotonic_ns()}")["cluster"]["clusterArn"]
    definition = toy_task.register(
        TASK_PROGRAM,
        "logs",
        environment=[{"name": "GO_FILE", "value": str(tmp_path / "go")}],
        logConfiguration={
            "logDriver": "awslogs",
            "options": {"awslogs-group": group, "awslogs-region": "x", "awslogs-stream-prefix": "p"},
        },
    )
    task_arn = toy_task.run(cluster, definition)
    fargate = Fargate(
        ecs, cluster, Ledger(tmp_path / "ledger.json"), tmp_path / "tasks", dict(aws_env), 1,
        logs=boto3.client("logs"),
    )  # fmt: skip
    return fargate, task_arn


def _tick(fargate: Fargate) -> None:
    fargate.reap()
    fargate.take_on()
    fargate.start_pending()
    time.sleep(0.1)


def test_fargate_ships_a_tasks_lines_as_they_come_and_the_rest_before_it_stops(aws_env, tmp_path):
    # GIVEN a task whose definition logs to an existing group
    logs = boto3.client("logs")
    group = f"/ecs/fargate-{time.monotonic_ns()}"
    logs.create_log_group(logGroupName=group)
    fargate, task_arn = _fargate_task(aws_env, tmp_path, group)
    stream = f"p/app/{task_arn.rsplit('/', 1)[-1]}"
    # WHEN it runs, THEN its first line reaches <prefix>/<container>/<task id> while it still runs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "first line" not in _safe_events(logs, group, stream):
        _tick(fargate)
    assert _safe_events(logs, group, stream) == ["first line"]
    assert fargate.ledger.tasks[task_arn].status == "running"
    # WHEN it ends, THEN its last (unterminated) line is there by the time it is marked stopped
    (tmp_path / "go").touch()
    while time.monotonic() < deadline and fargate.ledger.tasks[task_arn].status != "exited":
        _tick(fargate)
    assert fargate.ledger.tasks[task_arn].exit_code == 3
    assert _events(logs, group, stream) == ["first line", "last, unterminated"]


def test_fargate_runs_a_task_whose_log_group_is_missing(aws_env, tmp_path, caplog):
    # GIVEN a task whose definition names a log group that does not exist
    fargate, task_arn = _fargate_task(aws_env, tmp_path, f"/ecs/missing-{time.monotonic_ns()}")
    (tmp_path / "go").touch()
    # THEN it runs and stops as any other, its output in task.log only
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        task_arn not in fargate.ledger.tasks or fargate.ledger.tasks[task_arn].status != "exited"
    ):
        _tick(fargate)
    assert fargate.ledger.tasks[task_arn].exit_code == 3
    task_log = tmp_path / "tasks" / task_arn.rsplit("/", 1)[-1] / "task.log"
    assert task_log.read_text() == "first line\nlast, unterminated"
    # AND the runtime said so once, not on every tick
    said = [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"


def _safe_events(logs: Any, group: str, stream: str) -> list[str]:
    """The stream's messages; none while it does not exist yet."""
    try:
        return _events(logs, group, stream)
    except logs.exceptions.ResourceNotFoundException:
        return []
