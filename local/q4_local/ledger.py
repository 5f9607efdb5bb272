"""``ledger.json``: every task the local runtime has taken on, shared by its Fargate and EventBridge
stand-ins (Fargate moves a task ``pending`` -> ``running`` -> ``exited``; EventBridge delivers the STOPPED
event of an ``exited`` one: ``delivered``, ``dead_lettered`` or ``undeliverable``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now() -> str:
    """The current UTC time as ECS writes timestamps in events (milliseconds, ``Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_id(task_arn: str) -> str:
    """The task's id: the last part of its ARN (also the name of its folder under ``tasks/``)."""
    return task_arn.rsplit("/", 1)[-1]


@dataclass
class TaskRecord:
    """One ledger entry: a task the runtime has taken on."""

    task_arn: str
    status: str  # pending | running | exited | delivered | dead_lettered | undeliverable
    pid: int | None = None
    pid_started: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    delivery_attempts: int = 0
    task: dict[str, Any] = field(default_factory=dict)  # DescribeTasks entry when taken on
    # STOPPED events sent to a function's DLQ after their last failed attempt: function, queue, message_id,
    # request_id (the status is ``dead_lettered`` when every failed target's event got there)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    # ECS StopTask stopped the task (``q4 cancel``): stop code ``UserInitiated``; SIGKILL due at kill_at
    stop_code: str | None = None
    kill_at: float | None = None


class Ledger:
    """``ledger.json``: every task the runtime has taken on, saved after each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks: dict[str, TaskRecord] = {}
        if path.exists():
            for arn, entry in json.loads(path.read_text()).items():
                self.tasks[arn] = TaskRecord(**entry)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({arn: vars(rec) for arn, rec in self.tasks.items()}, indent=1))
        tmp.replace(self.path)
