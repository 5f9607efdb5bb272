"""The emulator's clients the stand-ins share, and the one lookup two of them need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3


@dataclass(frozen=True)
class Clients:
    """boto3 clients for the services the local runtime reads and drives, all at the emulator."""

    sqs: Any
    lambda_: Any
    ecs: Any
    events: Any
    logs: Any

    @classmethod
    def of(cls, aws_env: dict[str, str]) -> Clients:
        """Clients at ``aws_env``'s endpoint, region and credentials (:func:`q4_local.runtime.aws_env`)."""
        session = boto3.session.Session(
            aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
            region_name=aws_env["AWS_REGION"],
        )
        endpoint = aws_env["AWS_ENDPOINT_URL"]
        return cls(
            sqs=session.client("sqs", endpoint_url=endpoint),
            lambda_=session.client("lambda", endpoint_url=endpoint),
            ecs=session.client("ecs", endpoint_url=endpoint),
            events=session.client("events", endpoint_url=endpoint),
            logs=session.client("logs", endpoint_url=endpoint),
        )


def queue_url(sqs: Any, queue_arn: str) -> str:
    """The URL of the queue ``queue_arn`` names."""
    _, _, _, _, account, queue_name = queue_arn.split(":", 5)
    return str(sqs.get_queue_url(QueueName=queue_name, QueueOwnerAWSAccountId=account)["QueueUrl"])
