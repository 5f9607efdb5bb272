"""User commands for the pipeline: ``q4 submit``, ``q4 status``, ``q4 runs``, ``q4 fetch``.

They talk to whatever ``AWS_ENDPOINT_URL`` points at (real AWS when unset) and find the pipeline
through ``Q4_ARCHIVE_BUCKET``, ``Q4_ARTIFACTS_BUCKET``, ``Q4_WORK_QUEUE_URL`` and
``Q4_DONE_QUEUE_URL`` (``eval "$(q4 local env)"``, or ``terraform output`` for AWS).
A run's state comes from the buckets alone: ``accepted`` (job.json), ``succeeded``
(MANIFEST.json), ``failed`` (ERROR.json); ``submitted`` means inputs are uploaded but no
job.json exists yet. Rejections exist only as done messages, which ``submit --wait`` reads
without consuming anyone's messages.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import q4_contract as contract
from botocore.exceptions import BotoCoreError, ClientError
from q4_orchestrator import runs
from q4_orchestrator.runs import RunState, RunStore

from q4 import aws
from q4.errors import EXIT_CRASH, EXIT_OK, EXIT_PERMANENT, InputError, Q4Error, RunStateError

TERMINAL_STATES = ("succeeded", "failed")
#: User metadata ``q4 submit`` stores with an input: its sha256, so a re-submit can prove "same file".
SHA256_METADATA = "q4-sha256"
#: Inputs up to this size go up in one conditional PutObject; larger ones as a multipart upload.
SINGLE_PUT_LIMIT = aws.TRANSFER_CONFIG.multipart_threshold
PART_SIZE = aws.TRANSFER_CONFIG.multipart_chunksize
#: Far more than any run writes (a few KiB); a bigger MANIFEST.json is refused before it is read.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The run's own documents, fetched beside the artifacts; a manifest may not list them as artifacts.
RUN_DOCUMENTS = ("MANIFEST.json", "ERROR.json", "job.json")
SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


class WaitTimeout(Q4Error):
    """``submit --wait`` gave up before the run ended (the run goes on)."""

    exit_code = EXIT_CRASH


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="upload a table to the pipeline and send its work message",
        description="Upload FILE to s3://$Q4_ARCHIVE_BUCKET/run=<ID>/input/ and send the work message to "
        "$Q4_WORK_QUEUE_URL. With --wait, follow the run to its done message and print where the "
        "results are. Exit code 0 succeeded (or submitted), 2 failed or rejected.",
    )
    submit.add_argument("file", type=Path, metavar="FILE", help="a CSV or Parquet file")
    submit.add_argument(
        "--run-id", metavar="ID", help="run id (default: <UTC yyyymmdd-HHMMSS.mmm>-<file name>)"
    )
    submit.add_argument("--mode", choices=contract.MODES, default=contract.DEFAULT_MODE, help="Q4 mode")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S seconds (3600)"
    )
    submit.set_defaults(handler=handle_submit)

    status = subparsers.add_parser(
        "status",
        help="show a run's state from the buckets",
        description=(
            "Show a run's state (submitted, accepted, succeeded, failed) from the buckets alone. For a run "
            "that has not ended, also show its latest rejection on the done queue and its messages in the "
            "DLQ ($Q4_DLQ_URL), consuming nothing."
        ),
    )
    status.add_argument("run_id", metavar="RUN_ID")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.set_defaults(handler=handle_status)

    runs = subparsers.add_parser(
        "runs",
        help="list the pipeline's runs and their states",
        description="List every run in the buckets with its state (submitted, accepted, succeeded, failed).",
    )
    runs.add_argument("--json", action="store_true", help="print the list as JSON")
    runs.set_defaults(handler=handle_runs)

    fetch = subparsers.add_parser(
        "fetch",
        help="download a finished run's artifacts",
        description="Download a finished run to DIR/run=<RUN_ID>/: a succeeded run's MANIFEST.json, job.json "
        "and every artifact the manifest lists, each checked against its size and sha256; a failed run's "
        "ERROR.json and job.json. Everything is downloaded to a hidden directory in DIR first and renamed "
        "into place only when all of it checks out, so DIR/run=<RUN_ID>/ is either complete or absent. An "
        "existing DIR/run=<RUN_ID>/ is never overwritten unless --force is given.",
    )
    fetch.add_argument("run_id", metavar="RUN_ID")
    fetch.add_argument(
        "--to",
        type=Path,
        required=True,
        metavar="DIR",
        help="where run=<RUN_ID>/ is written (created if missing)",
    )
    fetch.add_argument(
        "--force",
        action="store_true",
        help="replace an existing DIR/run=<RUN_ID>/ (only once the new download is complete and verified)",
    )
    fetch.set_defaults(handler=handle_fetch)


# ---------------------------------------------------------------- shared


class Pipeline:
    """The pipeline's buckets and queues, reached through boto3."""

    def __init__(self) -> None:
        self.config = aws.PipelineConfig.from_env()
        self.s3 = aws.client("s3")
        self.sqs = aws.client("sqs")
        self.store = RunStore(self.s3, self.config.artifacts_bucket)

    def state(self, run_id: str) -> RunState:
        with aws.aws_errors(f"read the state of run {run_id}"):
            try:
                state = self.store.state(run_id)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError: a corrupt document
                raise RunStateError(
                    "corrupt_run",
                    f"A state document of run {run_id} (job.json, MANIFEST.json or ERROR.json) in "
                    f"s3://{self.config.artifacts_bucket} is not valid JSON; report it to whoever runs the "
                    "pipeline.",
                ) from None
            if state.state == "unknown" and self.inputs(run_id):
                state.state = "submitted"
        return state

    def inputs(self, run_id: str) -> list[dict[str, Any]]:
        return aws.list_keys(self.s3, self.config.archive_bucket, contract.input_root(run_id))

    def results_url(self, run_id: str) -> str:
        return f"s3://{self.config.artifacts_bucket}/{contract.run_prefix(run_id)}"


def _check_run_id(run_id: str) -> str:
    if not contract.is_valid_run_id(run_id):
        raise InputError(
            "invalid_run_id",
            f"The run id {_shown(run_id)} is not valid; use 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, without '..'.",
        )
    return run_id


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: messages echo what was given but stay short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: object) -> str:
    """Text read from a bucket (run ids, messages) with control characters shown escaped: nothing a
    bucket holds can move the cursor or recolour the user's terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def _out(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- submit


def handle_submit(args: argparse.Namespace) -> int:
    from q4.cli.run import default_run_id
    from q4.manifest import sha256_file

    path: Path = args.file
    _check_input_file(path)
    # an explicit --run-id "" is refused like any other invalid id, not replaced by the default
    run_id = _check_run_id(args.run_id if args.run_id is not None else default_run_id(path))
    key = contract.input_root(run_id) + path.name
    message = {"run_id": run_id, "input_key": key, "mode": args.mode}
    try:
        contract.parse_job(message)
    except contract.Rejection as rejection:  # the checks above should make this unreachable
        raise InputError(rejection.code, rejection.message) from None
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(
            "input_unreadable", f"{path} cannot be read ({exc.strerror}); check that the file is readable."
        ) from None

    pipeline = Pipeline()
    state = pipeline.state(run_id)
    if state.state not in ("unknown", "submitted"):
        raise RunStateError(
            "run_exists",
            f"Run {run_id} already exists ({state.state}); choose another --run-id or see "
            f"`q4 status {run_id}`.",
        )
    bucket = pipeline.config.archive_bucket
    with aws.aws_errors(f"list the inputs of run {run_id}"):
        others = [item["Key"] for item in pipeline.inputs(run_id) if item["Key"] != key]
    if others:
        raise RunStateError(
            "run_exists",
            f"Run {run_id} already has another input (s3://{bucket}/{_printable(others[0])}) and inputs are "
            "never overwritten or mixed; choose another --run-id.",
        )
    with aws.aws_errors(f"upload {path.name} to s3://{bucket}/{key}"):
        _upload_input(pipeline.s3, bucket, key, path, digest)
    sent_at = time.time()
    with aws.aws_errors("send the work message"):
        pipeline.sqs.send_message(QueueUrl=pipeline.config.work_queue_url, MessageBody=json.dumps(message))
    _out(f"q4: submitted run {run_id} ({args.mode} mode): s3://{bucket}/{key}")
    if not args.wait:
        _out(f"q4: follow it with: q4 status {run_id}")
        return EXIT_OK
    return _wait_and_report(pipeline, run_id, args.timeout, message, sent_at)


def _unusable_in_a_key(name: str) -> bool:
    """Control characters, backslashes and what UTF-8 cannot encode (undecodable bytes of a Linux file
    name arrive as lone surrogates): the work-message validator refuses such keys."""
    return "\\" in name or any(
        ord(ch) < 32 or 127 <= ord(ch) < 160 or 0xD800 <= ord(ch) < 0xE000 or ch in "\ufffe\uffff"
        for ch in name
    )


def _check_input_file(path: Path) -> None:
    """Refuse, before anything is uploaded, a FILE that cannot become a run's input."""
    try:
        info = path.stat()  # follows symlinks: what would be uploaded
    except FileNotFoundError:
        raise InputError(
            "input_not_found", f"{path} does not exist; give the path of a CSV or Parquet file."
        ) from None
    except OSError as exc:  # a symlink loop, a path component that is a file, a denied directory, ...
        raise InputError(
            "input_not_found",
            f"{path} cannot be opened ({exc.strerror}); give the path of a readable CSV or Parquet file.",
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(
            "input_not_found",
            f"{path} is a directory; give the path of one CSV or Parquet file.",
        )
    if not stat.S_ISREG(info.st_mode):
        raise InputError(
            "input_not_found",
            f"{path} is not a regular file (a device, pipe or socket); give the path of a CSV or "
            "Parquet file.",
        )
    if _unusable_in_a_key(path.name):
        raise InputError(
            "invalid_file_name",
            f"The file name {_shown(path.name)} contains control characters, a backslash or bytes that are "
            "not UTF-8, which an S3 input key may not hold; rename the file.",
        )
    if not contract.is_input_object(path.name):
        raise InputError(
            "unsupported_input",
            f"{path.name} is neither a .csv nor a .parquet file; convert it to CSV or Parquet.",
        )
    if info.st_size == 0:
        raise InputError(
            "empty_input",
            f"{path} is empty (0 bytes); give a CSV or Parquet file with a header and at least two rows.",
        )
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise InputError(
            "input_unreadable", f"{path} cannot be read ({exc.strerror}); check that the file is readable."
        ) from None


def _upload_input(s3: Any, bucket: str, key: str, path: Path, digest: str) -> bool:
    """Upload once, never overwriting: True when uploaded, False when the identical file is already there.

    The upload is conditional (``If-None-Match: *``), so of two submits racing for one key only one
    writes; a different object already at the key is refused with a :class:`RunStateError`.
    """
    if _existing_input(s3, bucket, key, path, digest):
        return False
    try:
        _put_once(s3, bucket, key, path, digest)
    except ClientError as exc:
        if not runs.is_precondition_failed(exc):
            raise
        # someone uploaded to the key between the check and the upload
        if not _existing_input(s3, bucket, key, path, digest):
            raise  # pragma: no cover -- the object vanished again; aws_errors reports it as transient
        return False
    return True


def _existing_input(s3: Any, bucket: str, key: str, path: Path, digest: str) -> bool:
    """False when nothing is at ``key``; True when the same bytes are; refuses anything else."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws.is_not_found(exc):
            return False
        raise
    stored = (head.get("Metadata") or {}).get(SHA256_METADATA)
    etag = str(head.get("ETag", "")).strip('"')
    if int(head["ContentLength"]) == path.stat().st_size and (
        stored == digest
        # an object from scripts/submit_run.sh has no sha256; a single-part ETag is its MD5
        or (stored is None and "-" not in etag and etag == _md5(path))
    ):
        return True
    raise RunStateError(
        "input_exists",
        f"s3://{bucket}/{key} already holds a different file (or one whose content cannot be compared), and "
        "inputs are never overwritten; choose another --run-id.",
    )


def _put_once(s3: Any, bucket: str, key: str, path: Path, digest: str) -> None:
    """Create ``key`` from ``path`` with ``If-None-Match: *``: one PutObject, or a multipart upload whose
    CompleteMultipartUpload carries the condition (aborted if anything fails)."""
    extra = {
        "ContentType": "text/csv" if path.suffix.lower() == ".csv" else "application/octet-stream",
        "Metadata": {SHA256_METADATA: digest},
    }
    if path.stat().st_size <= SINGLE_PUT_LIMIT:
        with path.open("rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts = []
        with path.open("rb") as f:
            for number in itertools.count(1):
                chunk = f.read(PART_SIZE)
                if not chunk:
                    break
                response = s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )
    except BaseException:
        # if the abort fails too, the parts stay until aborted (`aws s3api list-multipart-uploads`)
        with suppress(ClientError, BotoCoreError):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wait_and_report(
    pipeline: Pipeline, run_id: str, timeout: float, job: dict[str, Any], sent_at: float
) -> int:
    with _progress_display() as show:
        outcome = wait_for_run(pipeline, run_id, timeout, show, job=job, sent_at=sent_at)
    status = outcome["status"]
    if status == "succeeded":
        manifest = outcome.get("manifest") or {}
        rows: dict[str, Any] = manifest["rows"] if isinstance(manifest.get("rows"), dict) else {}
        _out(
            f"q4: run {run_id} succeeded: {rows.get('input', '?')} rows -> {rows.get('keep', '?')} keep "
            "(Q1+Q4), "
            f"{rows.get('discard', '?')} discard (Q2+Q3), {rows.get('rejected', '?')} rejected."
        )
        _out(f"q4: results: {pipeline.results_url(run_id)} (MANIFEST.json lists every artifact)")
        listed: list[Any] = manifest["artifacts"] if isinstance(manifest.get("artifacts"), list) else []
        if any(isinstance(a, dict) and a.get("key") == "viz/report.html" for a in listed):
            _out(f"q4: report: {pipeline.results_url(run_id)}viz/report.html")
        _out(f"q4: download them with: q4 fetch {run_id} --to DIR")
        return EXIT_OK
    error = outcome.get("error") or {}
    sentence = (
        _printable(error.get("message") or error.get("code"))
        if isinstance(error, dict)
        else _printable(error)
    )
    print(f"q4: run {run_id} {status}: {sentence}", file=sys.stderr)
    if status == "failed":
        print(f"q4: details: {pipeline.results_url(run_id)}ERROR.json", file=sys.stderr)
    return EXIT_PERMANENT


#: A rejection sent this long before our work message (by the queue's clock) is an older submission's.
CLOCK_SKEW_S = 30.0


def wait_for_run(
    pipeline: Pipeline,
    run_id: str,
    timeout: float,
    show: Callable[[str], None],
    interval: float = 1.0,
    *,
    job: dict[str, Any] | None = None,
    sent_at: float | None = None,
) -> dict[str, Any]:
    """Follow a run until it ends: ``{status, manifest | error}``.

    Success and failure are read from the artifacts bucket (MANIFEST.json / ERROR.json). When ``job`` (the
    work message we sent) is given, a run accepted with a *different* job means ours was rejected as
    ``run_conflict`` (someone else submitted under the same run id first): reported as such, never as our
    result. A rejection exists only as a done message: the whole done queue is looked through
    (:func:`q4.aws.find_message`, nothing deleted, every message visible again right after each pass) for
    a ``rejected`` message of this run sent no earlier than ``sent_at`` minus :data:`CLOCK_SKEW_S`.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    expected = _parsed(job) if job is not None else None
    since_ms = None if sent_at is None else (sent_at - CLOCK_SKEW_S) * 1000
    while True:
        state = pipeline.state(run_id)
        if expected is not None and state.job is not None and _parsed(state.job) != expected:
            return {"status": "rejected", "error": _conflict(run_id)}
        if state.state == "succeeded":
            return {"status": "succeeded", "manifest": state.manifest}
        if state.state == "failed":
            return {"status": "failed", "error": state.error}
        rejected = (
            _peek_rejection(pipeline, run_id, since_ms) if state.state in ("unknown", "submitted") else None
        )
        if rejected is not None:
            return {"status": "rejected", "error": rejected.get("error")}
        if state.state == "accepted" and state.attempts:
            text = f"run {run_id}: task attempt {state.attempts[-1]} running"
        elif state.state == "accepted":
            text = f"run {run_id}: accepted, starting a task"
        else:
            text = f"run {run_id}: queued, waiting for the orchestrator"
        show(f"{text} ({time.monotonic() - started:.0f} s)")
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                "wait_timeout",
                f"Run {run_id} did not end within {timeout:.0f} s; it goes on, check it later with "
                f"`q4 status {run_id}`.",
            )
        time.sleep(interval)


def _parsed(job: Any) -> contract.Job | None:
    try:
        return contract.parse_job(job)
    except contract.Rejection:
        return None


def _conflict(run_id: str) -> dict[str, Any]:
    return {
        "code": "run_conflict",
        "message": f"Run {run_id} was accepted with a different job (another submission under the same run "
        "id came first), so yours was rejected; submit it under a new run id.",
    }


def _peek_rejection(pipeline: Pipeline, run_id: str, since_ms: float | None = None) -> dict[str, Any] | None:
    def ours(body: dict[str, Any], message: Any) -> bool:
        if body.get("run_id") != run_id or body.get("status") != "rejected":
            return False
        sent = (message.get("Attributes") or {}).get("SentTimestamp")
        return since_ms is None or sent is None or float(sent) >= since_ms

    with aws.aws_errors("read the done queue"):
        return aws.find_message(pipeline.sqs, pipeline.config.done_queue_url, ours, delete=False)


@contextmanager
def _progress_display() -> Iterator[Callable[[str], None]]:
    """A live status line on a terminal (rich); plain lines when a line changes otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        with console.status("submitted") as status:
            yield lambda text: status.update(text)
        return
    last = {"text": ""}

    def plain(text: str) -> None:
        stem = text.rsplit(" (", 1)[0]
        if stem != last["text"]:
            last["text"] = stem
            print(f"q4: {stem}", file=sys.stderr, flush=True)

    yield plain


# ---------------------------------------------------------------- status and runs


def _summary(pipeline: Pipeline, state: RunState) -> dict[str, Any]:
    job = state.job or {}
    doc: dict[str, Any] = {"run_id": state.run_id, "state": state.state, "mode": job.get("mode")}
    doc["input"] = job.get("input_key") or job.get("input_prefix")
    doc["attempts"] = len(state.attempts)
    if state.manifest is not None:
        doc["mode"] = state.manifest.get("mode", doc["mode"])
        rows = state.manifest.get("rows")
        doc["rows"] = rows if isinstance(rows, dict) else None
        doc["results"] = pipeline.results_url(state.run_id)
        doc["manifest"] = f"{doc['results']}MANIFEST.json"
    if state.error is not None:
        doc["error"] = {"code": state.error.get("code"), "message": state.error.get("message")}
        doc["details"] = f"{pipeline.results_url(state.run_id)}ERROR.json"
    if state.state == "submitted":
        doc["note"] = (
            "Inputs are uploaded but the orchestrator has not accepted the run: its work message is queued, "
            "or it was rejected (rejections are reported on the done queue only)."
        )
    return doc


def _add_queue_findings(pipeline: Pipeline, state: RunState, doc: dict[str, Any]) -> None:
    """What the queues add to a run that has not ended: its latest rejection on the done queue (submitted),
    and its messages in the DLQ (``Q4_DLQ_URL``; submitted or accepted). Nothing is consumed."""
    run_id = state.run_id
    if state.state == "submitted":
        found: list[tuple[float, dict[str, Any]]] = []

        def collect(body: dict[str, Any], message: Any) -> bool:
            if body.get("run_id") == run_id and body.get("status") == "rejected":
                sent = (message.get("Attributes") or {}).get("SentTimestamp") or 0
                found.append((float(sent), body))
            return False  # look through the whole queue

        with aws.aws_errors("read the done queue"):
            aws.find_message(pipeline.sqs, pipeline.config.done_queue_url, collect, delete=False)
        if found:
            error = max(found, key=lambda item: item[0])[1].get("error")
            if isinstance(error, dict):
                doc["rejection"] = {"code": error.get("code"), "message": error.get("message")}
                doc["note"] = (
                    "Inputs are uploaded but no job was accepted; the latest done message for this run is a "
                    "rejection (above): fix what it says and submit again."
                )
    dlq_url = os.environ.get("Q4_DLQ_URL", "").strip()
    if state.state in ("submitted", "accepted") and dlq_url:
        from q4.cli import dlq

        with aws.aws_errors("read the dead-letter queue"):
            letters = dlq.letters_of(pipeline.sqs, dlq_url, run_id)
        if letters:
            doc["dlq"] = [letter.describe().strip() for letter in letters]
            doc["note"] = (
                f"This run has {len(letters)} message(s) in the DLQ, so nothing moves it on: fix what made "
                f"them fail, then `q4 dlq --redrive --run {run_id}`."
            )


def handle_status(args: argparse.Namespace) -> int:
    run_id = _check_run_id(args.run_id)
    pipeline = Pipeline()
    state = pipeline.state(run_id)
    if state.state == "unknown":
        raise InputError(
            "run_not_found",
            f"No run {run_id} in s3://{pipeline.config.artifacts_bucket} or "
            f"s3://{pipeline.config.archive_bucket}; "
            "check the run id (`q4 runs` lists them).",
        )
    doc = _summary(pipeline, state)
    _add_queue_findings(pipeline, state, doc)
    if args.json:
        _out(json.dumps(doc, indent=2))
        return EXIT_OK
    for name in ("run_id", "state", "mode", "input", "attempts"):
        if doc.get(name) is not None:
            _out(f"{name.replace('_', ' ') + ':':<10} {_printable(doc[name])}")
    if doc.get("rows"):
        rows = doc["rows"]
        _out(f"{'rows:':<10} " + _printable(", ".join(f"{k} {v}" for k, v in rows.items())))
    for name in ("results", "error", "details", "rejection", "dlq", "note"):
        value = doc.get(name)
        if value is None:
            continue
        if name in ("error", "rejection"):
            value = f"{value['code']}: {value['message']}"
        if name == "dlq":
            value = "; ".join(value)
        _out(f"{name + ':':<10} {_printable(value)}")
    return EXIT_OK


def _run_ids(s3: Any, bucket: str) -> set[str]:
    run_ids: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="run=", Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            run_ids.add(prefix["Prefix"].removeprefix("run=").rstrip("/"))
    return run_ids


def _light_state(pipeline: Pipeline, run_id: str) -> str:
    """accepted / succeeded / failed from one listing of the run's top level (no object reads)."""
    listing = pipeline.s3.list_objects_v2(
        Bucket=pipeline.config.artifacts_bucket, Prefix=contract.run_prefix(run_id), Delimiter="/"
    )
    names = {item["Key"].rsplit("/", 1)[-1] for item in listing.get("Contents", [])}
    if "MANIFEST.json" in names:
        return "succeeded"
    if "ERROR.json" in names:
        return "failed"
    return "accepted" if "job.json" in names else "submitted"


def handle_runs(args: argparse.Namespace) -> int:
    pipeline = Pipeline()
    with aws.aws_errors("list the runs"):
        accepted = _run_ids(pipeline.s3, pipeline.config.artifacts_bucket)
        submitted = _run_ids(pipeline.s3, pipeline.config.archive_bucket)
        runs = [
            {"run_id": run_id, "state": _light_state(pipeline, run_id) if run_id in accepted else "submitted"}
            for run_id in sorted(accepted | submitted)
        ]
    if args.json:
        _out(json.dumps(runs, indent=2))
        return EXIT_OK
    if not runs:
        _out(f"q4: no runs yet in s3://{pipeline.config.archive_bucket}; submit one with `q4 submit FILE`.")
        return EXIT_OK
    shown = [(_printable(run["run_id"]), run["state"]) for run in runs]
    width = max(len("RUN ID"), *(len(run_id) for run_id, _ in shown))
    _out(f"{'RUN ID':<{width}}  STATE")
    for run_id, state in shown:
        _out(f"{run_id:<{width}}  {state}")
    return EXIT_OK


# ---------------------------------------------------------------- fetch


def handle_fetch(args: argparse.Namespace) -> int:
    """Download a finished run into ``DIR/run=<id>/``: complete and verified, or not at all.

    The plan (which objects, their sizes and sha256) comes from MANIFEST.json, is checked before any
    download (keys that are not plain relative paths, duplicates, a file that would also be a
    directory, sizes that differ from the bucket's, a lack of disk space), the objects go to a hidden
    staging directory beside the target, and the staging directory is renamed into place only when
    every file matches; on any failure it is removed.
    """
    run_id = _check_run_id(args.run_id)
    pipeline = Pipeline()
    bucket = pipeline.config.artifacts_bucket
    prefix = contract.run_prefix(run_id)
    with aws.aws_errors(f"read run {run_id}"):
        manifest_raw = _read_document(pipeline.s3, bucket, contract.manifest_key(run_id), run_id)
        error_raw = (
            None
            if manifest_raw is not None
            else _read_document(pipeline.s3, bucket, contract.error_key(run_id), run_id)
        )
        if manifest_raw is None and error_raw is None:
            state = pipeline.state(run_id).state
            raise RunStateError(
                "run_not_finished",
                f"Run {run_id} has not finished ({state}); wait for it (`q4 status {run_id}`) and fetch "
                "again."
                if state != "unknown"
                else f"No run {run_id} in s3://{bucket}; check the run id (`q4 runs`).",
            )
        job_raw = _read_document(pipeline.s3, bucket, contract.job_key(run_id), run_id)
        listing = {item["Key"]: item for item in aws.list_keys(pipeline.s3, bucket, prefix)}

    raws = (manifest_raw, error_raw, job_raw)
    documents = {name: raw for name, raw in zip(RUN_DOCUMENTS, raws, strict=True) if raw is not None}
    artifacts: list[dict[str, Any]] = []
    if manifest_raw is not None:
        artifacts = _artifacts_of(_manifest_doc(manifest_raw, run_id), run_id)
        _check_against_bucket(artifacts, listing, bucket, prefix, run_id)
    destination: Path = args.to
    target = destination / prefix.rstrip("/")
    _prepare_destination(destination, target, args.force)
    needed = sum(a["bytes"] for a in artifacts) + sum(len(raw) for raw in documents.values())
    free = shutil.disk_usage(destination).free
    if needed > free:
        raise Q4Error(
            "no_space",
            f"Run {run_id} needs {needed:,} bytes but {destination} has {free:,} free; free some space or "
            "fetch to another --to directory.",
        )

    staging = destination / f".{target.name}.fetch-{secrets.token_hex(6)}"
    try:
        os.mkdir(staging)
        for name, raw in documents.items():
            (staging / name).write_bytes(raw)
        with aws.aws_errors(f"download run {run_id}"):
            for artifact in artifacts:
                _download_verified(pipeline.s3, bucket, prefix, artifact, staging, run_id)
        _move_into_place(staging, target, args.force)
    except OSError as exc:
        raise Q4Error(
            "fetch_write_failed",
            f"Cannot write run {run_id} to {destination} ({exc.strerror}); nothing was fetched — check the "
            "directory's permissions and free space, or fetch to another --to directory.",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename

    skipped = [
        key
        for key in listing
        if not key.startswith(contract.attempts_prefix(run_id))
        and key.removeprefix(prefix) not in RUN_DOCUMENTS
        and key.removeprefix(prefix) not in {a["key"] for a in artifacts}
    ]
    if manifest_raw is not None:
        _out(
            f"q4: fetched run {run_id} (succeeded) to {target}: {len(artifacts)} artifacts, every size and "
            "sha256 checked against MANIFEST.json"
        )
    else:
        _out(
            f"q4: fetched run {run_id} (failed) to {target}: ERROR.json"
            + (" and job.json" if job_raw else "")
        )
        _out(f"q4: the run failed: {_error_sentence(error_raw)}")
    if skipped:
        what = "MANIFEST.json does not list them" if manifest_raw is not None else "the run failed"
        _out(f"q4: left {len(skipped)} other objects under s3://{bucket}/{prefix} in the bucket ({what})")
    return EXIT_OK


def _corrupt(run_id: str, problem: str) -> Q4Error:
    return Q4Error(
        "corrupt_manifest",
        f"MANIFEST.json of run {run_id} {problem}, so the run's artifacts cannot be trusted and nothing was "
        "fetched; report it to whoever runs the pipeline.",
    )


def _read_document(s3: Any, bucket: str, key: str, run_id: str) -> bytes | None:
    """The bytes of a run document, or None when there is none (a bounded read: a hostile 5 GB
    MANIFEST.json is refused, not loaded)."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if runs.is_not_found(exc) or (runs.is_denied(exc) and not runs.key_listed(s3, bucket, key)):
            return None
        raise
    body = response["Body"]
    if int(response.get("ContentLength", 0)) > MAX_MANIFEST_BYTES:
        body.close()
        raise RunStateError(
            "corrupt_run",
            f"{key.removeprefix(contract.run_prefix(run_id))} of run {run_id} is "
            f"{int(response['ContentLength']):,} bytes, far more than any run writes, so it is not read and "
            "nothing was fetched; report it to whoever runs the pipeline.",
        )
    return bytes(body.read())


def _manifest_doc(raw: bytes, run_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # also bytes that are not UTF-8
        raise _corrupt(run_id, "is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _corrupt(run_id, f"is {_json_type(doc)}, not an object")
    if doc.get("run_id") != run_id:
        raise _corrupt(run_id, f"names another run ({_shown(doc.get('run_id'))})")
    if doc.get("status", "succeeded") != "succeeded":
        raise _corrupt(run_id, f"has the status {_shown(doc.get('status'))}, not 'succeeded'")
    return doc


def _json_type(value: object) -> str:
    if value is None:
        return "JSON null"
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return f"a JSON {names.get(type(value), type(value).__name__)}"


def _artifacts_of(manifest: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """The manifest's artifacts as ``{key, bytes, sha256}``, each key a safe relative file path."""
    listed = manifest.get("artifacts")
    if not isinstance(listed, list):
        raise _corrupt(run_id, "has no list of artifacts")
    artifacts: list[dict[str, Any]] = []
    files: dict[str, str] = {}  # case-folded path -> key: two keys, one file on macOS / Windows
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise _corrupt(run_id, f"lists artifact {i} as {_json_type(entry)}, not an object")
        key, size, digest = entry.get("key"), entry.get("bytes"), entry.get("sha256")
        if not isinstance(key, str) or not _safe_relative_key(key):
            raise _corrupt(
                run_id,
                f"lists the artifact key {_shown(key)}, which is not a plain relative path below "
                f"run={run_id}/",
            )
        if key in RUN_DOCUMENTS or key.startswith("attempts/"):
            raise _corrupt(run_id, f"lists the run's own document {_shown(key)} as an artifact")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _corrupt(run_id, f"gives {_shown(key)} the size {_shown(size)}, not a byte count")
        if not isinstance(digest, str) or not SHA256_HEX.match(digest):
            raise _corrupt(run_id, f"gives {_shown(key)} the sha256 {_shown(digest)}, not 64 hex digits")
        folded = key.casefold()
        if folded in files:
            raise _corrupt(run_id, f"lists {_shown(key)} twice (or beside {_shown(files[folded])})")
        files[folded] = key
        artifacts.append({"key": key, "bytes": size, "sha256": digest})
    for folded, key in files.items():
        parts = folded.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                raise _corrupt(
                    run_id,
                    f"lists {_shown(files['/'.join(parts[:depth])])} both as a file and as the directory of "
                    f"{_shown(key)}",
                )
    return artifacts


def _safe_relative_key(key: str) -> bool:
    """A key below the run prefix that is one plain relative file path on every file system."""
    try:
        aws.local_path_for(Path("."), key)
    except aws.UnsafeKeyError:
        return False
    return not _unusable_in_a_key(key) and all(
        len(part.encode("utf-8")) <= aws.MAX_NAME_BYTES for part in key.split("/")
    )


def _check_against_bucket(
    artifacts: list[dict[str, Any]], listing: dict[str, dict[str, Any]], bucket: str, prefix: str, run_id: str
) -> None:
    """Every artifact is in the bucket with the size the manifest gives, before anything is downloaded."""
    for artifact in artifacts:
        item = listing.get(prefix + artifact["key"])
        if item is None:
            raise Q4Error(
                "missing_artifact",
                f"{artifact['key']} is listed in MANIFEST.json of run {run_id} but missing from "
                f"s3://{bucket}/{prefix}, so the run is incomplete and nothing was fetched; report it to "
                "whoever runs the pipeline.",
            )
        if int(item["Size"]) != artifact["bytes"]:
            raise Q4Error(
                "checksum_mismatch",
                f"{artifact['key']} of run {run_id} is {int(item['Size']):,} bytes in s3://{bucket} but "
                f"{artifact['bytes']:,} in MANIFEST.json, so nothing was fetched; report it to whoever runs "
                "the pipeline.",
            )


def _prepare_destination(destination: Path, target: Path, force: bool) -> None:
    if destination.exists() and not destination.is_dir():
        raise InputError(
            "destination_not_directory",
            f"{destination} is a file, not a directory; give a directory for --to (created if missing).",
        )
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            "destination_not_directory",
            f"Cannot create {destination} ({exc.strerror}); give a directory you can write to with --to.",
        ) from None
    if os.path.lexists(target) and not force:
        raise RunStateError(
            "destination_exists",
            f"{target} already exists and `q4 fetch` never overwrites it; remove it, fetch to another --to "
            "directory, or add --force to replace it.",
        )


def _download_verified(
    s3: Any, bucket: str, prefix: str, artifact: dict[str, Any], staging: Path, run_id: str
) -> None:
    from q4.manifest import sha256_file

    path = aws.local_path_for(staging, artifact["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, prefix + artifact["key"], str(path), Config=aws.TRANSFER_CONFIG)
    if path.stat().st_size != artifact["bytes"] or sha256_file(path) != artifact["sha256"]:
        raise Q4Error(
            "checksum_mismatch",
            f"{artifact['key']} of run {run_id} does not match its sha256 in MANIFEST.json, so nothing was "
            "fetched; fetch again, and report it to whoever runs the pipeline if it persists.",
        )


def _move_into_place(staging: Path, target: Path, force: bool) -> None:
    """Rename the verified staging directory to ``target``; with ``force`` an existing target is moved
    aside first and deleted only once the new one is in place."""
    os.chmod(staging, 0o777 & ~_umask())  # mkdir honoured the umask; make that explicit
    old: Path | None = None
    if force and os.path.lexists(target):
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
        os.rename(target, old)
    try:
        os.rename(staging, target)  # refuses a non-empty directory that appeared meanwhile
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()  # a file, or a symlink (never followed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _error_sentence(raw: bytes | None) -> str:
    try:
        doc = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return "its ERROR.json is not valid JSON"
    if not isinstance(doc, dict):
        return "its ERROR.json is not a JSON object"
    return _printable(doc.get("message") or doc.get("code") or "no message")
