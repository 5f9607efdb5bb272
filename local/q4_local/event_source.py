"""The SQS event source mapping stand-in.

Polls each enabled SQS mapping of the function with the mapping's batch size, invokes the function with
an ``aws:sqs`` batch event, deletes what succeeded (honouring ``ReportBatchItemFailures`` partial batch
responses) and leaves the rest to reappear after the queue's visibility timeout; the queue's redrive
policy moves it to the DLQ after ``maxReceiveCount`` receives (the queue does that, here as on AWS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from q4_local import lambda_host
from q4_local.clients import queue_url

log = logging.getLogger("q4_local.runtime.event_source")


@dataclass
class QueueMapping:
    """An enabled SQS event source mapping of the function, as deployed."""

    uuid: str
    queue_arn: str
    queue_url: str
    batch_size: int
    report_batch_item_failures: bool


class EventSourceMapping:
    """Lambda's poller for the SQS mappings of one function, driven by :meth:`poll`."""

    def __init__(
        self,
        sqs: Any,
        lambda_client: Any,
        functions: lambda_host.Functions,
        function: lambda_host.DeployedFunction,
        region: str,
        poll_wait_s: int,
    ) -> None:
        self.sqs = sqs
        self.functions = functions
        self.function = function
        self.region = region
        self.poll_wait_s = poll_wait_s
        self.mappings = queue_mappings(lambda_client, sqs, function.name)

    def poll(self) -> None:
        """One receive (a long poll of ``poll_wait_s``) and at most one invocation per mapping."""
        for mapping in self.mappings:
            self.poll_mapping(mapping)

    def poll_mapping(self, mapping: QueueMapping) -> None:
        response = self.sqs.receive_message(
            QueueUrl=mapping.queue_url,
            MaxNumberOfMessages=min(mapping.batch_size, 10),
            WaitTimeSeconds=self.poll_wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            return
        event = {"Records": [sqs_record(message, mapping.queue_arn, self.region) for message in messages]}
        outcome = self.functions.invoke(self.function, event)
        ids = [message["MessageId"] for message in messages]
        failed = failed_items(outcome, ids, mapping)
        done = [message for message in messages if message["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=mapping.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                    for i, message in enumerate(done)
                ],
            )
        log.info(
            "sqs batch of %d from %s: %d deleted, %d left for retry (%.2f s)%s",
            len(messages),
            mapping.queue_arn.rsplit(":", 1)[-1],
            len(done),
            len(failed),
            outcome.duration_s,
            f"; function error: {outcome.error}" if outcome.error else "",
        )


def queue_mappings(lambda_client: Any, sqs: Any, function_name: str) -> list[QueueMapping]:
    """The function's enabled event source mappings from SQS queues, as deployed."""
    mappings = []
    pages = lambda_client.get_paginator("list_event_source_mappings")
    # Filtered here by the mapping's function ARN: moto matches FunctionName literally (name vs ARN).
    for page in pages.paginate():
        for esm in page["EventSourceMappings"]:
            if esm.get("FunctionArn", "").split(":")[6:7] != [function_name]:
                continue
            arn = esm.get("EventSourceArn", "")
            if not arn.startswith("arn:aws:sqs:") or esm.get("State", "Enabled") not in (
                "Enabled",
                "Enabling",
            ):
                continue
            mappings.append(
                QueueMapping(
                    uuid=esm["UUID"],
                    queue_arn=arn,
                    queue_url=queue_url(sqs, arn),
                    batch_size=int(esm.get("BatchSize", 10)),
                    report_batch_item_failures="ReportBatchItemFailures"
                    in esm.get("FunctionResponseTypes", []),
                )
            )
    return mappings


def failed_items(outcome: lambda_host.Invocation, ids: list[str], mapping: QueueMapping) -> set[str]:
    """Message ids to leave in the queue, by the rules of Lambda's partial batch responses."""
    if not outcome.ok:
        return set(ids)
    if not mapping.report_batch_item_failures or not isinstance(outcome.result, dict):
        return set()
    failures = outcome.result.get("batchItemFailures") or []
    named = {item.get("itemIdentifier") for item in failures if isinstance(item, dict)}
    if len(named) != len(failures) or not named <= set(ids):
        return set(ids)  # a malformed response fails the whole batch, as on AWS
    return {str(name) for name in named}


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of the ``aws:sqs`` event Lambda builds from a received message."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
