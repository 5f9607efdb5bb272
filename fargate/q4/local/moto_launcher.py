"""Run moto server as the local stack's emulator: ``python -m q4.local.moto_launcher -H HOST -p PORT``.

moto has its own SQS -> Lambda poller: every ``SendMessage`` to a queue with an event source
mapping receives the visible messages, tries to invoke the function in Docker, fails without
Docker, and makes the messages visible again. That hides messages from the real poller for a
moment and counts a receive against ``maxReceiveCount`` on every send, so messages reach the DLQ
early. The local runtime *is* the event source mapping here, so this launcher switches moto's
poller off (the mapping itself is still created, listed and described as deployed) and then
starts moto server.

It also fills one gap Terraform trips over: moto stores an SQS queue's ``RedriveAllowPolicy``
but never returns it, so the AWS provider waits forever for an
``aws_sqs_queue_redrive_allow_policy`` to appear; the launcher makes the attribute readable.
"""

from __future__ import annotations

import sys
from typing import Any


def disable_builtin_sqs_lambda_poller() -> None:
    """Make moto's SQS queues forget event source mappings they are told about (moto keeps its own list)."""
    from moto.sqs.models import Queue

    def _mappings(self: Any) -> dict[str, Any]:
        return {}

    def _ignore(self: Any, value: Any) -> None:
        return None

    Queue.lambda_event_source_mappings = property(_mappings, _ignore)  # type: ignore[assignment]


def support_redrive_allow_policy() -> None:
    """Let ``GetQueueAttributes`` return the ``RedriveAllowPolicy`` that ``SetQueueAttributes`` stored."""
    from moto.sqs.models import Queue

    if "RedriveAllowPolicy" not in Queue.BASE_ATTRIBUTES:
        Queue.BASE_ATTRIBUTES = [*Queue.BASE_ATTRIBUTES, "RedriveAllowPolicy"]
    if not hasattr(Queue, "redrive_allow_policy"):
        Queue.redrive_allow_policy = None  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    disable_builtin_sqs_lambda_poller()
    support_redrive_allow_policy()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
