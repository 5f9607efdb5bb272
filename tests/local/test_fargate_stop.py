"""The local Fargate stand-in and ECS StopTask (what `q4 cancel` calls), against the moto server: a running
task's main process gets SIGTERM, its process group SIGKILL after the container's stopTimeout, a pending task
never starts; each stops with code UserInitiated and the StopTask reason."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
from q4_local.eventbridge import EventBridge
from q4_local.fargate import Fargate
from q4_local.ledger import Ledger, TaskRecord
from support import toy_task

# Writes "ready" to its scratch dir, then waits; on SIGTERM writes "terminated" and exits 143 (as q4-task
# does) unless IGNORE_TERM is set, in which case only SIGKILL ends it.
PROGRAM = (
    "import os, pathlib, signal, sys, time\n"
    "scratch = pathlib.Path(os.environ['Q4_SCRATCH_DIR'])\n"
    "def term(*_):\n"
    "    (scratch / 'terminated').write_text('yes')\n"
    "    if not os.environ.get('IGNORE_TERM'):\n"
    "        sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "(scratch / 'ready').write_text('yes')\n"
    "for _ in range(600):\n"
    "    time.sleep(0.1)\n"
)


def _deploy(aws_env: dict[str, str], tmp_path: Path, max_tasks: int = 2) -> tuple[Any, Fargate, str]:
    ecs = boto3.client("ecs")
    cluster = ecs.create_cluster(clusterName=f"stop-{time.monotonic_ns()}")["cluster"]["clusterArn"]
    task_definition = toy_task.register(PROGRAM, "stop", stopTimeout=2)
    fargate = Fargate(
        ecs, cluster, Ledger(tmp_path / "ledger.json"), tmp_path / "tasks", dict(aws_env), max_tasks
    )

    def run(**env: str) -> str:
        return toy_task.run(cluster, task_definition, env)

    return run, fargate, cluster


def _tick_until(fargate: Fargate, arn: str, status: str, timeout: float = 30) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fargate.notice_stops()
        fargate.reap()
        fargate.take_on()
        fargate.start_pending()
        record = fargate.ledger.tasks.get(arn)
        if record is not None and record.status == status:
            return record
        time.sleep(0.05)
    raise AssertionError(f"task {arn} never became {status}: {fargate.ledger.tasks.get(arn)}")


def _scratch(fargate: Fargate, arn: str) -> Path:
    return fargate.tasks_dir / arn.rsplit("/", 1)[-1] / "scratch"


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_stop_task_sends_the_running_task_sigterm_and_reports_user_initiated(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN a running task
    run, fargate, cluster = _deploy(aws_env, tmp_path)
    arn = run()
    _tick_until(fargate, arn, "running")
    _wait_for(_scratch(fargate, arn) / "ready")
    # WHEN ECS StopTask stops it
    boto3.client("ecs").stop_task(cluster=cluster, task=arn, reason="Cancelled by q4 cancel")
    # THEN its process got SIGTERM and its own exit code (143) is reported, stop code UserInitiated
    record = _tick_until(fargate, arn, "exited")
    assert (_scratch(fargate, arn) / "terminated").exists()
    assert (record.exit_code, record.stop_code, record.reason) == (
        143,
        "UserInitiated",
        "Cancelled by q4 cancel",
    )
    detail = EventBridge(None, None, None, None, fargate.ledger, cluster, "us-east-1").stopped_event(record)[
        "detail"
    ]  # type: ignore[arg-type]
    assert (detail["stopCode"], detail["stoppedReason"]) == ("UserInitiated", "Cancelled by q4 cancel")
    assert detail["containers"][0]["exitCode"] == 143


def test_a_task_ignoring_sigterm_is_killed_after_its_stop_timeout(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    run, fargate, cluster = _deploy(aws_env, tmp_path)
    arn = run(IGNORE_TERM="1")
    _tick_until(fargate, arn, "running")
    _wait_for(_scratch(fargate, arn) / "ready")
    stopped_at = time.monotonic()
    boto3.client("ecs").stop_task(cluster=cluster, task=arn, reason="Cancelled by q4 cancel")
    record = _tick_until(fargate, arn, "exited")
    # SIGTERM came and was ignored; SIGKILL followed once the container's stopTimeout (2 s) had passed
    assert (_scratch(fargate, arn) / "terminated").exists()
    assert record.exit_code == 137 and record.stop_code == "UserInitiated"
    assert time.monotonic() - stopped_at >= 2


def test_a_pending_task_stopped_by_stop_task_never_starts(aws_env: dict[str, str], tmp_path: Path) -> None:
    # GIVEN one slot, taken by a running task, and a second task waiting for it
    run, fargate, cluster = _deploy(aws_env, tmp_path, max_tasks=1)
    first = run()
    _tick_until(fargate, first, "running")
    second = run()
    _tick_until(fargate, second, "pending")
    # WHEN the waiting task is stopped
    boto3.client("ecs").stop_task(cluster=cluster, task=second, reason="Cancelled by q4 cancel")
    record = _tick_until(fargate, second, "exited")
    # THEN it never ran: no exit code, stop code UserInitiated; the running one goes on
    assert (record.exit_code, record.pid, record.stop_code) == (None, None, "UserInitiated")
    assert not _scratch(fargate, second).exists()
    assert fargate.ledger.tasks[first].status == "running"
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert ledger[second]["stop_code"] == "UserInitiated"
    fargate.shutdown(grace_s=2)
