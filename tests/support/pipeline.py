"""The runtime tests' pipeline in the moto server (tests/runtime, tests/hostile): the resources' names, an SQS
event source mapping stand-in, the task as a subprocess and the orchestrator's view of ECS, S3 and SQS."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import q4_contract as contract

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


# ---------------------------------------------------------------- the task (tests/runtime/test_task.py)

Q4_TASK = str(Path(sys.executable).with_name("q4-task"))
SEED_KEY = "run=2025-08-25-001/input/mydata.csv"


def table(rows: int = 60, seed: int = 7) -> bytes:
    """A small CSV: an id, three numeric features, a text passthrough column."""
    import random

    rng = random.Random(seed)
    lines = ["id,a,b,c,label"]
    for i in range(rows):
        a = rng.gauss(0, 1)
        lines.append(f"{i},{a!r},{a * 0.5 + rng.gauss(0, 1)!r},{rng.gauss(3, 2)!r},x{i % 3}")
    return ("\n".join(lines) + "\n").encode()


def put(bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def keys(bucket: str, prefix: str = "") -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def read(bucket: str, key: str) -> bytes:
    return bytes(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def accept(pipeline: Pipeline, message: dict[str, Any]) -> contract.Job:
    """What the orchestrator does before launching: validate and write job.json."""
    job = contract.parse_job(message)
    put(pipeline.artifacts_bucket, contract.job_key(job.run_id), job.to_json().encode())
    return job


def run_task(
    pipeline: Pipeline, aws_env: dict[str, str], job: contract.Job, attempt: int = 1, **overrides: str | None
) -> subprocess.CompletedProcess[str]:
    """Run `q4-task` with the task definition's static env plus the job's container overrides."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        **aws_env,
        "Q4_INPUT_BUCKET": pipeline.archive_bucket,
        "Q4_ARTIFACTS_BUCKET": pipeline.artifacts_bucket,
        "Q4_DONE_QUEUE_URL": pipeline.done_queue_url,
        "Q4_CHUNK_ROWS": "16",
        "Q4_TASK_ARN": f"arn:aws:ecs:us-east-1:123456789012:task/q4/{job.run_id}-{attempt}",
        **job.to_env(attempt),
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([Q4_TASK], env=env, capture_output=True, text=True, timeout=120, check=False)


def log_lines(process: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------- the orchestrator

SEED_MESSAGE = '{"input_key":"run=2025-08-25-001/input/mydata.csv","run_id":"2025-08-25-001"}'


def put_input(pipeline: Pipeline, key: str, body: bytes = b"a,b\n1,2\n3,5\n") -> None:
    boto3.client("s3").put_object(Bucket=pipeline.archive_bucket, Key=key, Body=body)


def send_work(pipeline: Pipeline, body: str) -> None:
    boto3.client("sqs").send_message(QueueUrl=pipeline.work_queue_url, MessageBody=body)


def tasks_of(pipeline: Pipeline) -> list[dict[str, Any]]:
    ecs = boto3.client("ecs")
    arns = ecs.list_tasks(cluster=pipeline.cluster)["taskArns"]
    if not arns:
        return []
    return ecs.describe_tasks(cluster=pipeline.cluster, tasks=arns)["tasks"]


def task_env(task: dict[str, Any]) -> dict[str, str]:
    (override,) = task["overrides"]["containerOverrides"]
    return {item["name"]: item["value"] for item in override["environment"]}


def artifact_keys(pipeline: Pipeline) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=pipeline.artifacts_bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def queue_depth(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def stopped_event(
    pipeline: Pipeline, task: dict[str, Any], exit_code: int | None, **extra: Any
) -> dict[str, Any]:
    """An EventBridge ECS Task State Change (STOPPED) for a task moto recorded."""
    container: dict[str, Any] = {"name": "q4", "lastStatus": "STOPPED"}
    if exit_code is not None:
        container["exitCode"] = exit_code
    detail = {
        "clusterArn": task["clusterArn"],
        "taskArn": task["taskArn"],
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "stoppedReason": extra.pop("stoppedReason", "Essential container in task exited"),
        "stopCode": extra.pop("stopCode", "EssentialContainerExited"),
        "containers": [container],
        "overrides": task["overrides"],
        "startedBy": task.get("startedBy"),
        **extra,
    }
    return {"version": "0", "source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": detail}
