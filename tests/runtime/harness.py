"""Helpers for the runtime tests: the pipeline's resources and an SQS event source mapping stand-in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "us-east-1"


@dataclass
class Pipeline:
    """The resources Terraform would create, made directly in moto with unique names."""

    archive_bucket: str
    artifacts_bucket: str
    work_queue_url: str
    dlq_url: str
    done_queue_url: str
    cluster: str
    task_definition: str
    subnet: str
    security_group: str
    max_receive_count: int

    @property
    def lambda_env(self) -> dict[str, str]:
        return {
            "Q4_ARCHIVE_BUCKET": self.archive_bucket,
            "Q4_ARTIFACTS_BUCKET": self.artifacts_bucket,
            "Q4_DONE_QUEUE_URL": self.done_queue_url,
            "Q4_CLUSTER": self.cluster,
            "Q4_TASK_DEFINITION": self.task_definition,
            "Q4_CONTAINER_NAME": "q4",
            "Q4_SUBNETS": self.subnet,
            "Q4_SECURITY_GROUPS": self.security_group,
            "Q4_ASSIGN_PUBLIC_IP": "DISABLED",
            "Q4_MAX_ATTEMPTS": "3",
            "POWERTOOLS_SERVICE_NAME": "q4-orchestrator",
        }

    @property
    def user_env(self) -> dict[str, str]:
        return {
            "Q4_ARCHIVE_BUCKET": self.archive_bucket,
            "Q4_ARTIFACTS_BUCKET": self.artifacts_bucket,
            "Q4_WORK_QUEUE_URL": self.work_queue_url,
            "Q4_DONE_QUEUE_URL": self.done_queue_url,
        }


def sqs_event(queue_url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The event the SQS event source mapping hands to the Lambda for received messages."""
    queue_name = queue_url.rsplit("/", 1)[-1]
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{queue_name}",
                "awsRegion": REGION,
            }
            for message in messages
        ]
    }


@dataclass
class Delivery:
    received: int = 0
    deleted: int = 0
    failed: int = 0


def deliver_batches(
    queue_url: str, handler: Callable[[dict[str, Any], Any], dict[str, Any]], *, max_rounds: int = 10
) -> Delivery:
    """Drive the work queue like the event source mapping: receive a batch, invoke, delete the successes,
    make the batch item failures visible again at once (instead of waiting out the visibility timeout)."""
    sqs = boto3.client("sqs")
    totals = Delivery()
    for _ in range(max_rounds):
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            break
        totals.received += len(messages)
        response = handler(sqs_event(queue_url, messages), None)
        failed_ids = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
        for message in messages:
            if message["MessageId"] in failed_ids:
                totals.failed += 1
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                totals.deleted += 1
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return totals


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Every message body now in a queue (decoded JSON), deleting them."""
    sqs = boto3.client("sqs")
    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
