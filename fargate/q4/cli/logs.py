"""``q4 logs RUN_ID [--follow] [--json]``: what a run's tasks wrote, every attempt, in order.

Each attempt's launch record (``run=<id>/attempts/<n>.json`` in ``$Q4_ARTIFACTS_BUCKET``; a sharded run's
steps: ``run=<id>/shards/<step>/<shard>/attempts/<n>.json``) names its task;
the task's output is in the task log group (``$Q4_TASK_LOG_GROUP``, Terraform output ``task_log_group``),
stream ``<awslogs-stream-prefix>/<container>/<task id>`` as ECS's awslogs driver names it. The stream is
found by the task id: first under the prefix the group's streams share, else among the group's
:data:`SCAN_PAGES` pages of most recent streams. The task's JSON log lines are shown as time, level,
message and their other fields; other lines as they are, after CloudWatch's time. A sharded run's lines
come step by step (pass 1, pass 2, finish), shard by shard, each labelled ``[pass1 shard 3 attempt 1]``.

``--follow`` polls until the run has MANIFEST.json or ERROR.json and its streams have been quiet for
:data:`QUIET_S` seconds (at most :data:`DRAIN_LIMIT_S` after the run ended). A run that is never accepted
(rejected) has no task: ``--follow`` waits for it until interrupted or ``--timeout``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import q4_contract as contract
from q4_contract import S3Store, shard_records
from q4_contract.shards import STEPS

from q4 import aws
from q4.errors import EXIT_OK, InputError

#: Seconds between two polls of ``--follow``.
POLL_S = 2.0
#: ``--follow`` ends once the run ended and no line came for this long ...
QUIET_S = 5.0
#: ... or this long after the run ended, whatever still comes (a task that never started has no stream).
DRAIN_LIMIT_S = 60.0
#: A sharded run's launch records read at once (each is read once).
RECORD_READERS = 8
#: Pages of streams (50 each, most recent first) looked through for a stream not under a known prefix.
SCAN_PAGES = 10
#: Fields of a task's JSON line shown in their own place, or not repeated on every line.
_SHOWN_APART = ("timestamp", "level", "logger", "message", "exception", "run_id", "attempt")


@dataclass
class Attempt:
    """One launched attempt of the run and where its task's stream is read up to."""

    number: int
    task_arn: str
    stream: str | None = None
    token: str | None = None
    step: str | None = None  # a sharded run's step (pass1, pass2, finish) and shard
    shard: int | None = None

    @property
    def task_id(self) -> str:
        return self.task_arn.rsplit("/", 1)[-1]

    @property
    def order(self) -> tuple[int, int, int]:
        """The run's own attempts first, then step by step, shard by shard."""
        step = -1 if self.step is None else STEPS.index(self.step)
        return step, self.shard or 0, self.number


@dataclass(frozen=True)
class LogLine:
    """One event of an attempt's stream."""

    attempt: int
    task_arn: str
    stream: str
    timestamp_ms: int
    message: str
    step: str | None = None  # a sharded run's step and shard
    shard: int | None = None

    @property
    def fields(self) -> dict[str, Any] | None:
        """The line as the task's JSON log object, None when it is not one."""
        if not self.message.startswith("{"):
            return None
        try:
            doc = json.loads(self.message)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def render(self) -> str:
        """``[attempt N] time LEVEL message  key=value ...`` (a shard step's ``[pass1 shard 3 attempt N]``; an
        exception's lines follow, indented)."""
        doc = self.fields
        label = (
            f"attempt {self.attempt}"
            if self.step is None
            else f"{self.step} shard {self.shard} attempt {self.attempt}"
        )
        if doc is None:
            return f"[{label}] {_iso(self.timestamp_ms)} {self.message}"
        extras = "".join(f"  {key}={_value(value)}" for key, value in doc.items() if key not in _SHOWN_APART)
        when = doc.get("timestamp") or _iso(self.timestamp_ms)
        text = f"[{label}] {when} {doc.get('level', '')!s:<7} {doc.get('message', '')}{extras}"
        if doc.get("exception"):
            text += "".join(f"\n    {line}" for line in str(doc["exception"]).splitlines())
        return text

    def public(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "step": self.step,
            "shard": self.shard,
            "task_arn": self.task_arn,
            "log_stream": self.stream,
            "timestamp": _iso(self.timestamp_ms),
            "message": self.message,
            "fields": self.fields,
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _value(value: Any) -> str:
    return value if isinstance(value, str) and value and " " not in value else json.dumps(value, default=str)


@dataclass
class RunLogs:
    """A run's attempts and the new lines of their streams, read with :meth:`poll`."""

    store: S3Store
    logs: Any
    group: str
    run_id: str
    attempts: dict[tuple[str | None, int | None, int], Attempt] = field(default_factory=dict)
    prefixes: set[str] = field(default_factory=set)

    def ended(self) -> bool:
        """Whether the run has its MANIFEST.json or ERROR.json."""
        return self.store.exists(contract.manifest_key(self.run_id)) or self.store.exists(
            contract.error_key(self.run_id)
        )

    def poll(self) -> list[LogLine]:
        """Lines written since the last poll, attempt after attempt (new attempts and streams looked up)."""
        for number in self.store.attempts(self.run_id):
            if (None, None, number) not in self.attempts:
                record = self.store.attempt_record(self.run_id, number) or {}
                self.attempts[None, None, number] = Attempt(number, str(record.get("task_arn") or ""))
        new = [w for w in shard_records.launched(self.store, self.run_id) if w not in self.attempts]
        for step in shard_records.read_launch_records(self.store, self.run_id, new, workers=RECORD_READERS):
            self.attempts[step.step, step.shard, step.attempt] = Attempt(
                step.attempt, step.task_arn or "", step=step.step, shard=step.shard
            )
        self._find_streams([a for a in self.attempts.values() if a.stream is None and a.task_arn])
        lines: list[LogLine] = []
        for attempt in sorted(self.attempts.values(), key=lambda a: a.order):
            lines.extend(self._read(attempt))
        return lines

    @property
    def streams_found(self) -> bool:
        return all(attempt.stream for attempt in self.attempts.values())

    def _find_streams(self, missing: list[Attempt]) -> None:
        for attempt in list(missing):
            for prefix in self.prefixes or self._first_prefix():
                name = f"{prefix}/{attempt.task_id}"
                found = self.logs.describe_log_streams(logGroupName=self.group, logStreamNamePrefix=name)
                if any(s["logStreamName"] == name for s in found.get("logStreams", [])):
                    attempt.stream = name
                    missing.remove(attempt)
                    break
        if not missing:
            return
        by_id = {attempt.task_id: attempt for attempt in missing}
        pages = self.logs.get_paginator("describe_log_streams").paginate(
            logGroupName=self.group, orderBy="LastEventTime", descending=True
        )
        for page in itertools.islice(pages, SCAN_PAGES):
            for stream in page.get("logStreams", []):
                prefix, _, task_id = str(stream["logStreamName"]).rpartition("/")
                if task_id in by_id:
                    by_id.pop(task_id).stream = stream["logStreamName"]
                    self.prefixes.add(prefix)
            if not by_id:
                return

    def _first_prefix(self) -> set[str]:
        """The prefix (``<awslogs-stream-prefix>/<container>``) of one stream of the group, if any."""
        streams = self.logs.describe_log_streams(logGroupName=self.group, limit=1).get("logStreams", [])
        self.prefixes.update(str(s["logStreamName"]).rpartition("/")[0] for s in streams)
        return set(self.prefixes)

    def _read(self, attempt: Attempt) -> list[LogLine]:
        if attempt.stream is None:
            return []
        lines: list[LogLine] = []
        while True:
            request: dict[str, Any] = {"logGroupName": self.group, "logStreamName": attempt.stream}
            request.update({"nextToken": attempt.token} if attempt.token else {"startFromHead": True})
            response = self.logs.get_log_events(**request)
            lines.extend(
                LogLine(
                    attempt.number,
                    attempt.task_arn,
                    attempt.stream,
                    int(e["timestamp"]),
                    e["message"],
                    attempt.step,
                    attempt.shard,
                )
                for e in response.get("events", [])
            )
            token = response.get("nextForwardToken")
            if not token or token == attempt.token:
                return lines
            attempt.token = token


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print a run's task logs, every attempt (--follow: until it ends)",
        description="Print what the run's tasks logged, attempt after attempt, from the task log group "
        "($Q4_TASK_LOG_GROUP; launch records in $Q4_ARTIFACTS_BUCKET). JSON lines are shown as time, "
        "level, message and fields.",
    )
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing until the run has ended")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="with --follow: stop after this long"
    )
    parser.set_defaults(handler=handle_logs)


def handle_logs(args: argparse.Namespace) -> int:
    run_id = str(args.run_id)
    if not contract.is_valid_run_id(run_id):
        raise InputError("invalid_run_id", f"The run id {run_id!r} is not valid.")
    bucket = aws.require_env("Q4_ARTIFACTS_BUCKET")
    group = aws.require_env("Q4_TASK_LOG_GROUP")
    run = RunLogs(S3Store(aws.client("s3"), bucket), aws.client("logs"), group, run_id)

    def emit(lines: list[LogLine]) -> None:
        for line in lines:
            print(json.dumps(line.public()) if args.json else line.render(), flush=True)

    with aws.aws_errors(f"read the logs of run {run_id}"):
        if args.follow:
            follow(run, emit, args.timeout)
        else:
            emit(run.poll())
    if not run.attempts:
        print(f"q4: run {run_id} has no launched task (see `q4 status {run_id}`).", file=sys.stderr)
    return EXIT_OK


def follow(run: RunLogs, emit: Callable[[list[LogLine]], None], timeout: float | None) -> None:
    """Poll and print until the run ended and its streams were quiet for :data:`QUIET_S` seconds."""
    started = time.monotonic()
    ended_at: float | None = None
    last_line = started
    while timeout is None or time.monotonic() - started < timeout:
        ended = run.ended()  # before reading: what the run wrote before it ended is read in this pass
        lines = run.poll()
        emit(lines)
        current = time.monotonic()
        if lines:
            last_line = current
        if ended:
            ended_at = ended_at or current
            quiet = current - max(last_line, ended_at) >= QUIET_S and run.streams_found
            if quiet or current - ended_at >= DRAIN_LIMIT_S:
                return
        time.sleep(POLL_S)
