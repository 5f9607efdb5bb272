"""Each run's task is sized to its data (docs/contract.md, "Task size"): the real orchestrator handler against
the moto server launches tasks whose RunTask overrides carry the size; the task, started the way the local
runtime's Fargate stand-in starts it (its metadata files), records the size in MANIFEST.json; ``task_cpu``
outside the deployment's limits is rejected; ``q4 submit --task-cpu`` sends it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4.cli import main
from q4_local.fargate import Container, task_launch
from q4_local.ledger import TaskRecord
from q4_orchestrator.handler import lambda_handler
from support.pipeline import (
    Q4_TASK,
    Pipeline,
    deliver_batches,
    drain,
    put,
    read,
    send_work,
    stopped_event,
    table,
    task_env,
    tasks_of,
)

RUN_ID = "sized-1"
KEY = f"run={RUN_ID}/input/data.csv"


def launch(pipeline: Pipeline, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` through the work queue to the real orchestrator; the one task it launched."""
    send_work(pipeline, json.dumps(message))
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert (delivery.received, delivery.failed) == (1, 0)
    (task,) = tasks_of(pipeline)
    return task


def run_like_local_fargate(
    pipeline: Pipeline, aws_env: dict[str, str], task: dict[str, Any], task_dir: Path
) -> subprocess.CompletedProcess[str]:
    """Run the task as the local runtime's Fargate stand-in does (:func:`q4_local.fargate.task_launch`:
    the overrides' environment, the metadata files), plus the task definition's static variables."""
    task = json.loads(json.dumps(task, default=str))
    definition = boto3.client("ecs").describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
        "taskDefinition"
    ]
    (container,) = definition["containerDefinitions"]
    (override,) = task["overrides"]["containerOverrides"]
    record = TaskRecord(task_arn=task["taskArn"], status="pending", task=task)
    started = task_launch(record, Container(task, definition, container, override), task_dir, aws_env)
    env = {
        **started.env,
        "Q4_INPUT_BUCKET": pipeline.archive_bucket,
        "Q4_ARTIFACTS_BUCKET": pipeline.artifacts_bucket,
        "Q4_DONE_QUEUE_URL": pipeline.done_queue_url,
        "Q4_CHUNK_ROWS": "16",
    }
    return subprocess.run(
        [Q4_TASK], env=env, cwd=started.cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_requested_task_cpu_is_the_tasks_size_and_the_manifest_records_it(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN an input and a work message asking for 4096 CPU units
    body = table()
    put(pipeline.archive_bucket, KEY, body)
    task = launch(pipeline, {"run_id": RUN_ID, "input_key": KEY, "task_cpu": 4096})
    # THEN RunTask's task-level overrides carry the size: 4 vCPUs, 4096 MiB per vCPU, the smallest storage
    overrides = task["overrides"]
    assert (overrides["cpu"], overrides["memory"]) == ("4096", "16384")
    assert overrides["ephemeralStorage"] == {"sizeInGiB": 21}
    (container,) = overrides["containerOverrides"]
    assert container["memory"] == 16384
    env = task_env(task)
    assert env["Q4_TASK_CPU"] == "4096" and env["Q4_INPUT_BYTES"] == str(len(body))
    job = json.loads(read(pipeline.artifacts_bucket, contract.job_key(RUN_ID)))
    assert job["task_cpu"] == 4096
    # WHEN the task runs as the local runtime runs it
    process = run_like_local_fargate(pipeline, aws_env, task, tmp_path / "task")
    # THEN it read its size from the task metadata, and MANIFEST.json records it and how it was chosen
    assert process.returncode == 0, process.stdout + process.stderr
    manifest = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key(RUN_ID)))
    assert manifest["compute"] == {
        "task_arn": task["taskArn"],
        "cpu": 4.0,
        "memory": 16384,
        "ephemeral_storage_gib": 21,
        "attempt": 1,
        "sized_by": "requested",
        "input_bytes": len(body),
    }
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded"


def test_without_task_cpu_the_task_is_sized_from_every_input_under_the_prefix(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a deployment whose limits Terraform set lower than the defaults, and two inputs plus a note
    monkeypatch.setenv("Q4_TASK_CPU_MIN", "512")
    monkeypatch.setenv("Q4_TASK_MEMORY_PER_VCPU", "2048")
    monkeypatch.setenv("Q4_TASK_STORAGE_MIN_GIB", "30")
    first, second = table(rows=40, seed=1), table(rows=50, seed=2)
    put(pipeline.archive_bucket, f"run={RUN_ID}/input/part-1.csv", first)
    put(pipeline.archive_bucket, f"run={RUN_ID}/input/part-2.csv", second)
    put(pipeline.archive_bucket, f"run={RUN_ID}/input/README.txt", b"not an input" * 1000)
    # WHEN the orchestrator launches the run
    task = launch(pipeline, {"run_id": RUN_ID, "input_prefix": f"run={RUN_ID}/input/"})
    # THEN the size follows the rule for the inputs' bytes, within the deployment's limits
    expected = contract.size_for(len(first) + len(second), contract.SizeLimits(512, 4096, 2048, 30, 200))
    assert (expected.cpu, expected.memory, expected.ephemeral_storage_gib) == (512, 1024, 30)
    overrides = task["overrides"]
    assert (overrides["cpu"], overrides["memory"], overrides["ephemeralStorage"]) == (
        "512",
        "1024",
        {"sizeInGiB": 30},
    )
    assert "Q4_TASK_CPU" not in task_env(task)
    process = run_like_local_fargate(pipeline, aws_env, task, tmp_path / "task")
    assert process.returncode == 0, process.stdout + process.stderr
    compute = json.loads(read(pipeline.artifacts_bucket, contract.manifest_key(RUN_ID)))["compute"]
    assert (compute["cpu"], compute["memory"], compute["ephemeral_storage_gib"]) == (0.5, 1024, 30)
    assert (compute["sized_by"], compute["input_bytes"]) == ("input_bytes", len(first) + len(second))


@pytest.mark.parametrize(
    ("task_cpu", "code", "words"),
    [
        (8192, "task_cpu_not_allowed", "1024 to 4096 CPU units"),
        (512, "task_cpu_not_allowed", "1024 to 4096 CPU units"),
        (1000, "invalid_task_cpu", "256, 512, 1024, 2048, 4096, 8192, 16384"),
        ("2048", "invalid_type", "'task_cpu' must be an integer"),
    ],
)
def test_a_task_cpu_the_deployment_does_not_run_is_rejected_with_its_limits(
    pipeline: Pipeline, task_cpu: object, code: str, words: str
) -> None:
    put(pipeline.archive_bucket, KEY, table())
    send_work(pipeline, json.dumps({"run_id": RUN_ID, "input_key": KEY, "task_cpu": task_cpu}))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "rejected" and done["error"]["code"] == code
    assert words in done["error"]["message"]
    assert tasks_of(pipeline) == []
    listing = boto3.client("s3").list_objects_v2(Bucket=pipeline.artifacts_bucket)
    assert listing.get("KeyCount", 0) == 0


def test_a_deployment_with_a_higher_limit_runs_the_largest_task(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("Q4_TASK_CPU_MAX", "16384")
    put(pipeline.archive_bucket, KEY, table())
    task = launch(pipeline, {"run_id": RUN_ID, "input_key": KEY, "task_cpu": 16384})
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("16384", "65536")


def test_a_relaunched_attempt_gets_the_same_size(pipeline: Pipeline) -> None:
    put(pipeline.archive_bucket, KEY, table())
    first = launch(pipeline, {"run_id": RUN_ID, "input_key": KEY, "task_cpu": 2048})
    lambda_handler(stopped_event(pipeline, first, 137), None)
    second = next(t for t in tasks_of(pipeline) if t["taskArn"] != first["taskArn"])
    assert task_env(second)["Q4_ATTEMPT"] == "2"
    for name in ("cpu", "memory", "ephemeralStorage"):
        assert second["overrides"][name] == first["overrides"][name]


def test_q4_submit_sends_task_cpu_and_refuses_one_that_is_no_fargate_step(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in pipeline.user_env.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    # a CPU that is no Fargate step is refused before anything is uploaded or sent
    assert main(["submit", str(data), "--run-id", "bad-cpu", "--task-cpu", "1000"]) == 2
    assert capsys.readouterr().err.strip().endswith("[invalid_task_cpu]")
    assert main(["submit", str(data), "--run-id", "bad-cpu", "--task-cpu", "lots"]) == 2
    assert capsys.readouterr().err.strip().endswith("[invalid_task_cpu]")
    assert drain(pipeline.work_queue_url) == []
    # a Fargate step travels in the work message
    assert main(["submit", str(data), "--run-id", RUN_ID, "--task-cpu", "2048"]) == 0
    (message,) = drain(pipeline.work_queue_url)
    assert message["task_cpu"] == 2048 and message["run_id"] == RUN_ID
