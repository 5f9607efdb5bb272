"""The EventBridge stand-in, with Lambda's asynchronous invocation of its targets.

For each task Fargate marked ``exited``: builds the ``ECS Task State Change`` (STOPPED) event with the
real exit code and delivers it to the Lambda targets of every enabled rule whose pattern matches (see
:mod:`q4_local.event_pattern`), as an asynchronous invocation: 3 attempts in all (one per runtime tick),
then, as Lambda does, to the function's dead-letter queue (its ``DeadLetterConfig``) with Lambda's message
attributes; dropped (and logged) when it has none.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from q4_local import event_pattern, lambda_host
from q4_local.clients import queue_url
from q4_local.ledger import Ledger, TaskRecord, now, task_id

log = logging.getLogger("q4_local.runtime.eventbridge")

#: Attempts of an asynchronous invocation: the first and Lambda's 2 retries.
ATTEMPTS = 3


class EventBridge:
    """Delivers the STOPPED events of the ledger's ``exited`` tasks, driven by :meth:`deliver_pending`."""

    def __init__(
        self,
        events: Any,
        lambda_client: Any,
        sqs: Any,
        functions: lambda_host.Functions,
        ledger: Ledger,
        cluster_arn: str,
        region: str,
    ) -> None:
        self.events = events
        self.lambda_client = lambda_client
        self.sqs = sqs
        self.functions = functions
        self.ledger = ledger
        self.cluster_arn = cluster_arn
        self.region = region

    def deliver_pending(self) -> None:
        """One delivery attempt for the STOPPED event of every ``exited`` task."""
        for record in self.ledger.tasks.values():
            if record.status == "exited":
                self.deliver(record)

    def deliver(self, record: TaskRecord) -> None:
        """One attempt to every matching target; after the last failed one, to the functions' DLQs."""
        event = self.stopped_event(record)
        targets = self.matching_lambda_targets(event)
        failed: list[tuple[str, lambda_host.Invocation | None]] = []  # (target, its failed invocation)
        for target_arn in targets:
            outcome = self._attempt(record, target_arn, event)
            if outcome is None or not outcome.ok:
                failed.append((target_arn, outcome))
        record.delivery_attempts += 1
        if failed and record.delivery_attempts < ATTEMPTS:
            self.ledger.save()  # retried on the next tick, as Lambda retries asynchronous invocations
            return
        if not failed:
            record.status = "delivered" if targets else "undeliverable"
        else:
            dead_lettered = [self.dead_letter(record, event, target, outcome) for target, outcome in failed]
            record.status = "dead_lettered" if all(dead_lettered) else "undeliverable"
        self.ledger.save()
        log.info(
            "task %s STOPPED event (exit code %s) %s: delivered to %d target(s)%s",
            task_id(record.task_arn),
            record.exit_code,
            record.status,
            len(targets) - len(failed),
            "" if targets else ": no rule matched",
        )

    def _attempt(
        self, record: TaskRecord, target_arn: str, event: dict[str, Any]
    ) -> lambda_host.Invocation | None:
        """Invoke the target function with ``event``: its outcome, None when its code is not available."""
        try:
            function = self.functions.get(target_arn)
        except lambda_host.LambdaCodeError as exc:
            log.warning(
                "STOPPED event of %s not sent to %s: %s", task_id(record.task_arn), target_arn, exc.message
            )
            return None
        outcome = self.functions.invoke(function, event)
        if not outcome.ok:
            log.warning(
                "STOPPED event of %s to %s failed: %s", task_id(record.task_arn), target_arn, outcome.error
            )
        return outcome

    def dead_letter(
        self,
        record: TaskRecord,
        event: dict[str, Any],
        target_arn: str,
        failed: lambda_host.Invocation | None,
    ) -> bool:
        """After the last failed attempt: send ``event`` to the target function's dead-letter queue, as Lambda
        does with an asynchronous event. False (and logged) when it stays undelivered."""
        queue_arn = self._dead_letter_queue(record, target_arn, failed)
        if queue_arn is None or failed is None:
            return False
        return self._send_dead_letter(record, event, target_arn, failed, queue_arn)

    def _dead_letter_queue(
        self, record: TaskRecord, target_arn: str, failed: lambda_host.Invocation | None
    ) -> str | None:
        """The ARN of the SQS queue the target's failed event goes to; None (and logged) when there is none
        the runtime can send to."""
        task, attempts = task_id(record.task_arn), record.delivery_attempts
        if failed is None:  # the function's code is not available locally: a broken local stack, not Lambda
            log.error(
                "STOPPED event of %s to %s dropped after %d attempts: the function's code is not available "
                "locally (see above); the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
            )
            return None
        try:
            queue_arn = lambda_host.dead_letter_target(self.lambda_client, target_arn)
        except Exception as exc:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and was NOT dead-lettered: cannot read the "
                "function's DeadLetterConfig (%s); the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
                exc,
            )
            return None
        if queue_arn is None:
            log.warning(
                "STOPPED event of %s to %s dropped after %d failed attempts: the function has no "
                "dead-letter queue (Lambda discards such events too)",
                task,
                target_arn,
                attempts,
            )
            return None
        if queue_arn.split(":")[2:3] != ["sqs"]:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and was NOT dead-lettered: its dead-letter "
                "target %s is not an SQS queue (the local runtime sends to SQS only); the ledger keeps it "
                "undeliverable",
                task,
                target_arn,
                attempts,
                queue_arn,
            )
            return None
        return queue_arn

    def _send_dead_letter(
        self,
        record: TaskRecord,
        event: dict[str, Any],
        target_arn: str,
        failed: lambda_host.Invocation,
        queue_arn: str,
    ) -> bool:
        """Send the dead-letter message Lambda would send and note it in the ledger; False when it failed."""
        task, attempts = task_id(record.task_arn), record.delivery_attempts
        body, attributes = lambda_host.dead_letter_message(event, failed)
        try:
            sent = self.sqs.send_message(
                QueueUrl=queue_url(self.sqs, queue_arn), MessageBody=body, MessageAttributes=attributes
            )
        except Exception as exc:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and could NOT be sent to its dead-letter "
                "queue %s: %s; the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
                queue_arn,
                exc,
            )
            return False
        record.dead_letters.append(
            {
                "function": target_arn,
                "queue": queue_arn,
                "message_id": str(sent["MessageId"]),
                "request_id": failed.request_id,
            }
        )
        log.warning(
            "STOPPED event of %s to %s failed %d attempts (last: %s); sent to the function's dead-letter "
            "queue %s (message %s)",
            task,
            target_arn,
            attempts,
            failed.error,
            queue_arn,
            sent["MessageId"],
        )
        return True

    def matching_lambda_targets(self, event: dict[str, Any]) -> list[str]:
        """The Lambda targets of every enabled rule (of any bus ListRules lists) whose pattern matches."""
        matched: list[str] = []
        for page in self.events.get_paginator("list_rules").paginate():
            for rule in page["Rules"]:
                if rule.get("State") != "ENABLED" or not rule.get("EventPattern"):
                    continue
                try:
                    if not event_pattern.matches(json.loads(rule["EventPattern"]), event):
                        continue
                except event_pattern.UnsupportedPattern as exc:
                    log.warning("rule %s skipped: %s", rule["Name"], exc)
                    continue
                targets = self.events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
                matched.extend(t["Arn"] for t in targets if ":lambda:" in t["Arn"])
        return matched

    def stopped_event(self, record: TaskRecord) -> dict[str, Any]:
        """The ``ECS Task State Change`` event EventBridge would carry for this stopped task."""
        task = record.task
        container: dict[str, Any] = {
            "containerArn": f"{self.cluster_arn.replace(':cluster/', ':container/')}/{uuid.uuid4()}",
            "lastStatus": "STOPPED",
            "name": next(iter(c.get("name") for c in task.get("containers", [])), None) or "q4",
            "taskArn": record.task_arn,
        }
        if record.exit_code is not None:
            container["exitCode"] = record.exit_code
        else:
            container["reason"] = record.reason
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": record.task_arn.split(":")[4],
            "time": record.stopped_at or now(),
            "region": self.region,
            "resources": [record.task_arn],
            "detail": {
                "clusterArn": self.cluster_arn,
                "taskArn": record.task_arn,
                "taskDefinitionArn": task.get("taskDefinitionArn"),
                "containers": [container],
                "overrides": task.get("overrides", {}),
                "startedBy": task.get("startedBy"),
                "group": task.get("group"),
                "launchType": task.get("launchType", "FARGATE"),
                "cpu": task.get("cpu"),
                "memory": task.get("memory"),
                **({"ephemeralStorage": task["ephemeralStorage"]} if task.get("ephemeralStorage") else {}),
                "lastStatus": "STOPPED",
                "desiredStatus": "STOPPED",
                "stopCode": record.stop_code
                or ("EssentialContainerExited" if record.exit_code is not None else "TaskFailedToStart"),
                "stoppedReason": record.reason,
                "createdAt": record.created_at,
                "startedAt": record.started_at,
                "stoppingAt": record.stopped_at,
                "stoppedAt": record.stopped_at,
                "version": 3,
            },
        }
