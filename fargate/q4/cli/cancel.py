"""``q4 cancel RUN_ID``: end a queued or running run as ``failed`` with code ``cancelled``.

Writes the run's cancel request once (``run=<id>/cancel.json``, ``If-None-Match: *``), then stops each of the
run's tasks that ECS still runs (``ecs:StopTask``; the tasks come from the launch records, a sharded run's
every step's too, the cluster from their ARNs). The orchestrator ends the run when its task has stopped,
or when its queued work message arrives: ERROR.json ``cancelled`` and one failed done message
(docs/contract.md, "Cancel"). A run that already ended is left as it is.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import q4_contract as contract
from q4_contract import shard_records

from q4 import aws
from q4.cli.common import Pipeline, check_run_id, out, printable
from q4.errors import EXIT_OK, InputError

STOP_REASON = "Cancelled by q4 cancel"
#: Launch records read, and StopTask calls made, at once.
PARALLEL = 8
#: Tasks per DescribeTasks call (ECS's limit).
DESCRIBE_BATCH = 100


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = subparsers.add_parser(
        "cancel",
        help="cancel a queued or running run",
        description=(
            "Cancel a queued or running run: write its cancel request and stop its running task. The run "
            "ends failed with code 'cancelled' once nothing of it runs any more. A run that already ended "
            "is left as it is."
        ),
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--json", action="store_true", help="print what was done as JSON")
    cancel.set_defaults(handler=handle_cancel)


def request_cancel(pipeline: Pipeline, run_id: str) -> tuple[bool, dict[str, Any]]:
    """Write the cancel request once: ``(written now, the request in force)``."""
    request = contract.cancel_request(
        run_id, requested_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), requested_by=_who()
    )
    with aws.aws_errors(f"write the cancel request of run {run_id}"):
        if pipeline.store.put_json_once(contract.cancel_key(run_id), request):
            return True, request
        return False, contract.cancel_requested(pipeline.store, run_id) or request


def launched_tasks(pipeline: Pipeline, run_id: str, attempts: list[int]) -> list[dict[str, Any]]:
    """Every task the run's launch records name that may still run: ``{attempt, task_arn}``, and for a
    sharded run's steps (``run=<id>/shards/<step>/<k>/attempts/<n>.json``) also ``shard_step`` and
    ``shard``. A shard step's attempt with a stop record has stopped: its launch record is not read, so a
    run of 1000 shards costs one listing and a read per task still running (:data:`PARALLEL` at once)."""
    found: list[dict[str, Any]] = []
    with aws.aws_errors(f"read the launch records of run {run_id}"):
        for attempt in attempts:
            record = pipeline.store.attempt_record(run_id, attempt) or {}
            found.append({"attempt": attempt, "task_arn": record.get("task_arn")})
        for step in shard_records.unstopped_launch_records(pipeline.store, run_id, workers=PARALLEL):
            found.append(
                {
                    "attempt": step.attempt,
                    "task_arn": step.task_arn,
                    "shard_step": step.step,
                    "shard": step.shard,
                }
            )
    return [item for item in found if isinstance(item["task_arn"], str) and ":task/" in item["task_arn"]]


def stop_tasks(pipeline: Pipeline, run_id: str, launched: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stop every task of ``launched`` (:func:`launched_tasks`) that ECS has not stopped; what was stopped.

    ECS is asked about the tasks :data:`DESCRIBE_BATCH` at a time per cluster, and the StopTask calls go
    :data:`PARALLEL` at once; the result keeps ``launched``'s order."""
    if not launched:
        return []
    ecs = aws.client("ecs")
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    for item in launched:
        by_cluster.setdefault(_cluster(item["task_arn"]), []).append(item)
    described: dict[str, dict[str, Any]] = {}
    with aws.aws_errors(f"describe the tasks of run {run_id}"):
        for cluster, items in by_cluster.items():
            for start in range(0, len(items), DESCRIBE_BATCH):
                arns = [item["task_arn"] for item in items[start : start + DESCRIBE_BATCH]]
                for task in ecs.describe_tasks(cluster=cluster, tasks=arns).get("tasks") or []:
                    described[str(task.get("taskArn"))] = task
    # desiredStatus, not lastStatus: it is STOPPED as soon as anyone stopped the task (lastStatus lags
    # behind on ECS, and the emulator moves it through a cycle of its own)
    running = [
        item
        for item in launched
        if item["task_arn"] in described and described[item["task_arn"]].get("desiredStatus") != "STOPPED"
    ]

    def stop(item: dict[str, Any]) -> dict[str, Any]:
        with aws.aws_errors(f"stop the task of run {run_id} attempt {item['attempt']}"):
            ecs.stop_task(cluster=_cluster(item["task_arn"]), task=item["task_arn"], reason=STOP_REASON)
        return {**item, "last_status": described[item["task_arn"]].get("lastStatus")}

    with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="q4-cancel") as pool:
        return list(pool.map(stop, running))


def _cluster(task_arn: str) -> str:
    """The cluster of a task ARN (``arn:...:task/<cluster>/<id>``)."""
    return task_arn.split(":task/", 1)[1].rsplit("/", 1)[0]


def _ever_launched(pipeline: Pipeline, run_id: str, attempts: list[int]) -> bool:
    """Whether any task was launched for the run (a sharded run's steps' launch records included)."""
    if attempts:
        return True
    with aws.aws_errors(f"read the launch records of run {run_id}"):
        return bool(shard_records.launched(pipeline.store, run_id))


def handle_cancel(args: argparse.Namespace) -> int:
    run_id = check_run_id(args.run_id)
    pipeline = Pipeline()
    state = pipeline.state(run_id)
    doc: dict[str, Any] = {"run_id": run_id, "state": state.state}
    if state.state == "unknown":
        raise InputError(
            "run_not_found",
            f"No run {run_id} in s3://{pipeline.config.artifacts_bucket} or "
            f"s3://{pipeline.config.archive_bucket}; check the run id (`q4 runs` lists them).",
        )
    if state.state in ("succeeded", "failed"):
        code = (state.error or {}).get("code")
        doc.update(cancelled=False, code=code)
        ended = f"{state.state}, {code}" if code else state.state
        doc["note"] = f"Run {run_id} already ended ({ended}); nothing to cancel, nothing changed."
        return _report(args, doc)
    written, request = request_cancel(pipeline, run_id)
    launched = launched_tasks(pipeline, run_id, state.attempts)
    stopped = stop_tasks(pipeline, run_id, launched)
    doc.update(cancelled=True, requested_at=request.get("requested_at"), newly_requested=written)
    doc["stopped_tasks"] = stopped
    if stopped:
        doc["note"] = (
            f"Stopped {len(stopped)} task(s); the run ends failed (cancelled) once the stop is reported. "
            f"`q4 status {run_id}` shows it."
        )
    elif launched or _ever_launched(pipeline, run_id, state.attempts):
        doc["note"] = (
            "No task of the run is running; the run ends failed (cancelled) when its stopped task's event "
            f"is handled (see `q4 status {run_id}` and `q4 dlq`)."
        )
    else:
        doc["note"] = (
            "No task was launched; the run's work message is answered failed (cancelled) when it arrives."
        )
    return _report(args, doc)


def _report(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    if args.json:
        out(json.dumps(doc, indent=2))
        return EXIT_OK
    if doc["cancelled"]:
        when = "requested" if doc["newly_requested"] else "was already requested"
        out(f"Cancel of run {printable(doc['run_id'])} {when} at {printable(doc['requested_at'])}.")
        for task in doc["stopped_tasks"]:
            step = f"{task['shard_step']} of shard {task['shard']}, " if "shard_step" in task else ""
            out(f"Stopped task {printable(task['task_arn'])} ({step}attempt {task['attempt']}).")
    out(printable(doc["note"]))
    return EXIT_OK


def _who() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
