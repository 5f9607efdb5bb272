"""Run moto server as the local stack's emulator: ``python -m q4_local.moto_launcher -H HOST -p PORT``.

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

And one it drops: moto (5.2.5) ignores a function's ``DeadLetterConfig`` — ``LambdaFunction.__init__``
never reads it from the CreateFunction request, ``update_configuration`` skips the key, and
``get_configuration`` never returns it — so the DLQ that Terraform's ``dead_letter_config`` sets is lost,
Terraform plans to set it again on every run, and the local runtime cannot know where Lambda would send
an asynchronous event that failed all its retries. The launcher keeps it and reports it, as Lambda does.

And one it formats differently: moto (5.2.5) returns a queue's ``RedrivePolicy`` as ``json.dumps`` makes it,
``{"deadLetterTargetArn": "arn:...", "maxReceiveCount": 5}`` with spaces, where SQS returns compact JSON,
``{"deadLetterTargetArn":"arn:...","maxReceiveCount":5}``. The AWS provider stores the returned string as
is (``aws_sqs_queue.redrive_policy`` has no JSON-equivalence diff suppression), so every ``terraform plan``
showed "whitespace changes" on the work queue and, through it, an update of the orchestrator's role policy.
The launcher returns it compact, as SQS does.
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


def keep_lambda_dead_letter_config() -> None:
    """Let CreateFunction/UpdateFunctionConfiguration store ``DeadLetterConfig`` and GetFunction and
    GetFunctionConfiguration return it. As on Lambda, an empty ``TargetArn`` removes it and a function
    without one omits the key (moto 5.2.5 drops it in all three places; function versions are deep
    copies, so they keep it too)."""
    from moto.awslambda.models import LambdaFunction

    if getattr(LambdaFunction, "_q4_keeps_dead_letter_config", False):
        return

    def _target(config: Any) -> dict[str, str] | None:
        target = config.get("TargetArn") if isinstance(config, dict) else None
        return {"TargetArn": str(target)} if target else None

    original_init = LambdaFunction.__init__
    original_get = LambdaFunction.get_configuration
    original_update = LambdaFunction.update_configuration

    def __init__(self: Any, account_id: str, spec: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        original_init(self, account_id, spec, *args, **kwargs)
        self.dead_letter_config = _target(spec.get("DeadLetterConfig"))

    def get_configuration(self: Any, on_create: bool = False) -> dict[str, Any]:
        config = original_get(self, on_create)
        if getattr(self, "dead_letter_config", None):
            config["DeadLetterConfig"] = dict(self.dead_letter_config)
        return config

    def update_configuration(self: Any, config_updates: dict[str, Any]) -> dict[str, Any]:
        if "DeadLetterConfig" in config_updates:
            self.dead_letter_config = _target(config_updates["DeadLetterConfig"])
        return original_update(self, config_updates)  # returns get_configuration(): the patched one

    LambdaFunction.__init__ = __init__  # type: ignore[method-assign]
    LambdaFunction.get_configuration = get_configuration  # type: ignore[method-assign]
    LambdaFunction.update_configuration = update_configuration  # type: ignore[method-assign]
    LambdaFunction._q4_keeps_dead_letter_config = True  # type: ignore[attr-defined]


#: The order SQS returns a redrive policy's keys in (other keys, which SQS would refuse, follow as stored).
REDRIVE_POLICY_KEYS = ("deadLetterTargetArn", "maxReceiveCount")


def compact_redrive_policy() -> None:
    """Let ``GetQueueAttributes`` return ``RedrivePolicy`` as SQS does: compact JSON (no spaces after ``:``
    and ``,``), ``deadLetterTargetArn`` first and ``maxReceiveCount`` a number (moto already stores it as an
    int). moto 5.2.5 ``Queue.attributes`` uses plain ``json.dumps``, whose separators add spaces; AWS answers
    ``{"deadLetterTargetArn":"arn:aws:sqs:...","maxReceiveCount":5}`` (terraform-provider-aws#16964 and
    localstack#3427 describe the same false whitespace diff against another emulator), and the AWS
    provider 5.x compares the stored string with its compact ``jsonencode`` byte for byte."""
    from moto.sqs.models import Queue

    if getattr(Queue, "_q4_compact_redrive_policy", False):
        return
    original = Queue.attributes.fget  # type: ignore[attr-defined]

    def attributes(self: Any) -> dict[str, Any]:
        result: dict[str, Any] = original(self)
        policy = getattr(self, "redrive_policy", None)
        if "RedrivePolicy" in result and isinstance(policy, dict):
            ordered = {key: policy[key] for key in REDRIVE_POLICY_KEYS if key in policy}
            ordered.update({key: value for key, value in policy.items() if key not in ordered})
            result["RedrivePolicy"] = json.dumps(ordered, separators=(",", ":"))
        return result

    Queue.attributes = property(attributes)  # type: ignore[method-assign,assignment]
    Queue._q4_compact_redrive_policy = True  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    disable_builtin_sqs_lambda_poller()
    support_redrive_allow_policy()
    loopback_is_secure_transport()
    keep_lambda_dead_letter_config()
    compact_redrive_policy()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
