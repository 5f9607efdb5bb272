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
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from q4_orchestrator import contract
from q4_orchestrator.runs import RunState, RunStore

from q4 import aws
from q4.errors import EXIT_CRASH, EXIT_OK, EXIT_PERMANENT, InputError, Q4Error, RunStateError

TERMINAL_STATES = ("succeeded", "failed")


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
    submit.add_argument("--run-id", metavar="ID", help="run id (default: <UTC yyyymmdd-HHMMSS>-<file name>)")
    submit.add_argument("--mode", choices=contract.MODES, default=contract.DEFAULT_MODE, help="Q4 mode")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S seconds (3600)"
    )
    submit.set_defaults(handler=handle_submit)

    status = subparsers.add_parser(
        "status",
        help="show a run's state from the buckets",
        description="Show a run's state (submitted, accepted, succeeded, failed) from the buckets alone.",
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
        description="Download every artifact of a finished run to DIR/run=<RUN_ID>/ and check them against "
        "MANIFEST.json.",
    )
    fetch.add_argument("run_id", metavar="RUN_ID")
    fetch.add_argument("--to", type=Path, required=True, metavar="DIR", help="where run=<RUN_ID>/ is written")
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
            state = self.store.state(run_id)
            if state.state == "unknown" and self.inputs(run_id):
                state.state = "submitted"
        return state

    def inputs(self, run_id: str) -> list[dict[str, Any]]:
        return aws.list_keys(self.s3, self.config.archive_bucket, contract.input_root(run_id))

    def results_url(self, run_id: str) -> str:
        return f"s3://{self.config.artifacts_bucket}/{contract.run_prefix(run_id)}"


def _check_run_id(run_id: str) -> str:
    if not contract.RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise InputError(
            "invalid_run_id",
            f"The run id {run_id!r} is not valid; use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..'.",
        )
    return run_id


def _out(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- submit


def handle_submit(args: argparse.Namespace) -> int:
    from q4.cli.run import default_run_id

    path: Path = args.file
    if not path.is_file():
        raise InputError("input_not_found", f"{path} is not a file; give the path of a CSV or Parquet file.")
    if not contract.is_input_object(path.name):
        raise InputError(
            "unsupported_input",
            f"{path.name} is neither a .csv nor a .parquet file; convert it to CSV or Parquet.",
        )
    run_id = _check_run_id(args.run_id or default_run_id(path))
    key = contract.input_root(run_id) + path.name
    message = {"run_id": run_id, "input_key": key, "mode": args.mode}
    try:
        contract.parse_job(message)
    except contract.Rejection as rejection:
        raise InputError(rejection.code, rejection.message) from None

    pipeline = Pipeline()
    state = pipeline.state(run_id)
    if state.state not in ("unknown", "submitted"):
        raise RunStateError(
            "run_exists",
            f"Run {run_id} already exists ({state.state}); choose another --run-id or see "
            f"`q4 status {run_id}`.",
        )
    bucket = pipeline.config.archive_bucket
    with aws.aws_errors(f"upload {path.name} to s3://{bucket}/{key}"):
        _upload_input(pipeline.s3, bucket, key, path)
    with aws.aws_errors("send the work message"):
        pipeline.sqs.send_message(QueueUrl=pipeline.config.work_queue_url, MessageBody=json.dumps(message))
    _out(f"q4: submitted run {run_id} ({args.mode} mode): s3://{bucket}/{key}")
    if not args.wait:
        _out(f"q4: follow it with: q4 status {run_id}")
        return EXIT_OK
    return _wait_and_report(pipeline, run_id, args.timeout)


def _upload_input(s3: Any, bucket: str, key: str, path: Path) -> None:
    """Upload once: an identical object already there is kept; a different one is never overwritten."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise
        aws.upload(
            s3, bucket, key, path, "text/csv" if path.suffix.lower() == ".csv" else "application/octet-stream"
        )
        return
    etag = str(head.get("ETag", "")).strip('"')
    same_size = int(head["ContentLength"]) == path.stat().st_size
    same_md5 = "-" in etag or etag == _md5(path)
    if not (same_size and same_md5):
        raise RunStateError(
            "input_exists",
            f"s3://{bucket}/{key} already holds a different file, and inputs are never overwritten; choose "
            "another --run-id.",
        )


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wait_and_report(pipeline: Pipeline, run_id: str, timeout: float) -> int:
    with _progress_display() as show:
        outcome = wait_for_run(pipeline, run_id, timeout, show)
    status = outcome["status"]
    if status == "succeeded":
        manifest = outcome.get("manifest") or {}
        rows = manifest.get("rows") or {}
        _out(
            f"q4: run {run_id} succeeded: {rows.get('input', '?')} rows -> {rows.get('keep', '?')} keep "
            "(Q1+Q4), "
            f"{rows.get('discard', '?')} discard (Q2+Q3), {rows.get('rejected', '?')} rejected."
        )
        _out(f"q4: results: {pipeline.results_url(run_id)} (MANIFEST.json lists every artifact)")
        if any(str(a.get("key")) == "viz/report.html" for a in manifest.get("artifacts", [])):
            _out(f"q4: report: {pipeline.results_url(run_id)}viz/report.html")
        _out(f"q4: download them with: q4 fetch {run_id} --to DIR")
        return EXIT_OK
    error = outcome.get("error") or {}
    print(f"q4: run {run_id} {status}: {error.get('message') or error.get('code')}", file=sys.stderr)
    if status == "failed":
        print(f"q4: details: {pipeline.results_url(run_id)}ERROR.json", file=sys.stderr)
    return EXIT_PERMANENT


def wait_for_run(
    pipeline: Pipeline, run_id: str, timeout: float, show: Callable[[str], None], interval: float = 1.0
) -> dict[str, Any]:
    """Follow a run until it ends: ``{status, manifest | error}``.

    Success and failure are read from the artifacts bucket (MANIFEST.json / ERROR.json); a rejection
    exists only as a done message, so the done queue is peeked with a zero visibility timeout: no
    message, ours or another run's, is hidden from its consumers or deleted.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        state = pipeline.state(run_id)
        if state.state == "succeeded":
            return {"status": "succeeded", "manifest": state.manifest}
        if state.state == "failed":
            return {"status": "failed", "error": state.error}
        rejected = _peek_rejection(pipeline, run_id) if state.state in ("unknown", "submitted") else None
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


def _peek_rejection(pipeline: Pipeline, run_id: str) -> dict[str, Any] | None:
    with aws.aws_errors("read the done queue"):
        messages = pipeline.sqs.receive_message(
            QueueUrl=pipeline.config.done_queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            WaitTimeSeconds=0,
        ).get("Messages", [])
    for message in messages:
        try:
            body = json.loads(message["Body"])
        except (json.JSONDecodeError, KeyError):
            continue
        if isinstance(body, dict) and body.get("run_id") == run_id and body.get("status") == "rejected":
            return body
    return None


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
        doc["rows"] = state.manifest.get("rows")
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
    if args.json:
        _out(json.dumps(doc, indent=2))
        return EXIT_OK
    for name in ("run_id", "state", "mode", "input", "attempts"):
        if doc.get(name) is not None:
            _out(f"{name.replace('_', ' ') + ':':<10} {doc[name]}")
    if doc.get("rows"):
        rows = doc["rows"]
        _out(f"{'rows:':<10} " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    for name in ("results", "error", "details", "note"):
        value = doc.get(name)
        if value is None:
            continue
        if name == "error":
            value = f"{value['code']}: {value['message']}"
        _out(f"{name + ':':<10} {value}")
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
    width = max(len("RUN ID"), *(len(run["run_id"]) for run in runs))
    _out(f"{'RUN ID':<{width}}  STATE")
    for run in runs:
        _out(f"{run['run_id']:<{width}}  {run['state']}")
    return EXIT_OK


# ---------------------------------------------------------------- fetch


def handle_fetch(args: argparse.Namespace) -> int:
    run_id = _check_run_id(args.run_id)
    pipeline = Pipeline()
    state = pipeline.state(run_id)
    if state.state not in TERMINAL_STATES:
        raise RunStateError(
            "run_not_finished",
            f"Run {run_id} has not finished ({state.state}); wait for it (`q4 status {run_id}`) and "
            "fetch again."
            if state.state != "unknown"
            else f"No run {run_id} in s3://{pipeline.config.artifacts_bucket}; check the run id (`q4 runs`).",
        )
    target = args.to / contract.run_prefix(run_id)
    bucket = pipeline.config.artifacts_bucket
    with aws.aws_errors(f"download run {run_id}"):
        items = [
            item
            for item in aws.list_keys(pipeline.s3, bucket, contract.run_prefix(run_id))
            if not item["Key"].startswith(contract.attempts_prefix(run_id))
        ]
        for item in items:
            relative = item["Key"].removeprefix(contract.run_prefix(run_id))
            try:
                path = aws.local_path_for(target, relative)
            except ValueError:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            pipeline.s3.download_file(bucket, item["Key"], str(path), Config=aws.TRANSFER_CONFIG)
    if state.manifest is not None:
        _verify(target, state.manifest)
    _out(f"q4: fetched {len(items)} files of run {run_id} ({state.state}) to {target}")
    if state.state == "failed" and state.error is not None:
        _out(f"q4: the run failed: {state.error.get('message')}")
    return EXIT_OK


def _verify(target: Path, manifest: dict[str, Any]) -> None:
    from q4.manifest import sha256_file

    for artifact in manifest.get("artifacts", []):
        path = target / str(artifact["key"])
        if not path.is_file() or sha256_file(path) != artifact.get("sha256"):
            raise Q4Error(
                "checksum_mismatch",
                f"{path} does not match the sha256 in MANIFEST.json; fetch again, and report it if it "
                "persists.",
            )
