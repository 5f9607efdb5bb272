"""Where a run's documents are kept (docs/contract.md, "Artifact layout"), and whether a run already ended.

A store reads the JSON documents of the run layout by key (``run=<id>/job.json``,
``run=<id>/MANIFEST.json``, ``run=<id>/ERROR.json``...): :class:`S3Store` in the artifacts bucket (the
orchestrator, the task, the user commands), :class:`DirectoryStore` under a local ``--out`` directory
(``q4 run``). :func:`run_ended` is the one answer to "did this run already end, and with the same job?";
:func:`ended_with` is that answer for a pipeline :class:`~q4_contract.job.Job`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from q4_contract.errors import Rejection, is_denied, is_not_found, is_precondition_failed
from q4_contract.job import FIELDS, Job, parse_job
from q4_contract.keys import attempt_key, attempts_prefix, error_key, job_key, manifest_key


class UnreadableDocument(ValueError):
    """A run document that exists but is not a JSON object (or names another run)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem


class RunDocuments(Protocol):
    """Read access to a run layout's JSON documents."""

    def read_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at ``key``; None when there is none; :class:`UnreadableDocument` when it is there
        but not a JSON object."""
        ...


def _decoded(key: str, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise UnreadableDocument(key, "is not valid JSON") from None
    if not isinstance(doc, dict):
        raise UnreadableDocument(key, "is not a JSON object")
    return doc


class DirectoryStore:
    """The run layout under a local directory (``q4 run --out DIR``): ``run=<id>/X`` is ``DIR/run=<id>/X``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # also: run=<id> is a file, not a run directory
            return None
        except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the path
            raise UnreadableDocument(key, f"cannot be read ({exc})") from None
        return _decoded(key, body)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()


def key_listed(s3: Any, bucket: str, key: str) -> bool:
    """Whether ``key`` exists, by listing (works where only a prefix-conditioned s3:ListBucket is granted,
    under which GET/HEAD of a missing key answer 403 instead of 404)."""
    response = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(item["Key"] == key for item in response.get("Contents", []))


@dataclass
class RunState:
    """What the artifacts bucket says about one run."""

    run_id: str
    state: str  # unknown | accepted | succeeded | failed
    job: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: list[int] = field(default_factory=list)


class S3Store:
    """The run layout in a bucket, through any boto3-like S3 client (errors are told apart by their AWS error
    code, ``exc.response["Error"]["Code"]``, so the contract needs no botocore)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    # ------------------------------------------------------------ generic

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if self._missing(exc, key):
                return None
            raise
        return _decoded(key, body)

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._missing(exc, key):
                return False
            raise
        return True

    def _missing(self, exc: Exception, key: str) -> bool:
        """A 404, or a 403 for a key that a listing shows is absent."""
        return is_not_found(exc) or (is_denied(exc) and not key_listed(self.s3, self.bucket, key))

    def put_json_once(self, key: str, doc: Mapping[str, Any]) -> bool:
        """Create ``key`` with ``If-None-Match: *``; False when it already exists (nothing written)."""
        body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
            )
        except Exception as exc:
            if is_precondition_failed(exc):
                return False
            raise
        return True

    # ------------------------------------------------------------ run objects

    def job(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(job_key(run_id))

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(manifest_key(run_id))

    def error(self, run_id: str) -> dict[str, Any] | None:
        return self.read_json(error_key(run_id))

    def attempts(self, run_id: str) -> list[int]:
        """Launched attempts (numbers of the launch records), ascending."""
        numbers: list[int] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=attempts_prefix(run_id)):
            for item in page.get("Contents", []):
                stem = item["Key"].rsplit("/", 1)[-1].removesuffix(".json")
                if stem.isdigit():
                    numbers.append(int(stem))
        return sorted(numbers)

    def attempt_record(self, run_id: str, attempt: int) -> dict[str, Any] | None:
        return self.read_json(attempt_key(run_id, attempt))

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


# ---------------------------------------------------------------- did the run already end?


@dataclass(frozen=True)
class Ended:
    """A run that already ended: ``succeeded`` (MANIFEST.json) or ``failed`` (ERROR.json), and how its job
    differs from the one asked for now (None: the same job)."""

    status: str
    document: dict[str, Any]
    difference: str | None

    @property
    def same_job(self) -> bool:
        return self.difference is None


#: ``(status, terminal document) -> difference or None``: how a caller compares its job with the ended one.
JobComparison = Callable[[str, Mapping[str, Any]], "str | None"]


def run_ended(store: RunDocuments, run_id: str, differs: JobComparison) -> Ended | None:
    """Whether ``run_id`` already ended (MANIFEST.json, else ERROR.json), and with the same job as ``differs``
    judges; None when it has not ended. A terminal document that is not a JSON object naming this run raises
    :class:`UnreadableDocument`."""
    for status, key in (("succeeded", manifest_key(run_id)), ("failed", error_key(run_id))):
        document = store.read_json(key)
        if document is None:
            continue
        if document.get("run_id") != run_id:
            raise UnreadableDocument(key, "does not name this run")
        return Ended(status, document, differs(status, document))
    return None


def job_difference(recorded: object, job: Job) -> str | None:
    """How a recorded pipeline job (``job.json``, a document's ``job``) differs from ``job``; None if it does
    not (defaults filled in: a message that spells them out is the same job)."""
    try:
        other = parse_job(recorded)
    except Rejection as rejection:
        return f"the recorded job is not valid ({rejection.code})"
    for name in FIELDS:
        if getattr(other, name) != getattr(job, name):
            return f"{name} {getattr(other, name)!r} there, {getattr(job, name)!r} here"
    return None


def ended_with(store: RunDocuments, job: Job) -> Ended | None:
    """:func:`run_ended` for a pipeline job: the job that ran is ``job.json``, else the terminal document's
    ``job``; a run that records neither counts as the same job."""

    def differs(status: str, document: Mapping[str, Any]) -> str | None:
        recorded = store.read_json(job_key(job.run_id))
        if recorded is None:
            recorded = document.get("job")
        return None if recorded is None else job_difference(recorded, job)

    return run_ended(store, job.run_id, differs)
