"""``q4 runs``: every run in the buckets with its state (one listing per run, no object reads)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import q4_contract as contract

from q4 import aws
from q4.cli.common import Pipeline, out, printable
from q4.errors import EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = subparsers.add_parser(
        "runs",
        help="list the pipeline's runs and their states",
        description="List every run in the buckets with its state (submitted, accepted, succeeded, failed).",
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
        out(json.dumps(runs, indent=2))
        return EXIT_OK
    if not runs:
        out(f"q4: no runs yet in s3://{pipeline.config.archive_bucket}; submit one with `q4 submit FILE`.")
        return EXIT_OK
    shown = [(printable(run["run_id"]), run["state"]) for run in runs]
    width = max(len("RUN ID"), *(len(run_id) for run_id, _ in shown))
    out(f"{'RUN ID':<{width}}  STATE")
    for run_id, state in shown:
        out(f"{run_id:<{width}}  {state}")
    return EXIT_OK
