"""CloudWatch Logs in the emulator, written as ECS's ``awslogs`` driver and Lambda write them.

Where a task's lines go comes from its task definition (:func:`awslogs_destination`: the container's
``logConfiguration``, stream ``<awslogs-stream-prefix>/<container name>/<task id>`` as ECS names it); a
function's from its configuration (``LoggingConfig.LogGroup``, ``/aws/lambda/<name>`` by default) with a
stream per execution environment (:func:`lambda_stream_name`). :class:`LogStream` sends events with
``PutLogEvents`` in batches within its limits (:func:`batches`); :class:`FileTail` ships the complete
lines a growing file gained since the last call.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

log = logging.getLogger("q4_local.runtime.logs")

#: PutLogEvents limits: events per call, bytes per call (each event counts its UTF-8 message + 26
#: bytes), bytes per event, and the time span one call may cover.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD_BYTES
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000

#: One log event: (milliseconds since the epoch, message).
Event = tuple[int, str]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Destination:
    """A log group and stream."""

    group: str
    stream: str


def awslogs_destination(container: dict[str, Any], task_arn: str) -> Destination | None:
    """Where ECS's ``awslogs`` driver sends ``container``'s output in task ``task_arn``: the container
    definition's ``awslogs-group``, stream ``<awslogs-stream-prefix>/<container name>/<task id>``. None
    when the container does not log with ``awslogs`` (or, as Fargate requires, has no stream prefix)."""
    config = container.get("logConfiguration") or {}
    options = config.get("options") or {}
    group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
    if config.get("logDriver") != "awslogs" or not group or not prefix:
        return None
    return Destination(str(group), f"{prefix}/{container['name']}/{task_arn.rsplit('/', 1)[-1]}")


def lambda_stream_name(when: datetime.datetime | None = None) -> str:
    """A Lambda execution environment's stream name: ``YYYY/MM/DD/[$LATEST]<32 hex digits>``."""
    when = when or datetime.datetime.now(datetime.UTC)
    return f"{when:%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"


def split_message(message: str) -> list[str]:
    """``message`` as one or more event messages within the per-event size limit."""
    data = message.encode()
    if len(data) <= MAX_EVENT_BYTES:
        return [message]
    parts = []
    while data:
        part, data = data[:MAX_EVENT_BYTES], data[MAX_EVENT_BYTES:]
        parts.append(part.decode(errors="ignore"))
    return parts


def batches(events: list[Event]) -> Iterator[list[dict[str, Any]]]:
    """``events`` (chronological) as PutLogEvents ``logEvents`` lists within its limits."""
    batch: list[dict[str, Any]] = []
    size = 0
    for timestamp, message in events:
        for part in split_message(message):
            cost = len(part.encode()) + EVENT_OVERHEAD_BYTES
            if batch and (
                len(batch) >= MAX_BATCH_EVENTS
                or size + cost > MAX_BATCH_BYTES
                or timestamp - batch[0]["timestamp"] > MAX_BATCH_SPAN_MS
            ):
                yield batch
                batch, size = [], 0
            batch.append({"timestamp": timestamp, "message": part})
            size += cost
    if batch:
        yield batch


@dataclass
class LogStream:
    """A stream the runtime writes to; created on the first :meth:`put` (its group too when
    ``create_group``, as Lambda does; ECS needs the group to exist)."""

    logs: Any
    destination: Destination
    create_group: bool = False
    created: bool = field(default=False, init=False)

    def put(self, events: list[Event]) -> None:
        """Send ``events`` (empty messages dropped, as the awslogs driver does) in order."""
        events = sorted((e for e in events if e[1]), key=lambda e: e[0])
        if not events:
            return
        self.ensure()
        for batch in batches(events):
            response = self.logs.put_log_events(
                logGroupName=self.destination.group, logStreamName=self.destination.stream, logEvents=batch
            )
            if response.get("rejectedLogEventsInfo"):
                log.warning("%s: events rejected: %s", self.destination, response["rejectedLogEventsInfo"])

    def ensure(self) -> None:
        """Create the stream (and the group, when ``create_group``) unless done already."""
        if self.created:
            return
        group, stream = self.destination.group, self.destination.stream
        if self.create_group:
            try:
                self.logs.create_log_group(logGroupName=group)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                    raise
        try:
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                raise
        self.created = True


@dataclass
class FileTail:
    """Ships what a task's output file gained to its stream, line by line, each line stamped with the time
    it was read; the shipped length is kept next to the file (``<name>.shipped``) so that a restarted
    runtime neither resends nor skips lines."""

    path: Path
    stream: LogStream

    @property
    def offset_file(self) -> Path:
        return self.path.with_name(self.path.name + ".shipped")

    def ship(self, final: bool = False) -> int:
        """Send the complete lines added since the last call (and, when ``final``, a last unterminated
        one); returns how many lines were sent."""
        offset = int(self.offset_file.read_text()) if self.offset_file.exists() else 0
        try:
            with open(self.path, "rb") as source:
                source.seek(offset)
                data = source.read()
        except FileNotFoundError:
            return 0
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        if not data:
            return 0
        stamp = now_ms()
        lines = data.decode(errors="replace").splitlines()
        self.stream.put([(stamp, line) for line in lines])
        self.offset_file.write_text(str(offset + len(data)))
        return len(lines)
