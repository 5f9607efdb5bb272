"""Run moto server as the local stack's emulator: ``python -m q4_local.moto_launcher -H HOST -p PORT``.

Before it starts, five adjustments ("patches") make moto behave as AWS does where the local stack
relies on it; each is one function here. Why each exists (what moto does, how it was found, what AWS
does): docs/decisions/local.md, decision 7. None touches the deployment: Terraform's files stay as
they are for AWS.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def disable_builtin_sqs_lambda_poller() -> None:
    """7(a): moto's own SQS->Lambda poller took work messages on every send; the runtime is the poller."""
    from moto.sqs.models import Queue

    def _mappings(self: Any) -> dict[str, Any]:
        return {}

    def _ignore(self: Any, value: Any) -> None:
        return None

    Queue.lambda_event_source_mappings = property(_mappings, _ignore)  # type: ignore[assignment]


def support_redrive_allow_policy() -> None:
    """7(b): moto stored a queue's ``RedriveAllowPolicy`` but never returned it; Terraform waited for it."""
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
    """7(c): moto applied the buckets' TLS-only Deny unconditionally; loopback counts as secure transport."""
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
    """7(d): moto dropped a function's ``DeadLetterConfig``; stored and returned here as Lambda does."""
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
    """7(e): moto returned a queue's ``RedrivePolicy`` with spaces; Terraform planned a change every run."""
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


def ecs_tasks_keep_their_status() -> None:
    """ECS reports a task RUNNING until it stops; moto moved a task one status on (RUNNING, DEACTIVATING, ...,
    STOPPED) at every DescribeTasks, so `q4 status` saw a running task as stopping. A task now stays as
    RunTask and StopTask leave it (the local Fargate stand-in stops each task when its process exits)."""
    from moto.moto_api import state_manager

    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 2**62})


def main(argv: list[str] | None = None) -> None:
    ecs_tasks_keep_their_status()
    disable_builtin_sqs_lambda_poller()
    support_redrive_allow_policy()
    loopback_is_secure_transport()
    keep_lambda_dead_letter_config()
    compact_redrive_policy()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
