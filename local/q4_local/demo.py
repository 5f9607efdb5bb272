"""`q4 demo`: sample data through the local stack's work queue, end to end, to a local report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from q4 import aws
from q4.errors import Q4Error

from q4_local.stack import env_vars
from q4_local.state import StackState


class DemoError(Q4Error):
    """The demo run did not succeed."""


def sample_csv(path: Path, rows: int = 2000, seed: int = 4) -> Path:
    """A sample table: an id and a label (passthrough), five correlated features, and two invalid rows."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 2))
    mixing = np.array([[2.0, 0.5, -1.0, 0.3, 1.2], [0.4, -1.5, 0.2, 1.1, -0.6]])
    features = latent @ mixing + 0.3 * rng.normal(size=(rows, 5)) + np.array([10, -3, 0.5, 100, 7])
    lines = ["sample_id,site,f_1,f_2,f_3,f_4,f_5"]
    for i, values in enumerate(features):
        cells = [repr(float(v)) for v in values]
        if i in (7, rows // 2):
            cells[2] = "nan" if i == 7 else ""
        lines.append(f"s{i:05d},{'north' if i % 3 else 'south'}," + ",".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_done(sqs: Any, queue_url: str, run_id: str, timeout: float) -> dict[str, Any]:
    """The done message of ``run_id`` (deleted once read); other runs' messages are left in the queue
    (hidden only while a pass looks through the queue, then visible again: :func:`q4.aws.find_message`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = aws.find_message(
            sqs, queue_url, lambda body, _message: body.get("run_id") == run_id, delete=True, wait_s=2
        )
        if body is not None:
            return body
        time.sleep(0.5)
    raise DemoError(
        "demo_timeout",
        f"Run {run_id} sent no done message within {timeout:.0f} s; see runtime.log "
        "and tasks/*/task.log in the local stack's state dir.",
    )


def download_run(s3: Any, bucket: str, run_id: str, to: Path) -> Path:
    """Copy every object under ``run=<run_id>/`` of ``bucket`` to ``to/run=<run_id>/``."""
    prefix = f"run={run_id}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = to / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
    return to / prefix


def run_demo(
    state: StackState,
    to: Path,
    *,
    rows: int = 2000,
    timeout: float = 600.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """Submit sample data in full mode through the work queue, wait, download; returns the report's path."""
    env = env_vars(state)
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    sqs = session.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"])
    run_id = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    data = sample_csv(to / "input" / "sample.csv", rows=rows)
    key = f"run={run_id}/input/{data.name}"
    progress(f"uploading {rows} sample rows to s3://{env['Q4_ARCHIVE_BUCKET']}/{key}")
    s3.upload_file(str(data), env["Q4_ARCHIVE_BUCKET"], key)
    sqs.send_message(
        QueueUrl=env["Q4_WORK_QUEUE_URL"],
        MessageBody=json.dumps({"run_id": run_id, "input_key": key, "mode": "full"}),
    )
    progress(f"run {run_id} submitted (full mode); waiting for its done message")
    started = time.monotonic()
    done = wait_for_done(sqs, env["Q4_DONE_QUEUE_URL"], run_id, timeout)
    if done.get("status") != "succeeded":
        error = done.get("error") or {}
        raise DemoError(
            "demo_failed",
            f"Run {run_id} ended {done.get('status')}: "
            f"{error.get('message') or error.get('code') or 'no reason given'}",
        )
    progress(f"run {run_id} succeeded in {time.monotonic() - started:.1f} s; downloading its artifacts")
    run_dir = download_run(s3, env["Q4_ARTIFACTS_BUCKET"], run_id, to)
    report = run_dir / "viz" / "report.html"
    if not report.exists():
        raise DemoError("demo_no_report", f"Run {run_id} succeeded but has no viz/report.html in {run_dir}.")
    return report.resolve()
