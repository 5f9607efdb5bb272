"""``q4 status``: a run's state from the buckets, its phase (:mod:`q4.cli.phase`: queued, launching, running
since, attempt n of m, committed; from the launch records, ECS DescribeTasks and the queues) and its cost, and
for a run that has not ended, its latest rejection on the done queue and its messages in the DLQ (nothing
consumed)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from q4_contract import RunState, cancel_requested, shard_records, shards

from q4 import aws
from q4.cli.common import Pipeline, check_run_id, out, printable
from q4.cli.phase import cost_summary, describe_cost, describe_phase, max_attempts, phase
from q4.errors import EXIT_OK, InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparsers.add_parser(
        "status",
        help="show a run's state from the buckets",
        description=(
            "Show a run's state (submitted, accepted, succeeded, failed) from the buckets, its phase "
            "(queued, launching, running since, attempt n of $Q4_MAX_ATTEMPTS, committed; ECS "
            "DescribeTasks tells whether the latest attempt's task is pending, running or stopped) and "
            "its cost. For a run that has not ended, also show its latest rejection on the done queue and "
            "its messages in the DLQ ($Q4_DLQ_URL), consuming nothing."
        ),
    )
    status.add_argument("run_id", metavar="RUN_ID")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.set_defaults(handler=handle_status)


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
    if state.state in ("succeeded", "failed"):
        doc["cost"] = cost_summary(state.manifest or state.error)
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


def sharded_phase(pipeline: Pipeline, state: RunState, progress: dict[str, Any]) -> dict[str, Any]:
    """The phase of a sharded run that has not ended: ``launching`` until a pass-1 task is launched, else
    ``running`` in its latest launched step (ECS is not asked about each of its tasks: the step's partials
    say how far it got)."""
    doc: dict[str, Any] = {"phase": "launching", "attempt": None, "max_attempts": max_attempts()}
    for step in reversed(shards.STEPS):
        launched = shard_records.step_records(pipeline.store, state.run_id, step).attempts
        if launched:
            done = progress["steps"][step]
            return {
                **doc,
                "phase": "running",
                "step": step,
                "note": f"sharded run, step {step}: {done['done']} of {done['total']} done",
            }
    return {**doc, "note": "sharded run; no task launched yet"}


def describe_shards(progress: dict[str, Any]) -> str:
    """``7 (pass1 7/7, pass2 3/7, finish 0/1)``: the shards and each step's partials done / total."""
    steps = ", ".join(f"{step} {n['done']}/{n['total']}" for step, n in progress["steps"].items())
    return f"{progress['shards']} ({steps})"


def handle_status(args: argparse.Namespace) -> int:
    run_id = check_run_id(args.run_id)
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
    with aws.aws_errors(f"read the launch records of run {run_id}"):
        plan = shard_records.read_plan(pipeline.store, run_id) if state.state != "submitted" else None
        if plan is not None:
            doc["shards"] = shard_records.progress(pipeline.store, run_id, plan, state.manifest is not None)
            # a sharded run's tasks are its steps' (the run itself has no attempts of its own)
            del doc["attempts"]
            doc["tasks"] = sum(step["tasks"] for step in doc["shards"]["steps"].values())
        if state.state in ("submitted", "accepted"):  # a cancel asked for, not yet carried out
            request = cancel_requested(pipeline.store, run_id)
            if request is not None:
                doc["cancel"] = {
                    "requested_at": request.get("requested_at"),
                    "requested_by": request.get("requested_by"),
                }
        doc["phase"] = (
            sharded_phase(pipeline, state, doc["shards"])
            if plan is not None and state.state == "accepted"
            else phase(pipeline, state, rejected="rejection" in doc)
        )
    if args.json:
        out(json.dumps(doc, indent=2))
        return EXIT_OK
    for name in ("run_id", "state", "mode", "input", "attempts", "tasks"):
        if doc.get(name) is not None:
            out(f"{name.replace('_', ' ') + ':':<10} {printable(doc[name])}")
    out(f"{'phase:':<10} {printable(describe_phase(doc['phase']))}")
    if "cancel" in doc:
        by = f" by {doc['cancel']['requested_by']}" if doc["cancel"].get("requested_by") else ""
        out(
            f"{'cancel:':<10} "
            + printable(
                f"requested at {doc['cancel']['requested_at']}{by}; the run ends failed (cancelled) once "
                "nothing of it runs"
            )
        )
    if "shards" in doc:
        out(f"{'shards:':<10} {printable(describe_shards(doc['shards']))}")
    if "cost" in doc:
        out(f"{'cost:':<10} {printable(describe_cost(doc['cost']))}")
    if doc.get("rows"):
        rows = doc["rows"]
        out(f"{'rows:':<10} " + printable(", ".join(f"{k} {v}" for k, v in rows.items())))
    for name in ("results", "error", "details", "rejection", "dlq", "note"):
        value = doc.get(name)
        if value is None:
            continue
        if name in ("error", "rejection"):
            value = f"{value['code']}: {value['message']}"
        if name == "dlq":
            value = "; ".join(value)
        out(f"{name + ':':<10} {printable(value)}")
    return EXIT_OK
