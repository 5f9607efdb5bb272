"""A run's state in the artifacts bucket: job.json, launch records, MANIFEST.json, ERROR.json.

Used by the orchestrator, the Fargate task and the ``q4`` user commands (stdlib + boto3 only).
State comes from the bucket alone: ``accepted`` (job.json), ``succeeded`` (MANIFEST.json),
``failed`` (ERROR.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import q4_contract as contract
from botocore.exceptions import ClientError

NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
PRECONDITION_CODES = {"PreconditionFailed", "412"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden"}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_denied(exc: ClientError) -> bool:
    return error_code(exc) in DENIED_CODES


def key_listed(s3: Any, bucket: str, key: str) -> bool:
    """Whether ``key`` exists, by listing (works where only a prefix-conditioned s3:ListBucket is granted,
    under which GET/HEAD of a missing key answer 403 instead of 404)."""
    response = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(item["Key"] == key for item in response.get("Contents", []))


def is_precondition_failed(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in PRECONDITION_CODES or status == 412


@dataclass
class RunState:
    """What the artifacts bucket says about one run."""

    run_id: str
    state: str  # unknown | accepted | succeeded | failed
    job: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: list[int] = field(default_factory=list)


class RunStore:
    """Reads and writes the run objects of the artifacts bucket through an S3 client."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    # ------------------------------------------------------------ generic

    def read_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at ``key``, or None when there is none."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if self._missing(exc, key):
                return None
            raise
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._missing(exc, key):
                return False
            raise
        return True

    def _missing(self, exc: ClientError, key: str) -> bool:
        """A 404, or a 403 for a key that a listing shows is absent."""
        return is_not_found(exc) or (is_denied(exc) and not key_listed(self.s3, self.bucket, key))

    def put_json_once(self, key: str, doc: dict[str, Any]) -> bool:
        """Create ``key`` with ``If-None-Match: *``; False when it already exists (nothing written)."""
        body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
            )
        except ClientError as exc:
            if is_precondition_failed(exc):
                return False
            raise
        return True

    # ------------------------------------------------------------ run objects

    def job(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(contract.job_key(run_id))

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(contract.manifest_key(run_id))

    def error(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(contract.error_key(run_id))

    def attempts(self, run_id: str) -> list[int]:
        """Launched attempts (numbers of the launch records), ascending."""
        numbers: list[int] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=contract.attempts_prefix(run_id)):
            for item in page.get("Contents", []):
                stem = item["Key"].rsplit("/", 1)[-1].removesuffix(".json")
                if stem.isdigit():
                    numbers.append(int(stem))
        return sorted(numbers)

    def attempt_record(self, run_id: str, attempt: int) -> dict[str, Any] | None:
        return self.read_json(contract.attempt_key(run_id, attempt))

    def state(self, run_id: str) -> RunState:
        """The run's state from the bucket alone (terminal objects win over job.json)."""
        manifest = self.manifest(run_id)
        if manifest is not None:
            return RunState(
                run_id, "succeeded", job=self.job(run_id), manifest=manifest, attempts=self.attempts(run_id)
            )
        error = self.error(run_id)
        if error is not None:
            return RunState(
                run_id, "failed", job=self.job(run_id), error=error, attempts=self.attempts(run_id)
            )
        job = self.job(run_id)
        if job is not None:
            return RunState(run_id, "accepted", job=job, attempts=self.attempts(run_id))
        return RunState(run_id, "unknown")
