"""The orchestrator Lambda: one dispatcher for the SQS work batch and ECS Task State Change events.

- SQS batch (event source mapping with ``ReportBatchItemFailures``): each record is validated and
  launched, rejected (done message) or reported as a batch item failure so SQS retries it.
- EventBridge ``ECS Task State Change`` (STOPPED): crash recovery.

Handler path: ``q4_orchestrator.handler.lambda_handler``.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.config import Config

from q4_orchestrator.config import OrchestratorConfig
from q4_orchestrator.orchestration import Orchestrator

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "q4-orchestrator")
# Every record's outcome is in the response; a batch where all records failed is retried as a whole
# by the same mechanism, so there is no need to raise.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4})


def build_orchestrator() -> Orchestrator:
    """The orchestrator over fresh clients (configuration read from the environment each invocation)."""
    config = OrchestratorConfig.from_env()
    return Orchestrator(
        config,
        s3=boto3.client("s3", config=_CLIENT_CONFIG),
        sqs=boto3.client("sqs", config=_CLIENT_CONFIG),
        ecs=boto3.client("ecs", config=_CLIENT_CONFIG),
        logger=logger,
    )


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    orchestrator = build_orchestrator()
    if "Records" in event:

        def record_handler(record: SQSRecord) -> str:
            try:
                return orchestrator.accept(record.body)
            except Exception:
                logger.exception(
                    "Work message not processed; SQS delivers it again (then the DLQ).",
                    extra={"message_id": record.message_id},
                )
                raise

        return dict(
            process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )
        )
    if event.get("detail-type") == "ECS Task State Change":
        outcome = orchestrator.task_stopped(event.get("detail") or {})
        return {"outcome": outcome}
    logger.warning(
        "Ignored an event that is neither an SQS batch nor an ECS Task State Change.",
        extra={"event_keys": sorted(event)},
    )
    return {"outcome": "ignored"}
