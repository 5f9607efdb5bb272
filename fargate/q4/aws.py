"""The S3/SQS edges shared by the Fargate task and the ``q4`` user commands.

Clients honour ``AWS_ENDPOINT_URL`` (botocore does), so the same code talks to real AWS and to
the local emulator. AWS trouble is turned into :class:`q4.errors.Q4Error` subclasses: a
:class:`ConfigurationError` for what the user must fix, a :class:`q4.errors.TransientError`
for what is worth retrying.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from q4_contract import INPUT_SUFFIXES

from q4.errors import Q4Error, TransientError

#: 32 connections: an S3Reader fetches 4 parts ahead, each S3Writer uploads 2 parts, on the same client.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=10,
    read_timeout=60,
    max_pool_connections=32,
)
TRANSFER_CONFIG = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024)
HOW_TO_CONFIGURE = (
    'run `eval "$(q4 local env)"` for the local stack, or export it from `terraform output` for AWS'
)


class ConfigurationError(Q4Error):
    """A required setting (environment variable, credentials, endpoint) is missing or wrong."""


def client(service: str) -> Any:
    """A boto3 client with standard retries (``AWS_ENDPOINT_URL`` and the region come from the env)."""
    try:
        return boto3.client(service, config=CLIENT_CONFIG)
    except NoRegionError:
        raise ConfigurationError(
            "no_region", f"No AWS region is set; export AWS_DEFAULT_REGION (or {HOW_TO_CONFIGURE})."
        ) from None


def require_env(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of a required environment variable, or a one-sentence error saying how to set it."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        raise ConfigurationError("missing_configuration", f"{name} is not set; {HOW_TO_CONFIGURE}.")
    return value


@dataclass(frozen=True)
class PipelineConfig:
    """Where the user commands find the pipeline (what ``q4 local env`` / ``terraform output`` give)."""

    archive_bucket: str
    artifacts_bucket: str
    work_queue_url: str
    done_queue_url: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelineConfig:
        return cls(
            archive_bucket=require_env("Q4_ARCHIVE_BUCKET", environ),
            artifacts_bucket=require_env("Q4_ARTIFACTS_BUCKET", environ),
            work_queue_url=require_env("Q4_WORK_QUEUE_URL", environ),
            done_queue_url=require_env("Q4_DONE_QUEUE_URL", environ),
        )


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn AWS failures while doing ``action`` into one-sentence :class:`Q4Error` s.

    Credentials, endpoint and permission problems are :class:`ConfigurationError`; anything
    else (throttling, 5xx, timeouts) is a :class:`TransientError` worth retrying.
    """
    try:
        yield
    except NoCredentialsError:
        raise ConfigurationError(
            "no_credentials", f"No AWS credentials were found while trying to {action}; {HOW_TO_CONFIGURE}."
        ) from None
    except EndpointConnectionError as exc:
        raise TransientError(
            "endpoint_unreachable",
            f"Cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')} to {action}; check "
            "AWS_ENDPOINT_URL (is the local stack up? `q4 local up`) or your network.",
        ) from None
    except ClientError as exc:
        code = error_code(exc)
        if code in {"AccessDenied", "AccessDeniedException", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise ConfigurationError(
                "access_denied",
                f"AWS denied access while trying to {action} ({code}); check your "
                "credentials and permissions.",
            ) from None
        if code in {"NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
            raise ConfigurationError(
                "missing_resource",
                f"A pipeline bucket or queue does not exist ({code}) while trying to "
                f"{action}; check the Q4_* variables ({HOW_TO_CONFIGURE}).",
            ) from None
        raise TransientError(
            "aws_error", f"AWS failed to {action} ({code}); try again.", {"code": code}
        ) from exc
    except BotoCoreError as exc:
        raise TransientError("aws_error", f"AWS failed to {action} ({exc}); try again.") from exc


#: The longest file name (bytes) common file systems allow; S3 key segments may be up to 1024.
MAX_NAME_BYTES = 255


class UnsafeKeyError(ValueError):
    """An S3 key that cannot be stored as a local file below the download root."""

    def __init__(self, key: str) -> None:
        super().__init__(f"unsafe key {key!r}")
        self.key = key


def input_paths(root: Path, relative_keys: list[str]) -> list[Path]:
    """Where the task stores each listed input: ``root/<i>/<key below the input root>``.

    One directory per object, so keys that S3 allows side by side but a file system does not
    (``a.csv`` and ``a.csv/b.csv``) never collide; the file keeps its name (messages, suffix).
    """
    return [local_path_for(root / str(i), key) for i, key in enumerate(relative_keys)]


def local_path_for(root: Path, relative_key: str) -> Path:
    """``root / relative_key`` for an S3 key below a prefix, refusing keys that would escape ``root``
    (``.``, ``..``, empty segments, a leading ``/``) or that no file can be named after (NUL)."""
    parts = PurePosixPath(relative_key).parts
    if (
        not parts
        or any(part in ("", ".", "..") for part in parts)
        or relative_key.startswith("/")
        or "//" in relative_key  # PurePosixPath would fold "a//b" onto "a/b": two keys, one file
        or "/./" in f"/{relative_key}/"
        or "\x00" in relative_key
        or relative_key.endswith("/")  # a "folder" object, not a file
    ):
        raise UnsafeKeyError(relative_key)
    return root.joinpath(*(_local_name(part) for part in parts))


def _local_name(part: str) -> str:
    """A key segment as a file name: unchanged, or shortened with a digest when over 255 bytes."""
    raw = part.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_NAME_BYTES:
        return part
    # the suffix that makes it an input, whole (x.csv.gz stays a .csv.gz), else the last one
    kept = [len(s) for s in INPUT_SUFFIXES if part.lower().endswith(s)]
    suffix = part[-max(kept) :] if kept else PurePosixPath(part).suffix
    suffix = suffix if len(suffix.encode("utf-8", "surrogatepass")) <= 32 else ""
    head = raw[:160].decode("utf-8", "ignore")
    return f"{head}-{hashlib.sha256(raw).hexdigest()[:32]}{suffix}"


def list_keys(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` (``Key``, ``Size``, ``ETag``), in key order."""
    items: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items.extend(page.get("Contents", []))
    return sorted(items, key=lambda item: item["Key"])


def download(s3: Any, bucket: str, key: str, path: Path) -> dict[str, Any]:
    """Download one object to ``path``; returns ``{key, size, etag}`` (raises ClientError if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = s3.head_object(Bucket=bucket, Key=key)
    s3.download_file(bucket, key, str(path), Config=TRANSFER_CONFIG)
    return {"key": key, "size": int(head["ContentLength"]), "etag": str(head.get("ETag", "")).strip('"')}


def upload(s3: Any, bucket: str, key: str, path: Path, content_type: str) -> None:
    s3.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER_CONFIG)


#: How long ``find_message`` hides the messages it looks at (they are released as soon as it is done).
PEEK_HIDE_S = 20


def find_message(
    sqs: Any,
    queue_url: str,
    match: Callable[[dict[str, Any], Mapping[str, Any]], bool],
    *,
    delete: bool,
    wait_s: int = 0,
    limit: int = 1000,
) -> dict[str, Any] | None:
    """One pass over a queue for the first message whose JSON object body ``match(body, message)`` accepts.

    Every message received is hidden for :data:`PEEK_HIDE_S` while the pass goes on, so each receive brings
    new ones however long the queue is (a zero visibility timeout would return the same first ten every
    time), and is made visible again at once when the pass ends; the match is deleted when ``delete``. At
    most ``limit`` messages are looked at per pass. Nothing is lost: a release that fails only leaves a
    message hidden until its timeout ends.
    """
    hidden: list[str] = []
    try:
        while len(hidden) < limit:
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=PEEK_HIDE_S,
                WaitTimeSeconds=wait_s if not hidden else 0,
                AttributeNames=["SentTimestamp"],
            ).get("Messages", [])
            if not messages:
                return None
            for index, message in enumerate(messages):
                try:
                    body = json.loads(message["Body"])
                except (ValueError, KeyError, RecursionError):
                    body = None
                if isinstance(body, dict) and match(body, message):
                    if delete:
                        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                    else:
                        hidden.append(message["ReceiptHandle"])
                    hidden.extend(m["ReceiptHandle"] for m in messages[index + 1 :])
                    return body
                hidden.append(message["ReceiptHandle"])
        return None
    finally:
        for start in range(0, len(hidden), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(hidden[start : start + 10])
            ]
            with suppress(ClientError, BotoCoreError):
                sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
