"""``q4 submit``: upload a table to the pipeline's archive bucket and send its work message; with
``--wait``, follow the run to its end (:func:`wait_for_run`).

The input is uploaded once and never overwritten (``If-None-Match: *``); a re-submit of the same bytes
under the same key is allowed (proved by the ``q4-sha256`` user metadata, or the MD5 ETag of an object
from ``scripts/submit_run.sh``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import q4_contract as contract
from botocore.exceptions import BotoCoreError, ClientError

from q4 import aws
from q4.cli.common import Pipeline, check_run_id, out, printable, shown, unusable_in_a_key
from q4.cli.phase import describe_cost
from q4.errors import EXIT_CRASH, EXIT_OK, EXIT_PERMANENT, InputError, Q4Error, RunStateError

#: User metadata ``q4 submit`` stores with an input: its sha256, so a re-submit can prove "same file".
SHA256_METADATA = "q4-sha256"
#: Inputs up to this size go up in one conditional PutObject; larger ones as a multipart upload.
SINGLE_PUT_LIMIT = aws.TRANSFER_CONFIG.multipart_threshold
PART_SIZE = aws.TRANSFER_CONFIG.multipart_chunksize
#: A rejection sent this long before our work message (by the queue's clock) is an older submission's.
CLOCK_SKEW_S = 30.0


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
    submit.add_argument(
        "file", type=Path, metavar="FILE", help="a CSV (.csv, .csv.gz, .csv.bz2, .csv.zst) or Parquet file"
    )
    submit.add_argument(
        "--run-id", metavar="ID", help="run id (default: <UTC yyyymmdd-HHMMSS.mmm>-<file name>)"
    )
    # no argparse `choices`: the work message, mode included, is judged by the contract (a code, exit 2)
    submit.add_argument(
        "--mode", default=contract.DEFAULT_MODE, metavar="{" + ",".join(contract.MODES) + "}", help="Q4 mode"
    )
    submit.add_argument(
        "--features", metavar="A,B", help="comma-separated feature columns (default: all numeric)"
    )
    low, high = contract.SVD_K_RANGE
    submit.add_argument(
        "--svd-k", metavar="K", help=f"SVD components ({low}..{high}, default {contract.DEFAULT_SVD_K})"
    )
    submit.add_argument(
        "--output-format",
        metavar="|".join(contract.OUTPUT_FORMATS),
        help=f"row outputs format (default {contract.DEFAULT_OUTPUT_FORMAT})",
    )
    submit.add_argument(
        "--model",
        metavar="RUN_ID|KEY",
        help="apply the model of an earlier enhanced or full run (its run id, or the key "
        "run=<id>/model/q4_model.json in the artifacts bucket) instead of fitting",
    )
    submit.add_argument(
        "--task-cpu",
        metavar="UNITS",
        help="Fargate CPU units for the run's task: 256, 512, 1024, 2048, 4096, 8192 or 16384, within the "
        "deployment's limits (default: sized to the input)",
    )
    submit.add_argument(
        "--shards",
        metavar="N",
        help="spread the run over N Fargate tasks per step (1-1000, at most the deployment's max_shards; "
        "default: decided from the input's size)",
    )
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S seconds (3600)"
    )
    submit.set_defaults(handler=handle_submit)


def handle_submit(args: argparse.Namespace) -> int:
    from q4.cli.run import default_run_id
    from q4.manifest import sha256_file

    path: Path = args.file
    _check_input_file(path)
    # an explicit --run-id "" is refused like any other invalid id, not replaced by the default
    run_id = check_run_id(args.run_id if args.run_id is not None else default_run_id(path))
    key = contract.input_root(run_id) + path.name
    message = _work_message(run_id, key, args)
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(
            "input_unreadable", f"{path} cannot be read ({exc.strerror}); check that the file is readable."
        ) from None

    pipeline = Pipeline()
    if "model_key" in message:
        _check_model(pipeline, str(message["model_key"]))
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
            f"Run {run_id} already has another input (s3://{bucket}/{printable(others[0])}) and inputs are "
            "never overwritten or mixed; choose another --run-id.",
        )
    with aws.aws_errors(f"upload {path.name} to s3://{bucket}/{key}"):
        _upload_input(pipeline.s3, bucket, key, path, digest)
    sent_at = time.time()
    with aws.aws_errors("send the work message"):
        pipeline.sqs.send_message(QueueUrl=pipeline.config.work_queue_url, MessageBody=json.dumps(message))
    out(f"q4: submitted run {run_id} ({args.mode} mode): s3://{bucket}/{key}")
    if "model_key" in message:
        out(f"q4: with the model s3://{pipeline.config.artifacts_bucket}/{message['model_key']}")
    if not args.wait:
        out(f"q4: follow it with: q4 status {run_id}")
        return EXIT_OK
    return _wait_and_report(pipeline, run_id, args.timeout, message, sent_at)


def _work_message(run_id: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """The work message ``q4 submit`` will send (every job field the flags give; the rest left to their
    defaults), checked by the contract before anything is uploaded: a message the orchestrator would reject
    (an unknown mode, a bad --svd-k, ...) is refused with the rejection's code."""
    message: dict[str, Any] = {"run_id": run_id, "input_key": key, "mode": args.mode}
    try:
        if args.features is not None:
            message["features"] = [name.strip() for name in args.features.split(",") if name.strip()]
        if args.svd_k is not None:
            message["svd_k"] = contract.svd_k_from_text(args.svd_k, "--svd-k ", run_id)
        if args.output_format is not None:
            message["output_format"] = args.output_format
        if args.model is not None:
            model = str(args.model)
            is_run_id = "/" not in model and contract.is_valid_run_id(model)
            message["model_key"] = contract.run_prefix(model) + "model/q4_model.json" if is_run_id else model
        if args.task_cpu is not None:
            message["task_cpu"] = _task_cpu(args.task_cpu)
        if args.shards is not None:
            message["shards"] = _shards(args.shards)
        contract.parse_job(message)
    except contract.Rejection as rejection:
        raise InputError(rejection.code, rejection.message) from None
    return message


def _task_cpu(text: str) -> int:
    """``--task-cpu`` as an integer; whether it is a Fargate CPU step the contract judges (the deployment's
    limits are the orchestrator's to check: a size outside them is a ``rejected`` run)."""
    try:
        return int(text)
    except ValueError:
        raise InputError(
            "invalid_task_cpu",
            f"--task-cpu {contract.shown(text)} is not an integer; use a Fargate CPU step such as 1024.",
        ) from None


def _shards(text: str) -> int:
    """``--shards`` as an integer; its range the contract judges (the deployment's ``max_shards`` is the
    orchestrator's to check: more shards than it allows is a ``rejected`` run)."""
    try:
        return int(text)
    except ValueError:
        raise InputError(
            "invalid_shards", f"--shards {contract.shown(text)} is not an integer; use 1 to 1000."
        ) from None


def _check_model(pipeline: Pipeline, model_key: str) -> None:
    """Refuse, before anything is uploaded, a model that is not in the artifacts bucket (the task would
    fail the run with the same code)."""
    bucket = pipeline.config.artifacts_bucket
    with aws.aws_errors(f"find the model s3://{bucket}/{model_key}"):
        found = contract.key_listed(pipeline.s3, bucket, model_key)
    if not found:
        raise InputError(
            "model_not_found",
            f"No model at s3://{bucket}/{printable(model_key)}; give the run id of an enhanced or full run "
            "that succeeded (`q4 runs`).",
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
    if unusable_in_a_key(path.name):
        raise InputError(
            "invalid_file_name",
            f"The file name {shown(path.name)} contains control characters, a backslash or bytes that are "
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
        if not contract.is_precondition_failed(exc):
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
        if contract.is_not_found(exc):
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
        out(
            f"q4: run {run_id} succeeded: {rows.get('input', '?')} rows -> {rows.get('keep', '?')} keep "
            "(Q1+Q4), "
            f"{rows.get('discard', '?')} discard (Q2+Q3), {rows.get('rejected', '?')} rejected."
        )
        out(f"q4: results: {pipeline.results_url(run_id)} (MANIFEST.json lists every artifact)")
        if isinstance(manifest.get("cost"), dict):
            out(f"q4: cost: {describe_cost(manifest['cost'])}")
        listed: list[Any] = manifest["artifacts"] if isinstance(manifest.get("artifacts"), list) else []
        if any(isinstance(a, dict) and a.get("key") == "viz/report.html" for a in listed):
            out(f"q4: report: {pipeline.results_url(run_id)}viz/report.html")
        out(f"q4: download them with: q4 fetch {run_id} --to DIR")
        return EXIT_OK
    error = outcome.get("error") or {}
    sentence = (
        printable(error.get("message") or error.get("code")) if isinstance(error, dict) else printable(error)
    )
    print(f"q4: run {run_id} {status}: {sentence}", file=sys.stderr)
    if status == "failed":
        print(f"q4: details: {pipeline.results_url(run_id)}ERROR.json", file=sys.stderr)
    return EXIT_PERMANENT


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
