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

And one it gets wrong: moto evaluates bucket policies without request context and skips the
``Bool`` operator, so the buckets' TLS-only statement (Deny when ``aws:SecureTransport`` is
``false``) denies every request. The launcher evaluates ``Bool``/``StringEquals`` conditions
of bucket policies with ``aws:SecureTransport = true``: the emulator listens on loopback only,
where traffic never leaves the machine, and counts it as secure transport. The deployed
policies stay exactly as written.
"""

from __future__ import annotations

import json
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


#: Request context the emulator gives bucket policies (requests only ever arrive over loopback).
BUCKET_POLICY_CONTEXT = {"aws:securetransport": "true"}


def _condition_holds(condition: dict[str, Any], context: dict[str, str]) -> bool:
    """AWS semantics for ``Bool``/``StringEquals`` on known keys; other operators are ignored (as in moto)."""
    for operator, entries in condition.items():
        if operator not in ("Bool", "StringEquals"):
            continue
        for key, expected in entries.items():
            if key.lower() not in context:
                continue
            allowed = expected if isinstance(expected, list) else [expected]
            actual = context[key.lower()]
            if operator == "Bool":
                if actual.lower() not in {str(value).lower() for value in allowed}:
                    return False
            elif actual not in {str(value) for value in allowed}:
                return False
    return True


def loopback_is_secure_transport() -> None:
    """Evaluate bucket policy conditions against ``BUCKET_POLICY_CONTEXT`` (statements whose condition
    does not hold do not apply; moto would treat them as an explicit Deny)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self: Any, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        document = json.loads(self.policy.decode())
        statements = document.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        applicable = [
            {k: v for k, v in statement.items() if k != "Condition"}
            for statement in statements
            if _condition_holds(statement.get("Condition", {}), BUCKET_POLICY_CONTEXT)
        ]
        if not applicable:
            return PermissionResult.NEUTRAL
        return IAMPolicy(json.dumps({**document, "Statement": applicable})).is_action_permitted(
            action, resource
        )

    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    disable_builtin_sqs_lambda_poller()
    support_redrive_allow_policy()
    loopback_is_secure_transport()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
