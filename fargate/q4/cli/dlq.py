"""``q4 dlq``: what sits in the pipeline's dead-letter queue, and moving it back to the work queue.

Two kinds of message end up in the DLQ (``$Q4_DLQ_URL``, Terraform output ``dlq_url``):

- **work messages** that failed every delivery (``maxReceiveCount``), e.g. RunTask kept failing;
- **ECS Task State Change events** (STOPPED) whose asynchronous delivery to the orchestrator failed, e.g.
  the relaunch of a crashed task could not start. Lambda and the EventBridge target keep them here.

Either way the run stays ``accepted`` with no done message. Once the cause is fixed, ``q4 dlq --redrive``
sends each message, unchanged, to the work queue and only then deletes it from the DLQ. The orchestrator
takes both kinds from the work queue (a task event is checked against its launch record and ECS first),
and everything it does is idempotent, so a message moved twice does no harm.

Listing does not consume: each message is received with a short visibility timeout and made visible again
at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import q4_contract as contract

from q4 import aws
from q4.errors import EXIT_OK

#: How long a listed message stays hidden while the listing runs (it is made visible again afterwards).
PEEK_VISIBILITY_S = 30
#: Attributes Lambda (async invocations) and EventBridge (target DLQs) put on a dead-lettered event.
ERROR_ATTRIBUTES = ("ErrorCode", "ErrorMessage", "ERROR_CODE", "ERROR_MESSAGE")


@dataclass
class DeadLetter:
    """One DLQ message, as ``q4 dlq`` shows it."""

    message_id: str
    kind: str  # "work", "task-stopped" or "unknown"
    run_id: str | None
    attempt: int | None = None
    exit_code: int | None = None
    sent_at: str | None = None
    receive_count: int | None = None
    error: str | None = None
    body: str = field(default="", repr=False)
    receipt_handle: str = field(default="", repr=False)

    def describe(self) -> str:
        parts = [f"{self.kind:<12}", f"run {self.run_id or '?'}"]
        if self.kind == "task-stopped":
            parts.append(f"attempt {self.attempt}")
            parts.append(f"exit code {self.exit_code if self.exit_code is not None else 'none'}")
        if self.sent_at:
            parts.append(f"dead-lettered {self.sent_at}")
        if self.receive_count is not None and self.kind == "work":
            parts.append(f"delivered {self.receive_count} times")
        if self.error:
            parts.append(f"error: {self.error}")
        return "  ".join(parts)

    def public(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("receipt_handle")
        return doc


def classify(message: dict[str, Any]) -> DeadLetter:
    """What a DLQ message is: a work message, a task's STOPPED event, or something else."""
    body = str(message.get("Body", ""))
    attributes = message.get("Attributes") or {}
    sent = attributes.get("SentTimestamp")
    count = attributes.get("ApproximateReceiveCount")
    common: dict[str, Any] = {
        "message_id": str(message.get("MessageId", "")),
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(sent) / 1000)) if sent else None,
        "receive_count": int(count) if count else None,
        "error": _error_text(message.get("MessageAttributes") or {}),
        "body": body,
        "receipt_handle": str(message.get("ReceiptHandle", "")),
    }
    event = contract.task_state_change(body)
    if event is not None:
        raw = event.get("detail")
        detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
        env: dict[str, str] = {}
        for override in (detail.get("overrides") or {}).get("containerOverrides", []) or []:
            for item in override.get("environment", []) or []:
                if isinstance(item, dict) and "name" in item:
                    env[str(item["name"])] = str(item.get("value", ""))
        codes = [c.get("exitCode") for c in detail.get("containers") or [] if isinstance(c, dict)]
        return DeadLetter(
            kind="task-stopped",
            run_id=env.get(contract.ENV_RUN_ID) or None,
            attempt=contract.attempt_from_env(env),
            exit_code=next((code for code in codes if isinstance(code, int)), None),
            **common,
        )
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("run_id"), str):
        return DeadLetter(kind="work", run_id=doc["run_id"], **common)
    return DeadLetter(kind="unknown", run_id=None, **common)


def _error_text(attributes: dict[str, Any]) -> str | None:
    values = [str(attributes[name].get("StringValue", "")) for name in ERROR_ATTRIBUTES if name in attributes]
    text = ": ".join(value for value in values if value)
    return (text[:197] + "...") if len(text) > 200 else (text or None)


def letters_of(sqs: Any, dlq_url: str, run_id: str) -> list[DeadLetter]:
    """This run's messages in the DLQ (the queue is looked through once and left as it was)."""
    letters = list(receive_all(sqs, dlq_url))
    release(sqs, dlq_url, letters)
    return [letter for letter in letters if letter.run_id == run_id]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = subparsers.add_parser(
        "dlq",
        help="list the dead-letter queue; --redrive moves it back to the work queue",
        description="List what is in $Q4_DLQ_URL: work messages that failed every delivery and task STOPPED "
        "events whose delivery failed (their runs stay accepted). With --redrive, send them to "
        "$Q4_WORK_QUEUE_URL (the orchestrator resumes each run) and delete them from the DLQ.",
    )
    dlq.add_argument("--redrive", action="store_true", help="move the messages to the work queue")
    dlq.add_argument(
        "--run", action="append", default=[], metavar="RUN_ID", help="only this run's messages (repeatable)"
    )
    dlq.add_argument("--json", action="store_true", help="print the messages as JSON")
    dlq.set_defaults(handler=handle_dlq)


def handle_dlq(args: argparse.Namespace) -> int:
    dlq_url = aws.require_env("Q4_DLQ_URL")
    work_url = aws.require_env("Q4_WORK_QUEUE_URL") if args.redrive else ""
    sqs = aws.client("sqs")
    wanted = set(args.run)
    with aws.aws_errors("read the dead-letter queue"):
        letters = list(receive_all(sqs, dlq_url))
    chosen = [d for d in letters if not wanted or d.run_id in wanted]
    moved: list[DeadLetter] = []
    left: list[DeadLetter] = []
    try:
        if args.redrive:
            for letter in chosen:
                if letter.kind == "unknown":
                    left.append(letter)
                    continue
                with aws.aws_errors(f"move DLQ message {letter.message_id} to the work queue"):
                    sqs.send_message(QueueUrl=work_url, MessageBody=letter.body)
                    sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=letter.receipt_handle)
                moved.append(letter)
    finally:
        moved_ids = {d.message_id for d in moved}
        release(sqs, dlq_url, [d for d in letters if d.message_id not in moved_ids])

    if args.json:
        doc = {
            "dlq_url": dlq_url,
            "messages": [d.public() for d in chosen],
            "redriven": [d.message_id for d in moved],
            "left": [d.message_id for d in left],
        }
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    scope = f" for run(s) {', '.join(sorted(wanted))}" if wanted else ""
    print(f"DLQ {dlq_url}: {len(chosen)} message(s){scope}")
    for letter in chosen:
        mark = "moved " if letter.message_id in moved_ids else ""
        print(f"  {mark}{letter.describe()}")
    if args.redrive:
        print(f"Moved {len(moved)} message(s) to the work queue; follow the runs with `q4 status RUN_ID`.")
        if left:
            print(f"Left {len(left)} message(s) that are neither a work message nor a task event in the DLQ.")
    elif chosen:
        print(
            "Fix what made them fail (the errors above, the orchestrator's logs), then run "
            "`q4 dlq --redrive` to resume these runs."
        )
    return EXIT_OK


def receive_all(sqs: Any, queue_url: str) -> Iterator[DeadLetter]:
    """Every message now in the queue, each once (hidden for PEEK_VISIBILITY_S until released)."""
    seen: set[str] = set()
    empty_rounds = 0
    while empty_rounds < 2:
        messages = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=PEEK_VISIBILITY_S,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        empty_rounds = 0 if fresh else empty_rounds + 1
        for message in fresh:
            seen.add(message["MessageId"])
            yield classify(message)


def release(sqs: Any, queue_url: str, letters: list[DeadLetter]) -> None:
    """Make listed messages visible again at once (best effort: they reappear after the timeout anyway)."""
    for letter in letters:
        with contextlib.suppress(Exception):  # it becomes visible again by itself after the timeout
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=letter.receipt_handle, VisibilityTimeout=0
            )
