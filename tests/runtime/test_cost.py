"""Cost per run (docs/contract.md, "Cost"): the price arithmetic, a real `q4-task` writing `cost` into
MANIFEST.json / ERROR.json and `cost_usd` into its done message, the real orchestrator keeping each stopped
attempt's ECS times and pricing a `task_crashed` run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4_contract import cost as costs
from q4_orchestrator.handler import lambda_handler
from support.pipeline import Pipeline, deliver_batches, drain, put, run_task, table, task_env

PRICES = costs.load_prices()
US_X86 = PRICES["on_demand"]["us-east-1"]["X86_64"]
US_EPHEMERAL = PRICES["on_demand"]["us-east-1"]["ephemeral_gb_hour"]


def _usd(vcpu_s: float, gb_s: float, eph_s: float, rates: dict[str, Any] | None = None) -> float:
    """USD for the usage at ``rates`` (a cost's ``prices``; default: us-east-1 X86_64)."""
    rates = rates or {**US_X86, "ephemeral_gb_hour": US_EPHEMERAL}
    return (vcpu_s * rates["vcpu_hour"] + gb_s * rates["gb_hour"] + eph_s * rates["ephemeral_gb_hour"]) / 3600


# ---------------------------------------------------------------- the arithmetic


def test_the_price_table_names_its_date_source_and_regions() -> None:
    assert PRICES["source"].startswith("https://aws.amazon.com/fargate/pricing")
    assert PRICES["as_of"] and PRICES["billing"]["minimum_s"] == 60
    for region, row in PRICES["on_demand"].items():
        for architecture in ("X86_64", "ARM64"):
            assert 0 < row[architecture]["vcpu_hour"] < 1 and 0 < row[architecture]["gb_hour"] < 0.1, region


@pytest.mark.parametrize(
    ("seconds", "billed"), [(0.0, 60), (59.2, 60), (60.0, 60), (60.001, 61), (125.5, 126)]
)
def test_fargate_bills_whole_seconds_with_a_one_minute_minimum(seconds: float, billed: int) -> None:
    assert costs.billed_seconds(seconds) == billed


def test_a_run_costs_its_attempts_billed_time_times_the_task_size() -> None:
    attempts = [
        costs.usage(1, seconds=30.0, source="ecs", vcpu=1.0, memory_mib=4096, ephemeral_gib=50),
        costs.usage(2, seconds=90.4, source="task_clock", vcpu=1.0, memory_mib=4096, ephemeral_gib=50),
    ]
    cost = costs.run_cost(attempts, costs.prices_for("us-east-1", "X86_64"))
    billed = 60 + 91  # the crashed attempt's 30 s are billed as a minute
    assert cost["vcpu_seconds"] == billed and cost["gb_seconds"] == billed * 4
    assert cost["ephemeral_gb_seconds"] == billed * 30  # 50 GiB, 20 of them free
    assert cost["usd"] == pytest.approx(_usd(billed, billed * 4, billed * 30), abs=1e-6)
    assert cost["complete"] is True and cost["prices"]["capacity"] == "on-demand"
    assert (cost["prices"]["as_of"], cost["prices"]["source"]) == (PRICES["as_of"], PRICES["source"])


def test_an_unknown_region_or_attempt_leaves_the_price_unknown_not_guessed() -> None:
    attempt = costs.usage(1, seconds=10.0, source="task_clock", vcpu=0.5, memory_mib=1024, ephemeral_gib=None)
    nowhere = costs.run_cost([attempt], costs.prices_for("ap-nowhere-9", "X86_64"))
    assert (
        nowhere["usd"] is None
        and nowhere["vcpu_seconds"] == 30
        and "ap-nowhere-9" in nowhere["prices"]["note"]
    )
    unknown = costs.usage(1, seconds=None, source="ecs", vcpu=None, memory_mib=None, ephemeral_gib=None)
    partial = costs.run_cost([unknown, attempt], costs.prices_for("us-east-1", "X86_64"))
    assert partial["usd"] is None and partial["complete"] is False and partial["vcpu_seconds"] == 30


def test_a_price_region_prices_a_run_as_if_it_ran_there() -> None:
    prices = costs.prices_for("eu-central-2", "ARM64", price_region="us-east-1")
    assert (prices["region"], prices["run_region"]) == ("us-east-1", "eu-central-2")
    assert prices["vcpu_hour"] == PRICES["on_demand"]["us-east-1"]["ARM64"]["vcpu_hour"]
    assert "Q4_PRICE_REGION" in prices["note"] and "run_region" not in costs.prices_for("us-east-1", "ARM64")


# ---------------------------------------------------------------- the task


def _metadata_dir(tmp_path: Path, pulled_ago_s: float, ephemeral_gib: int = 50) -> str:
    """The task metadata endpoint v4 as a file (urllib opens file:// like the agent's http://)."""
    folder = tmp_path / "metadata"
    folder.mkdir(exist_ok=True)
    pulled = datetime.now(UTC) - timedelta(seconds=pulled_ago_s)
    (folder / "task").write_text(
        json.dumps(
            {
                "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/q4/abc",
                "Limits": {"CPU": 1.0, "Memory": 4096},
                "PullStartedAt": pulled.isoformat().replace("+00:00", "Z"),
                "EphemeralStorageMetrics": {"Reserved": ephemeral_gib * 1024, "Utilized": 1},
            }
        )
    )
    return folder.as_uri()


def _accepted(pipeline: Pipeline, run_id: str, body: bytes) -> contract.Job:
    key = f"run={run_id}/input/data.csv"
    put(pipeline.archive_bucket, key, body)
    job = contract.parse_job({"run_id": run_id, "input_key": key})
    put(pipeline.artifacts_bucket, contract.job_key(run_id), job.to_json().encode())
    return job


def _document(pipeline: Pipeline, key: str) -> dict[str, Any]:
    body = boto3.client("s3").get_object(Bucket=pipeline.artifacts_bucket, Key=key)["Body"].read()
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_the_manifest_and_done_message_carry_the_runs_cost(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN a task whose image pull started 100 s ago (the metadata endpoint says so), 1 vCPU, 4 GiB, 50 GiB
    job = _accepted(pipeline, "cost-1", table())
    process = run_task(pipeline, aws_env, job, ECS_CONTAINER_METADATA_URI_V4=_metadata_dir(tmp_path, 100))
    assert process.returncode == 0, process.stdout[-2000:]
    # THEN MANIFEST.json bills this attempt by the task's clock from the pull's start up to the commit
    cost = _document(pipeline, contract.manifest_key("cost-1"))["cost"]
    (attempt,) = cost["attempts"]
    assert (attempt["source"], attempt["started_from"], attempt["attempt"]) == (
        "task_clock",
        "PullStartedAt",
        1,
    )
    assert 100 <= attempt["seconds"] < 160 and attempt["billed_s"] >= 101
    billed = attempt["billed_s"]
    assert (cost["vcpu_seconds"], cost["gb_seconds"], cost["ephemeral_gb_seconds"]) == (
        billed,
        billed * 4,
        billed * 30,
    )
    # priced for the task's region (its ARN's) and this machine's architecture, from the committed table
    prices = cost["prices"]
    assert prices["region"] == "us-east-1" and prices["capacity"] == "on-demand"
    assert prices["vcpu_hour"] == PRICES["on_demand"]["us-east-1"][prices["architecture"]]["vcpu_hour"]
    assert cost["usd"] == pytest.approx(_usd(billed, billed * 4, billed * 30, prices), abs=1e-6)
    # AND the done message carries the same figure
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "succeeded" and done["cost_usd"] == cost["usd"]


def test_a_failed_runs_error_json_carries_its_cost(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    job = _accepted(pipeline, "cost-2", b"a,b\n1,2\n")  # one row: too_few_rows
    process = run_task(pipeline, aws_env, job, ECS_CONTAINER_METADATA_URI_V4=_metadata_dir(tmp_path, 5))
    assert process.returncode == 2, process.stdout[-2000:]
    error = _document(pipeline, contract.error_key("cost-2"))
    assert error["code"] == "too_few_rows" and error["cost"]["attempts"][0]["billed_s"] == 60
    assert error["cost"]["vcpu_seconds"] == 60 and error["cost"]["usd"] is not None
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["cost_usd"] == error["cost"]["usd"]


def _stopped(task: dict[str, Any], exit_code: int, started: datetime, seconds: float) -> dict[str, Any]:
    """A STOPPED event as ECS sends it: the task's size, its times and the container's exit code."""
    stamp = lambda moment: moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    return {
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "detail": {
            "clusterArn": task["clusterArn"],
            "taskArn": task["taskArn"],
            "lastStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "containers": [{"name": "q4", "lastStatus": "STOPPED", "exitCode": exit_code}],
            "overrides": task["overrides"],
            "cpu": "1024",
            "memory": "4096",
            "ephemeralStorage": {"sizeInGiB": 50},
            "pullStartedAt": stamp(started),
            "startedAt": stamp(started + timedelta(seconds=7)),
            "stoppedAt": stamp(started + timedelta(seconds=seconds)),
        },
    }


def _latest_task(pipeline: Pipeline, attempt: int) -> dict[str, Any]:
    ecs = boto3.client("ecs")
    tasks = ecs.describe_tasks(
        cluster=pipeline.cluster, tasks=ecs.list_tasks(cluster=pipeline.cluster)["taskArns"]
    )
    (task,) = [t for t in tasks["tasks"] if task_env(t)["Q4_ATTEMPT"] == str(attempt)]
    return task


def _launch(pipeline: Pipeline, run_id: str, body: bytes) -> None:
    key = f"run={run_id}/input/data.csv"
    put(pipeline.archive_bucket, key, body)
    boto3.client("sqs").send_message(
        QueueUrl=pipeline.work_queue_url, MessageBody=json.dumps({"run_id": run_id, "input_key": key})
    )
    deliver_batches(pipeline.work_queue_url, lambda_handler)


def test_the_committing_attempt_adds_the_ecs_time_of_the_crashed_one(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN attempt 1 crashed after 90 s from its pull's start (the orchestrator relaunches it)
    _launch(pipeline, "cost-3", table())
    started = datetime.now(UTC) - timedelta(minutes=5)
    assert (
        lambda_handler(_stopped(_latest_task(pipeline, 1), 1, started, 90.25), None)["outcome"]
        == "relaunched"
    )
    record = _document(pipeline, costs.stopped_key("cost-3", 1))
    assert (record["seconds"], record["started_from"], record["vcpu"], record["ephemeral_gib"]) == (
        90.25,
        "pullStartedAt",
        1.0,
        50.0,
    )
    # WHEN attempt 2 runs and commits
    job = contract.parse_job(_document(pipeline, contract.job_key("cost-3")))
    process = run_task(pipeline, aws_env, job, 2, ECS_CONTAINER_METADATA_URI_V4=_metadata_dir(tmp_path, 3))
    assert process.returncode == 0, process.stdout[-2000:]
    # THEN its MANIFEST.json sums both attempts: 91 s from ECS, at least 60 s by its own clock
    cost = _document(pipeline, contract.manifest_key("cost-3"))["cost"]
    first, second = cost["attempts"]
    assert (first["source"], first["billed_s"], second["source"], second["billed_s"]) == (
        "ecs",
        91,
        "task_clock",
        60,
    )
    assert cost["vcpu_seconds"] == 151 and cost["complete"] is True


def test_a_run_that_crashed_on_every_attempt_is_priced_from_ecs(pipeline: Pipeline) -> None:
    _launch(pipeline, "cost-4", table())
    started = datetime.now(UTC) - timedelta(minutes=10)
    for attempt, seconds in ((1, 30.0), (2, 61.5), (3, 120.0)):
        outcome = lambda_handler(_stopped(_latest_task(pipeline, attempt), 137, started, seconds), None)
        assert outcome["outcome"] == ("failed" if attempt == 3 else "relaunched")
    error = _document(pipeline, contract.error_key("cost-4"))
    assert error["code"] == "task_crashed"
    assert [a["billed_s"] for a in error["cost"]["attempts"]] == [60, 62, 120]
    assert error["cost"]["vcpu_seconds"] == 242 and error["cost"]["ephemeral_gb_seconds"] == 242 * 30
    assert error["cost"]["usd"] == pytest.approx(_usd(242, 242 * 4, 242 * 30), abs=1e-6)
    failed = [m for m in drain(pipeline.done_queue_url) if m["status"] == "failed"]
    assert [m["cost_usd"] for m in failed] == [error["cost"]["usd"]]
