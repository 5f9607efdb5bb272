"""`q4 status` (phase, cost), `q4 runs` (cost per run, total, rejected runs) and `q4 submit` (every
work-message field) as real processes against moto, with the real orchestrator handler
and a real `q4-task`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import q4_contract as contract
from q4_orchestrator.handler import lambda_handler
from support.pipeline import Pipeline, deliver_batches, drain, put, run_task, table, task_env

BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")


def _env(pipeline: Pipeline, aws_env: dict[str, str]) -> dict[str, str]:
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/tmp"),
            **aws_env, **pipeline.user_env}  # fmt: skip


def q4(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([Q4, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _status(env: dict[str, str], run_id: str) -> dict[str, Any]:
    process = q4(env, "status", run_id, "--json")
    assert process.returncode == 0, process.stderr
    doc: dict[str, Any] = json.loads(process.stdout)
    return doc


def test_status_follows_a_run_from_queued_to_committed_with_its_cost(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(pipeline, aws_env)
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    # GIVEN a submitted run whose work message waits on the work queue
    assert q4(env, "submit", str(data), "--run-id", "ph1").returncode == 0
    queued = _status(env, "ph1")["phase"]
    assert (queued["phase"], queued["attempt"], queued["max_attempts"]) == ("queued", None, 3)
    # WHEN the orchestrator accepts it and launches attempt 1 (RunTask; moto reports the task RUNNING)
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    running = _status(env, "ph1")["phase"]
    (task,) = boto3.client("ecs").describe_tasks(cluster=pipeline.cluster, tasks=[running["task_arn"]])[
        "tasks"
    ]
    assert (running["phase"], running["attempt"], running["ecs_status"]) == ("running", 1, "RUNNING")
    assert task_env(task)["Q4_RUN_ID"] == "ph1"
    # moto gives no startedAt: the launch record's time, said so
    assert running["since"] and running["note"] == "launch time; ECS gave no startedAt"
    human = q4(env, "status", "ph1").stdout
    assert f"phase:     running since {running['since']}, attempt 1 of 3" in human
    # WHEN its task commits the run
    job = contract.parse_job(json.loads(boto3.client("s3").get_object(
        Bucket=pipeline.artifacts_bucket, Key=contract.job_key("ph1"))["Body"].read()))  # fmt: skip
    assert run_task(pipeline, aws_env, job, Q4_TASK_ARN=running["task_arn"]).returncode == 0
    # THEN status says committed and shows the MANIFEST's cost
    done = _status(env, "ph1")
    assert (done["state"], done["phase"]["phase"]) == ("succeeded", "committed")
    assert set(done["cost"]) >= {"vcpu_seconds", "gb_seconds", "ephemeral_gb_seconds", "usd", "prices"}
    assert "attempts" not in done["cost"] and done["cost"]["prices"]["region"] == "us-east-1"
    human = q4(env, "status", "ph1").stdout
    assert "phase:     committed, attempt 1 of 3" in human and "cost:      " in human


def test_status_of_an_accepted_run_without_a_task_is_launching(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    put(pipeline.archive_bucket, "run=ph2/input/x.csv", b"a,b\n1,2\n")
    job = contract.parse_job({"run_id": "ph2", "input_key": "run=ph2/input/x.csv"})
    put(pipeline.artifacts_bucket, contract.job_key("ph2"), job.to_json().encode())
    phase = _status({**_env(pipeline, aws_env), "Q4_MAX_ATTEMPTS": "5"}, "ph2")["phase"]
    assert (phase["phase"], phase["attempt"], phase["max_attempts"]) == ("launching", None, 5)


def _terminal(pipeline: Pipeline, run_id: str, name: str, usd: float | None) -> None:
    put(pipeline.archive_bucket, f"run={run_id}/input/x.csv", b"a,b\n1,2\n")
    job = contract.parse_job({"run_id": run_id, "input_key": f"run={run_id}/input/x.csv"})
    put(pipeline.artifacts_bucket, contract.job_key(run_id), job.to_json().encode())
    doc = {"run_id": run_id, "code": "too_few_rows", "message": "m", "rows": {}, "artifacts": []}
    if usd is not None:
        doc["cost"] = {"usd": usd, "vcpu_seconds": 60.0, "gb_seconds": 240.0, "ephemeral_gb_seconds": 0.0}
    put(pipeline.artifacts_bucket, f"run={run_id}/{name}", json.dumps(doc).encode())


def test_runs_shows_each_runs_cost_a_total_and_rejected_runs(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(pipeline, aws_env)
    _terminal(pipeline, "r-ok", "MANIFEST.json", 0.0015)
    _terminal(pipeline, "r-failed", "ERROR.json", 0.00075)
    _terminal(pipeline, "r-old", "MANIFEST.json", None)  # committed before runs had a cost
    # GIVEN a submission the orchestrator rejects (its input vanished: input_not_found), and one still queued
    put(pipeline.archive_bucket, "run=r-queued/input/x.csv", b"a,b\n1,2\n")
    data = tmp_path / "d.csv"
    data.write_bytes(table())
    assert q4(env, "submit", str(data), "--run-id", "r-rejected").returncode == 0
    boto3.client("s3").delete_object(Bucket=pipeline.archive_bucket, Key="run=r-rejected/input/d.csv")
    put(pipeline.archive_bucket, "run=r-rejected/input/notes.txt", b"kept for the listing")
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    listed = q4(env, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"run_id": "r-failed", "state": "failed", "cost_usd": 0.00075},
        {"run_id": "r-ok", "state": "succeeded", "cost_usd": 0.0015},
        {"run_id": "r-old", "state": "succeeded", "cost_usd": None},
        {"run_id": "r-queued", "state": "submitted", "cost_usd": None},
        {"run_id": "r-rejected", "state": "rejected", "cost_usd": None},
    ]
    lines = q4(env, "runs").stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATE", "COST"]
    assert lines[1].split() == ["r-failed", "failed", "$0.000750"]
    assert lines[5].split() == ["r-rejected", "rejected", "-"]
    assert lines[-1] == "total: $0.002250 over 2 run(s); 1 ended run(s) without a recorded cost"
    # AND nothing was consumed: the rejection is still on the done queue
    assert [m["status"] for m in drain(pipeline.done_queue_url) if m["run_id"] == "r-rejected"] == [
        "rejected"
    ]


def test_submit_sends_every_work_message_field(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(pipeline, aws_env)
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    put(pipeline.artifacts_bucket, "run=prior/model/q4_model.json", b"{}")
    process = q4(env, "submit", str(data), "--run-id", "sf1", "--mode", "enhanced", "--svd-k", "3",
                 "--output-format", "parquet", "--model", "prior")  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "with the model s3://" in process.stdout
    process = q4(env, "submit", str(data), "--run-id", "sf2", "--model", "run=prior/model/q4_model.json")
    assert process.returncode == 0, process.stderr
    process = q4(env, "submit", str(data), "--run-id", "sf3", "--features", "a, b", "--output-format", "csv")
    assert process.returncode == 0, process.stderr
    messages = {m["run_id"]: m for m in drain(pipeline.work_queue_url)}
    assert messages["sf1"] == {
        "run_id": "sf1",
        "input_key": "run=sf1/input/data.csv",
        "mode": "enhanced",
        "svd_k": 3,
        "output_format": "parquet",
        "model_key": "run=prior/model/q4_model.json",
    }
    assert messages["sf2"]["model_key"] == "run=prior/model/q4_model.json"
    assert messages["sf3"] == {
        "run_id": "sf3",
        "input_key": "run=sf3/input/data.csv",
        "mode": "standard",
        "features": ["a", "b"],
        "output_format": "csv",
    }


def test_submit_refuses_a_bad_field_or_a_missing_model_before_uploading(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(pipeline, aws_env)
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    for flags, code in (
        (["--svd-k", "0"], "invalid_svd_k"),
        (["--svd-k", "many"], "invalid_svd_k"),
        (["--output-format", "xlsx"], "unknown_output_format"),
        (["--features", ","], "invalid_features"),
        (["--model", "run=x/other.json"], "invalid_model_key"),
        (["--model", "never-ran"], "model_not_found"),
    ):
        process = q4(env, "submit", str(data), "--run-id", "bad1", *flags)
        assert process.returncode == 2 and f"[{code}]" in process.stderr, (flags, process.stderr)
    listing = boto3.client("s3").list_objects_v2(Bucket=pipeline.archive_bucket)
    assert listing.get("KeyCount", 0) == 0 and drain(pipeline.work_queue_url) == []


def test_status_of_a_run_whose_launch_record_is_unreadable_still_answers(
    pipeline: Pipeline, aws_env: dict[str, str]
) -> None:
    put(pipeline.archive_bucket, "run=ph3/input/x.csv", b"a,b\n1,2\n")
    job = contract.parse_job({"run_id": "ph3", "input_key": "run=ph3/input/x.csv"})
    put(pipeline.artifacts_bucket, contract.job_key("ph3"), job.to_json().encode())
    put(pipeline.artifacts_bucket, contract.attempt_key("ph3", 1), b"\x00 not json")
    process = q4(_env(pipeline, aws_env), "status", "ph3")
    assert process.returncode == 0, process.stderr
    assert (
        "phase:     launched, attempt 1 of 3 (the launch record of attempt 1 is unreadable)" in process.stdout
    )
