"""``q4 runs``: every run in the buckets with its state (one listing per run), its cost (``cost.usd`` of the
MANIFEST.json / ERROR.json of an ended run) and their total. A run with inputs but no job.json whose done
message on the done queue is a rejection is ``rejected`` (one pass over the done queue, nothing consumed; a
rejection already consumed by the queue's reader cannot be seen, and the run shows as ``submitted``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import q4_contract as contract
from q4_contract import cost as costs

from q4 import aws
from q4.cli.common import Pipeline, out, printable
from q4.errors import EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = subparsers.add_parser(
        "runs",
        help="list the pipeline's runs and their states",
        description="List every run in the buckets with its state (submitted, rejected, accepted, succeeded, "
        "failed) and cost (USD, from its MANIFEST.json or ERROR.json), and the total cost.",
    )
    runs.add_argument("--json", action="store_true", help="print the list as JSON")
    runs.set_defaults(handler=handle_runs)


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


def _rejected(pipeline: Pipeline, candidates: set[str]) -> set[str]:
    """The run ids among ``candidates`` that have a ``rejected`` done message on the done queue."""
    found: set[str] = set()
    if not candidates:
        return found

    def collect(body: dict[str, Any], message: Any) -> bool:
        if body.get("status") == "rejected" and body.get("run_id") in candidates:
            found.add(str(body["run_id"]))
        return False  # look through the whole queue

    aws.find_message(pipeline.sqs, pipeline.config.done_queue_url, collect, delete=False)
    return found


def _cost_usd(pipeline: Pipeline, run_id: str, state: str) -> float | None:
    key = {"succeeded": contract.manifest_key, "failed": contract.error_key}.get(state)
    if key is None:
        return None
    try:
        document = pipeline.store.read_json(key(run_id))
    except contract.UnreadableDocument:
        return None
    return costs.cost_usd(document or {})


def _list_runs(pipeline: Pipeline) -> list[dict[str, Any]]:
    accepted = _run_ids(pipeline.s3, pipeline.config.artifacts_bucket)
    submitted = _run_ids(pipeline.s3, pipeline.config.archive_bucket)
    states = {
        run_id: _light_state(pipeline, run_id) if run_id in accepted else "submitted"
        for run_id in sorted(accepted | submitted)
    }
    rejected = _rejected(pipeline, {run_id for run_id, state in states.items() if state == "submitted"})
    return [
        {
            "run_id": run_id,
            "state": "rejected" if run_id in rejected else state,
            "cost_usd": _cost_usd(pipeline, run_id, state),
        }
        for run_id, state in states.items()
    ]


def handle_runs(args: argparse.Namespace) -> int:
    pipeline = Pipeline()
    with aws.aws_errors("list the runs"):
        runs = _list_runs(pipeline)
    if args.json:
        out(json.dumps(runs, indent=2))
        return EXIT_OK
    if not runs:
        out(f"q4: no runs yet in s3://{pipeline.config.archive_bucket}; submit one with `q4 submit FILE`.")
        return EXIT_OK
    shown = [(printable(run["run_id"]), run["state"], _usd(run["cost_usd"])) for run in runs]
    width = max(len("RUN ID"), *(len(run_id) for run_id, _, _ in shown))
    out(f"{'RUN ID':<{width}}  {'STATE':<9}  COST")
    for run_id, state, usd in shown:
        out(f"{run_id:<{width}}  {state:<9}  {usd}")
    known = [run["cost_usd"] for run in runs if run["cost_usd"] is not None]
    unknown = sum(1 for run in runs if run["cost_usd"] is None and run["state"] in ("succeeded", "failed"))
    note = f"; {unknown} ended run(s) without a recorded cost" if unknown else ""
    out(f"total: {_usd(sum(known))} over {len(known)} run(s){note}")
    return EXIT_OK


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"
